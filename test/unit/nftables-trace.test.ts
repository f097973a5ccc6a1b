// The nftables walker of `kpx trace` on rendered tables: kpx's rule text reads into the
// rule model and prints back unchanged; ClusterIP spread, NodePort, source ranges,
// externalTrafficPolicy Local, no endpoints, session affinity, masquerade and hairpin give
// kube-proxy's outcomes; and over seeded random catalogues the same packets traced through
// the iptables mode's rules and the nftables mode's end the same way (DNAT target,
// masquerade, verdict, probability), except where the two kube-proxy layouts differ.
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { renderNftables } from '../../src/render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../../src/render/nftables/config.js';
import { affinitySetName, servicePortNames } from '../../src/render/nftables/names.js';
import { renderIptables } from '../../src/render/iptables/ruleset.js';
import { parseRule, ruleText, tableFromListing, type NftTableModel } from '../../src/nftables/rules.js';
import { parseListing, type BaseChainSpec } from '../../src/nftables/format.js';
import { NftTracer, affinitySetsWith, tableFromRenderer } from '../../src/trace/nftables.js';
import { Tracer, tablesFromRuleset, type Outcome, type TracePacket } from '../../src/trace/tracer.js';
import { cidrContains, parseCIDR } from '../../src/util/ip.js';
import { silentLogger } from '../../src/util/log.js';
import { endpointSlice, node, service, type EndpointSpec } from '../substrate/manifests.js';
import { NODE_LOCAL_ADDRESSES, baseConfig } from '../substrate/render-config.js';
import { randomModel, type RandomService } from '../substrate/random-model.js';

type Obj = { kind: Change['kind']; obj: object };

const NODE = '198.18.0.10';
const SRC = {
  pod: { src: '198.18.1.50', from: { inIface: 'kpxbr0', bridged: true } },
  node: { src: NODE, from: 'local' as const },
  external: { src: '198.18.0.1', from: { inIface: 'eth0' } },
  /** outside the source ranges below */
  stranger: { src: '198.18.0.2', from: { inIface: 'eth0' } },
};
type Source = keyof typeof SRC;

const local = (ip: string, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip, node: 'node-a', ...extra });
const remote = (ip: string, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip, node: 'node-b', ...extra });

function svc(name: string, clusterIP: string, eps: EndpointSpec[], o: { type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer'; nodePort?: number; vip?: string; spec?: Record<string, unknown>; protocol?: 'TCP' | 'UDP' } = {}): Obj[] {
  const protocol = o.protocol ?? 'TCP';
  return [
    {
      kind: 'Service',
      obj: service({
        name,
        type: o.type ?? 'ClusterIP',
        clusterIP,
        ports: [{ name: 'http', port: 80, protocol, targetPort: 8080, ...(o.nodePort ? { nodePort: o.nodePort } : {}) }],
        spec: o.spec,
        ...(o.vip ? { status: { loadBalancer: { ingress: [{ ip: o.vip }] } } } : {}),
      }),
    },
    { kind: 'EndpointSlice', obj: endpointSlice({ service: name, ports: [{ name: 'http', port: 8080, protocol }], endpoints: eps }) },
  ];
}

function stateOf(objects: Obj[]): ClusterState {
  const s = new ClusterState('node-a', silentLogger);
  s.apply({ kind: 'Node', current: node({ ips: [NODE], podCIDRs: ['198.18.1.0/24'], zone: 'z1' }) } as Change);
  for (const o of objects) s.apply({ kind: o.kind, current: o.obj } as Change);
  return s;
}

const CATALOGUE: Obj[] = [
  ...svc('one', '198.19.0.1', [local('198.18.1.11')]),
  ...svc('three', '198.19.0.3', [local('198.18.1.11'), local('198.18.1.12'), remote('198.18.2.21')]),
  ...svc('five', '198.19.0.5', [1, 2, 3, 4, 5].map((i) => (i % 2 ? local(`198.18.1.${10 + i}`) : remote(`198.18.2.${20 + i}`)))),
  ...svc('np', '198.19.0.20', [local('198.18.1.11'), remote('198.18.2.21')], { type: 'NodePort', nodePort: 30080, protocol: 'UDP' }),
  ...svc('empty', '198.19.0.30', [], { type: 'NodePort', nodePort: 30030 }),
  ...svc('etp', '198.19.0.40', [local('198.18.1.11'), remote('198.18.2.21')], { type: 'LoadBalancer', nodePort: 30040, vip: '198.19.100.40', spec: { externalTrafficPolicy: 'Local', healthCheckNodePort: 32040 } }),
  ...svc('etp-none', '198.19.0.41', [remote('198.18.2.21')], { type: 'LoadBalancer', nodePort: 30041, vip: '198.19.100.41', spec: { externalTrafficPolicy: 'Local', healthCheckNodePort: 32041 } }),
  ...svc('fw', '198.19.0.50', [local('198.18.1.11')], { type: 'LoadBalancer', nodePort: 30050, vip: '198.19.100.50', spec: { loadBalancerSourceRanges: ['198.18.0.1/32'] } }),
  ...svc('sticky', '198.19.0.60', [local('198.18.1.11'), local('198.18.1.12'), remote('198.18.2.21')], { spec: { sessionAffinity: 'ClientIP' } }),
];

const cfgs: Record<string, NftablesRenderConfig> = {
  'numgen rules, detect-local by CIDR': baseConfig,
  'numgen vmaps, detect-local by interface': { ...baseConfig, endpointSelection: 'vmap', localDetector: { inInterface: 'kpxbr+' } },
};

function tableOf(objects: Obj[], cfg: NftablesRenderConfig = baseConfig): NftTableModel {
  return tableFromRenderer(renderNftables(stateOf(objects).view('IPv4'), cfg));
}

function packet(from: Source, dst: string, dport: number, proto: 'tcp' | 'udp' = 'tcp'): TracePacket {
  return { family: 'IPv4', proto, dst, dport, ...SRC[from] };
}

/** "VERDICT target masq" -> probability, summed over paths. */
function summary(outs: readonly Outcome[]): Record<string, number> {
  const m: Record<string, number> = {};
  for (const o of outs) {
    const k = `${o.verdict} ${o.dnat ?? '-'}${o.masquerade ? ' masq' : ''}`;
    m[k] = Number(((m[k] ?? 0) + o.probability).toFixed(9));
  }
  return m;
}

describe('nftables rule model: kpx\'s rule text', () => {
  const variants: Record<string, NftablesRenderConfig> = {
    ...cfgs,
    'nodePortAddresses listed, masqueradeAll, no random-fully': { ...baseConfig, nodePortAddresses: [NODE], masqueradeAll: true, randomFully: false },
  };
  for (const [name, cfg] of Object.entries(variants)) {
    it(`every rule the renderer writes reads into the model and prints back as written (${name})`, () => {
      const r = renderNftables(stateOf(CATALOGUE).view('IPv4'), cfg);
      let n = 0;
      for (const c of r.chains()) {
        for (const text of c.rules) {
          const rule = parseRule(text);
          expect(rule.unsupported, text).toBeUndefined();
          expect(ruleText(rule)).toBe(text);
          n++;
        }
      }
      expect(n).toBeGreaterThan(60);
    });
  }

  it('a rule it cannot evaluate is kept, marked, and refused only when a packet reaches it', () => {
    expect(parseRule('meta skuid 0 accept').unsupported).toContain('meta skuid is not traced');
    const t = tableOf(CATALOGUE);
    const chains = new Map(t.chains);
    const unreached = { name: 'hand-made', policy: 'accept' as const, rules: [parseRule('meta skuid 0 accept')] };
    chains.set('hand-made', unreached);
    const tracer = new NftTracer({ ...t, chains }, { localAddresses: NODE_LOCAL_ADDRESSES });
    expect(summary(tracer.trace(packet('pod', '198.19.0.1', 80)))).toEqual({ 'ACCEPT 198.18.1.11:8080': 1 });
    const prerouting = t.chains.get('filter-prerouting')!;
    chains.set('filter-prerouting', { ...prerouting, rules: [parseRule('jump hand-made'), ...prerouting.rules] });
    expect(() => new NftTracer({ ...t, chains }, { localAddresses: NODE_LOCAL_ADDRESSES }).trace(packet('pod', '198.19.0.1', 80))).toThrow(/meta skuid/);
  });
});

/** A table from chains written as kpx writes them: name -> [base, rules]. */
function handMade(chains: Record<string, [BaseChainSpec | null, string[], ('accept' | 'drop')?]>): NftTableModel {
  return {
    family: 'ip',
    name: 'kpx',
    chains: new Map(Object.entries(chains).map(([name, [base, rules, policy]]) => [name, { name, ...(base ? { base } : {}), policy: policy ?? 'accept', rules: rules.map(parseRule) }])),
    sets: new Map(),
  };
}

describe('nftables walker: the kernel\'s verdict semantics', () => {
  const pre = (priority: number): BaseChainSpec => ({ type: 'filter', hook: 'prerouting', priority });
  const walk = (t: NftTableModel) => new NftTracer(t, { localAddresses: [NODE] }).paths(packet('external', '198.19.0.1', 80));
  it('goto leaves the calling chain when its target returns; jump comes back to the next rule', () => {
    const t = (verb: string) => handMade({ base: [pre(0), [`${verb} b`, 'drop']], b: [null, ['mark set 0x1']] });
    expect(walk(t('jump')).map((o) => o.verdict)).toEqual(['DROP']);
    const gone = walk(t('goto'));
    expect(gone.map((o) => [o.verdict, o.mark])).toEqual([['ACCEPT', 1]]);
    expect(gone[0]!.steps.map((s) => [s.chain, s.verdict])).toEqual([
      ['base', 'goto b'],
      ['b', 'continue'],
    ]);
  });
  it('base chains of a hook run by priority; accept ends one base chain only; drop ends the packet; the policy decides what falls off', () => {
    const t = handMade({
      late: [pre(10), ['mark and 0x2 == 0x2 drop']],
      early: [pre(-10), ['mark set mark or 0x2', 'accept', 'drop']],
    });
    const [o] = walk(t);
    expect(o!.verdict).toBe('DROP');
    expect(o!.steps.map((s) => s.chain)).toEqual(['early', 'early', 'late']);
    expect(walk(handMade({ only: [pre(0), ['ip saddr 198.18.9.9 accept'], 'drop'] }))[0]).toMatchObject({ verdict: 'DROP', decidedBy: 'policy drop of only' });
  });
  it('return leaves a jumped-to chain; a numgen match splits the branch by its chance', () => {
    const t = handMade({ base: [pre(0), ['jump b', 'numgen random mod 4 offset 1 != 1 drop']], b: [null, ['return', 'drop']] });
    const outs = walk(t);
    expect(outs.map((o) => [o.verdict, o.probability])).toEqual([
      ['DROP', 0.75],
      ['ACCEPT', 0.25],
    ]);
    expect(outs[0]!.steps.at(-1)).toMatchObject({ chance: 0.75, verdict: 'drop' });
  });
});

describe('nftables walker on rendered tables', () => {
  for (const [name, cfg] of Object.entries(cfgs)) {
    describe(name, () => {
      const tracer = new NftTracer(tableOf(CATALOGUE, cfg), { localAddresses: NODE_LOCAL_ADDRESSES });
      const trace = (from: Source, dst: string, dport: number, proto: 'tcp' | 'udp' = 'tcp') => tracer.trace(packet(from, dst, dport, proto));

      it('ClusterIP with N endpoints: N outcomes of 1/N each, summing to 1; pods keep their address, the node is masqueraded', () => {
        for (const [ip, eps] of [
          ['198.19.0.1', ['198.18.1.11']],
          ['198.19.0.3', ['198.18.1.11', '198.18.1.12', '198.18.2.21']],
          ['198.19.0.5', ['198.18.1.11', '198.18.2.22', '198.18.1.13', '198.18.2.24', '198.18.1.15']],
        ] as const) {
          const outs = trace('pod', ip, 80);
          expect(outs.map((o) => o.dnat).sort()).toEqual(eps.map((e) => `${e}:8080`).sort());
          for (const o of outs) {
            expect(o.verdict).toBe('ACCEPT');
            expect(o.probability).toBeCloseTo(1 / eps.length, 9);
            expect(o.masquerade).toBe(false);
          }
          expect(outs.reduce((a, o) => a + o.probability, 0)).toBeCloseTo(1, 9);
          // off-cluster traffic to a ClusterIP is masqueraded (it may leave the node again)
          for (const from of ['node', 'external'] as const) expect(trace(from, ip, 80).every((o) => o.masquerade)).toBe(true);
        }
      });

      it('NodePort: both endpoints, masqueraded, from an external client and from a pod; the journey names hooks and chains', () => {
        const ext = trace('external', NODE, 30080, 'udp');
        expect(summary(ext)).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 0.5, 'ACCEPT 198.18.2.21:8080 masq': 0.5 });
        const steps = ext[0]!.steps.map((s) => `${s.table}/${s.hook} ${s.chain}`);
        expect(steps.slice(0, 3)).toEqual(['filter/prerouting filter-prerouting', 'nat/prerouting nat-prerouting', 'nat/prerouting services']);
        expect(ext[0]!.steps.find((s) => s.target === 'MASQUERADE')).toMatchObject({ table: 'nat', hook: 'postrouting', chain: 'masquerading', verdict: 'accept' });
        expect(ext[0]!.chains).toContain(servicePortNames('default/np', 'udp', 'http').external);
        expect(summary(trace('pod', '198.18.1.1', 30080, 'udp'))).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 0.5, 'ACCEPT 198.18.2.21:8080 masq': 0.5 });
        // a NodePort of another protocol is no service: delivered to the node untouched
        expect(summary(trace('external', NODE, 30080, 'tcp'))).toEqual({ 'ACCEPT -': 1 });
      });

      it('loadBalancerSourceRanges: a listed source reaches the endpoint, another is dropped by the firewall chain, the NodePort is not filtered', () => {
        expect(summary(trace('external', '198.19.100.50', 80))).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 1 });
        const dropped = trace('stranger', '198.19.100.50', 80);
        expect(summary(dropped)).toEqual({ 'DROP -': 1 });
        expect(dropped[0]!.decidedBy).toBe('drop comment "default/fw:http loadBalancerSourceRanges"');
        expect(dropped[0]!.steps.at(-1)).toMatchObject({ table: 'filter', hook: 'prerouting', chain: servicePortNames('default/fw', 'tcp', 'http').firewall });
        expect(summary(trace('stranger', NODE, 30050))).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 1 });
        // the node itself (its address is not in the range) may still reach its LB IP
        expect(summary(trace('node', '198.19.100.50', 80))).toEqual({ 'DROP -': 1 });
      });

      it('externalTrafficPolicy Local: external clients reach local endpoints only, source kept; none here: drop; pods and the node short-circuit', () => {
        for (const [dst, port] of [
          ['198.19.100.40', 80],
          [NODE, 30040],
        ] as const) {
          expect(summary(trace('external', dst, port))).toEqual({ 'ACCEPT 198.18.1.11:8080': 1 });
          expect(summary(trace('pod', dst, port))).toEqual({ 'ACCEPT 198.18.1.11:8080': 0.5, 'ACCEPT 198.18.2.21:8080': 0.5 });
          expect(summary(trace('node', dst, port))).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 0.5, 'ACCEPT 198.18.2.21:8080 masq': 0.5 });
        }
        const none = trace('external', '198.19.100.41', 80);
        expect(summary(none)).toEqual({ 'DROP -': 1 });
        expect(none[0]!.decidedBy).toMatch(/vmap @no-endpoint-services .*: drop\]$/);
        expect(summary(trace('external', NODE, 30041))).toEqual({ 'DROP -': 1 });
        // the ClusterIP follows internalTrafficPolicy (Cluster): the remote endpoint is fine
        expect(summary(trace('pod', '198.19.0.41', 80))).toEqual({ 'ACCEPT 198.18.2.21:8080': 1 });
      });

      it('no endpoints: REJECT for the ClusterIP and the NodePort; an undefined port of a cluster IP: REJECT', () => {
        for (const [from, dst, port] of [
          ['pod', '198.19.0.30', 80],
          ['node', '198.19.0.30', 80],
          ['external', NODE, 30030],
        ] as const) {
          const outs = trace(from, dst, port);
          expect(summary(outs)).toEqual({ 'REJECT -': 1 });
          expect(outs[0]!.chains).toContain('reject-chain');
        }
        const undefinedPort = trace('pod', '198.19.0.1', 81);
        expect(summary(undefinedPort)).toEqual({ 'REJECT -': 1 });
        expect(undefinedPort[0]!.decidedBy).toContain('undefined port of a cluster IP');
      });

      it('hairpin: a pod reaching itself through its service is masqueraded (hairpin-connections)', () => {
        const self = tracer.trace({ family: 'IPv4', proto: 'tcp', src: '198.18.1.11', dst: '198.19.0.1', dport: 80, from: { inIface: 'kpxbr0', bridged: true } });
        expect(summary(self)).toEqual({ 'ACCEPT 198.18.1.11:8080 masq': 1 });
      });

      it('session affinity: a new client spreads and is recorded in its endpoint\'s set; a client in a set goes back to that endpoint only', () => {
        const base = servicePortNames('default/sticky', 'tcp', 'http').base;
        const set = (ip: string) => affinitySetName(base, ip, 8080, 10800);
        const fresh = trace('pod', '198.19.0.60', 80);
        expect(fresh).toHaveLength(3);
        for (const o of fresh) {
          expect(o.probability).toBeCloseTo(1 / 3, 9);
          expect(o.recentSet).toEqual([set(o.dnat!.split(':')[0]!)]);
        }
        const bound = new NftTracer(tableOf(CATALOGUE, cfg), { localAddresses: NODE_LOCAL_ADDRESSES, recent: new Set([set('198.18.2.21')]) });
        const again = bound.trace(packet('pod', '198.19.0.60', 80));
        expect(summary(again)).toEqual({ 'ACCEPT 198.18.2.21:8080': 1 });
        // the affinity rule matched, no numgen draw was taken
        expect(again[0]!.steps.some((s) => s.chance !== undefined)).toBe(false);
      });
    });
  }

  it('numgen rules and numgen vmaps give the same outcomes for every service and source', () => {
    const a = new NftTracer(tableOf(CATALOGUE, cfgs['numgen rules, detect-local by CIDR']), { localAddresses: NODE_LOCAL_ADDRESSES });
    const b = new NftTracer(tableOf(CATALOGUE, { ...baseConfig, endpointSelection: 'vmap' }), { localAddresses: NODE_LOCAL_ADDRESSES });
    for (const ip of ['198.19.0.1', '198.19.0.3', '198.19.0.5', '198.19.0.60']) {
      for (const from of Object.keys(SRC) as Source[]) expect(summary(b.trace(packet(from, ip, 80)))).toEqual(summary(a.trace(packet(from, ip, 80))));
    }
  });

  it('IPv6: the ip6 table walks the same way', () => {
    const s = new ClusterState('node-a', silentLogger);
    s.apply({ kind: 'Node', current: node({ ips: ['2001:2::10'], podCIDRs: ['2001:2:1::/64'] }) } as Change);
    s.apply({ kind: 'Service', current: service({ name: 'v6', clusterIP: '2001:2:0:ff::10', ports: [{ name: 'http', port: 80, targetPort: 8080 }], spec: { ipFamilies: ['IPv6'] } }) } as Change);
    s.apply({ kind: 'EndpointSlice', current: endpointSlice({ service: 'v6', family: 'IPv6', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '2001:2:1::11' }, { ip: '2001:2:1::12' }] }) } as Change);
    const cfg: NftablesRenderConfig = { ...baseConfig, family: 'IPv6', nodeIPs: ['2001:2::10'], localDetector: { source: '2001:2:1::/64' } };
    const t = new NftTracer(tableFromRenderer(renderNftables(s.view('IPv6'), cfg)), { localAddresses: ['2001:2::10', '::1'] });
    const pod = t.trace({ family: 'IPv6', proto: 'tcp', src: '2001:2:1::50', dst: '2001:2:0:ff::10', dport: 80, from: { inIface: 'kpxbr0', bridged: true } });
    expect(summary(pod)).toEqual({ 'ACCEPT [2001:2:1::11]:8080': 0.5, 'ACCEPT [2001:2:1::12]:8080': 0.5 });
    const ext = t.trace({ family: 'IPv6', proto: 'tcp', src: '2001:2::1', dst: '2001:2:0:ff::10', dport: 80, from: { inIface: 'eth0' } });
    expect(ext.every((o) => o.masquerade)).toBe(true);
  });

  it('a live listing: the affinity sets a client is in are read from the kernel\'s elements', () => {
    const listing = JSON.stringify({
      nftables: [
        { table: { family: 'ip', name: 'kpx' } },
        { set: { family: 'ip', table: 'kpx', name: 'aff-a', type: 'ipv4_addr', flags: ['timeout'], timeout: 60, elem: [{ elem: { val: '198.18.1.50', timeout: 60, expires: 41 } }] } },
        { set: { family: 'ip', table: 'kpx', name: 'aff-b', type: 'ipv4_addr', flags: ['timeout'], timeout: 60 } },
        { chain: { family: 'ip', table: 'kpx', name: 'pre', type: 'nat', hook: 'prerouting', prio: -100, policy: 'accept' } },
        { chain: { family: 'ip', table: 'kpx', name: 'ep-a' } },
        { chain: { family: 'ip', table: 'kpx', name: 'ep-b' } },
        ...(['a', 'b'] as const).map((x, i) => ({
          rule: { family: 'ip', table: 'kpx', chain: `ep-${x}`, expr: [{ set: { op: 'update', elem: { payload: { protocol: 'ip', field: 'saddr' } }, set: `@aff-${x}` } }, { dnat: { addr: `198.18.1.1${i}`, port: 8080 } }] },
        })),
        ...(['a', 'b'] as const).map((x) => ({
          rule: { family: 'ip', table: 'kpx', chain: 'pre', expr: [{ match: { op: '==', left: { payload: { protocol: 'ip', field: 'saddr' } }, right: `@aff-${x}` } }, { goto: { target: `ep-${x}` } }] },
        })),
        { rule: { family: 'ip', table: 'kpx', chain: 'pre', expr: [{ vmap: { key: { numgen: { mode: 'random', mod: 2, offset: 0 } }, data: { set: [[0, { goto: { target: 'ep-a' } }], [1, { goto: { target: 'ep-b' } }]] } } }] } },
      ],
    });
    const t = tableFromListing(parseListing(listing).get('ip kpx')!);
    const bound = affinitySetsWith(t, '198.18.1.50');
    expect([...bound]).toEqual(['aff-a']);
    expect([...affinitySetsWith(t, '198.18.1.51')]).toEqual([]);
    const p = (src: string): TracePacket => ({ ...packet('external', '198.19.0.1', 80), src });
    expect(summary(new NftTracer(t, { localAddresses: [], recent: bound }).trace(p('198.18.1.50')))).toEqual({ 'ACCEPT 198.18.1.10:8080': 1 });
    expect(summary(new NftTracer(t, { localAddresses: [] }).trace(p('198.18.1.51')))).toEqual({ 'ACCEPT 198.18.1.10:8080': 0.5, 'ACCEPT 198.18.1.11:8080': 0.5 });
  });
});

/**
 * Where kpx's two layouts (kube-proxy's two layouts) end a packet differently. nftables mode
 * hooks the endpoint check at output as well (after the output DNAT, so a Local policy's
 * short-circuit to any endpoint goes through, as in iptables mode): the node's own packets
 * to an LB IP or external IP are rejected when the service has no usable endpoint, where
 * iptables mode lets them leave untranslated. And its firewall runs before the endpoint
 * check, also without endpoints: a source outside loadBalancerSourceRanges is dropped there
 * (iptables mode has no firewall chain without endpoints, and rejects). Returns the
 * nftables verdict then, or null: both modes agree.
 */
function layoutDifference(s: RandomService, src: string, from: Source, dst: 'clusterIP' | 'nodePort' | 'vip' | 'externalIP'): 'REJECT' | 'DROP' | null {
  const usable = s.endpoints.filter((e) => e.serving !== false);
  // the firewall (before the DNAT) comes first, the endpoint check (after it) second
  if (!usable.length && dst === 'vip' && s.sourceRanges && !s.sourceRanges.some((r) => cidrContains(parseCIDR(r)!, src))) return 'DROP';
  if (from === 'node' && (dst === 'vip' || dst === 'externalIP') && !usable.length) return 'REJECT';
  return null;
}

describe('the same packets through the iptables and the nftables mode (seeded random catalogues)', () => {
  const sources = { ...SRC, endpoint: { src: '198.18.1.10', from: { inIface: 'kpxbr0', bridged: true } } };
  const counts = { packets: 0, layoutDifferences: 0, probabilistic: 0 };
  for (let seed = 1; seed <= 30; seed++) {
    it(`seed ${seed}: every outcome (DNAT target, masquerade, verdict, probability) agrees`, () => {
      const m = randomModel(seed, 10);
      const view = m.state.view('IPv4');
      // every service drawn is valid (none was left out of the model)
      expect([...view.serviceKeys()].sort()).toEqual(m.services.map((s) => `default/${s.name}`).sort());
      const ipt = new Tracer(tablesFromRuleset(renderIptables(view, baseConfig)), { localAddresses: NODE_LOCAL_ADDRESSES });
      const nft = new NftTracer(tableFromRenderer(renderNftables(view, baseConfig)), { localAddresses: NODE_LOCAL_ADDRESSES });
      for (const s of m.services) {
        const dsts: Array<['clusterIP' | 'nodePort' | 'vip' | 'externalIP', string, number]> = [['clusterIP', s.clusterIP, s.port]];
        if (s.nodePort) dsts.push(['nodePort', NODE, s.nodePort]);
        if (s.vip) dsts.push(['vip', s.vip, s.port]);
        if (s.externalIP) dsts.push(['externalIP', s.externalIP, s.port]);
        for (const [from, so] of Object.entries(sources)) {
          for (const [kind, ip, port] of dsts) {
            const pkt: TracePacket = { family: 'IPv4', proto: s.protocol === 'TCP' ? 'tcp' : 'udp', dst: ip, dport: port, ...so };
            const want = summary(ipt.trace(pkt));
            const got = summary(nft.trace(pkt));
            const where = `${s.name} (${s.type}) from ${from} to its ${kind}`;
            counts.packets++;
            if (Object.keys(want).length > 1) counts.probabilistic++;
            const differs = layoutDifference(s, so.src, from as Source, kind);
            if (differs) {
              counts.layoutDifferences++;
              expect(got, where).toEqual({ [`${differs} -`]: 1 });
              expect(want, where).not.toEqual(got);
            } else expect(got, where).toEqual(want);
          }
        }
      }
    });
  }
  it('the catalogues exercised spreading, and the layout differences are few', () => {
    console.log(`[nftables-trace] ${counts.packets} packets over 30 catalogues: ${counts.probabilistic} spread over endpoints, ${counts.layoutDifferences} where the layouts differ`);
    expect(counts.packets).toBeGreaterThan(1500);
    expect(counts.probabilistic).toBeGreaterThan(counts.packets / 5);
    expect(counts.layoutDifferences).toBeGreaterThan(0);
    expect(counts.layoutDifferences).toBeLessThan(counts.packets / 10);
  });
});
