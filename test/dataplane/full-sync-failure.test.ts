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
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';
import { ownedState } from '../substrate/kernel.js';
import { syntheticCluster } from '../../bench/synthetic.js';
import { endpointChain, isFixedChain } from '../../src/render/iptables/names.js';

const env = await dataplaneEnv();
const N = 4000;
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const cluster = syntheticCluster(N, 1, { serviceCIDR: NET.serviceCIDR, seed: 13, nodePortEvery: 0 });
const ip = (i: number) => cluster.serviceIP(i);
/** the chain that the retried full sync writes in a middle transaction: svc-2000's endpoint b, name set 1 */
const TRAP = endpointChain(`default/svc-${N / 2}:http`, 'tcp', `${P.b}:8080`, 1);

describe.skipIf(!env.ok)(`a full sync refused half-way${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  let kpx: ReturnType<Topology['spawnKpx']> | undefined;
  let logs = '';
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
  const start = () => {
    logs = '';
    kpx = t.spawnKpx([
      '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR, '--iptables-backend', 'nft',
      '--iptables-sync-period', '30s', '--iptables-min-sync-period', '1s',
      '--metrics-bind-address', '127.0.0.1:10249', '--healthz-bind-address', '127.0.0.1:10256',
    ]);
    kpx.stderr?.on('data', (d: Buffer) => (logs += d.toString()));
  };
  const stop = async () => {
    kpx?.kill('SIGTERM');
    await kpx;
    kpx = undefined;
  };
  const waitFor = async (what: string, cond: () => Promise<boolean> | boolean, ms: number) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; kpx said:\n${logs.slice(-3000)}`);
      await sleep(200);
    }
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
  const failures = () => logs.split('\n').filter((l) => l.includes('sync failed')).length;

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
    await waitFor('the first sync', () => logs.includes('"msg":"sync"'), 120_000);
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
    // someone else's chains: nat OUTPUT -> U1 -> ... -> U14 -> TRAP (16 levels, accepted while TRAP is empty)
    const lines = ['*nat', `:${TRAP} - [0:0]`];
    for (let k = 1; k <= 14; k++) lines.push(`:U${k} - [0:0]`);
    for (let k = 1; k < 14; k++) lines.push(`-A U${k} -j U${k + 1}`);
    lines.push(`-A U14 -j ${TRAP}`, '-A OUTPUT -j U1', 'COMMIT', '');
    await t.exec('node', 'iptables-nft-restore', ['--noflush'], { input: lines.join('\n') });

    await writeAll(P.b);
    start();
    // (iptables-nft-restore takes its time over a refused transaction: up to a minute here)
    await waitFor('two failed syncs', () => failures() >= 2, 300_000);
    expect(logs).toContain('Too many links');
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
    await waitFor('a successful sync', () => logs.includes('"msg":"sync"') && /"ok":true/.test(logs), 240_000);
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
