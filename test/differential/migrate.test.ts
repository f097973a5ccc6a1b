// Migration under traffic, with upstream kube-proxy: a node served by kube-proxy (iptables
// mode) takes kpx the way docs/migrate.md says (kpx next to it, stop kube-proxy,
// `kpx cleanup --kube-proxy`), and goes back (kube-proxy next to kpx, stop kpx,
// `kpx cleanup`). All the while a pod and an external client open new connections every
// few milliseconds (ClusterIP and NodePort), and long-lived TCP connections opened before
// each switch exchange a line every 100 ms. Counted per direction: new connections that
// failed, established connections that broke.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, DiscoveryV1Api } from '@kubernetes/client-node';
import type { ResultPromise } from 'execa';
import { setTimeout as sleep } from 'node:timers/promises';
import { NET, REPO, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, service } from '../substrate/manifests.js';
import { findApiserver, type Apiserver } from '../substrate/apiserver.js';
import { findKubeProxy, startKubeProxy, type KubeProxyHandle } from '../substrate/kube-proxy.js';
import { TWIN_NODE, kpxLauncher, table } from '../substrate/differential.js';

const bin = await findKubeProxy();
const env = await dataplaneEnv();
const choice = env.ok && bin.ok ? await findApiserver() : null;
const skip = !bin.ok ? bin.reason : !env.ok ? env.reason : !choice?.ok ? (choice as { reason: string }).reason : '';

const NS = 'kpx-migrate';
const WEB = '198.19.0.160';
const POD = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const PROBE = join(REPO, 'test/substrate/probe.mjs');

interface Traffic {
  /** resolves once every held connection has answered and new connections are being made (bounded) */
  ready(): Promise<void>;
  stop(): Promise<{ attempts: number; failed: number; failures: Record<string, number>; held: number; broken: number; breaks: string[] }>;
}

/** New connections every 5 ms from the pod (ClusterIP) and the external client (NodePort), and 4 held connections. */
function startTraffic(t: Topology): Traffic {
  const procs: ResultPromise[] = [];
  const follow: string[] = [];
  const holds: string[][] = [];
  const lines = (p: ResultPromise, into: string[]) => {
    let buf = '';
    p.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const ls = buf.split('\n');
      buf = ls.pop()!;
      into.push(...ls);
    });
  };
  for (const [from, host, port] of [
    ['client', WEB, 80],
    ['ext', NET.nodeIP, 30200],
  ] as const) {
    const p = t.spawn(from, process.execPath, [PROBE, 'tcp', host, String(port), '--follow', '--interval', '5', '--timeout', '1000']);
    procs.push(p);
    lines(p, follow);
  }
  for (const [from, host, port] of [
    ['client', WEB, 81],
    ['client', WEB, 81],
    ['ext', NET.nodeIP, 30201],
    ['ext', NET.nodeIP, 30201],
  ] as const) {
    const p = t.spawn(from, process.execPath, [PROBE, 'tcp', host, String(port), '--hold', '--interval', '100', '--timeout', '3000']);
    procs.push(p);
    const into: string[] = [];
    holds.push(into);
    lines(p, into);
  }
  return {
    async ready() {
      const end = Date.now() + 10_000;
      while (holds.some((h) => h.length === 0) || follow.length < 10) {
        if (Date.now() > end) throw new Error(`traffic did not start in 10 s: ${follow.length} connections, held ${holds.map((h) => h.length).join(',')}`);
        await sleep(50);
      }
    },
    async stop() {
      for (const p of procs) p.kill('SIGTERM');
      await Promise.allSettled(procs);
      const failures: Record<string, number> = {};
      for (const l of follow) {
        const what = l.split(' ')[1] ?? '';
        if (what.startsWith('!')) failures[what.slice(1)] = (failures[what.slice(1)] ?? 0) + 1;
      }
      const breaks = holds.flatMap((h, i) => h.filter((l) => l.split(' ')[1]?.startsWith('!')).map((l) => `held connection ${i}: ${l}`));
      // a held connection that never answered counts as broken too
      const silent = holds.filter((h) => h.length === 0).length;
      return {
        attempts: follow.length,
        failed: Object.values(failures).reduce((a, b) => a + b, 0),
        failures,
        held: holds.length,
        broken: new Set(breaks.map((b) => b.split(':')[0])).size + silent,
        breaks,
      };
    },
  };
}

describe.skipIf(!!skip)(`migration kube-proxy <-> kpx under traffic${skip ? ` — skipped: ${skip}` : ''}`, () => {
  let api: Apiserver;
  let t: Topology;
  let dir: string;
  const figures: Array<Array<string | number>> = [];

  beforeAll(async () => {
    if (!choice?.ok) return;
    api = await choice.start();
    const core = api.admin.makeApiClient(CoreV1Api);
    const disc = api.admin.makeApiClient(DiscoveryV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    const ports = [
      { name: 'http', port: 80, targetPort: 8080, nodePort: 30200 },
      { name: 'hold', port: 81, targetPort: 8081, nodePort: 30201 },
    ];
    await core.createNamespacedService({ namespace: NS, body: service({ name: 'web', namespace: NS, type: 'NodePort', clusterIP: WEB, ports }) });
    await disc.createNamespacedEndpointSlice({
      namespace: NS,
      body: endpointSlice({
        service: 'web',
        namespace: NS,
        ports: [
          { name: 'http', port: 8080 },
          { name: 'hold', port: 8081 },
        ],
        endpoints: [
          { ip: POD.a, node: TWIN_NODE },
          { ip: POD.b, node: TWIN_NODE },
        ],
      }) as never,
    });
    t = await Topology.create({
      pods: [
        { name: 'a', ip: POD.a, ports: [8080, '8081/hold'] },
        { name: 'b', ip: POD.b, ports: [8080, '8081/hold'] },
        { name: 'client', ip: POD.client },
      ],
    });
    dir = await mkdtemp(join(tmpdir(), 'kpx-migrate-'));
  }, 180_000);

  afterAll(async () => {
    if (figures.length) console.log(`migration under traffic (kube-proxy ${bin.ok ? bin.version : '?'}):\n${table(['direction', 'new connections', 'failed', 'held connections', 'broken'], figures)}`);
    await t?.destroy();
    await api?.destroy();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  // each proxy gets its own metrics, healthz and apiserver-bridge ports: both run at once during a switch
  const start = async (which: 'kube-proxy' | 'kpx'): Promise<KubeProxyHandle> =>
    startKubeProxy({
      bin: which === 'kpx' ? await kpxLauncher(dir) : bin.ok ? bin.path : '',
      netns: t.node,
      apiserver: api,
      mode: 'iptables',
      node: { name: TWIN_NODE, internalIP: NET.nodeIP, podCIDR: NET.podCIDR },
      clusterCIDR: NET.podCIDR,
      minSyncPeriod: '100ms',
      metricsBindAddress: which === 'kpx' ? '127.0.0.1:20249' : '127.0.0.1:10249',
      healthzBindAddress: which === 'kpx' ? '127.0.0.1:20256' : '127.0.0.1:10256',
      bridgePort: which === 'kpx' ? 26444 : 16444,
    });
  const kpxCli = async (args: string[]) => {
    const r = await t.kpx(args, { reject: false });
    expect({ args, exitCode: r.exitCode, stderr: r.exitCode ? r.stderr : '' }).toEqual({ args, exitCode: 0, stderr: '' });
  };
  const served = async () => {
    const probe = await t.probe('client', 'tcp', WEB, 80, { count: 10 });
    expect(probe.ok).toBe(10);
  };

  it('kube-proxy -> kpx (kpx next to it, stop kube-proxy, kpx cleanup --kube-proxy) -> kube-proxy, under traffic', async () => {
    let kp: KubeProxyHandle | null = await start('kube-proxy');
    await served();
    let traffic = startTraffic(t);
    await traffic.ready();
    let kpx: KubeProxyHandle | null = await start('kpx');
    await kp.stop();
    kp = null;
    await kpxCli(['cleanup', '--kube-proxy']);
    expect((await t.save()).match(/^:KUBE-(SERVICES|SVC-\S+|SEP-\S+) /gm) ?? []).toEqual([]);
    await served();
    const forward = await traffic.stop();
    figures.push(['kube-proxy -> kpx', forward.attempts, forward.failed, forward.held, forward.broken]);

    traffic = startTraffic(t);
    await traffic.ready();
    kp = await start('kube-proxy');
    await kpx.stop();
    kpx = null;
    await kpxCli(['cleanup']);
    expect((await t.save()).match(/^:KPX-\S+ /gm) ?? []).toEqual([]);
    await served();
    const back = await traffic.stop();
    figures.push(['kpx -> kube-proxy', back.attempts, back.failed, back.held, back.broken]);
    await kp.stop();

    expect({ forward: forward.failures, back: back.failures }).toEqual({ forward: {}, back: {} });
    expect({ forward: forward.breaks, back: back.breaks }).toEqual({ forward: [], back: [] });
    expect(forward.broken + back.broken).toBe(0);
  });
});
