// The dispatch trees at scale, with real packets: 30,000 services with ClusterIPs allocated
// the way the apiserver allocates them (uniformly at random in the service CIDR; every tenth
// service dual-stack) and every NodePort of the default range (2,768) in use, programmed on
// the nft backend, whose 16-level jump limit a deep layout would pass. A random sample of
// ClusterIPs (both families) and NodePorts is reached with real connections, and the live
// rules (iptables-save) are traced to show that the walk and the depth stay bounded.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';
import { seededRandom, syntheticCluster } from '../../bench/synthetic.js';
import { DEFAULT_SHAPE, depthBound } from '../../src/render/iptables/dispatch.js';
import { MAX_CHAIN_DEPTH } from '../../src/render/iptables/ruleset.js';
import { Tracer, tablesFromSave } from '../../src/trace/tracer.js';
import { chainDepth } from '../substrate/kernel.js';

const env = await dataplaneEnv();
const N = 30_000;
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const P6 = { a: '2001:2:1::11', b: '2001:2:1::12', client: '2001:2:1::50' };
const cluster = syntheticCluster(N, 1, { serviceCIDR: '198.19.0.0/16', serviceCIDR6: '2001:2:0:ff::/108', dualStackEvery: 10, nodePortEvery: 10, seed: 30_000 });
const pod = (i: number) => (i % 2 ? 'b' : 'a');

describe.skipIf(!env.ok)(`dispatch trees at scale (${N} apiserver-allocated services, dual-stack, every NodePort)${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let save4 = '';
  let save6 = '';
  let nodePorts = 0;
  beforeAll(async () => {
    t = await Topology.create({
      ipv6: true,
      pods: [
        { name: 'a', ip: P.a, ip6: P6.a, ports: [8080] },
        { name: 'b', ip: P.b, ip6: P6.b, ports: [8080] },
        { name: 'client', ip: P.client, ip6: P6.client },
      ],
    });
    const dir = await t.manifestsDir();
    const items: object[] = [node({ ips: [NET.nodeIP, NET.nodeIP6], podCIDRs: [NET.podCIDR, NET.podCIDR6] })];
    for (let i = 0; i < N; i++) {
      const dual = cluster.isDualStack(i);
      const np = cluster.nodePort(i);
      if (np) nodePorts++;
      items.push(
        service({
          name: `svc-${i}`,
          type: np ? 'NodePort' : 'ClusterIP',
          clusterIP: dual ? [cluster.serviceIP(i), cluster.serviceIP(i, 'IPv6')] : cluster.serviceIP(i),
          ports: [{ name: 'http', port: 80, targetPort: 8080, ...(np ? { nodePort: np } : {}) }],
          ...(dual ? { spec: { ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'PreferDualStack' } } : {}),
        }),
      );
      items.push(endpointSlice({ service: `svc-${i}`, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P[pod(i)] }] }));
      if (dual) items.push(endpointSlice({ service: `svc-${i}`, family: 'IPv6', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P6[pod(i)] }] }));
    }
    await t.writeManifest(dir, 'all.json', JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    await t.sync(['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', `${NET.podCIDR},${NET.podCIDR6}`, '--iptables-backend', 'nft']);
    save4 = await t.save('IPv4');
    save6 = await t.save('IPv6');
  }, 600_000);
  afterAll(async () => {
    await t?.destroy();
  });

  it('uses every NodePort of the range', () => {
    expect(nodePorts).toBe(2768);
  });

  it('reaches a random sample of IPv4 and IPv6 ClusterIPs and NodePorts with real connections, each at its own endpoint', async () => {
    const r = seededRandom(11);
    for (let k = 0; k < 40; k++) {
      const i = r(N);
      const got = await t.probe('client', 'tcp', cluster.serviceIP(i), 80, { count: 1 });
      expect(got.names, `svc-${i} at ${cluster.serviceIP(i)}`).toEqual({ [pod(i)]: 1 });
    }
    for (let k = 0; k < 20; k++) {
      const i = r(N / 10) * 10;
      const got = await t.probe('client', 'tcp', cluster.serviceIP(i, 'IPv6'), 80, { count: 1 });
      expect(got.names, `svc-${i} at ${cluster.serviceIP(i, 'IPv6')}`).toEqual({ [pod(i)]: 1 });
    }
    for (let k = 0; k < 20; k++) {
      const i = r(2768) * 10;
      const np = cluster.nodePort(i)!;
      const got = await t.probe('ext', 'tcp', NET.nodeIP, np, { count: 1 });
      expect(got.names, `svc-${i} at NodePort ${np}`).toEqual({ [pod(i)]: 1 });
    }
  });

  it('every path from a built-in chain stays within kpx depth limit, far below the kernel one', () => {
    const d4 = chainDepth(tablesFromSave(save4));
    const d6 = chainDepth(tablesFromSave(save6));
    console.log(`scale: chain depth IPv4 ${JSON.stringify(d4)}, IPv6 ${JSON.stringify(d6)} (kpx limit ${MAX_CHAIN_DEPTH}, nf_tables 16)`);
    for (const d of [d4, d6]) for (const v of Object.values(d)) expect(v).toBeLessThanOrEqual(MAX_CHAIN_DEPTH);
  });

  it('the live rules walk a new connection through a bounded number of nat rules', () => {
    const tracer = new Tracer(tablesFromSave(save4), { localAddresses: [NET.nodeIP, NET.bridgeIP, '127.0.0.1'] });
    let worst = 0;
    let total = 0;
    let n = 0;
    for (let i = 0; i < N; i += 97) {
      const outs = tracer.trace({ family: 'IPv4', proto: 'tcp', src: P.client, dst: cluster.serviceIP(i), dport: 80, from: { inIface: 'kpxbr0' } });
      expect(outs.map((o) => o.dnat)).toEqual([`${P[pod(i)]}:8080`]);
      worst = Math.max(worst, outs[0]!.rules.nat);
      total += outs[0]!.rules.nat;
      n++;
    }
    // the root, at most depthBound levels of at most `max` rules, the service chain and its endpoint chain
    const bound = (depthBound(N + 3000) + 1) * DEFAULT_SHAPE.max + 2 + 2;
    console.log(`scale: ${N} services, nat rules walked to a ClusterIP: mean ${(total / n).toFixed(1)}, worst ${worst} (bound ${bound}); kube-proxy's KUBE-SERVICES would hold ${N} rules`);
    expect(worst).toBeLessThanOrEqual(bound);
    expect(save4.split('\n').filter((l) => l.startsWith('-A KPX-SERVICES ')).length).toBeLessThanOrEqual(DEFAULT_SHAPE.max + 1);
  });
});
