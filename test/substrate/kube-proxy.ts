// Upstream kube-proxy (built by hack/kube-proxy/build.sh from the k8s.io/kubernetes module)
// as an oracle for tests and scale runs: it runs inside a test's node namespace against
// the test apiserver, with a configuration that keeps it from touching anything outside
// that namespace (hack/kube-proxy/README.md says why each setting is there).
//
//   const bin = await findKubeProxy();            // KPX_KUBE_PROXY_BIN, or build.sh
//   const kp = await startKubeProxy({ bin: bin.path, netns: t.node, apiserver: api,
//     mode: 'nftables', node: { name: 'node-a', internalIP: NET.nodeIP, podCIDR: NET.podCIDR } });
//   await kp.metrics();  ...  await kp.stop();
//
// The apiserver listens on 127.0.0.1 in the root namespace, which a namespace cannot
// reach; the helper carries kube-proxy's connections over a Unix socket (a forwarder
// here, unix-bridge.mjs in the namespace), as the API-source tests do for kpx.
import { execa, type ResultPromise } from 'execa';
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { access, constants, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { CoreV1Api, RbacAuthorizationV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { Apiserver } from './apiserver.js';
import { FaultProxy } from './fault-proxy.js';
import { NET, REPO } from './netns.js';

export type KubeProxyMode = 'iptables' | 'nftables' | 'ipvs';

export const KUBE_PROXY_BUILD = join(REPO, 'hack/kube-proxy/build.sh');
const UNIX_BRIDGE = join(REPO, 'test/substrate/unix-bridge.mjs');

export type KubeProxyBinary = { ok: true; path: string; version: string } | { ok: false; reason: string };

let binary: Promise<KubeProxyBinary> | null = null;

/**
 * The kube-proxy binary: KPX_KUBE_PROXY_BIN when set, else whatever hack/kube-proxy/build.sh
 * prints (it builds only when its sources changed; a first build takes minutes, its
 * progress goes to stderr). Never throws: when there is no binary, says why.
 */
export function findKubeProxy(): Promise<KubeProxyBinary> {
  binary ??= locate();
  return binary;
}

async function locate(): Promise<KubeProxyBinary> {
  let path = process.env.KPX_KUBE_PROXY_BIN;
  if (path) {
    try {
      await access(path, constants.X_OK);
    } catch {
      return { ok: false, reason: `KPX_KUBE_PROXY_BIN=${path} is not an executable file` };
    }
  } else {
    const r = await execa('bash', [KUBE_PROXY_BUILD], { reject: false, stderr: ['pipe', 'inherit'], stdin: 'ignore' });
    if (r.exitCode !== 0) {
      const why = String(r.stderr).trim().split('\n').slice(-3).join(' / ') || `exit ${r.exitCode}`;
      return { ok: false, reason: `cannot build kube-proxy (hack/kube-proxy/build.sh: ${why}); needs Go or network access to proxy.golang.org` };
    }
    path = String(r.stdout).trim().split('\n').at(-1)!;
  }
  const v = await execa(path, ['--version'], { reject: false });
  if (v.exitCode !== 0) return { ok: false, reason: `${path} --version failed: ${v.stderr}` };
  return { ok: true, path, version: String(v.stdout).trim() };
}

export interface KubeProxyConfigOptions {
  mode: KubeProxyMode;
  /** the Node kube-proxy serves (hostnameOverride) */
  nodeName: string;
  /** kubeconfig path as kube-proxy will read it */
  kubeconfig: string;
  /** clusterCIDR: pod CIDR(s), "v4" or "v4,v6"; traffic from outside it is masqueraded */
  clusterCIDR?: string;
  /** default 127.0.0.1:10249, inside the namespace */
  metricsBindAddress?: string;
  /** default 127.0.0.1:10256, inside the namespace */
  healthzBindAddress?: string;
  /** default ["primary"]: NodePorts on the Node's InternalIP only */
  nodePortAddresses?: string[];
  /** the backend's syncPeriod and minSyncPeriod (kube-proxy's defaults: 30s and 1s) */
  syncPeriod?: string;
  minSyncPeriod?: string;
  /** klog verbosity (logging.verbosity) */
  verbosity?: number;
  /** the process's oom_score_adj; default: this process's own, so nothing changes */
  oomScoreAdj?: number;
  /** merged over the generated configuration last (objects merge key by key) */
  overrides?: Record<string, unknown>;
}

/**
 * What every namespaced run gets, besides the bind addresses, oomScoreAdj and the
 * modprobe shim (hack/kube-proxy/README.md has the whole list, with measurements):
 * - conntrack values that mean "leave the kernel as it is". With maxPerCore > 0
 *   kube-proxy writes net.netfilter.nf_conntrack_max, read-only outside the initial
 *   namespace (it exits), and where that works it may raise the machine-wide
 *   /sys/module/nf_conntrack/parameters/hashsize. The TCP/UDP timeouts are per namespace
 *   on this kernel; 0 keeps the namespace at kernel defaults, as kpx sees it;
 * - bindAddressHardFail: a metrics or healthz port that cannot be bound ends the process
 *   instead of being retried quietly.
 */
export const NAMESPACE_SAFE = {
  conntrack: {
    maxPerCore: 0,
    min: 0,
    tcpEstablishedTimeout: '0s',
    tcpCloseWaitTimeout: '0s',
    tcpBeLiberal: false,
    udpTimeout: '0s',
    udpStreamTimeout: '0s',
  },
  bindAddressHardFail: true,
} as const;

async function ownOomScoreAdj(): Promise<number> {
  return Number((await readFile('/proc/self/oom_score_adj', 'utf8')).trim());
}

function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? merge(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) for a node namespace. */
export async function kubeProxyConfiguration(o: KubeProxyConfigOptions): Promise<Record<string, unknown>> {
  const sync = { syncPeriod: o.syncPeriod ?? '30s', minSyncPeriod: o.minSyncPeriod ?? '1s' };
  const cfg: Record<string, unknown> = {
    apiVersion: 'kubeproxy.config.k8s.io/v1alpha1',
    kind: 'KubeProxyConfiguration',
    mode: o.mode,
    hostnameOverride: o.nodeName,
    clientConnection: { kubeconfig: o.kubeconfig },
    clusterCIDR: o.clusterCIDR ?? '',
    detectLocalMode: 'ClusterCIDR',
    metricsBindAddress: o.metricsBindAddress ?? '127.0.0.1:10249',
    healthzBindAddress: o.healthzBindAddress ?? '127.0.0.1:10256',
    nodePortAddresses: o.nodePortAddresses ?? ['primary'],
    oomScoreAdj: o.oomScoreAdj ?? (await ownOomScoreAdj()),
    ...NAMESPACE_SAFE,
    conntrack: { ...NAMESPACE_SAFE.conntrack },
    logging: { verbosity: o.verbosity ?? 2 },
    [o.mode]: sync,
  };
  return o.overrides ? merge(cfg, o.overrides) : cfg;
}

/**
 * A token for kube-proxy's identity as kubeadm sets it up: ServiceAccount
 * kube-system/kube-proxy bound to the built-in ClusterRole system:node-proxier, so a
 * permission kube-proxy lacks on a real cluster fails here too.
 */
export async function nodeProxierToken(admin: KubeConfig): Promise<string> {
  const core = admin.makeApiClient(CoreV1Api);
  const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
  const exists = (err: unknown) => {
    if ((err as { code?: number }).code !== 409) throw err;
  };
  await core.createNamespacedServiceAccount({ namespace: 'kube-system', body: { metadata: { name: 'kube-proxy' } } }).catch(exists);
  await rbac
    .createClusterRoleBinding({
      body: {
        metadata: { name: 'kubeadm:node-proxier' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'system:node-proxier' },
        subjects: [{ kind: 'ServiceAccount', name: 'kube-proxy', namespace: 'kube-system' }],
      },
    })
    .catch(exists);
  const tr = await core.createNamespacedServiceAccountToken({ name: 'kube-proxy', namespace: 'kube-system', body: { spec: { audiences: [], expirationSeconds: 86400 } } });
  return tr.status!.token;
}

export interface NodeSpec {
  name: string;
  /** status.addresses InternalIP(s): kube-proxy's node IPs (without one it waits 30 s, then assumes 127.0.0.1) */
  internalIP: string | string[];
  podCIDR?: string | string[];
  /** metadata.labels when the Node is created (e.g. topology.kubernetes.io/zone) */
  labels?: Record<string, string>;
}

/** Creates the Node (or updates it) with its pod CIDRs and InternalIP addresses. */
export async function ensureNode(admin: KubeConfig, n: NodeSpec): Promise<void> {
  const core = admin.makeApiClient(CoreV1Api);
  const cidrs = n.podCIDR === undefined ? [] : [n.podCIDR].flat();
  const spec = cidrs.length ? { podCIDR: cidrs[0], podCIDRs: cidrs } : {};
  await core.createNode({ body: { metadata: { name: n.name, labels: n.labels }, spec } }).catch((err: { code?: number }) => {
    if (err.code !== 409) throw err;
  });
  const node = await core.readNode({ name: n.name });
  node.status = { ...node.status, addresses: [n.internalIP].flat().map((address) => ({ type: 'InternalIP', address })) };
  await core.replaceNodeStatus({ name: n.name, body: node });
}

export interface StartOptions extends Omit<KubeProxyConfigOptions, 'kubeconfig' | 'nodeName'> {
  bin: string;
  /** network namespace to run in (a test's node namespace) */
  netns: string;
  apiserver: Apiserver;
  /** the Node object, created or updated before kube-proxy starts */
  node: NodeSpec;
  /** port the apiserver bridge listens on inside the namespace (127.0.0.1) */
  bridgePort?: number;
  /** working directory for config, kubeconfig and log; default a fresh temp dir, removed by stop() */
  dir?: string;
  /** wait for the first sync (metrics say so); default true */
  waitForSync?: boolean;
  timeoutMs?: number;
  /**
   * A file path: while that file exists, every command that programs rules (the
   * iptables/ip6tables restore commands, `nft -f`) waits before it runs, so a sync stalls
   * until the file is removed. Both proxies run their commands from PATH, and the shims
   * come first on it (like the modprobe shim); reads (saves, `nft list`) are not held.
   */
  commandGate?: string;
}

/** The commands a commandGate holds; `nft` only when it is given a file (`-f`). */
const GATED_COMMANDS = [
  ...['iptables', 'ip6tables'].flatMap((c) => [`${c}-restore`, `${c}-nft-restore`, `${c}-legacy-restore`]),
  'nft',
];

/** Writes the gate shims into dir: each runs the real command once the gate file is gone. */
async function writeGateShims(dir: string, gate: string): Promise<void> {
  for (const cmd of GATED_COMMANDS) {
    const r = await execa('sh', ['-c', `command -v ${cmd}`], { reject: false });
    const real = String(r.stdout).trim();
    if (r.exitCode !== 0 || !real) continue;
    const held = cmd === 'nft' ? 'case " $* " in *" -f "*) hold=1;; *) hold=0;; esac' : 'hold=1';
    await writeFile(
      join(dir, cmd),
      `#!/bin/sh
${held}
if [ "$hold" = 1 ]; then while [ -e ${JSON.stringify(gate)} ]; do sleep 0.1; done; fi
exec ${JSON.stringify(real)} "$@"
`,
      { mode: 0o755 },
    );
  }
}

export interface KubeProxyHandle {
  readonly pid: number;
  /** epoch ms just before the kube-proxy process was spawned (after config, token and the apiserver bridge) */
  readonly startedAt: number;
  readonly mode: KubeProxyMode;
  readonly netns: string;
  /** reachable from inside netns only */
  readonly metricsURL: string;
  readonly healthzURL: string;
  readonly configFile: string;
  readonly kubeconfigFile: string;
  readonly logFile: string;
  /** resolves when the process ends (also after stop()) */
  readonly exited: Promise<{ exitCode?: number; signal?: string }>;
  /** GET a URL from inside the namespace; status 0 when it cannot connect */
  get(url: string): Promise<{ status: number; body: string }>;
  /** the /metrics text */
  metrics(): Promise<string>;
  /** waits until a sync has completed after `afterSeconds` (unix time; default: any sync) */
  waitForSync(afterSeconds?: number, timeoutMs?: number): Promise<number>;
  /** the last lines kube-proxy logged */
  logTail(): string;
  /** commands kube-proxy ran that the helper refused (modprobe), one string each */
  refused(): Promise<string[]>;
  stop(): Promise<void>;
}

/** Value of an unlabelled sample (or the first sample of that name) in Prometheus text. */
export function metricValue(text: string, name: string): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

/** Starts kube-proxy inside opts.netns; resolves once it has synced (unless waitForSync is false). */
export async function startKubeProxy(opts: StartOptions): Promise<KubeProxyHandle> {
  const ownDir = !opts.dir;
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), `kpx-kube-proxy-${opts.mode}-`)));
  const bridgePort = opts.bridgePort ?? 16444;
  const procs: ResultPromise[] = [];
  let forwarder: FaultProxy | null = null;
  let log: WriteStream | null = null;
  let tail = '';
  const cleanup = async () => {
    for (const p of procs) p.kill('SIGTERM');
    await Promise.allSettled(procs.map((p) => Promise.race([p, sleep(5000)])));
    for (const p of procs) p.kill('SIGKILL');
    await Promise.allSettled(procs);
    await forwarder?.stop();
    await new Promise<void>((r) => (log ? log.end(r) : r()));
    if (ownDir) await rm(dir, { recursive: true, force: true });
  };

  try {
    await ensureNode(opts.apiserver.admin, opts.node);
    const token = await nodeProxierToken(opts.apiserver.admin);

    forwarder = new FaultProxy(join(dir, 'apiserver.sock'), opts.apiserver.target());
    await forwarder.start();
    const bridge = execa('ip', ['netns', 'exec', opts.netns, process.execPath, UNIX_BRIDGE, '127.0.0.1', String(bridgePort), forwarder.socketPath], {
      reject: false,
      buffer: false,
      stdin: 'ignore',
    });
    procs.push(bridge);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the apiserver bridge did not start in 10 s')), 10_000);
      bridge.stdout.on('data', (d: Buffer) => {
        if (d.toString().includes('READY')) {
          clearTimeout(timer);
          resolve();
        }
      });
      void bridge.then((r) => {
        clearTimeout(timer);
        reject(new Error(`the apiserver bridge exited ${r.exitCode}: ${String(r.stderr ?? '')}`));
      });
    });

    const kubeconfigFile = join(dir, 'kubeconfig.conf');
    await writeFile(
      kubeconfigFile,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'default', cluster: { server: `https://127.0.0.1:${bridgePort}`, 'certificate-authority-data': Buffer.from(await opts.apiserver.caPem()).toString('base64') } }],
        users: [{ name: 'kube-proxy', user: { token } }],
        contexts: [{ name: 'default', context: { cluster: 'default', user: 'kube-proxy' } }],
        'current-context': 'default',
      }),
      { mode: 0o600 },
    );
    const config = await kubeProxyConfiguration({ ...opts, nodeName: opts.node.name, kubeconfig: kubeconfigFile });
    const configFile = join(dir, 'config.conf');
    await writeFile(configFile, stringify(config));
    const metricsURL = `http://${String(config.metricsBindAddress)}/metrics`;
    const healthzURL = `http://${String(config.healthzBindAddress)}/healthz`;

    // kube-proxy runs `modprobe -va ip_vs` (nftables mode's cleanup of IPVS leftovers,
    // and ipvs mode itself): a module would be loaded for the whole machine. A modprobe
    // that refuses comes first on its PATH; kube-proxy then behaves as where modprobe is
    // missing. Refused commands are recorded.
    const shimDir = join(dir, 'bin');
    const refusedLog = join(dir, 'refused.log');
    await mkdir(shimDir, { recursive: true });
    await writeFile(refusedLog, '');
    await writeFile(
      join(shimDir, 'modprobe'),
      '#!/bin/sh\necho "modprobe $*" >>"$KPX_REFUSED_LOG"\necho "modprobe: refused inside a kpx test namespace (kernel modules are machine-wide)" >&2\nexit 1\n',
      { mode: 0o755 },
    );
    if (opts.commandGate) await writeGateShims(shimDir, opts.commandGate);

    const logFile = join(dir, 'kube-proxy.log');
    log = createWriteStream(logFile);
    const startedAt = Date.now();
    const proc = execa('ip', ['netns', 'exec', opts.netns, opts.bin, '--config', configFile], {
      reject: false,
      buffer: false,
      stdin: 'ignore',
      stdout: 'ignore',
      env: { PATH: `${shimDir}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`, KPX_REFUSED_LOG: refusedLog },
    });
    procs.push(proc);
    proc.stderr.on('data', (d: Buffer) => {
      log!.write(d);
      tail = (tail + d.toString()).slice(-8000);
    });
    let done = false;
    const exited = proc.then((r) => {
      done = true;
      return { exitCode: r.exitCode, signal: r.signal };
    });

    const get = async (url: string) => {
      const r = await execa('ip', ['netns', 'exec', opts.netns, 'curl', '-sS', '--max-time', '5', '-o', '-', '-w', '\n%{http_code}', url], { reject: false });
      const out = String(r.stdout);
      const i = out.lastIndexOf('\n');
      return { status: r.exitCode === 0 ? Number(out.slice(i + 1)) : 0, body: i < 0 ? '' : out.slice(0, i) };
    };
    const waitForSync = async (afterSeconds = 0, timeoutMs = opts.timeoutMs ?? 60_000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        if (done) throw new Error(`kube-proxy (${opts.mode}) exited ${JSON.stringify(await exited)}; its log ends:\n${tail}`);
        const r = await get(metricsURL);
        const last = r.status === 200 ? metricValue(r.body, 'kubeproxy_sync_proxy_rules_last_timestamp_seconds') : undefined;
        if (last !== undefined && last > afterSeconds) return last;
        if (Date.now() > end) throw new Error(`kube-proxy (${opts.mode}) did not sync within ${timeoutMs} ms; its log ends:\n${tail}`);
        await sleep(200);
      }
    };
    const handle: KubeProxyHandle = {
      pid: proc.pid!,
      startedAt,
      mode: opts.mode,
      netns: opts.netns,
      metricsURL,
      healthzURL,
      configFile,
      kubeconfigFile,
      logFile,
      exited,
      get,
      metrics: async () => {
        const r = await get(metricsURL);
        if (r.status !== 200) throw new Error(`GET ${metricsURL} in ${opts.netns}: status ${r.status}`);
        return r.body;
      },
      waitForSync,
      logTail: () => tail,
      refused: async () => (await readFile(refusedLog, 'utf8').catch(() => '')).split('\n').filter(Boolean),
      stop: cleanup,
    };
    if (opts.waitForSync ?? true) await waitForSync();
    return handle;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * Runs `kube-proxy [--config FILE] ARGS --write-config-to OUT` (in cwd; no namespace or
 * root needed: it exits before touching the kernel) and returns OUT's text.
 */
export async function writeConfigTo(bin: string, args: string[], config?: Record<string, unknown>, cwd?: string): Promise<{ text: string; stderr: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'kpx-kube-proxy-config-'));
  try {
    const argv = [...args];
    if (config) {
      await writeFile(join(dir, 'in.yaml'), stringify(config));
      argv.unshift('--config', join(dir, 'in.yaml'));
    }
    const out = join(dir, 'out.yaml');
    const r = await execa(bin, [...argv, '--write-config-to', out], { reject: false, cwd });
    if (r.exitCode !== 0 || !existsSync(out)) throw new Error(`kube-proxy --write-config-to exited ${r.exitCode}: ${r.stderr}`);
    return { text: await readFile(out, 'utf8'), stderr: String(r.stderr) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export const FIXTURES_DIR = join(REPO, 'test/fixtures/kube-proxy-config');

/** Inputs of the committed --write-config-to fixtures (test/fixtures/kube-proxy-config). */
export function configFixtureCases(): Array<{ name: string; args: string[]; config?: KubeProxyConfigOptions }> {
  // paths in args are relative to FIXTURES_DIR (kube-proxy runs there)
  const kubeconfig = '/var/lib/kube-proxy/kubeconfig.conf';
  const modes: KubeProxyMode[] = ['iptables', 'nftables', 'ipvs'];
  return [
    { name: 'defaults', args: [] },
    ...modes.map((mode) => ({
      name: `flags-${mode}`,
      args: [
        `--proxy-mode=${mode}`,
        '--hostname-override=node-a',
        `--cluster-cidr=${NET.podCIDR}`,
        `--kubeconfig=${kubeconfig}`,
        '--conntrack-max-per-core=0',
        '--conntrack-tcp-timeout-established=0',
        '--conntrack-tcp-timeout-close-wait=0',
        '--metrics-bind-address=127.0.0.1:10249',
        '--healthz-bind-address=127.0.0.1:10256',
        '--nodeport-addresses=primary',
        '--oom-score-adj=0',
      ],
    })),
    ...modes.map((mode) => ({
      name: `config-${mode}`,
      args: [],
      config: { mode, nodeName: 'node-a', kubeconfig, clusterCIDR: NET.podCIDR, oomScoreAdj: 0 },
    })),
    // what kube-proxy makes of the ConfigMap kubeadm writes (hack/kube-proxy/kubeadm-fixtures.sh)
    { name: 'effective-kubeadm', args: ['--config=kubeadm-config.conf'] },
  ];
}

/**
 * The fixture files: for each case NAME.args (one argument a line), NAME.input.yaml (the
 * --config given, if any) and NAME.yaml (what kube-proxy wrote). Also checks that
 * kube-proxy decoded each --config strictly (no unknown or misplaced field).
 */
export async function renderConfigFixtures(bin: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const c of configFixtureCases()) {
    const config = c.config ? await kubeProxyConfiguration(c.config) : undefined;
    const r = await writeConfigTo(bin, c.args, config, FIXTURES_DIR);
    if (/lenient decoding/i.test(r.stderr)) throw new Error(`${c.name}: kube-proxy fell back to lenient decoding: ${r.stderr}`);
    files.set(`${c.name}.args`, c.args.map((a) => `${a}\n`).join(''));
    if (config) files.set(`${c.name}.input.yaml`, stringify(config));
    files.set(`${c.name}.yaml`, r.text);
  }
  return files;
}

/**
 * The machine-wide state kube-proxy must leave alone, read from the root namespace
 * (reads only): its nftables ruleset and iptables tables (both backends; save output
 * without its timestamp comments), the conntrack and routing sysctls kube-proxy knows,
 * the conntrack hash size, and the kernel modules loaded.
 */
export async function rootNamespaceState(): Promise<Record<string, string>> {
  const read = (p: string) => readFile(p, 'utf8').then((s) => s.trim(), (e: Error) => `(${e.message})`);
  const run = async (cmd: string, args: string[] = []) => {
    const r = await execa(cmd, args, { reject: false });
    return r.exitCode === 0 ? String(r.stdout).replace(/^# .*$/gm, '') : `(exit ${r.exitCode}: ${String(r.stderr).trim()})`;
  };
  const state: Record<string, string> = {
    'nft list ruleset': await run('nft', ['list', 'ruleset']),
    // legacy *-save lists only the tables /proc/net/ip*_tables_names names: reading creates none
    'iptables-nft-save': await run('iptables-nft-save'),
    'ip6tables-nft-save': await run('ip6tables-nft-save'),
    'iptables-legacy-save': await run('iptables-legacy-save'),
    'ip6tables-legacy-save': await run('ip6tables-legacy-save'),
    '/proc/net/ip_tables_names': await read('/proc/net/ip_tables_names'),
    '/proc/net/ip6_tables_names': await read('/proc/net/ip6_tables_names'),
    '/sys/module/nf_conntrack/parameters/hashsize': await read('/sys/module/nf_conntrack/parameters/hashsize'),
    // names only (use counts and addresses change); absent on a kernel without modules
    '/proc/modules': existsSync('/proc/modules') ? (await read('/proc/modules')).split('\n').map((l) => l.split(' ')[0]).sort().join(' ') : '(no module support)',
  };
  for (const k of [
    'net/netfilter/nf_conntrack_max',
    'net/netfilter/nf_conntrack_tcp_timeout_established',
    'net/netfilter/nf_conntrack_tcp_timeout_close_wait',
    'net/netfilter/nf_conntrack_tcp_be_liberal',
    'net/netfilter/nf_conntrack_udp_timeout',
    'net/netfilter/nf_conntrack_udp_timeout_stream',
    'net/ipv4/conf/all/route_localnet',
    'net/ipv4/ip_forward',
    'net/bridge/bridge-nf-call-iptables',
  ]) {
    state[k] = await read(`/proc/sys/${k}`);
  }
  return state;
}
