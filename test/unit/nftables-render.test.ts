// The nftables renderer: layout, every Service feature, names, and incremental renders
// (exact deltas, and a property test: incremental renders applied to the fake end where a
// fresh render applied to an empty fake does).
import { describe, expect, it } from 'vitest';
import { ClusterState, changedServices, type Change } from '../../src/model/state.js';
import { NftablesRenderer, renderNftables, type NftRenderResult } from '../../src/render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../../src/render/nftables/config.js';
import { affinitySetName, endpointChainName, escapeComponent, servicePortNames } from '../../src/render/nftables/names.js';
import { NftablesApplier } from '../../src/apply/nftables.js';
import { silentLogger } from '../../src/util/log.js';
import { endpointSlice, node, service, type EndpointSpec } from '../substrate/manifests.js';
import { baseConfig } from '../substrate/render-config.js';
import { FakeNft } from '../substrate/fake-nft.js';

type Obj = { kind: Change['kind']; obj: object };

function stateOf(objects: Obj[], nodeName = 'node-a') {
  const s = new ClusterState(nodeName, silentLogger);
  for (const o of objects) s.apply({ kind: o.kind, current: o.obj } as Change);
  return s;
}

const cfg: NftablesRenderConfig = baseConfig;

function svc(name: string, ip: string, eps: EndpointSpec[], o: { spec?: Record<string, unknown>; type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer'; nodePort?: number; vip?: string; port?: number; protocol?: 'TCP' | 'UDP' } = {}): Obj[] {
  return [
    {
      kind: 'Service',
      obj: service({
        name,
        type: o.type ?? 'ClusterIP',
        clusterIP: ip,
        ports: [{ name: 'http', port: o.port ?? 80, protocol: o.protocol ?? 'TCP', ...(o.nodePort ? { nodePort: o.nodePort } : {}) }],
        spec: o.spec,
        ...(o.vip ? { status: { loadBalancer: { ingress: [{ ip: o.vip }] } } } : {}),
      }),
    },
    { kind: 'EndpointSlice', obj: endpointSlice({ service: name, ports: [{ name: 'http', port: 8080, protocol: o.protocol ?? 'TCP' }], endpoints: eps }) },
  ];
}

const local = (ip: string, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip, node: 'node-a', ...extra });
const remote = (ip: string, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip, node: 'node-b', ...extra });

function chainsOf(r: NftablesRenderer) {
  return new Map([...r.chains()].map((c) => [c.name, c.rules]));
}
function elementsOf(r: NftablesRenderer, set: string) {
  return new Map([...r.elements()].filter(([s]) => s === set).map(([, k, v]) => [k, v]));
}
/** a partial render's delta (a full render has none) */
function deltaOf(res: NftRenderResult) {
  if (res.kind !== 'delta') throw new Error('a delta was expected');
  return res.delta;
}
const names = (name: string, proto = 'tcp') => servicePortNames(`default/${name}`, proto, 'http');

describe('nftables renderer: layout', () => {
  it('hooks base chains at kube-proxy nftables priorities and dispatches through verdict maps', () => {
    const r = renderNftables(stateOf([]).view('IPv4'), cfg);
    const base = [...r.chains()].filter((c) => c.base).map((c) => [c.name, c.base!.type, c.base!.hook, c.base!.priority, c.rules]);
    expect(base).toEqual([
      ['filter-prerouting', 'filter', 'prerouting', -110, ['ct state new jump firewall-check']],
      ['filter-input', 'filter', 'input', -110, ['ct state new jump nodeport-endpoints-check', 'ct state new jump service-endpoints-check']],
      ['filter-forward', 'filter', 'forward', -110, ['ct state new jump service-endpoints-check', 'ct state new jump cluster-ips-check']],
      ['filter-output', 'filter', 'output', -110, ['ct state new jump firewall-check']],
      ['filter-output-post-dnat', 'filter', 'output', -90, ['ct state new jump service-endpoints-check', 'ct state new jump cluster-ips-check']],
      ['nat-prerouting', 'nat', 'prerouting', -100, ['jump services']],
      ['nat-output', 'nat', 'output', -100, ['jump services']],
      ['nat-postrouting', 'nat', 'postrouting', 100, ['jump masquerading']],
    ]);
    const c = chainsOf(r);
    expect(c.get('services')).toEqual([
      'ip daddr . meta l4proto . th dport vmap @service-ips',
      'fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports',
    ]);
    expect(c.get('masquerading')).toEqual([
      'ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections mark set mark or 0x4000',
      'mark and 0x4000 == 0 return',
      'mark set mark xor 0x4000',
      'masquerade fully-random',
    ]);
    expect(c.get('mark-for-masquerade')).toEqual(['mark set mark or 0x4000']);
    expect(c.get('reject-chain')).toEqual(['reject']);
    expect(c.get('nodeport-endpoints-check')).toEqual(['ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports']);
    expect(c.get('cluster-ips-check')).toEqual(['ip daddr @cluster-ips reject comment "undefined port of a cluster IP"']);
    expect([...r.sets()].map((s) => `${s.kind} ${s.name} ${s.type}${s.data ? ` : ${s.data}` : ''}`)).toEqual([
      'set cluster-ips ipv4_addr',
      'set nodeport-ips ipv4_addr',
      'map service-ips ipv4_addr . inet_proto . inet_service : verdict',
      'map service-nodeports inet_proto . inet_service : verdict',
      'map no-endpoint-services ipv4_addr . inet_proto . inet_service : verdict',
      'map no-endpoint-nodeports inet_proto . inet_service : verdict',
      'map firewall-ips ipv4_addr . inet_proto . inet_service : verdict',
      'set hairpin-connections ipv4_addr . ipv4_addr . inet_proto . inet_service',
    ]);
    // without random-fully support, plain masquerade
    expect(chainsOf(renderNftables(stateOf([]).view('IPv4'), { ...cfg, randomFully: false })).get('masquerading')![3]).toBe('masquerade');
  });

  it('drops traffic to an address of the ServiceCIDRs that no Service holds, after rejecting undefined ports of cluster IPs', () => {
    const ranges = (objs: object[]) => {
      const st = stateOf(objs.map((obj) => ({ kind: 'ServiceCIDR' as const, obj })));
      return { v4: st.serviceCIDRs('IPv4'), v6: st.serviceCIDRs('IPv6') };
    };
    const cidr = (name: string, cidrs: string[]) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'ServiceCIDR', metadata: { name }, spec: { cidrs } });
    // one object per family or both in one; a duplicate range once; host bits cleared; an invalid range skipped
    const got = ranges([cidr('kubernetes', ['198.19.0.0/16', '2001:2:0:ff::/64']), cidr('extra', ['198.20.0.1/24', 'nonsense']), cidr('again', ['198.19.0.0/16'])]);
    expect(got).toEqual({ v4: ['198.19.0.0/16', '198.20.0.0/24'], v6: ['2001:2:0:ff::/64'] });
    const check = (serviceCIDRs: string[]) => chainsOf(renderNftables(stateOf([]).view('IPv4'), { ...cfg, serviceCIDRs })).get('cluster-ips-check');
    expect(check(['198.19.0.0/16'])).toEqual(['ip daddr @cluster-ips reject comment "undefined port of a cluster IP"', 'ip daddr 198.19.0.0/16 drop comment "unallocated cluster IP"']);
    expect(check(got.v4)?.[1]).toBe('ip daddr { 198.19.0.0/16, 198.20.0.0/24 } drop comment "unallocated cluster IP"');
    expect(check([])).toEqual(['ip daddr @cluster-ips reject comment "undefined port of a cluster IP"']);
    // a deleted ServiceCIDR takes its ranges with it
    const st = stateOf([{ kind: 'ServiceCIDR', obj: cidr('kubernetes', ['198.19.0.0/16']) }]);
    st.apply({ kind: 'ServiceCIDR', previous: cidr('kubernetes', ['198.19.0.0/16']) });
    expect(st.serviceCIDRs('IPv4')).toEqual([]);
  });

  it('lists every chain after the chains its rules refer to', () => {
    const r = renderNftables(stateOf([...svc('a', '198.19.0.1', [local('198.18.1.1'), remote('198.18.2.1')], { type: 'LoadBalancer', nodePort: 30001, vip: '198.19.100.1', spec: { loadBalancerSourceRanges: ['198.18.0.0/24'], externalTrafficPolicy: 'Local', sessionAffinity: 'ClientIP' } })]).view('IPv4'), cfg);
    const seen = new Set<string>();
    for (const c of r.chains()) {
      for (const rule of c.rules) for (const m of rule.matchAll(/(?:jump|goto) (\S+)/g)) expect(seen.has(m[1]!), `${c.name} -> ${m[1]}`).toBe(true);
      seen.add(c.name);
    }
  });

  it('uses nodeport-ips (without loopback) when nodePortAddresses is a list', () => {
    const r = renderNftables(stateOf([]).view('IPv4'), { ...cfg, nodePortAddresses: ['127.0.0.1', '198.18.0.10'] });
    expect(chainsOf(r).get('services')![1]).toBe('ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports');
    expect(chainsOf(r).get('nodeport-endpoints-check')).toEqual(['ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports']);
    expect([...elementsOf(r, 'nodeport-ips').keys()]).toEqual(['198.18.0.10']);
  });
});

describe('nftables renderer: services', () => {
  it('sends a ClusterIP through service-ips to a chain that DNATs to an endpoint picked uniformly', () => {
    const r = renderNftables(stateOf(svc('web', '198.19.0.10', [local('198.18.1.11'), local('198.18.1.12'), remote('198.18.2.13')])).view('IPv4'), cfg);
    const n = names('web');
    expect(n.cluster).toMatch(/^service-[A-Z2-7]{8}-default\/web\/tcp\/http$/);
    expect(elementsOf(r, 'service-ips')).toEqual(new Map([['198.19.0.10 . tcp . 80', `goto ${n.cluster}`]]));
    expect(elementsOf(r, 'cluster-ips')).toEqual(new Map([['198.19.0.10', undefined]]));
    expect(chainsOf(r).get(n.cluster)).toEqual([
      'ip daddr 198.19.0.10 tcp dport 80 ip saddr != 198.18.1.0/24 jump mark-for-masquerade',
      'numgen random mod 3 0 meta l4proto tcp dnat to 198.18.1.11:8080',
      'numgen random mod 2 0 meta l4proto tcp dnat to 198.18.1.12:8080',
      'meta l4proto tcp dnat to 198.18.2.13:8080',
    ]);
    // no endpoint chains without affinity; local endpoints reaching themselves are masqueraded
    expect(chainsOf(r).has(endpointChainName(n.base, '198.18.1.11', 8080))).toBe(false);
    expect(elementsOf(r, 'hairpin-connections')).toEqual(
      new Map([
        ['198.18.1.11 . 198.18.1.11 . tcp . 8080', undefined],
        ['198.18.1.12 . 198.18.1.12 . tcp . 8080', undefined],
      ]),
    );
    // kube-proxy's anonymous map, when asked for
    const v = renderNftables(stateOf(svc('web', '198.19.0.10', [local('198.18.1.11'), local('198.18.1.12')])).view('IPv4'), { ...cfg, endpointSelection: 'vmap' });
    expect(chainsOf(v).get(n.cluster)![1]).toBe('meta l4proto tcp dnat ip addr . port to numgen random mod 2 map { 0 : 198.18.1.11 . 8080, 1 : 198.18.1.12 . 8080 }');
  });

  it('masquerades by detect-local mode: source CIDR, interface, interface prefix, masqueradeAll, none', () => {
    const objs = svc('web', '198.19.0.10', [local('198.18.1.11')]);
    const first = (c: NftablesRenderConfig) => chainsOf(renderNftables(stateOf(objs).view('IPv4'), c)).get(names('web').cluster)![0];
    expect(first({ ...cfg, localDetector: { inInterface: 'kpxbr0' } })).toBe('ip daddr 198.19.0.10 tcp dport 80 iifname != "kpxbr0" jump mark-for-masquerade');
    expect(first({ ...cfg, localDetector: { inInterface: 'veth+' } })).toBe('ip daddr 198.19.0.10 tcp dport 80 iifname != "veth*" jump mark-for-masquerade');
    expect(first({ ...cfg, masqueradeAll: true })).toBe('ip daddr 198.19.0.10 tcp dport 80 jump mark-for-masquerade');
    expect(first({ ...cfg, localDetector: null })).toBe('meta l4proto tcp dnat to 198.18.1.11:8080');
  });

  it('rejects a service without endpoints on its cluster IP and NodePort, with no chain of its own', () => {
    const r = renderNftables(stateOf(svc('none', '198.19.0.30', [], { type: 'NodePort', nodePort: 30099, protocol: 'UDP' })).view('IPv4'), cfg);
    expect(elementsOf(r, 'no-endpoint-services')).toEqual(new Map([['198.19.0.30 . udp . 80', 'goto reject-chain']]));
    expect(elementsOf(r, 'no-endpoint-nodeports')).toEqual(new Map([['udp . 30099', 'goto reject-chain']]));
    expect(elementsOf(r, 'service-ips').size).toBe(0);
    expect(elementsOf(r, 'service-nodeports').size).toBe(0);
    expect([...r.chains()].filter((c) => c.name.includes('/'))).toEqual([]);
  });

  it('externalTrafficPolicy Local: local endpoints only from outside, pods and the node short-circuit, drop without local endpoints', () => {
    const n = names('etp');
    const r = renderNftables(
      stateOf(svc('etp', '198.19.3.1', [local('198.18.1.11'), remote('198.18.2.21')], { type: 'LoadBalancer', nodePort: 30201, vip: '198.19.100.21', spec: { externalTrafficPolicy: 'Local', externalIPs: ['198.19.200.1'] } })).view('IPv4'),
      cfg,
    );
    expect(chainsOf(r).get(n.external)).toEqual([
      `ip saddr 198.18.1.0/24 goto ${n.cluster} comment "short-circuit pod traffic"`,
      'fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
      `fib saddr type local goto ${n.cluster} comment "short-circuit local traffic"`,
      `goto ${n.local}`,
    ]);
    expect(chainsOf(r).get(n.local)).toEqual(['meta l4proto tcp dnat to 198.18.1.11:8080']);
    expect(elementsOf(r, 'service-ips')).toEqual(
      new Map([
        ['198.19.3.1 . tcp . 80', `goto ${n.cluster}`],
        ['198.19.200.1 . tcp . 80', `goto ${n.external}`],
        ['198.19.100.21 . tcp . 80', `goto ${n.external}`],
      ]),
    );
    expect(elementsOf(r, 'service-nodeports')).toEqual(new Map([['tcp . 30201', `goto ${n.external}`]]));
    // no local endpoint: the external chain has no policy jump, and external destinations drop
    const none = renderNftables(stateOf(svc('etp', '198.19.3.1', [remote('198.18.2.21')], { type: 'LoadBalancer', nodePort: 30201, vip: '198.19.100.21', spec: { externalTrafficPolicy: 'Local', externalIPs: ['198.19.200.1'] } })).view('IPv4'), cfg);
    expect(chainsOf(none).get(n.external)!.at(-1)).toBe(`fib saddr type local goto ${n.cluster} comment "short-circuit local traffic"`);
    expect(elementsOf(none, 'no-endpoint-services')).toEqual(
      new Map([
        ['198.19.200.1 . tcp . 80', 'drop'],
        ['198.19.100.21 . tcp . 80', 'drop'],
      ]),
    );
    expect(elementsOf(none, 'no-endpoint-nodeports')).toEqual(new Map([['tcp . 30201', 'drop']]));
    expect(none.noLocalEndpoints()).toEqual({ internal: 0, external: 1 });
    // externalTrafficPolicy Cluster: mark for masquerade, then the cluster chain
    const cl = renderNftables(stateOf(svc('etp', '198.19.3.1', [remote('198.18.2.21')], { type: 'NodePort', nodePort: 30201 })).view('IPv4'), cfg);
    expect(chainsOf(cl).get(n.external)).toEqual(['jump mark-for-masquerade', `goto ${n.cluster}`]);
  });

  it('internalTrafficPolicy Local: the cluster IP goes to local endpoints, and drops without them', () => {
    const n = names('itp');
    const r = renderNftables(stateOf(svc('itp', '198.19.3.3', [local('198.18.1.12'), remote('198.18.2.21')], { spec: { internalTrafficPolicy: 'Local' } })).view('IPv4'), cfg);
    expect(elementsOf(r, 'service-ips')).toEqual(new Map([['198.19.3.3 . tcp . 80', `goto ${n.local}`]]));
    expect(chainsOf(r).get(n.local)).toEqual([
      'ip daddr 198.19.3.3 tcp dport 80 ip saddr != 198.18.1.0/24 jump mark-for-masquerade',
      'meta l4proto tcp dnat to 198.18.1.12:8080',
    ]);
    expect(chainsOf(r).has(n.cluster)).toBe(false);
    const none = renderNftables(stateOf(svc('itp', '198.19.3.3', [remote('198.18.2.21')], { spec: { internalTrafficPolicy: 'Local' } })).view('IPv4'), cfg);
    expect(elementsOf(none, 'no-endpoint-services')).toEqual(new Map([['198.19.3.3 . tcp . 80', 'drop']]));
    expect(none.noLocalEndpoints()).toEqual({ internal: 1, external: 0 });
  });

  it('session affinity: one set per endpoint with the timeout, checked before the random pick and updated in the endpoint chain', () => {
    const n = names('aff');
    const r = renderNftables(stateOf(svc('aff', '198.19.3.12', [local('198.18.1.11'), local('198.18.1.12')], { spec: { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } } })).view('IPv4'), cfg);
    const set = (ip: string) => affinitySetName(n.base, ip, 8080, 60);
    const ep = (ip: string) => endpointChainName(n.base, ip, 8080);
    expect([...r.sets()].filter((s) => s.name.startsWith('affinity-'))).toEqual([
      { kind: 'set', name: set('198.18.1.11'), type: 'ipv4_addr', flags: ['dynamic', 'timeout'], timeout: 60 },
      { kind: 'set', name: set('198.18.1.12'), type: 'ipv4_addr', flags: ['dynamic', 'timeout'], timeout: 60 },
    ]);
    expect(chainsOf(r).get(n.cluster)!.slice(1)).toEqual([
      `ip saddr @${set('198.18.1.11')} goto ${ep('198.18.1.11')}`,
      `ip saddr @${set('198.18.1.12')} goto ${ep('198.18.1.12')}`,
      `numgen random mod 2 0 goto ${ep('198.18.1.11')}`,
      `goto ${ep('198.18.1.12')}`,
    ]);
    expect(chainsOf(r).get(ep('198.18.1.11'))).toEqual([
      'ip saddr 198.18.1.11 jump mark-for-masquerade',
      `update @${set('198.18.1.11')} { ip saddr }`,
      'meta l4proto tcp dnat to 198.18.1.11:8080',
    ]);
    // a new timeout is a new set (a set's timeout cannot change in place)
    expect(affinitySetName(n.base, '198.18.1.11', 8080, 61)).not.toBe(set('198.18.1.11'));
  });

  it('loadBalancerSourceRanges: firewall-ips sends LB traffic to a chain that drops other sources, and lets the node in when it is in range', () => {
    const n = names('lb');
    const objs = svc('lb', '198.19.3.20', [remote('198.18.2.21')], { type: 'LoadBalancer', nodePort: 30220, vip: '198.19.100.20', spec: { loadBalancerSourceRanges: ['198.18.0.1/32', '198.18.5.0/24'] } });
    const r = renderNftables(stateOf(objs).view('IPv4'), { ...cfg, nodeIPs: ['198.18.5.10'] });
    expect(elementsOf(r, 'firewall-ips')).toEqual(new Map([['198.19.100.20 . tcp . 80', `goto ${n.firewall}`]]));
    expect(chainsOf(r).get(n.firewall)).toEqual([
      'ip saddr 198.18.0.1/32 return',
      'ip saddr 198.18.5.0/24 return',
      'ip saddr 198.19.100.20 return',
      'drop comment "default/lb:http loadBalancerSourceRanges"',
    ]);
    const other = renderNftables(stateOf(objs).view('IPv4'), cfg);
    expect(chainsOf(other).get(n.firewall)).not.toContain('ip saddr 198.19.100.20 return');
  });

  it('falls back to serving terminating endpoints and follows topology hints (shared categorizeEndpoints)', () => {
    const n = names('t');
    const term = renderNftables(stateOf(svc('t', '198.19.3.5', [local('198.18.1.11', { ready: false, serving: true, terminating: true }), remote('198.18.2.21', { ready: false, serving: false, terminating: true })])).view('IPv4'), cfg);
    expect(chainsOf(term).get(n.cluster)!.slice(1)).toEqual(['meta l4proto tcp dnat to 198.18.1.11:8080']);
    const topo = renderNftables(stateOf([{ kind: 'Node', obj: node({ ips: ['198.18.0.10'], zone: 'z1' }) }, ...svc('t', '198.19.3.8', [local('198.18.1.11', { zoneHints: ['z1'] }), remote('198.18.2.21', { zoneHints: ['z2'] })])]).view('IPv4'), cfg);
    expect(chainsOf(topo).get(n.cluster)!.slice(1)).toEqual(['meta l4proto tcp dnat to 198.18.1.11:8080']);
  });

  it('renders IPv6 with ip6 matches, ipv6_addr maps and bracketed DNAT targets', () => {
    const objs: Obj[] = [
      { kind: 'Service', obj: service({ name: 'v6', clusterIP: '2001:2:0:ff::10', ports: [{ name: 'http', port: 80 }], spec: { ipFamilies: ['IPv6'] } }) },
      { kind: 'EndpointSlice', obj: endpointSlice({ service: 'v6', family: 'IPv6', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '2001:2:1::11' }] }) },
    ];
    const r = renderNftables(stateOf(objs).view('IPv6'), { ...cfg, family: 'IPv6', localDetector: { source: '2001:2:1::/64' }, nodeIPs: ['2001:2::10'] });
    const n = names('v6');
    const ep = endpointChainName(n.base, '2001:2:1::11', 8080);
    expect(ep).toMatch(/__2001\.2\.1\.\.11\/8080$/);
    expect(chainsOf(r).get(n.cluster)!.at(-1)).toBe('meta l4proto tcp dnat to [2001:2:1::11]:8080');
    expect(chainsOf(r).get('services')).toEqual([
      'ip6 daddr . meta l4proto . th dport vmap @service-ips',
      'fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports',
    ]);
    expect([...r.sets()].find((s) => s.name === 'service-ips')!.type).toBe('ipv6_addr . inet_proto . inet_service');
    expect(elementsOf(r, 'service-ips')).toEqual(new Map([['2001:2:0:ff::10 . tcp . 80', `goto ${n.cluster}`]]));
  });

  it('gives a claimed address and port to the older service, and hands it over when that one goes', () => {
    const older = { metadata: { creationTimestamp: '2026-01-01T00:00:00Z' } };
    const a = svc('a', '198.19.0.1', [local('198.18.1.11')], { spec: { externalIPs: ['198.19.200.9'] } });
    const b = svc('b', '198.19.0.2', [local('198.18.1.12')], { spec: { externalIPs: ['198.19.200.9'] } });
    const aOld = { ...(a[0]!.obj as { metadata: object }), metadata: { ...(a[0]!.obj as { metadata: object }).metadata, ...older.metadata } };
    const s = stateOf([b[0]!, { kind: 'Service', obj: aOld }, a[1]!, b[1]!]);
    const r = new NftablesRenderer();
    r.render(s.view('IPv4'), cfg, 'all');
    expect(elementsOf(r, 'service-ips').get('198.19.200.9 . tcp . 80')).toBe(`goto ${names('a').external}`);
    s.takePending();
    s.apply({ kind: 'Service', previous: aOld } as Change);
    const delta = deltaOf(r.render(s.view('IPv4'), cfg, changedServices(s.takePending())));
    expect(delta.removeElements.get('service-ips')).toEqual(new Set(['198.19.0.1 . tcp . 80', '198.19.200.9 . tcp . 80']));
    // b was skipped whole while a served its frontend (the model names it); now all of it is served
    expect(delta.addElements.get('service-ips')).toEqual(
      new Map([
        ['198.19.0.2 . tcp . 80', `goto ${names('b').cluster}`],
        ['198.19.200.9 . tcp . 80', `goto ${names('b').external}`],
      ]),
    );
  });
});

describe('nftables names', () => {
  it('escapes what nft names cannot hold, keeps "__" for the endpoint separator, and stays within 255 characters', () => {
    expect(escapeComponent('my-svc')).toBe('my-svc');
    expect(escapeComponent('a_b.c')).toBe('a_5fb_2ec');
    expect(escapeComponent('ü')).toBe('_c3_bc');
    const long = servicePortNames(`${'n'.repeat(63)}/${'s'.repeat(63)}`, 'sctp', 'p'.repeat(63));
    const ep = endpointChainName(long.base, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 65535);
    expect(long.external.length).toBeLessThanOrEqual(255);
    expect(ep.length).toBeLessThanOrEqual(255);
    expect(affinitySetName(long.base, 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 65535, 10800).length).toBeLessThanOrEqual(255);
    expect(ep.endsWith('...') || ep.length < 255).toBe(true);
    for (const n of [long.cluster, ep]) expect(n).toMatch(/^[A-Za-z][A-Za-z0-9_./-]*$/);
  });
});

// ---------------------------------------------------------------------------------------
// Incremental renders.

describe('nftables renderer: incremental', () => {
  it('reports exactly what an endpoint change touches: the service chain and the hairpin elements of local endpoints', () => {
    const s = stateOf([...svc('web', '198.19.0.10', [local('198.18.1.11'), local('198.18.1.12')]), ...svc('other', '198.19.0.11', [local('198.18.1.13')])]);
    const r = new NftablesRenderer();
    r.render(s.view('IPv4'), cfg, 'all');
    s.apply({ kind: 'EndpointSlice', current: svc('web', '198.19.0.10', [local('198.18.1.11'), local('198.18.1.14')])[1]!.obj } as Change);
    const delta = deltaOf(r.render(s.view('IPv4'), cfg, ['default/web']));
    const n = names('web');
    expect([...delta.writeChains.keys()]).toEqual([n.cluster]);
    expect([...delta.removeChains]).toEqual([]);
    expect(delta.removeElements).toEqual(new Map([['hairpin-connections', new Set(['198.18.1.12 . 198.18.1.12 . tcp . 8080'])]]));
    expect(delta.addElements).toEqual(new Map([['hairpin-connections', new Map([['198.18.1.14 . 198.18.1.14 . tcp . 8080', undefined]])]]));
    expect(delta.addSets.size + delta.removeSets.size).toBe(0);
    // nothing changed: nothing to do
    const again = deltaOf(r.render(s.view('IPv4'), cfg, ['default/web', 'default/other']));
    expect(again.writeChains.size + again.removeChains.size + again.addElements.size + again.removeElements.size).toBe(0);
  });

  it('moves a service between reject and dispatch with element changes only in the maps it leaves and enters', () => {
    const s = stateOf(svc('web', '198.19.0.10', []));
    const r = new NftablesRenderer();
    r.render(s.view('IPv4'), cfg, 'all');
    s.apply({ kind: 'EndpointSlice', current: svc('web', '198.19.0.10', [local('198.18.1.11')])[1]!.obj } as Change);
    const delta = deltaOf(r.render(s.view('IPv4'), cfg, ['default/web']));
    expect(delta.removeElements).toEqual(new Map([['no-endpoint-services', new Set(['198.19.0.10 . tcp . 80'])]]));
    expect(delta.addElements).toEqual(
      new Map<string, Map<string, string | undefined>>([
        ['service-ips', new Map([['198.19.0.10 . tcp . 80', `goto ${names('web').cluster}`]])],
        ['hairpin-connections', new Map<string, string | undefined>([['198.18.1.11 . 198.18.1.11 . tcp . 8080', undefined]])],
      ]),
    );
  });
});

/** A small random cluster and random changes to it. */
function rng(seed: number) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function randomService(rand: () => number, i: number): Obj[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const type = pick(['ClusterIP', 'NodePort', 'LoadBalancer'] as const);
  const n = Math.floor(rand() * 4);
  const eps: EndpointSpec[] = Array.from({ length: n }, (_, j) => ({
    ip: `198.18.${pick([1, 2])}.${10 + ((i * 7 + j * 3 + Math.floor(rand() * 5)) % 200)}`,
    node: pick(['node-a', 'node-b']),
    ...(rand() < 0.2 ? { ready: false, serving: rand() < 0.5, terminating: true } : {}),
  }));
  const uniq = [...new Map(eps.map((e) => [e.ip, e])).values()];
  const spec: Record<string, unknown> = {};
  if (rand() < 0.3) spec.sessionAffinity = 'ClientIP';
  if (rand() < 0.3) spec.sessionAffinityConfig = { clientIP: { timeoutSeconds: pick([30, 60]) } };
  if (type !== 'ClusterIP' && rand() < 0.4) spec.externalTrafficPolicy = 'Local';
  if (rand() < 0.2) spec.internalTrafficPolicy = 'Local';
  if (rand() < 0.3) spec.externalIPs = [`198.19.200.${1 + Math.floor(rand() * 3)}`];
  if (type === 'LoadBalancer' && rand() < 0.5) spec.loadBalancerSourceRanges = ['198.18.0.0/24'];
  if (spec.sessionAffinity !== 'ClientIP') delete spec.sessionAffinityConfig;
  return svc(`s${i}`, `198.19.0.${i + 1}`, uniq, {
    type,
    ...(type !== 'ClusterIP' ? { nodePort: 30000 + i } : {}),
    ...(type === 'LoadBalancer' ? { vip: `198.19.100.${1 + Math.floor(rand() * 4)}` } : {}),
    spec,
  });
}

describe('nftables: incremental renders applied to the fake equal fresh renders', () => {
  for (const [seed, mode] of [
    [1, 'rules'],
    [2, 'vmap'],
    [3, 'rules'],
  ] as const) {
    it(`seed ${seed} (${mode}), 40 random change steps`, async () => {
      const rand = rng(seed);
      const c: NftablesRenderConfig = { ...cfg, endpointSelection: mode, nodeIPs: ['198.18.0.10'] };
      const s = new ClusterState('node-a', silentLogger);
      const current = new Map<number, Obj[]>();
      const fake = new FakeNft();
      const r = new NftablesRenderer();
      // staleDelayMs 0 with a long max age: retired chains linger until a deleting transaction
      const applier = new NftablesApplier('IPv4', fake, silentLogger, { staleDelayMs: 0, staleMaxAgeMs: 1e12 });
      let result: NftRenderResult = r.render(s.view('IPv4'), c, 'all');
      await applier.apply(r, result);
      for (let step = 0; step < 40; step++) {
        s.takePending();
        for (let k = 0; k < 1 + Math.floor(rand() * 3); k++) {
          const i = Math.floor(rand() * 8);
          const old = current.get(i);
          if (old && rand() < 0.3) {
            for (const o of old) s.apply({ kind: o.kind, previous: o.obj } as Change);
            current.delete(i);
          } else {
            const next = randomService(rand, i);
            for (const o of next) s.apply({ kind: o.kind, current: o.obj } as Change);
            current.set(i, next);
          }
        }
        // what the model says changed: a change to one service can hand a frontend it
        // claimed to another one (the older Service wins a shared address and port)
        result = r.render(s.view('IPv4'), c, changedServices(s.takePending()));
        await applier.apply(r, result);
        await applier.cleanup({ force: true });
        const fresh = new FakeNft();
        await new NftablesApplier('IPv4', fresh, silentLogger).apply(renderNftables(s.view('IPv4'), c), { kind: 'full', servicePortsRendered: 0 });
        expect(fake.dump(), `step ${step}`).toBe(fresh.dump());
      }
      // and the incremental renderer's own state equals a fresh one
      const fresh = renderNftables(s.view('IPv4'), c);
      expect([...r.chains()].sort((a, b) => (a.name < b.name ? -1 : 1))).toEqual([...fresh.chains()].sort((a, b) => (a.name < b.name ? -1 : 1)));
      expect(new Set([...r.elements()].map((e) => e.join('|')))).toEqual(new Set([...fresh.elements()].map((e) => e.join('|'))));
    });
  }
});
