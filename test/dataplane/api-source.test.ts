// kpx against a real kube-apiserver: kpx runs in a node namespace with a service-account
// token bound by manifests/ RBAC, reaches the apiserver through a fault-injecting proxy,
// and is judged by real packets and by comparing its model with the apiserver's state.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { appendFile, mkdir, readdir, readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { execa } from 'execa';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { CoreV1Api, DiscoveryV1Api, KubernetesObjectApi, type KubernetesObject } from '@kubernetes/client-node';
import { KPX_BIN, NET, REPO, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, service } from '../substrate/manifests.js';
import { findApiserver, putEndpointSlice, kpxServiceAccountToken, type Apiserver } from '../substrate/apiserver.js';
import { FaultProxy } from '../substrate/fault-proxy.js';
import { PROXYABLE_SELECTOR } from '../../src/source/kube/api-source.js';

const env = await dataplaneEnv();
const choice = await findApiserver();
const skip = !env.ok ? env.reason : !choice.ok ? choice.reason : '';

const NS = `kpx-e2e-${process.pid}`;
const NODE = 'node-a';
const BULK = Number(process.env.KPX_TEST_BULK_SERVICES ?? 5000);
const P = { a: '198.18.1.11', b: '198.18.1.12', c: '198.18.1.13', client: '198.18.1.50' };
// static band of 198.19.0.0/16 (the allocator hands out dynamic IPs from above it)
const WEB = '198.19.0.20';
const X = '198.19.0.21';
const Y = '198.19.0.22';
const BRIDGE_PORT = 16443;
const IDLE_S = 4;

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

describe.skipIf(!!skip)(`the Kubernetes API source against a real apiserver${skip ? ` — skipped: ${skip}` : ''}`, () => {
  let api: Apiserver;
  let t: Topology;
  let proxy: FaultProxy;
  let core: CoreV1Api;
  let disc: DiscoveryV1Api;
  let kpx: ReturnType<Topology['spawnKpx']>;
  let tmp: string;
  const logs: Array<Record<string, unknown>> = [];
  const seen: Array<{ ts: number; what: string }> = [];
  const report: string[] = [];

  const waitFor = async <T>(what: string, cond: () => Promise<T | undefined | false> | T | undefined | false, ms: number): Promise<T> => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await cond();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
      await sleep(50);
    }
  };
  /** the first probe answer at or after `since` that satisfies pred */
  const answered = (since: number, pred: (what: string) => boolean, ms: number, what: string) =>
    waitFor(what, () => seen.find((s) => s.ts >= since && pred(s.what)), ms);

  const metrics = async () => (await t.httpGet('node', 'http://127.0.0.1:10249/metrics')).body;
  const metric = (text: string, name: string, labels: string): number => {
    const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
    return line ? Number(line.split(' ').at(-1)) : 0;
  };

  const putSlice = async (svc: string, ips: string[]) => {
    const body = endpointSlice({
      service: svc,
      namespace: NS,
      ports: [{ name: 'http', port: 8080 }],
      endpoints: ips.map((ip) => ({ ip, node: NODE })),
      annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': new Date().toISOString() },
    }) as { metadata: { name: string } };
    await putEndpointSlice(disc, NS, body);
  };
  const createService = (name: string, clusterIP?: string) => {
    const body = service({ name, namespace: NS, clusterIP: clusterIP ?? 'none', ports: [{ name: 'http', port: 80, targetPort: 8080 }] }) as {
      spec: Record<string, unknown>;
    };
    if (!clusterIP) {
      // let the apiserver allocate
      delete body.spec.clusterIP;
      delete body.spec.clusterIPs;
    }
    return core.createNamespacedService({ namespace: NS, body: body });
  };

  /** What the apiserver has (with kpx's selectors): kind -> key -> resourceVersion. */
  const apiState = async () => {
    const svcs: Record<string, string> = {};
    let cont: string | undefined;
    do {
      const l = await core.listServiceForAllNamespaces({ labelSelector: PROXYABLE_SELECTOR, limit: 1000, _continue: cont });
      for (const s of l.items) svcs[`${s.metadata!.namespace}/${s.metadata!.name}`] = s.metadata!.resourceVersion!;
      cont = l.metadata?._continue;
    } while (cont);
    const slices: Record<string, string> = {};
    for (const s of (await disc.listEndpointSliceForAllNamespaces({ labelSelector: PROXYABLE_SELECTOR })).items) {
      slices[`${s.metadata!.namespace}/${s.metadata!.name}`] = s.metadata!.resourceVersion!;
    }
    const node = await core.readNode({ name: NODE });
    return { Service: svcs, EndpointSlice: slices, Node: { [NODE]: node.metadata!.resourceVersion! } };
  };
  const kpxInventory = async () => JSON.parse((await t.httpGet('node', 'http://127.0.0.1:10249/debug/inventory')).body) as Awaited<ReturnType<typeof apiState>>;
  /** keys whose resourceVersion differs (lost or stale updates) or that exist on one side only */
  const diff = (a: Record<string, Record<string, string>>, b: Record<string, Record<string, string>>) => {
    const out: string[] = [];
    for (const kind of ['Service', 'EndpointSlice', 'Node']) {
      const x = a[kind] ?? {};
      const y = b[kind] ?? {};
      for (const k of new Set([...Object.keys(x), ...Object.keys(y)])) if (x[k] !== y[k]) out.push(`${kind} ${k}: api=${x[k]} kpx=${y[k]}`);
    }
    return out;
  };

  beforeAll(async () => {
    if (!choice.ok) return;
    tmp = await mkdtemp(join(tmpdir(), 'kpx-api-test-'));
    api = await choice.start();
    core = api.admin.makeApiClient(CoreV1Api);
    disc = api.admin.makeApiClient(DiscoveryV1Api);

    // RBAC exactly as shipped in manifests/: kpx runs with that service account's token
    const token = await kpxServiceAccountToken(api.admin, REPO, 3600);

    await core.createNamespace({ body: { metadata: { name: NS } } });
    await core.createNode({ body: { metadata: { name: NODE }, spec: { podCIDRs: [NET.podCIDR], podCIDR: NET.podCIDR } } });
    const n = await core.readNode({ name: NODE });
    n.status = { addresses: [{ type: 'InternalIP', address: NET.nodeIP }] };
    await core.replaceNodeStatus({ name: NODE, body: n });

    // the startup population, listed through paging before kpx's first sync
    const t0 = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < BULK) {
          const i = next++;
          await createService(`bulk-${i}`);
        }
      }),
    );
    report.push(`created ${BULK} services in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [8080] },
        { name: 'b', ip: P.b, ports: [8080] },
        { name: 'c', ip: P.c, ports: [8080] },
        { name: 'client', ip: P.client },
      ],
    });
    proxy = new FaultProxy(join(tmp, 'apiserver.sock'), api.target());
    await proxy.start();
    void t.spawn('node', process.execPath, [join(REPO, 'test/substrate/unix-bridge.mjs'), '127.0.0.1', String(BRIDGE_PORT), proxy.socketPath]);
    // as kubeadm's kube-proxy kubeconfig.conf: the token from a file (relative to the kubeconfig here)
    const kubeconfig = join(tmp, 'kpx.kubeconfig');
    await mkdir(join(tmp, 'sa'));
    await writeFile(join(tmp, 'sa/token'), `${token}\n`);
    await writeFile(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'test', cluster: { server: `https://127.0.0.1:${BRIDGE_PORT}`, 'certificate-authority-data': Buffer.from(await api.caPem()).toString('base64') } }],
        users: [{ name: 'kpx', user: { tokenFile: 'sa/token' } }],
        contexts: [{ name: 'kpx', context: { cluster: 'test', user: 'kpx' } }],
        'current-context': 'kpx',
      }),
    );
    await sleep(300); // the bridge listens
    kpx = t.spawnKpx([
      '--kubeconfig', kubeconfig, '--hostname-override', NODE, '--cluster-cidr', NET.podCIDR,
      '--iptables-min-sync-period', '100ms', '--iptables-sync-period', '10s',
      '--api-watch-idle-timeout', `${IDLE_S}s`, '--healthz-bind-address', '127.0.0.1:10256',
    ]);
    let buf = '';
    // pino writes to stderr (stdout is kept for --dry-run output)
    kpx.stderr!.on('data', (d: Buffer) => {
      if (process.env.KPX_TEST_LOG_FILE) void appendFile(process.env.KPX_TEST_LOG_FILE, d);
      buf += d.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) {
        try {
          logs.push(JSON.parse(l) as Record<string, unknown>);
        } catch {
          /* not a log line */
        }
      }
    });
    // a client that connects to the web ClusterIP every few ms, for the whole file
    const follow = t.spawn('client', process.execPath, [join(REPO, 'test/substrate/probe.mjs'), 'tcp', WEB, '80', '--follow', '--interval', '5', '--timeout', '300']);
    let fbuf = '';
    follow.stdout!.on('data', (d: Buffer) => {
      fbuf += d.toString();
      const lines = fbuf.split('\n');
      fbuf = lines.pop()!;
      for (const l of lines) {
        const [ts, what] = l.split(' ');
        seen.push({ ts: Number(ts), what: what ?? '' });
        if (seen.length > 200_000) seen.splice(0, 100_000);
      }
    });
  }, 900_000);

  afterAll(async () => {
    if (report.length) console.log(`api-source report (${choice.ok ? choice.kind : '-'} apiserver):\n  ${report.join('\n  ')}`);
    await t?.destroy();
    await proxy?.stop();
    await api?.destroy();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }, 120_000);

  it('the shipped manifests pass the apiserver\'s validation (server-side dry run)', async () => {
    const objects = KubernetesObjectApi.makeApiClient(api.admin);
    const checked: string[] = [];
    for (const f of (await readdir(join(REPO, 'manifests'))).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')) {
      for (const doc of parseAllDocuments(await readFile(join(REPO, 'manifests', f), 'utf8'))) {
        const o = doc.toJS() as KubernetesObject | null;
        if (!o?.kind) continue;
        if (o.kind !== 'Namespace' && !['ClusterRole', 'ClusterRoleBinding'].includes(o.kind)) o.metadata!.namespace ??= 'kube-system';
        // dry run: validated and defaulted by the apiserver, not stored (existing RBAC objects are replaced)
        const exists = await objects.read(o as never).then(() => true, () => false);
        await (exists ? objects.replace(o, undefined, 'All') : objects.create(o, undefined, 'All'));
        checked.push(`${o.kind}/${o.metadata!.name}`);
      }
    }
    expect(checked).toEqual(expect.arrayContaining([expect.stringMatching(/^ServiceAccount\//), expect.stringMatching(/^ClusterRole\//)]));
    report.push(`manifests validated by the apiserver: ${checked.join(', ')}`);
  });

  it('lists everything through paging before the first sync, with nothing forbidden', async () => {
    const first = await waitFor('the first sync', () => logs.find((l) => l.msg === 'sync'), 300_000);
    const ready = logs.findIndex((l) => l.msg === 'initial state complete');
    expect(ready).toBeGreaterThanOrEqual(0);
    expect(ready).toBeLessThan(logs.indexOf(first));
    expect(logs[ready]!.services).toBeGreaterThanOrEqual(BULK);
    expect(first.servicePorts).toBeGreaterThanOrEqual(BULK);
    const listed = logs.find((l) => l.msg === 'listed' && l.kind === 'Service')!;
    expect(listed.pages).toBeGreaterThanOrEqual(Math.ceil(BULK / 500));
    // the timestamp left out: "07:16:20.403Z" is no refusal
    expect(logs.filter((l) => /forbidden|\b403\b/i.test(JSON.stringify({ ...l, time: undefined })))).toEqual([]);
    report.push(`startup: ${String(listed.objects)} services in ${String(listed.pages)} pages (${String(listed.ms)} ms); first sync wrote ${String(first.rulesWritten)} rules`);
  }, 320_000);

  it('authenticates with a client certificate (files relative to the kubeconfig); without it the apiserver refuses', async () => {
    const user = api.admin.getCurrentUser();
    const pemOf = async (data?: string, file?: string) => (data ? Buffer.from(data, 'base64') : file ? await readFile(file) : null);
    const cert = await pemOf(user?.certData ?? undefined, user?.certFile ?? undefined);
    const key = await pemOf(user?.keyData ?? undefined, user?.keyFile ?? undefined);
    if (!cert || !key) return void report.push('client certificate: the admin kubeconfig of this apiserver has none');
    await mkdir(join(tmp, 'certs'));
    await writeFile(join(tmp, 'certs/admin.crt'), cert);
    await writeFile(join(tmp, 'certs/admin.key'), key, { mode: 0o600 });
    await writeFile(join(tmp, 'certs/ca.crt'), await api.caPem());
    const kubeconfigWith = async (name: string, user: Record<string, string>) => {
      const file = join(tmp, name);
      await writeFile(
        file,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [{ name: 'test', cluster: { server: `https://127.0.0.1:${BRIDGE_PORT}`, 'certificate-authority': 'certs/ca.crt' } }],
          users: [{ name: 'admin', user }],
          contexts: [{ name: 'admin', context: { cluster: 'test', user: 'admin' } }],
          'current-context': 'admin',
        }),
      );
      return file;
    };
    // kpx render: lists through the API, prints the ruleset, touches nothing
    const render = (kubeconfig: string, timeoutMs: number) =>
      execa('ip', ['netns', 'exec', t.node, process.execPath, KPX_BIN, 'render', '--kubeconfig', kubeconfig, '--hostname-override', NODE, '--cluster-cidr', NET.podCIDR], {
        reject: false,
        timeout: timeoutMs,
        env: { KPX_LOG_LEVEL: 'warn' },
      });
    const ip = (await core.readNamespacedService({ name: 'bulk-0', namespace: NS })).spec!.clusterIP!;
    const withCert = await render(await kubeconfigWith('cert.kubeconfig', { 'client-certificate': 'certs/admin.crt', 'client-key': 'certs/admin.key' }), 120_000);
    expect(withCert.exitCode, withCert.stderr.slice(-2000)).toBe(0);
    expect(withCert.stdout).toContain(`-d ${ip}/32`);
    // the same kubeconfig without the certificate: anonymous, refused, kpx keeps retrying
    const anonymous = await render(await kubeconfigWith('anonymous.kubeconfig', {}), 8_000);
    expect(anonymous.timedOut).toBe(true);
    const refused = /"err":"(40[13]): [^\n]*"msg":"list failed; retrying"/.exec(anonymous.stderr);
    expect(refused, anonymous.stderr.slice(-2000)).not.toBeNull();
    report.push(`client certificate: kpx render listed and rendered ${BULK}+ services as the admin certificate's user; without it: ${refused![1]}`);
  }, 180_000);

  it('follows create, endpoint updates and delete with real traffic; programming latency', async () => {
    let t0 = Date.now();
    await createService('web', WEB);
    await putSlice('web', [P.a]);
    const up = await answered(t0, (w) => w === 'a', 20_000, 'web to answer from a');
    report.push(`create -> first answer: ${up.ts - t0} ms`);

    const lat: number[] = [];
    for (let i = 0; i < 30; i++) {
      const to = i % 2 === 0 ? 'b' : 'a';
      t0 = Date.now();
      await putSlice('web', [to === 'a' ? P.a : P.b]);
      const hit = await answered(t0, (w) => w === to, 20_000, `web to answer from ${to}`);
      lat.push(hit.ts - t0);
    }
    report.push(`API write -> traffic at the new endpoint, 30 updates, min-sync-period 100ms: p50 ${pct(lat, 50)} ms, p99 ${pct(lat, 99)} ms, max ${Math.max(...lat)} ms`);

    await createService('y', Y);
    await putSlice('y', [P.c]);
    t0 = Date.now();
    await core.deleteNamespacedService({ name: 'web', namespace: NS });
    const gone = await answered(t0, (w) => w.startsWith('!'), 20_000, 'web to stop answering');
    // no Service, no rule: the ClusterIP is not routable (EHOSTUNREACH) or nothing answers
    expect(gone.what).toMatch(/^!/);
    await createService('web', WEB);
    t0 = Date.now();
    await answered(t0, (w) => w === 'b' || w === 'a', 20_000, 'web to answer again');
  }, 120_000);

  it('keeps forwarding while the apiserver is down and applies what changed while disconnected (410 relist)', async () => {
    if (!api.controllable) return void report.push('apiserver restart and compaction: not possible with this apiserver');
    // down: the rules stay and keep forwarding
    await api.stop();
    try {
      const downAt = Date.now();
      await sleep(3000);
      const during = seen.filter((s) => s.ts >= downAt);
      const summary = during.reduce<Record<string, number>>((m, s) => ((m[s.what] = (m[s.what] ?? 0) + 1), m), {});
      expect(during.length, JSON.stringify(summary)).toBeGreaterThan(20);
      expect(during.every((s) => s.what === 'a' || s.what === 'b'), JSON.stringify(summary)).toBe(true);
    } finally {
      // back with the watch cache off, so a compacted resourceVersion answers 410
      await api.start({ watchCache: false });
    }
    proxy.setTarget(api.target());

    const expiredBefore = metric(await metrics(), 'kpx_api_relists_total', 'resource="Service",reason="expired"');
    proxy.refuse(true);
    proxy.cutAll();
    await sleep(1000);
    await putSlice('web', [P.c]);
    await createService('x', X);
    await putSlice('x', [P.b]);
    await core.deleteNamespacedService({ name: 'y', namespace: NS });
    await api.compact();
    const t0 = Date.now();
    proxy.refuse(false);
    const hit = await answered(t0, (w) => w === 'c', 60_000, 'web to answer from c after reconnecting');
    report.push(`reconnect after a compacted outage -> change applied in ${hit.ts - t0} ms`);
    // a list that fails right after the outage waits out a backoff grown during it (up to 30 s, like client-go)
    await waitFor('a relist after 410', async () => metric(await metrics(), 'kpx_api_relists_total', 'resource="Service",reason="expired"') > expiredBefore, 75_000);
    const x = await t.probe('client', 'tcp', X, 80, { count: 3 });
    expect(x.names).toEqual({ b: 3 });
    const y = await t.probe('client', 'tcp', Y, 80, { count: 1, timeoutMs: 1000 });
    expect(y.ok).toBe(0);
    expect(diff(await apiState(), await kpxInventory())).toEqual([]);
  }, 300_000);

  it('restarts a watch that goes silent without closing', async () => {
    // make the EndpointSlice watch deliver an event (so it is the live one), then stall it
    let t0 = Date.now();
    await putSlice('web', [P.b]);
    await answered(t0, (w) => w === 'b', 20_000, 'web to answer from b');
    const idleBefore = metric(await metrics(), 'kpx_api_watch_ends_total', 'resource="EndpointSlice",reason="idle"');
    const stalled = proxy.stallExisting();
    expect(stalled).toBeGreaterThan(0);
    t0 = Date.now();
    await putSlice('web', [P.a]);
    const hit = await answered(t0, (w) => w === 'a', (IDLE_S + 30) * 1000, 'the change to arrive through a new watch');
    report.push(`silent watch: ${stalled} connections stalled; change applied after ${hit.ts - t0} ms (idle bound ${IDLE_S}s)`);
    // it could only arrive once the watchdog replaced the silent watch
    expect(hit.ts - t0).toBeGreaterThan(1000);
    expect(metric(await metrics(), 'kpx_api_watch_ends_total', 'resource="EndpointSlice",reason="idle"')).toBeGreaterThan(idleBefore);
  }, 120_000);

  it('ends with exactly the apiserver state after churn through a proxy that cuts connections', async () => {
    proxy.chaos(200);
    const names = Array.from({ length: 30 }, (_, i) => `churn-${i}`);
    const exists = new Set<string>();
    let ops = 0;
    const end = Date.now() + 20_000;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (Date.now() < end) {
          const name = names[Math.floor(Math.random() * names.length)]!;
          if (exists.has(name) && Math.random() < 0.3) {
            exists.delete(name);
            await core.deleteNamespacedService({ name, namespace: NS }).catch(() => {});
            await disc.deleteNamespacedEndpointSlice({ name: `${name}-ipv4`, namespace: NS }).catch(() => {});
          } else if (!exists.has(name)) {
            exists.add(name);
            await createService(name).catch(() => {});
          } else {
            const pods = [P.a, P.b, P.c].filter(() => Math.random() < 0.6);
            await putSlice(name, pods.length ? pods : [P.a]).catch(() => {});
          }
          ops++;
        }
      }),
    );
    proxy.stopChaos();
    const cuts = proxy.cuts;
    const settledIn = Date.now();
    let last: string[] = [];
    try {
      await waitFor(
        'kpx inventory to equal the apiserver',
        async () => {
          last = diff(await apiState(), await kpxInventory());
          return last.length === 0;
        },
        60_000,
      );
    } finally {
      report.push(`churn: ${ops} API writes in 20 s, ${cuts} connection cuts; mismatches after settling: ${last.length} (settled in ${Date.now() - settledIn} ms)`);
    }
    expect(last).toEqual([]);
    expect(cuts).toBeGreaterThan(10);
  }, 180_000);
});
