// The nftables mode's first proof with real packets: the renderer turns a catalogue of
// Services into kpx's `ip kpx` / `ip6 kpx` tables, the applier runs `nft` inside the node
// namespace (through a runner that prefixes `ip netns exec`), and real TCP and UDP
// connections between namespaces prove ClusterIP spread, NodePort with masquerade, reject
// without endpoints, externalTrafficPolicy Local (client address kept, drop without local
// endpoints), internalTrafficPolicy Local, session affinity, LB source ranges, hairpin and
// dual-stack; then a partial sync, a restart that writes nothing, and cleanup.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv, netnsRunner } from '../substrate/netns.js';
import { endpointSlice, node, service, type EndpointSpec } from '../substrate/manifests.js';
import { ClusterState, type Change } from '../../src/model/state.js';
import { NftablesRenderer } from '../../src/render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../../src/render/nftables/config.js';
import { checkNftables, NftablesApplier, removeNftablesTables } from '../../src/apply/nftables.js';
import type { CommandRunner } from '../../src/apply/exec.js';
import { silentLogger } from '../../src/util/log.js';
import type { IPFamily } from '../../src/util/ip.js';

const env = await dataplaneEnv();

const P = {
  a: { ip: '198.18.1.11', ip6: '2001:2:1::11' },
  b: { ip: '198.18.1.12', ip6: '2001:2:1::12' },
  c: { ip: '198.18.1.13', ip6: '2001:2:1::13' },
  client: { ip: '198.18.1.50', ip6: '2001:2:1::50' },
  hair: { ip: '198.18.1.60', ip6: '2001:2:1::60' },
  r1: { ip: '198.18.2.21', ip6: '2001:2:2::21' },
};
const CLIENT_EXTRA = Array.from({ length: 8 }, (_, i) => `198.18.1.${51 + i}`);
const IP = {
  web: '198.19.0.10',
  np: '198.19.0.20',
  empty: '198.19.0.30',
  hair: '198.19.0.40',
  etp: '198.19.3.1',
  etpNone: '198.19.3.2',
  itp: '198.19.3.3',
  itpNone: '198.19.3.4',
  aff: '198.19.3.12',
  fw: '198.19.3.20',
  ds: '198.19.4.1',
};
const VIP = { etp: '198.19.100.21', etpNone: '198.19.100.22', fw: '198.19.100.30' };
const DS6 = '2001:2:0:ff::1';

type Obj = { kind: Change['kind']; obj: object };
type Pod = keyof typeof P;
const ep = (p: Pod, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip: P[p].ip, node: p === 'r1' ? 'node-b' : 'node-a', ...extra });

function svc(name: string, clusterIP: string, eps: EndpointSpec[], o: { type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer'; nodePort?: number; vip?: string; spec?: Record<string, unknown>; targetPort?: number; udp?: boolean } = {}): Obj[] {
  const port = o.targetPort ?? 8080;
  return [
    {
      kind: 'Service',
      obj: service({
        name,
        type: o.type ?? 'ClusterIP',
        clusterIP,
        ports: [
          { name: 'http', port: 80, targetPort: port, ...(o.nodePort ? { nodePort: o.nodePort } : {}) },
          ...(o.udp ? [{ name: 'udp', port: 80, protocol: 'UDP' as const, targetPort: port, ...(o.nodePort ? { nodePort: o.nodePort + 1 } : {}) }] : []),
        ],
        spec: o.spec,
        ...(o.vip ? { status: { loadBalancer: { ingress: [{ ip: o.vip }] } } } : {}),
      }),
    },
    {
      kind: 'EndpointSlice',
      obj: endpointSlice({ service: name, ports: [{ name: 'http', port }, ...(o.udp ? [{ name: 'udp', port, protocol: 'UDP' as const }] : [])], endpoints: eps }),
    },
  ];
}

function catalogue(): Obj[] {
  const local = { externalTrafficPolicy: 'Local' };
  return [
    { kind: 'Node', obj: node({ ips: [NET.nodeIP, NET.nodeIP6], podCIDRs: [NET.podCIDR, NET.podCIDR6] }) },
    ...svc('web', IP.web, [ep('a'), ep('b'), ep('c')], { udp: true }),
    ...svc('np', IP.np, [ep('a')], { type: 'NodePort', nodePort: 30080 }),
    ...svc('empty', IP.empty, [], { type: 'NodePort', nodePort: 30098, udp: true }),
    ...svc('hair', IP.hair, [ep('hair')], { targetPort: 9090 }),
    ...svc('etp', IP.etp, [ep('a'), ep('r1')], { type: 'LoadBalancer', nodePort: 30201, vip: VIP.etp, spec: local }),
    ...svc('etp-none', IP.etpNone, [ep('r1')], { type: 'LoadBalancer', nodePort: 30202, vip: VIP.etpNone, spec: local }),
    ...svc('itp', IP.itp, [ep('b'), ep('r1')], { spec: { internalTrafficPolicy: 'Local' } }),
    ...svc('itp-none', IP.itpNone, [ep('r1')], { spec: { internalTrafficPolicy: 'Local' } }),
    ...svc('aff', IP.aff, [ep('a'), ep('b'), ep('c')], { spec: { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } } }),
    ...svc('fw', IP.fw, [ep('a')], { type: 'LoadBalancer', nodePort: 30230, vip: VIP.fw, spec: { loadBalancerSourceRanges: [`${NET.extIP}/32`] } }),
    {
      kind: 'Service',
      obj: service({
        name: 'ds',
        type: 'NodePort',
        clusterIP: [IP.ds, DS6],
        ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30301 }],
        spec: { ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack' },
      }),
    },
    { kind: 'EndpointSlice', obj: endpointSlice({ service: 'ds', family: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [ep('a'), ep('b')] }) },
    { kind: 'EndpointSlice', obj: endpointSlice({ service: 'ds', family: 'IPv6', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.a.ip6 }, { ip: P.b.ip6 }] }) },
  ];
}

function config(family: IPFamily): NftablesRenderConfig {
  return {
    family,
    nodeName: 'node-a',
    zone: undefined,
    nodeIPs: family === 'IPv4' ? [NET.nodeIP] : [NET.nodeIP6],
    localDetector: { source: family === 'IPv4' ? NET.podCIDR : NET.podCIDR6 },
    masqueradeAll: false,
    masqueradeMark: '0x4000',
    nodePortAddresses: 'all',
    randomFully: true,
  };
}

describe.skipIf(!env.ok)(`nftables mode, real packets${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let runner: CommandRunner;
  const state = new ClusterState('node-a', silentLogger);
  const families: IPFamily[] = ['IPv4', 'IPv6'];
  const renderers = new Map<IPFamily, NftablesRenderer>();
  const appliers = new Map<IPFamily, NftablesApplier>();
  const configs = new Map(families.map((f) => [f, config(f)] as const));

  const sync = async (changed: string[] | 'all') => {
    const out = [];
    for (const f of families) out.push(await appliers.get(f)!.apply(renderers.get(f)!, renderers.get(f)!.render(state.view(f), configs.get(f)!, changed)));
    return out;
  };

  beforeAll(async () => {
    t = await Topology.create({
      ipv6: true,
      pods: [
        { name: 'a', ...P.a, ports: [8080] },
        { name: 'b', ...P.b, ports: [8080] },
        { name: 'c', ...P.c, ports: [8080] },
        { name: 'client', ...P.client, extraIPs: CLIENT_EXTRA },
        { name: 'hair', ...P.hair, ports: [9090] },
        { name: 'r1', ...P.r1, remote: true, ports: [8080] },
      ],
    });
    runner = netnsRunner(t.node);
    await checkNftables(runner);
    for (const o of catalogue()) state.apply({ kind: o.kind, current: o.obj } as Change);
    for (const f of families) {
      renderers.set(f, new NftablesRenderer());
      appliers.set(f, new NftablesApplier(f, runner, silentLogger));
    }
    const reports = await sync('all');
    expect(reports.map((r) => r.recreated)).toEqual([true, true]);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('spreads 300 ClusterIP connections from a pod over three endpoints and keeps the pod address', async () => {
    const r = await t.probe('client', 'tcp', IP.web, 80, { count: 300 });
    expect(r.errors).toEqual({});
    for (const name of ['a', 'b', 'c']) {
      const share = (r.names[name] ?? 0) / 300;
      expect(share, `${name} got ${r.names[name]}`).toBeGreaterThanOrEqual(0.2);
      expect(share, `${name} got ${r.names[name]}`).toBeLessThanOrEqual(0.47);
    }
    expect(Object.keys(r.clients)).toEqual([P.client.ip]);
    const udp = await t.probe('client', 'udp', IP.web, 80, { count: 30 });
    expect(udp.ok).toBe(30);
    expect(Object.keys(udp.names).length).toBeGreaterThanOrEqual(2);
  });

  it('masquerades ClusterIP traffic from the node (outside the pod CIDR)', async () => {
    const r = await t.probe('node', 'tcp', IP.web, 80, { count: 5 });
    expect(r.ok).toBe(5);
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
  });

  it('serves a NodePort to an external client, masqueraded to the node', async () => {
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30080, { count: 20 });
    expect(r.errors).toEqual({});
    expect(r.names).toEqual({ a: 20 });
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
  });

  it('refuses a service without endpoints at once: cluster IP and NodePort, TCP and UDP; and undefined ports of a cluster IP', async () => {
    expect((await t.probe('client', 'tcp', IP.empty, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30098, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    expect((await t.probe('client', 'udp', IP.empty, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    expect((await t.probe('ext', 'udp', NET.nodeIP, 30099, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    // port 81 of a served cluster IP matches no service port: cluster-ips-check rejects it
    expect((await t.probe('client', 'tcp', IP.web, 81, { count: 1, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 1 });
  });

  it('lets a pod reach itself through its ClusterIP (hairpin, masqueraded)', async () => {
    const r = await t.probe('hair', 'tcp', IP.hair, 80, { count: 5 });
    expect(r.names).toEqual({ hair: 5 });
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
  });

  it('externalTrafficPolicy Local: external clients keep their address and reach only the local endpoint', async () => {
    for (const [host, port] of [
      [VIP.etp, 80],
      [NET.nodeIP, 30201],
    ] as const) {
      const r = await t.probe('ext', 'tcp', host, port, { count: 20 });
      expect(r.errors, `${host}:${port}`).toEqual({});
      expect(r.names, `${host}:${port}`).toEqual({ a: 20 });
      expect(Object.keys(r.clients), `${host}:${port}`).toEqual([NET.extIP]);
    }
  });

  it('externalTrafficPolicy Local without a local endpoint: dropped from outside, while pods short-circuit to the remote one', async () => {
    expect((await t.probe('ext', 'tcp', VIP.etpNone, 80, { count: 1, timeoutMs: 1500 })).errors).toEqual({ TIMEOUT: 1 });
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30202, { count: 1, timeoutMs: 1500 })).errors).toEqual({ TIMEOUT: 1 });
    expect((await t.probe('client', 'tcp', VIP.etpNone, 80, { count: 5 })).names).toEqual({ r1: 5 });
  });

  it('internalTrafficPolicy Local: only the local endpoint; dropped without one', async () => {
    expect((await t.probe('client', 'tcp', IP.itp, 80, { count: 20 })).names).toEqual({ b: 20 });
    expect((await t.probe('client', 'tcp', IP.itpNone, 80, { count: 1, timeoutMs: 1500 })).errors).toEqual({ TIMEOUT: 1 });
  });

  it('session affinity: one client stays on one endpoint, eight clients spread', async () => {
    const one = await t.probe('client', 'tcp', IP.aff, 80, { count: 30 });
    expect(one.ok).toBe(30);
    expect(Object.keys(one.names)).toHaveLength(1);
    const seen = new Set<string>();
    for (const ip of CLIENT_EXTRA) {
      const r = await t.probe('client', 'tcp', IP.aff, 80, { count: 3, bind: ip });
      expect(Object.keys(r.names), ip).toHaveLength(1);
      seen.add(Object.keys(r.names)[0]!);
    }
    expect(seen.size).toBeGreaterThanOrEqual(2);
  });

  it('loadBalancerSourceRanges: a listed source gets in, another is dropped, the NodePort is not filtered', async () => {
    expect((await t.probe('ext', 'tcp', VIP.fw, 80, { count: 5, bind: NET.extIP })).names).toEqual({ a: 5 });
    expect((await t.probe('ext', 'tcp', VIP.fw, 80, { count: 2, bind: NET.extIP2, timeoutMs: 1500 })).errors).toEqual({ TIMEOUT: 2 });
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30230, { count: 2, bind: NET.extIP2 })).names).toEqual({ a: 2 });
  });

  it('dual-stack: the same service over IPv4 and IPv6, ClusterIP and NodePort', async () => {
    const v4 = await t.probe('client', 'tcp', IP.ds, 80, { count: 20 });
    const v6 = await t.probe('client', 'tcp', DS6, 80, { count: 20 });
    expect(v4.ok).toBe(20);
    expect(v6.ok).toBe(20);
    expect(Object.keys(v6.clients)).toEqual([P.client.ip6]);
    expect(Object.keys(v6.names).sort()).toEqual(['a', 'b']);
    const np6 = await t.probe('ext', 'tcp', NET.nodeIP6, 30301, { count: 10 });
    expect(np6.errors).toEqual({});
    expect(Object.keys(np6.clients)).toEqual([NET.bridgeIP6]);
  });

  it('follows a partial sync (3 endpoints -> 1) with a small transaction: the policy chains and the hairpin elements of the local endpoints that went', async () => {
    state.apply({ kind: 'EndpointSlice', current: svc('web', IP.web, [ep('b')], { udp: true })[1]!.obj } as Change);
    const [v4] = await sync(['default/web']);
    expect(v4!.full).toBe(false);
    // one `delete element` from hairpin-connections (the only statement that makes nft read every chain)
    expect(v4!.slowStatements).toBe(1);
    expect(v4!.elementsAdded).toBe(0);
    expect(v4!.elementsRemoved).toBeGreaterThan(0);
    expect((await t.probe('client', 'tcp', IP.web, 80, { count: 30 })).names).toEqual({ b: 30 });
    // and a deletion: the service goes, its cluster IP refuses nothing any more (no rule at all)
    state.apply({ kind: 'Service', previous: svc('np', IP.np, [])[0]!.obj } as Change);
    const [del] = await sync(['default/np']);
    expect(del!.elementsRemoved).toBe(3);
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30080, { count: 1, timeoutMs: 1500 })).ok).toBe(0);
  });

  it('writes nothing when restarted with the same input, and the kernel holds the digest kpx computed', async () => {
    for (const f of families) {
      const r = new NftablesRenderer();
      const a = new NftablesApplier(f, runner, silentLogger);
      const rep = await a.apply(r, r.render(state.view(f), configs.get(f)!, 'all'));
      expect(rep.statements, f).toBe(0);
      // the kernel holds the digest the first applier kept up to date through every partial sync
      expect(await a.readDigest()).toBe(appliers.get(f)!.digest);
    }
    expect((await t.probe('client', 'tcp', IP.web, 80, { count: 5 })).names).toEqual({ b: 5 });
  });

  it('cleanup removes both tables and nothing else', async () => {
    await t.exec('node', 'nft', ['add', 'table', 'ip', 'someone-else']);
    expect(await removeNftablesTables(runner, silentLogger)).toEqual({ removed: ['ip', 'ip6'] });
    const left = (await t.exec('node', 'nft', ['list', 'tables'])).stdout;
    expect(left.trim()).toBe('table ip someone-else');
    expect((await t.probe('client', 'tcp', IP.web, 80, { count: 1, timeoutMs: 1500 })).ok).toBe(0);
  });
});
