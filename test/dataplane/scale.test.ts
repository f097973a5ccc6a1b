// The dispatch trees at scale, with real packets: 3000 services, random ClusterIPs reached,
// and the live rules (iptables-save) traced to show the short walk.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';
import { serviceIP } from '../../bench/synthetic.js';
import { Tracer, tablesFromSave } from '../../src/trace/tracer.js';

const env = await dataplaneEnv();
const N = 3000;
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };

describe.skipIf(!env.ok)(`dispatch trees at scale (${N} services)${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [8080] },
        { name: 'b', ip: P.b, ports: [8080] },
        { name: 'client', ip: P.client },
      ],
    });
    const dir = await t.manifestsDir();
    const items: object[] = [node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })];
    for (let i = 0; i < N; i++) {
      items.push(service({ name: `svc-${i}`, clusterIP: serviceIP(i), ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
      items.push(endpointSlice({ service: `svc-${i}`, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: i % 2 ? P.b : P.a }] }));
    }
    await t.writeManifest(dir, 'all.json', JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    await t.sync(['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR]);
  }, 180_000);
  afterAll(async () => {
    await t?.destroy();
  });

  it('reaches random ClusterIPs with real connections, each at its own endpoint', async () => {
    let seed = 11;
    for (let k = 0; k < 40; k++) {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      const i = seed % N;
      const r = await t.probe('client', 'tcp', serviceIP(i), 80, { count: 1 });
      expect(r.names, `svc-${i} at ${serviceIP(i)}`).toEqual({ [i % 2 ? 'b' : 'a']: 1 });
    }
  });

  it('the live rules walk a new connection through fewer than 64 nat rules', async () => {
    const tracer = new Tracer(tablesFromSave(await t.save()), { localAddresses: [NET.nodeIP, NET.bridgeIP, '127.0.0.1'] });
    let worst = 0;
    for (let i = 0; i < N; i += 97) {
      const outs = tracer.trace({ family: 'IPv4', proto: 'tcp', src: P.client, dst: serviceIP(i), dport: 80, from: { inIface: 'kpxbr0' } });
      expect(outs.map((o) => o.dnat)).toEqual([`${i % 2 ? P.b : P.a}:8080`]);
      worst = Math.max(worst, outs[0]!.rules.nat);
    }
    expect(worst).toBeLessThan(64);
    // kube-proxy's KUBE-SERVICES would hold one rule per service; kpx's root holds two
    expect((await t.save()).split('\n').filter((l) => l.startsWith('-A KPX-SERVICES ')).length).toBeLessThanOrEqual(3);
  });
});
