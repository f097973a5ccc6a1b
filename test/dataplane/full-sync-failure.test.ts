// A full sync the kernel refuses half-way leaves the node serving what it served before.
//
// kpx serves 4000 services from pod a. It restarts with every service moved to pod b: a
// full sync of ~30k lines, cut into transactions. Someone else's chains (14 deep, from
// nat OUTPUT) lead to a chain kpx writes in a middle transaction, so that transaction
// passes nf_tables' 16-level jump limit and the kernel refuses it ("Too many links"), as
// it would for chains another tool hangs in front of kpx's. While that lasts, every
// service must still reach pod a, kpx's old chains must be exactly as they were, the
// failure must say why (log and /healthz), and retries must back off. Once the other
// chains are unlinked, the retry switches everything to pod b and removes the old chains.
//
// The very first full sync, batched, refused in a later transaction: every earlier
// transaction stays committed (unreachable chains, and the filter table's complete switch),
// so nothing may be half-reachable: no service answers through the nat chains kpx did
// write, an LB IP's firewall is never bypassed, and the filter rules in force are all
// of them. The next successful sync programs everything and removes what the failed one
// wrote for services that went away meanwhile.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';
import { kpxChainsOnly, ownedState, plannedChains } from '../substrate/kernel.js';
import { syntheticCluster } from '../../bench/synthetic.js';
import { CHAIN, endpointChain, isFixedChain } from '../../src/render/iptables/names.js';
import { BUILTIN_CHAINS } from '../../src/iptables/save.js';

const env = await dataplaneEnv();
const N = 4000;
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const cluster = syntheticCluster(N, 1, { serviceCIDR: NET.serviceCIDR, seed: 13, nodePortEvery: 0 });
const ip = (i: number) => cluster.serviceIP(i);
/** the chain that the retried full sync writes in a middle transaction: svc-2000's endpoint b, name set 1 */
const TRAP = endpointChain(`default/svc-${N / 2}:http`, 'tcp', `${P.b}:8080`, 1);

const KPX_FLAGS = (dir: string) => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR, '--iptables-backend', 'nft'];

/** kpx run in a topology's node, its log, and waiting for what it says. */
function kpxRun(topology: () => Topology, dir: () => string) {
  let kpx: ReturnType<Topology['spawnKpx']> | undefined;
  const h = {
    logs: '',
    start: () => {
      h.logs = '';
      kpx = topology().spawnKpx([
        ...KPX_FLAGS(dir()),
        '--iptables-sync-period', '30s', '--iptables-min-sync-period', '1s',
        '--metrics-bind-address', '127.0.0.1:10249', '--healthz-bind-address', '127.0.0.1:10256',
      ]);
      kpx.stderr?.on('data', (d: Buffer) => (h.logs += d.toString()));
    },
    stop: async () => {
      kpx?.kill('SIGTERM');
      await kpx;
      kpx = undefined;
    },
    waitFor: async (what: string, cond: () => Promise<boolean> | boolean, ms: number) => {
      const end = Date.now() + ms;
      while (!(await cond())) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; kpx said:\n${h.logs.slice(-3000)}`);
        await sleep(200);
      }
    },
    failures: () => h.logs.split('\n').filter((l) => l.includes('sync failed')).length,
    /** a sync succeeded */
    synced: () => h.logs.split('\n').some((l) => l.includes('"msg":"sync"') && l.includes('"ok":true')),
  };
  return h;
}

/** Someone else's chains, nat OUTPUT -> U1 -> ... -> U14 -> trap: 16 levels, accepted while the trap is empty. */
async function linkTrap(t: Topology, trap: string): Promise<void> {
  const lines = ['*nat', `:${trap} - [0:0]`];
  for (let k = 1; k <= 14; k++) lines.push(`:U${k} - [0:0]`);
  for (let k = 1; k < 14; k++) lines.push(`-A U${k} -j U${k + 1}`);
  lines.push(`-A U14 -j ${trap}`, '-A OUTPUT -j U1', 'COMMIT', '');
  await t.exec('node', 'iptables-nft-restore', ['--noflush'], { input: lines.join('\n') });
}

describe.skipIf(!env.ok)(`a full sync refused half-way${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const run = kpxRun(() => t, () => dir);
  const { start, stop, waitFor, failures } = run;
  /** kpx's chains (not the fixed ones) that served pod a */
  let oldChains: string[] = [];

  const writeAll = async (pod: string) => {
    const docs: object[] = [node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })];
    for (let i = 0; i < N; i++) {
      docs.push(service({ name: `svc-${i}`, clusterIP: ip(i), ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
      docs.push(endpointSlice({ service: `svc-${i}`, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: pod }] }));
    }
    await t.writeManifest(dir, 'all.yaml', yamlDocs(...docs));
  };
  /** which pod answers each of a sample of services */
  const answers = async () => {
    const out: Record<string, number> = {};
    for (let i = 0; i < N; i += 250) {
      const r = await t.probe('client', 'tcp', ip(i), 80, { count: 1, timeoutMs: 1000 });
      const who = Object.keys(r.names)[0] ?? 'none';
      out[who] = (out[who] ?? 0) + 1;
    }
    return out;
  };

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [8080] },
        { name: 'b', ip: P.b, ports: [8080] },
        { name: 'client', ip: P.client },
      ],
    });
    dir = await t.manifestsDir();
    await writeAll(P.a);
    start();
    await waitFor('the first sync', () => run.logs.includes('"msg":"sync"'), 120_000);
    await stop();
  }, 480_000);
  afterAll(async () => {
    await stop().catch(() => {});
    await t?.destroy();
  });

  it('keeps serving the old rules, unchanged, while the kernel refuses a middle transaction', async () => {
    expect(await answers()).toEqual({ a: N / 250 });
    const before = ownedState(await t.save());
    oldChains = Object.keys(before.nat ?? {}).filter((c) => c.startsWith('KPX-') && !isFixedChain(c));
    await linkTrap(t, TRAP);

    await writeAll(P.b);
    start();
    // (iptables-nft-restore takes its time over a refused transaction: up to a minute here)
    await waitFor('two failed syncs', () => failures() >= 2, 300_000);
    expect(run.logs).toContain('Too many links');
    const health = await t.httpGet('node', 'http://127.0.0.1:10256/healthz');
    expect(health.status).toBe(503);
    expect(JSON.parse(health.body).status.IPv4.lastError.reason).toContain('Too many links');

    // nothing that served before changed: the same chains with the same rules, and pod a answers
    const during = ownedState(await t.save());
    for (const table of ['nat', 'filter']) {
      for (const [chain, rules] of Object.entries(before[table] ?? {})) expect(during[table]?.[chain], `${table} ${chain}`).toEqual(rules);
    }
    expect(await answers()).toEqual({ a: N / 250 });
    const m = (await t.httpGet('node', 'http://127.0.0.1:10249/metrics')).body;
    expect(m).toMatch(/^kubeproxy_sync_proxy_rules_iptables_restore_failures_total\{ip_family="IPv4"\} [1-9]/m);
  }, 480_000);

  it('once the other chains are unlinked, the retry switches to the new rules and removes the old ones', async () => {
    await t.exec('node', 'iptables', ['-t', 'nat', '-D', 'OUTPUT', '-j', 'U1']);
    await waitFor('a successful sync', () => run.logs.includes('"msg":"sync"') && /"ok":true/.test(run.logs), 240_000);
    await waitFor('pod b everywhere', async () => (await answers()).b === N / 250, 10_000);
    expect((await t.httpGet('node', 'http://127.0.0.1:10256/healthz')).status).toBe(200);
    const now = ownedState(await t.save());
    const kept = oldChains.filter((c) => now.nat?.[c] !== undefined);
    // the chains of the old name set are gone; the trap chain is kpx's own, in the new set
    expect(kept).toEqual([]);
    expect(now.nat?.[TRAP]).toBeDefined();
    await stop();
  }, 480_000);
});

describe.skipIf(!env.ok)(`the first full sync refused in a later transaction${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  const M = 4000;
  const pod = '198.18.1.11';
  // M plain services, and three with more to them: an LB IP with source ranges (only the
  // external client's address is allowed), a NodePort, and a service without endpoints
  const first = syntheticCluster(M + 3, 1, { serviceCIDR: NET.serviceCIDR, seed: 31, nodePortEvery: 0 });
  const cip = (i: number) => first.serviceIP(i);
  const VIP = '198.19.255.250';
  const NODE_PORT = 30555;
  const FW = cip(M);
  const NP = cip(M + 1);
  const EMPTY = cip(M + 2);
  /** svc-2000's endpoint chain in the first name set: kpx writes it in the nat switch, after every batch */
  const TRAP = endpointChain(`default/svc-${M / 2}:http`, 'tcp', `${pod}:8080`, 0);
  /** services gone from the model while the syncs fail */
  const gone = (i: number) => i % 4 === 1;
  let t: Topology;
  let dir: string;
  const run = kpxRun(() => t, () => dir);
  let failed: ReturnType<typeof ownedState> = {};

  const write = async (keep: (i: number) => boolean) => {
    const docs: object[] = [node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })];
    const served = (name: string) => endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: pod }] });
    for (let i = 0; i < M; i++) {
      if (!keep(i)) continue;
      docs.push(service({ name: `svc-${i}`, clusterIP: cip(i), ports: [{ name: 'http', port: 80, targetPort: 8080 }] }), served(`svc-${i}`));
    }
    docs.push(
      service({
        name: 'fw',
        type: 'LoadBalancer',
        clusterIP: FW,
        ports: [{ name: 'http', port: 80, targetPort: 8080 }],
        spec: { loadBalancerSourceRanges: [`${NET.extIP}/32`], allocateLoadBalancerNodePorts: false },
        status: { loadBalancer: { ingress: [{ ip: VIP }] } },
      }),
      served('fw'),
      service({ name: 'np', type: 'NodePort', clusterIP: NP, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: NODE_PORT }] }),
      served('np'),
      service({ name: 'empty', clusterIP: EMPTY, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
    );
    await t.writeManifest(dir, 'all.yaml', yamlDocs(...docs));
  };
  /** which pod answers a sample of the plain services ('none': no answer, whatever the error) */
  const sample = async (which: (i: number) => boolean) => {
    const out: Record<string, number> = {};
    for (let i = 0; i < M; i += 125) {
      if (!which(i)) continue;
      const r = await t.probe('client', 'tcp', cip(i), 80, { count: 1, timeoutMs: 1000 });
      const what = Object.keys(r.names)[0] ?? 'none';
      out[what] = (out[what] ?? 0) + 1;
    }
    return out;
  };
  const sampled = (which: (i: number) => boolean) => Array.from({ length: M / 125 }, (_, k) => k * 125).filter(which).length;
  const render = async () => plannedChains((await t.kpx(['render', ...KPX_FLAGS(dir)])).stdout);
  const probeExt = (host: string, port: number, bind: string) => t.probe('ext', 'tcp', host, port, { count: 2, bind, timeoutMs: 1500 });

  beforeAll(async () => {
    expect(new Set(Array.from({ length: M + 3 }, (_, i) => cip(i))).has(VIP)).toBe(false);
    t = await Topology.create({ pods: [{ name: 'a', ip: pod, ports: [8080] }, { name: 'client', ip: '198.18.1.50' }] });
    dir = await t.manifestsDir();
    await write(() => true);
    // kpx has never run here: only the other tool's chains are in the kernel
    await linkTrap(t, TRAP);
    run.start();
    await run.waitFor('two failed syncs', () => run.failures() >= 2, 300_000);
  }, 480_000);
  afterAll(async () => {
    await run.stop().catch(() => {});
    await t?.destroy();
  });

  it('leaves nothing half-reachable: nat not switched, filter switched whole, no service answers', async () => {
    expect(run.logs).toContain('Too many links');
    expect(run.synced()).toBe(false);
    failed = ownedState(await t.save());
    const nat = failed.nat ?? {};
    // the earlier transactions are committed: the service chains are there, unreachable
    expect(Object.keys(nat).filter((c) => c.startsWith('KPX-') && !isFixedChain(c)).length).toBeGreaterThan(2 * M);
    expect(nat[TRAP]).toEqual([]);
    // no built-in nat chain jumps to kpx: not one DNAT is in force
    expect(Object.keys(nat).filter((c) => BUILTIN_CHAINS.has(c))).toEqual([]);
    expect(nat[CHAIN.services]).toBeDefined();
    // the filter table is exactly what kpx wants, built-in jumps included, or it would not be switched
    const want = kpxChainsOnly(await render());
    expect(Object.keys(failed.filter ?? {}).filter((c) => BUILTIN_CHAINS.has(c)).sort()).toEqual(['FORWARD', 'INPUT', 'OUTPUT']);
    expect(kpxChainsOnly(failed).filter).toEqual(want.filter);

    // packets: no ClusterIP, NodePort or LB IP answers, from any client; the no-endpoint REJECT is in force
    expect(await sample(() => true)).toEqual({ none: sampled(() => true) });
    expect((await probeExt(VIP, 80, NET.extIP)).ok).toBe(0);
    expect((await probeExt(VIP, 80, NET.extIP2)).errors).toEqual({ TIMEOUT: 2 });
    expect((await probeExt(NET.nodeIP, NODE_PORT, NET.extIP2)).ok).toBe(0);
    expect((await t.probe('client', 'tcp', EMPTY, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });

    const health = await t.httpGet('node', 'http://127.0.0.1:10256/healthz');
    expect(health.status).toBe(503);
    expect(JSON.parse(health.body).status.IPv4.lastError.reason).toContain('Too many links');
  }, 240_000);

  it('the next successful sync programs everything and removes what the failed one wrote for services now gone', async () => {
    // a quarter of the services go while the syncs still fail
    const before = run.failures();
    await write((i) => !gone(i));
    await run.waitFor('a failed sync of the new model', () => run.failures() > before, 300_000);
    const goneChain = endpointChain('default/svc-1:http', 'tcp', `${pod}:8080`, 0);
    expect(failed.nat?.[goneChain]).toEqual(expect.arrayContaining([expect.stringContaining('DNAT')]));

    // the other tool's chains go away
    await t.exec('node', 'iptables', ['-t', 'nat', '-D', 'OUTPUT', '-j', 'U1']);
    await t.exec('node', 'iptables', ['-t', 'nat', '-F', 'U14']);
    await run.waitFor('a successful sync', run.synced, 300_000);

    const now = ownedState(await t.save());
    expect(kpxChainsOnly(now)).toEqual(kpxChainsOnly(await render()));
    for (const g of [0, 1] as const) expect(now.nat?.[endpointChain('default/svc-1:http', 'tcp', `${pod}:8080`, g)]).toBeUndefined();
    expect(JSON.stringify(now)).not.toContain('default/svc-1:http');

    expect(await sample((i) => !gone(i))).toEqual({ a: sampled((i) => !gone(i)) });
    expect(await sample(gone)).toEqual({ none: sampled(gone) });
    expect((await probeExt(VIP, 80, NET.extIP)).names).toEqual({ a: 2 });
    expect((await probeExt(VIP, 80, NET.extIP2)).errors).toEqual({ TIMEOUT: 2 });
    expect((await probeExt(NET.nodeIP, NODE_PORT, NET.extIP2)).names).toEqual({ a: 2 });
    expect((await t.probe('client', 'tcp', EMPTY, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    expect((await t.httpGet('node', 'http://127.0.0.1:10256/healthz')).status).toBe(200);
  }, 480_000);
});
