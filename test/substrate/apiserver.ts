// A real Kubernetes apiserver for integration tests, found in this order:
//   1. KPX_TEST_KUBECONFIG: an existing cluster (e.g. kind); tests that stop or compact
//      the apiserver are skipped there;
//   2. the test apiserver built by hack/test-apiserver/build.sh (etcd + kube-apiserver
//      on 127.0.0.1, started per test file with its own data directory);
//   3. k3s through testcontainers when a Docker engine is reachable.
// With none of them, tests skip with the reason.
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, KubeConfig, KubernetesObjectApi, type DiscoveryV1Api, type KubernetesObject } from '@kubernetes/client-node';
import { readdir } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';

export const TEST_APISERVER_BIN = process.env.KPX_TEST_APISERVER_BIN ?? join(process.env.KPX_CACHE ?? join(homedir(), '.cache/kpx'), 'test-apiserver');

/** What the test apiserver writes to DATA_DIR/ready.json once it serves (removed on a clean exit). */
export interface TestApiserverReady {
  server: string;
  kubeconfig: string;
  caFile: string;
  etcdEndpoint: string;
  apiserverPort: number;
  pid: number;
}
type Ready = TestApiserverReady;

export interface TestApiserverOptions {
  /** false: watches served from etcd, so a compacted resourceVersion answers 410 */
  watchCache?: boolean;
  /** --service-cluster-ip-range (the binary's default: 198.19.0.0/16,2001:2:0:ffff::/112) */
  serviceCIDR?: string;
  /** the address the `kubernetes` Service's endpoint names (also in the serving certificate) */
  advertiseAddress?: string;
}

/** The command line of `test-apiserver run` for a data directory. */
export function testApiserverArgs(dataDir: string, opts: TestApiserverOptions = {}): string[] {
  // privileged pods allowed, as on kubeadm clusters (kpx's DaemonSet is privileged)
  const args = ['run', '--data-dir', dataDir, `--watch-cache=${opts.watchCache ?? true}`, '--apiserver-arg=--allow-privileged=true'];
  if (opts.serviceCIDR) args.push('--service-cluster-ip-range', opts.serviceCIDR);
  if (opts.advertiseAddress) args.push('--advertise-address', opts.advertiseAddress);
  return args;
}

export async function readTestApiserverReady(dataDir: string): Promise<TestApiserverReady> {
  return JSON.parse(await readFile(join(dataDir, 'ready.json'), 'utf8')) as TestApiserverReady;
}

export interface Apiserver {
  readonly kind: 'external' | 'built' | 'k3s';
  /** can be stopped, restarted and compacted */
  readonly controllable: boolean;
  readonly admin: KubeConfig;
  /** host and port the apiserver listens on (reachable from the root namespace) */
  target(): { host: string; port: number };
  /** PEM of the CA that signed the serving certificate */
  caPem(): Promise<string>;
  stop(): Promise<void>;
  start(opts?: { watchCache?: boolean }): Promise<void>;
  /** compacts etcd to its current revision: older resourceVersions answer 410 */
  compact(): Promise<void>;
  destroy(): Promise<void>;
}

function targetOf(server: string): { host: string; port: number } {
  const u = new URL(server);
  return { host: u.hostname.replace(/^\[|\]$/g, '') === 'localhost' ? '127.0.0.1' : u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 443) };
}

class BuiltApiserver implements Apiserver {
  readonly kind = 'built';
  readonly controllable = true;
  admin = new KubeConfig();
  private proc: ResultPromise | null = null;
  private ready: Ready | null = null;

  constructor(private readonly dataDir: string) {}

  target() {
    return targetOf(this.ready!.server);
  }

  caPem() {
    return readFile(this.ready!.caFile, 'utf8');
  }

  async start(opts: { watchCache?: boolean } = {}): Promise<void> {
    const proc = execa(TEST_APISERVER_BIN, testApiserverArgs(this.dataDir, opts), {
      reject: false,
      buffer: false,
      stdin: 'ignore',
    });
    this.proc = proc;
    let err = '';
    proc.stderr?.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`test apiserver not ready in 180 s: ${err}`)), 180_000);
      proc.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        if (/^READY /m.test(out)) {
          clearTimeout(timer);
          resolve();
        }
      });
      void proc.then((r) => {
        clearTimeout(timer);
        reject(new Error(`test apiserver exited ${r.exitCode}: ${err}`));
      });
    });
    this.ready = await readTestApiserverReady(this.dataDir);
    this.admin = new KubeConfig();
    this.admin.loadFromFile(this.ready.kubeconfig);
  }

  async stop(): Promise<void> {
    if (!this.proc) return;
    this.proc.kill('SIGTERM');
    await this.proc;
    this.proc = null;
  }

  async compact(): Promise<void> {
    await execa(TEST_APISERVER_BIN, ['compact', '--data-dir', this.dataDir]);
  }

  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}

class ExternalApiserver implements Apiserver {
  readonly controllable = false;
  constructor(
    readonly kind: 'external' | 'k3s',
    readonly admin: KubeConfig,
    private readonly onDestroy: () => Promise<void> = async () => {},
  ) {}

  target() {
    return targetOf(this.admin.getCurrentCluster()!.server);
  }

  async caPem(): Promise<string> {
    const c = this.admin.getCurrentCluster()!;
    if (c.caData) return Buffer.from(c.caData, 'base64').toString('utf8');
    if (c.caFile) return readFile(c.caFile, 'utf8');
    throw new Error('the cluster in KPX_TEST_KUBECONFIG has no CA');
  }

  async stop(): Promise<void> {
    throw new Error(`cannot stop a ${this.kind} apiserver`);
  }

  async start(): Promise<void> {}

  async compact(): Promise<void> {
    throw new Error(`cannot compact a ${this.kind} apiserver`);
  }

  destroy(): Promise<void> {
    return this.onDestroy();
  }
}

async function dockerReachable(): Promise<boolean> {
  if (process.env.DOCKER_HOST) return true;
  return existsSync('/var/run/docker.sock') && (await execa('docker', ['info'], { reject: false }).catch(() => ({ exitCode: 1 }))).exitCode === 0;
}

export type ApiserverChoice = { ok: true; start: () => Promise<Apiserver>; kind: Apiserver['kind'] } | { ok: false; reason: string };

export async function findApiserver(): Promise<ApiserverChoice> {
  const ext = process.env.KPX_TEST_KUBECONFIG;
  if (ext) {
    return {
      ok: true,
      kind: 'external',
      start: async () => {
        const kc = new KubeConfig();
        kc.loadFromFile(ext);
        return new ExternalApiserver('external', kc);
      },
    };
  }
  if (existsSync(TEST_APISERVER_BIN)) {
    return {
      ok: true,
      kind: 'built',
      start: async () => {
        const a = new BuiltApiserver(await mkdtemp(join(tmpdir(), 'kpx-apiserver-')));
        await a.start();
        return a;
      },
    };
  }
  if (await dockerReachable()) {
    return {
      ok: true,
      kind: 'k3s',
      start: async () => {
        const { K3sContainer } = await import('@testcontainers/k3s');
        const c = await new K3sContainer('rancher/k3s:v1.33.4-k3s1').start();
        const kc = new KubeConfig();
        kc.loadFromString(c.getKubeConfig());
        return new ExternalApiserver('k3s', kc, async () => void (await c.stop()));
      },
    };
  }
  return {
    ok: false,
    reason: `no apiserver: set KPX_TEST_KUBECONFIG, or build the test apiserver (hack/test-apiserver/build.sh, which hack/test.sh runs) at ${TEST_APISERVER_BIN}, or provide a Docker engine for k3s`,
  };
}

/**
 * Applies the ServiceAccount and RBAC exactly as shipped in manifests/ (existing objects are
 * kept) and returns a token of that ServiceAccount: kpx then runs with what the DaemonSet gets.
 */
export async function kpxServiceAccountToken(admin: KubeConfig, repo: string, expirationSeconds: number): Promise<string> {
  const objects = KubernetesObjectApi.makeApiClient(admin);
  let sa: { name: string; namespace: string } | null = null;
  for (const f of (await readdir(join(repo, 'manifests'))).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')) {
    for (const doc of parseAllDocuments(await readFile(join(repo, 'manifests', f), 'utf8'))) {
      const o = doc.toJS() as KubernetesObject | null;
      if (!o || !['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind ?? '')) continue;
      o.metadata!.namespace ??= o.kind === 'ServiceAccount' ? 'kube-system' : undefined;
      if (o.kind === 'ServiceAccount') sa = { name: o.metadata!.name!, namespace: o.metadata!.namespace! };
      await objects.create(o).catch((err: { code?: number }) => {
        if (err.code !== 409) throw err;
      });
    }
  }
  if (!sa) throw new Error('manifests/ has no ServiceAccount');
  const tr = await admin.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({ name: sa.name, namespace: sa.namespace, body: { spec: { audiences: [], expirationSeconds } } });
  return tr.status!.token;
}

/** Replaces an EndpointSlice, or creates it when there is none yet (a 404). */
export async function putEndpointSlice(disc: DiscoveryV1Api, namespace: string, body: { metadata: { name: string } }): Promise<void> {
  try {
    await disc.replaceNamespacedEndpointSlice({ name: body.metadata.name, namespace, body: body as never });
  } catch (err) {
    if ((err as { code?: number }).code !== 404) throw err;
    await disc.createNamespacedEndpointSlice({ namespace, body: body as never });
  }
}
