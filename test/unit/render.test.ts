import { describe, expect, it } from 'vitest';
import { changedServices, ClusterState, type Change } from '../../src/model/state.js';
import { renderIptables, IptablesRenderer, type TableName } from '../../src/render/iptables/ruleset.js';
import { planFull, planPartial } from '../../src/render/iptables/restore.js';
import { ruleTarget } from '../../src/iptables/save.js';
import { rulesOf } from '../../src/iptables/format.js';
import type { IptablesRenderConfig } from '../../src/render/iptables/config.js';
import { probability } from '../../src/render/iptables/service.js';
import { silentLogger } from '../../src/util/log.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';
import { baseConfig } from '../substrate/render-config.js';


function stateOf(objects: Array<{ kind: Change['kind']; obj: object }>, nodeName = 'node-a') {
  const s = new ClusterState(nodeName, silentLogger);
  for (const o of objects) s.apply({ kind: o.kind, current: o.obj } as Change);
  return s;
}

const web = (n: number, extra: Partial<Parameters<typeof service>[0]> = {}) => [
  { kind: 'Service' as const, obj: service({ name: 'web', clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80 }], ...extra }) },
  {
    kind: 'EndpointSlice' as const,
    obj: endpointSlice({
      service: 'web',
      ports: [{ name: 'http', port: 8080 }],
      endpoints: Array.from({ length: n }, (_, i) => ({ ip: `198.18.1.${10 + i}` })),
    }),
  },
];

/** chain -> rules of one table */
function rulesByChain(r: IptablesRenderer, table: TableName): Map<string, string[]> {
  return new Map([...r.chains(table)].map(([n, b]) => [n, rulesOf(n, b)]));
}
const nat = (cfg = baseConfig, objs = web(3)) => rulesByChain(renderIptables(stateOf(objs).view('IPv4'), cfg), 'nat');

describe('iptables renderer', () => {
  it('is deterministic, whatever order the objects arrive in', () => {
    const objs = [
      ...web(3),
      { kind: 'Service' as const, obj: service({ name: 'b', clusterIP: '198.19.0.11', ports: [{ port: 81 }] }) },
      { kind: 'Node' as const, obj: node({ ips: ['198.18.0.10'] }) },
    ];
    const a = renderIptables(stateOf(objs).view('IPv4'), baseConfig);
    const b = renderIptables(stateOf([...objs].reverse()).view('IPv4'), baseConfig);
    const text = (r: typeof a) => planFull(r, { filter: { chains: new Set(), jumps: new Map() }, nat: { chains: new Set(), jumps: new Map() } }).text;
    expect(text(a)).toBe(text(b));
    expect(text(a).length).toBeGreaterThan(500);
  });

  it('selects endpoint i of n with probability 1/(n-i), 10 decimals, the last unconditionally', () => {
    const t = nat(baseConfig, web(4));
    const svc = [...t.entries()].find(([k]) => k.startsWith('KPX-SVC-'))!;
    const probs = svc[1].map((r) => /--probability (\S+)/.exec(r)?.[1] ?? 'none');
    // first rule of the chain is the masquerade rule for off-cluster sources
    expect(probs).toEqual(['none', '0.2500000000', '0.3333333333', '0.5000000000', 'none']);
    expect(probability(3)).toBe('0.3333333333');
  });

  it('names every chain KPX-… within 28 characters', () => {
    const r = renderIptables(stateOf(web(20)).view('IPv4'), baseConfig);
    for (const t of ['filter', 'nat'] as const) {
      for (const [name] of r.chains(t)) {
        expect(name.startsWith('KPX-')).toBe(true);
        expect(name.length).toBeLessThanOrEqual(28);
      }
    }
  });

  it('rejects, in the filter table, a service without endpoints and writes no nat capture for it', () => {
    const r = renderIptables(stateOf(web(0)).view('IPv4'), baseConfig);
    expect(rulesByChain(r, 'filter').get('KPX-SERVICES')).toEqual([
      '-d 198.19.0.10/32 -p tcp -m comment --comment "default/web:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable',
    ]);
    expect([...r.table('nat').keys()].filter((k) => k.startsWith('KPX-SVC-'))).toEqual([]);
    expect(r.table('nat').get('KPX-SERVICES')!).not.toContain('198.19.0.10');
  });

  it('masquerades ClusterIP traffic from outside the cluster CIDR, all of it with masqueradeAll, none without either', () => {
    const first = (cfg: IptablesRenderConfig) => [...nat(cfg).entries()].find(([k]) => k.startsWith('KPX-SVC-'))![1][0];
    expect(first(baseConfig)).toBe(
      '! -s 198.18.1.0/24 -d 198.19.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KPX-MARK-MASQ',
    );
    expect(first({ ...baseConfig, masqueradeAll: true })).toBe(
      '-d 198.19.0.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KPX-MARK-MASQ',
    );
    expect(first({ ...baseConfig, localDetector: null })).toMatch(/statistic/);
    expect(first({ ...baseConfig, localDetector: { inInterface: 'veth+' } })).toBe(
      '-d 198.19.0.10/32 ! -i veth+ -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KPX-MARK-MASQ',
    );
  });

  it('routes a NodePort through an EXT chain that masquerades, and hairpins in SEP chains', () => {
    const objs = web(1, { type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30080 }] });
    const t = nat(baseConfig, objs);
    expect(t.get('KPX-NODEPORTS')).toEqual([
      expect.stringMatching(/^-p tcp -m comment --comment "default\/web:http" -m tcp --dport 30080 -j KPX-EXT-/),
    ]);
    const ext = [...t.entries()].find(([k]) => k.startsWith('KPX-EXT-'))![1];
    expect(ext[0]).toBe('-m comment --comment "masquerade traffic for default/web:http external destinations" -j KPX-MARK-MASQ');
    const sep = [...t.entries()].find(([k]) => k.startsWith('KPX-SEP-'))![1];
    expect(sep).toEqual([
      '-s 198.18.1.10/32 -m comment --comment "default/web:http" -j KPX-MARK-MASQ',
      '-p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 198.18.1.10:8080',
    ]);
    expect(t.get('KPX-SERVICES')!.at(-1)).toBe(
      '-m comment --comment "kpx service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KPX-NODEPORTS',
    );
  });

  it('re-renders only the services that changed, and touches only their chains', () => {
    const s = stateOf([...web(3), { kind: 'Service', obj: service({ name: 'b', clusterIP: '198.19.0.11', ports: [{ port: 81 }] }) }]);
    const r = new IptablesRenderer();
    expect(r.render(s.view('IPv4'), baseConfig, 'all').servicePortsRendered).toBe(2);
    s.takePending();
    const before = { filter: r.table('filter'), nat: r.table('nat') };
    s.apply({
      kind: 'EndpointSlice',
      current: endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.10' }] }),
    } as Change);
    const res = r.render(s.view('IPv4'), baseConfig, changedServices(s.takePending()));
    expect(res.servicePortsRendered).toBe(1);
    if (res.kind !== 'delta') throw new Error('a delta was expected');
    const plan = planPartial(res.delta);
    // the web SVC chain is rewritten and two SEP chains are deleted; service b is untouched
    expect(plan.chainsWritten).toBe(1);
    expect(plan.chainsDeleted).toBe(2);
    expect(plan.text).not.toContain('default/b');
    // applying the delta to the old tables gives exactly a render from scratch
    const fresh = renderIptables(s.view('IPv4'), baseConfig);
    for (const t of ['filter', 'nat'] as const) {
      const applied = new Map(before[t]);
      for (const [n, b] of res.delta.write[t]) applied.set(n, b);
      for (const n of res.delta.remove[t]) applied.delete(n);
      expect(applied).toEqual(fresh.table(t));
      expect(r.table(t)).toEqual(fresh.table(t));
    }
  });

  it('lists every chain after the chains it jumps to and counts its rules, also after incremental renders', () => {
    // small leaves so the dispatch trees have several levels; NodePorts, LB IPs with
    // source ranges and Local policies so every kind of chain exists
    const cfg = { ...baseConfig, treeShape: { min: 2, max: 4 } };
    const svc = (i: number) =>
      service({
        name: `s${i}`,
        clusterIP: `198.19.${i >> 4}.${(i * 37) % 250}`,
        type: i % 3 === 0 ? 'LoadBalancer' : i % 3 === 1 ? 'NodePort' : 'ClusterIP',
        ports: [{ name: 'p', port: 80 + (i % 4), ...(i % 3 !== 2 ? { nodePort: 30000 + i } : {}) }],
        spec: {
          ...(i % 3 === 0 ? { loadBalancerSourceRanges: ['198.18.0.0/16'] } : {}),
          ...(i % 5 === 0 ? { externalTrafficPolicy: 'Local' } : {}),
          ...(i % 7 === 0 ? { internalTrafficPolicy: 'Local' } : {}),
          ...(i % 4 === 0 ? { sessionAffinity: 'ClientIP' } : {}),
        },
        ...(i % 3 === 0 ? { status: { loadBalancer: { ingress: [{ ip: `198.19.200.${i}` }] } } } : {}),
      });
    const slice = (i: number, n: number) =>
      endpointSlice({ service: `s${i}`, ports: [{ name: 'p', port: 8080 }], endpoints: Array.from({ length: n }, (_, j) => ({ ip: `198.18.${1 + (i % 3)}.${10 + j}`, node: j % 2 ? 'node-a' : 'node-b' })) });
    const objs: Array<{ kind: Change['kind']; obj: object }> = [];
    for (let i = 0; i < 40; i++) objs.push({ kind: 'Service', obj: svc(i) }, { kind: 'EndpointSlice', obj: slice(i, (i % 4) + 1) });
    const s = stateOf(objs);
    const r = new IptablesRenderer();
    r.render(s.view('IPv4'), cfg, 'all');
    s.takePending();
    const check = () => {
      for (const t of ['filter', 'nat'] as const) {
        const seen = new Set<string>();
        const names = new Set([...r.chains(t)].map(([n]) => n));
        for (const [name, b] of r.chains(t)) {
          for (const rule of rulesOf(name, b)) {
            const target = ruleTarget(rule);
            if (target && names.has(target)) expect(seen.has(target), `${t} ${name} jumps to ${target} listed after it`).toBe(true);
          }
          seen.add(name);
        }
        expect(names).toEqual(new Set(renderIptables(s.view('IPv4'), cfg).table(t).keys()));
        // the rule counts (metrics) are kept without the text: they must match it
        let lines = 0;
        for (const [name, b] of r.chains(t)) lines += rulesOf(name, b).length;
        expect(r.ruleCounts[t]).toBe(lines);
      }
    };
    check();
    // churn: endpoints come and go, services are deleted and re-created with other addresses
    let seed = 7;
    const rnd = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    for (let round = 0; round < 30; round++) {
      const i = rnd(40);
      if (round % 3 === 0) s.apply({ kind: 'Service', previous: svc(i), current: undefined } as Change);
      else if (round % 3 === 1) s.apply({ kind: 'Service', current: svc(i + 40) } as Change);
      else s.apply({ kind: 'EndpointSlice', current: slice(i, rnd(5)) } as Change);
      r.render(s.view('IPv4'), cfg, changedServices(s.takePending()));
      check();
    }
  });
});
