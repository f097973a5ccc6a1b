// The pure parts of `kpx trace`: which endpoints a packet may reach and why the others
// are excluded, the destination syntax, the route and VXLAN parsers (and the lookup over
// a fake runner), IPVS real-server expansion, model-vs-rules comparison, the text format,
// and --help listing only the flags of a trace.
import { describe, expect, it } from 'vitest';
import { Command } from 'commander';
import { addTraceFlags, parseDestination } from '../../src/cli/trace.js';
import { explainEndpoints, withAffinity, type Frontend } from '../../src/trace/endpoints.js';
import { compareWithModel, formatJourney, throughIpvs, type Journey } from '../../src/trace/journey.js';
import { fdbRemote, parseNeighMac, parseRouteGet, parseVxlanLink, routeGet } from '../../src/trace/route.js';
import type { Outcome } from '../../src/trace/tracer.js';
import type { CommandRunner } from '../../src/apply/exec.js';
import type { Endpoint, ServicePort } from '../../src/model/types.js';

const NODE = { nodeName: 'node-a', zone: 'zone-1' };

function sp(o: Partial<ServicePort> = {}): ServicePort {
  return {
    name: 'default/web:http',
    serviceKey: 'default/web',
    portName: 'http',
    protocol: 'TCP',
    family: 'IPv4',
    type: 'ClusterIP',
    clusterIP: '198.19.0.10',
    port: 80,
    nodePort: 0,
    externalIPs: [],
    loadBalancerVIPs: [],
    loadBalancerSourceRanges: [],
    externalPolicyLocal: false,
    internalPolicyLocal: false,
    affinitySeconds: 0,
    healthCheckNodePort: 0,
    ...o,
  };
}

function ep(ip: string, node: string, o: Partial<Endpoint> = {}): Endpoint {
  return {
    ip,
    port: 8080,
    addr: `${ip}:8080`,
    ready: true,
    serving: true,
    terminating: false,
    nodeName: node,
    zone: node === 'node-a' ? 'zone-1' : 'zone-2',
    zoneHints: undefined,
    nodeHints: undefined,
    isLocal: node === 'node-a',
    ...o,
  };
}

const front = (s: ServicePort, kind: Frontend['kind'] = 'ClusterIP'): Frontend => ({ servicePort: s, kind });
const reasons = (x: ReturnType<typeof explainEndpoints>) => Object.fromEntries(x.excluded.map((e) => [e.addr, e.reason]));

describe('endpoint explanation', () => {
  it('ClusterIP: ready endpoints share equally; not ready and terminating ones are excluded with their reason', () => {
    const eps = [ep('198.18.1.11', 'node-a'), ep('198.18.2.21', 'node-b'), ep('198.18.1.12', 'node-a', { ready: false, serving: false }), ep('198.18.1.13', 'node-a', { ready: false, terminating: true })];
    const x = explainEndpoints(front(sp()), eps, NODE, 'pod');
    expect(x.chosen.map((c) => [c.addr, c.probability])).toEqual([
      ['198.18.1.11:8080', 0.5],
      ['198.18.2.21:8080', 0.5],
    ]);
    expect(reasons(x)).toEqual({ '198.18.1.12:8080': 'not ready', '198.18.1.13:8080': 'terminating (still serving): used only when no endpoint is ready' });
    expect(x.whenNone).toBeUndefined();
  });

  it('terminating endpoints are used when none is ready', () => {
    const x = explainEndpoints(front(sp()), [ep('198.18.1.13', 'node-a', { ready: false, terminating: true }), ep('198.18.1.14', 'node-a', { ready: false, serving: false, terminating: true })], NODE, 'pod');
    expect(x.chosen.map((c) => c.addr)).toEqual(['198.18.1.13:8080']);
    expect(reasons(x)).toEqual({ '198.18.1.14:8080': 'terminating and no longer serving' });
  });

  it('externalTrafficPolicy Local: external clients get local endpoints only, pods short-circuit to all', () => {
    const s = sp({ type: 'NodePort', nodePort: 30080, externalPolicyLocal: true });
    const eps = [ep('198.18.1.11', 'node-a'), ep('198.18.2.21', 'node-b')];
    const ext = explainEndpoints(front(s, 'NodePort'), eps, NODE, 'external');
    expect(ext.policy).toBe('Local');
    expect(ext.chosen.map((c) => [c.addr, c.probability])).toEqual([['198.18.1.11:8080', 1]]);
    expect(reasons(ext)['198.18.2.21:8080']).toMatch(/^on node node-b: traffic policy Local/);
    const pod = explainEndpoints(front(s, 'NodePort'), eps, NODE, 'pod');
    expect(pod.policy).toBe('Cluster');
    expect(pod.chosen).toHaveLength(2);
    expect(pod.policyWhy).toContain('short-circuited');
  });

  it('loadBalancerSourceRanges: a source outside them reaches no endpoint (DROP); one inside, and other frontends, as usual', () => {
    const s = sp({ type: 'LoadBalancer', loadBalancerVIPs: ['198.19.100.4'], loadBalancerSourceRanges: ['198.18.0.1/32'] });
    const eps = [ep('198.18.1.11', 'node-a')];
    const out = explainEndpoints(front(s, 'LoadBalancer IP'), eps, NODE, 'external', '198.18.0.2');
    expect(out.chosen).toEqual([]);
    expect(out.whenNone).toBe('DROP');
    expect(reasons(out)['198.18.1.11:8080']).toContain('not in loadBalancerSourceRanges (198.18.0.1/32)');
    expect(explainEndpoints(front(s, 'LoadBalancer IP'), eps, NODE, 'external', '198.18.0.1').chosen).toHaveLength(1);
    expect(explainEndpoints(front(s, 'NodePort'), eps, NODE, 'external', '198.18.0.2').chosen).toHaveLength(1);
  });

  it('Local without local endpoints: DROP; no endpoints at all: REJECT', () => {
    const s = sp({ type: 'NodePort', nodePort: 30080, externalPolicyLocal: true });
    expect(explainEndpoints(front(s, 'NodePort'), [ep('198.18.2.21', 'node-b')], NODE, 'external').whenNone).toBe('DROP');
    const none = explainEndpoints(front(sp()), [], NODE, 'pod');
    expect(none.whenNone).toBe('REJECT');
    expect(none.chosen).toEqual([]);
  });

  it('internalTrafficPolicy Local applies to ClusterIP traffic', () => {
    const x = explainEndpoints(front(sp({ internalPolicyLocal: true })), [ep('198.18.1.11', 'node-a'), ep('198.18.2.21', 'node-b')], NODE, 'pod');
    expect(x.policy).toBe('Local');
    expect(x.chosen.map((c) => c.addr)).toEqual(['198.18.1.11:8080']);
  });

  it('zone hints: endpoints hinted for another zone are excluded, naming the hint; partial hints are ignored', () => {
    const hinted = [ep('198.18.1.11', 'node-a', { zoneHints: ['zone-1'] }), ep('198.18.2.21', 'node-b', { zoneHints: ['zone-2'] })];
    const x = explainEndpoints(front(sp()), hinted, NODE, 'pod');
    expect(x.topology).toBe('PreferSameZone');
    expect(x.chosen.map((c) => c.addr)).toEqual(['198.18.1.11:8080']);
    expect(reasons(x)['198.18.2.21:8080']).toBe("topology hints: hinted for zone(s) zone-2, not this node's zone");
    const partial = explainEndpoints(front(sp()), [hinted[0]!, ep('198.18.2.21', 'node-b')], NODE, 'pod');
    expect(partial.topology).toBe('');
    expect(partial.chosen).toHaveLength(2);
    expect(partial.notes.join('\n')).toContain('topology hints ignored');
  });

  it('session affinity is stated', () => {
    const x = explainEndpoints(front(sp({ affinitySeconds: 10800 })), [ep('198.18.1.11', 'node-a')], NODE, 'pod');
    expect(x.notes.join('\n')).toContain('sessionAffinity: ClientIP (10800 s)');
  });
});

describe('session affinity', () => {
  it('a client bound to one endpoint: the others are excluded naming the list; unbound, nothing changes', () => {
    const x = explainEndpoints(front(sp({ affinitySeconds: 60 })), [ep('198.18.1.11', 'node-a'), ep('198.18.1.12', 'node-a')], NODE, 'pod');
    const bound = withAffinity(x, new Map([['198.18.1.12:8080', 1]]), '198.18.1.50', ['KPX-SEP-B']);
    expect(bound.chosen.map((c) => [c.addr, c.probability])).toEqual([['198.18.1.12:8080', 1]]);
    expect(reasons(bound)).toEqual({ '198.18.1.11:8080': 'session affinity: 198.18.1.50 is bound to 198.18.1.12:8080 (xt_recent KPX-SEP-B)' });
    expect(withAffinity(x, new Map([['198.18.1.12:8080', 1]]), '198.18.1.50', [])).toBe(x);
    expect(withAffinity(x, new Map([['198.18.1.11:8080', 0.5], ['198.18.1.12:8080', 0.5]]), '198.18.1.50', ['KPX-SEP-B'])).toBe(x);
  });
});

describe('destination syntax', () => {
  it('takes ip:port/proto, [v6]:port, and a bare address with --dport/--proto', () => {
    expect(parseDestination('198.19.0.10:80/udp', undefined, undefined)).toEqual({ ip: '198.19.0.10', port: 80, proto: 'udp' });
    expect(parseDestination('[2001:2::10]:30080', undefined, undefined)).toEqual({ ip: '2001:2::10', port: 30080, proto: 'tcp' });
    expect(parseDestination('198.19.0.10', '53', 'sctp')).toEqual({ ip: '198.19.0.10', port: 53, proto: 'sctp' });
    expect(() => parseDestination('198.19.0.10', undefined, undefined)).toThrow(/port/);
    expect(() => parseDestination('nope:80', undefined, undefined)).toThrow(/not an address/);
  });
});

describe('route and vxlan lookups', () => {
  it('parses ip -j route get, link, neigh and the FDB', () => {
    expect(parseRouteGet('[{"dst":"198.18.2.5","gateway":"198.18.2.0","dev":"flannel.1","prefsrc":"198.18.1.0","flags":["onlink"],"uid":0,"cache":[]}]')).toEqual({
      dev: 'flannel.1',
      gateway: '198.18.2.0',
      prefsrc: '198.18.1.0',
    });
    expect(parseRouteGet('[{"type":"local","dst":"198.18.0.10","dev":"lo","prefsrc":"198.18.0.10"}]').type).toBe('local');
    expect(parseVxlanLink('[{"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"port":4789}}}]')).toEqual({ vni: 1 });
    expect(parseVxlanLink('[{"ifname":"eth0","linkinfo":{"info_kind":"veth"}}]')).toBeNull();
    expect(parseVxlanLink('[{"ifname":"eth0"}]')).toBeNull();
    expect(parseNeighMac('[{"dst":"198.18.2.0","dev":"flannel.1","lladdr":"0E:6B:70:00:00:02","state":["PERMANENT"]}]')).toBe('0e:6b:70:00:00:02');
    const fdb = '0e:6b:70:00:00:03 dst 198.19.0.13 self permanent\n0e:6b:70:00:00:02 dst 198.19.0.12 self permanent\n';
    expect(fdbRemote(fdb, '0e:6b:70:00:00:02')).toBe('198.19.0.12');
    expect(fdbRemote(`${fdb}00:00:00:00:00:00 dst 198.19.0.99 self permanent\n`, 'aa:bb:cc:dd:ee:ff')).toBe('198.19.0.99');
    expect(fdbRemote(fdb, 'aa:bb:cc:dd:ee:ff')).toBeUndefined();
  });

  it('routeGet follows a vxlan egress device to the remote VTEP, with argv arrays', async () => {
    const calls: string[][] = [];
    const answers: Record<string, string> = {
      'ip -j route get 198.18.2.5 from 198.18.1.7 iif cni0': '[{"dst":"198.18.2.5","gateway":"198.18.2.0","dev":"flannel.1","flags":["onlink"]}]',
      'ip -j -d link show dev flannel.1': '[{"ifname":"flannel.1","linkinfo":{"info_kind":"vxlan","info_data":{"id":1}}}]',
      'ip -j neigh show to 198.18.2.0 dev flannel.1': '[{"dst":"198.18.2.0","lladdr":"0e:6b:70:00:00:02"}]',
      'bridge fdb show dev flannel.1': '0e:6b:70:00:00:02 dst 198.19.0.12 self permanent\n',
    };
    const runner: CommandRunner = {
      run(cmd, args) {
        calls.push([cmd, ...args]);
        const a = answers[[cmd, ...args].join(' ')];
        return Promise.resolve(a === undefined ? { exitCode: 1, stdout: '', stderr: 'unexpected' } : { exitCode: 0, stdout: a, stderr: '' });
      },
    };
    const r = await routeGet(runner, '198.18.2.5', { src: '198.18.1.7', iif: 'cni0' });
    expect(r).toEqual({ target: '198.18.2.5', dev: 'flannel.1', gateway: '198.18.2.0', vxlan: { device: 'flannel.1', vni: 1, mac: '0e:6b:70:00:00:02', remote: '198.19.0.12' } });
    expect(calls[0]).toEqual(['ip', '-j', 'route', 'get', '198.18.2.5', 'from', '198.18.1.7', 'iif', 'cni0']);
  });

  it('routeGet falls back to the plain lookup when the kernel refuses the source', async () => {
    const runner: CommandRunner = {
      run(_cmd, args) {
        if (args.includes('from')) return Promise.resolve({ exitCode: 2, stdout: '', stderr: 'RTNETLINK answers: Invalid cross-device link' });
        if (args.includes('route')) return Promise.resolve({ exitCode: 0, stdout: '[{"dst":"198.18.1.11","dev":"kpxbr0","prefsrc":"198.18.1.1"}]', stderr: '' });
        return Promise.resolve({ exitCode: 0, stdout: '[{"ifname":"kpxbr0","linkinfo":{"info_kind":"bridge"}}]', stderr: '' });
      },
    };
    expect(await routeGet(runner, '198.18.1.11', { src: '198.18.0.1', iif: 'eth0' })).toEqual({ target: '198.18.1.11', dev: 'kpxbr0', prefsrc: '198.18.1.1' });
  });
});

const outcome = (o: Partial<Outcome>): Outcome => ({
  probability: 1,
  verdict: 'ACCEPT',
  masquerade: false,
  delivery: 'forward',
  rules: { nat: 0, filter: 0 },
  chains: [],
  recentSet: [],
  mark: 0,
  steps: [],
  ...o,
});

describe('journey', () => {
  it('IPVS: a packet delivered to a virtual server goes to its real servers by weight, masqueraded when marked', () => {
    const vs = { virtualServer: 'TCP 198.19.0.10:80', scheduler: 'rr', persistence: 0, realServers: [{ addr: '198.18.1.11:8080', weight: 1 }, { addr: '198.18.1.12:8080', weight: 3 }, { addr: '198.18.1.13:8080', weight: 0 }] };
    const outs = throughIpvs([outcome({ delivery: 'local', mark: 0x4000 })], vs, 0x4000);
    expect(outs.map((o) => [o.dnat, o.probability, o.masquerade])).toEqual([
      ['198.18.1.11:8080', 0.25, true],
      ['198.18.1.12:8080', 0.75, true],
    ]);
    const empty = throughIpvs([outcome({ delivery: 'local' })], { ...vs, realServers: [] }, 0x4000);
    expect(empty.map((o) => o.verdict)).toEqual(['REJECT']);
  });

  it('names where the rules and the model disagree', () => {
    const x = explainEndpoints(front(sp()), [ep('198.18.1.11', 'node-a'), ep('198.18.1.12', 'node-a', { ready: false, serving: false })], NODE, 'pod');
    expect(compareWithModel([outcome({ dnat: '198.18.1.11:8080' })], x)).toEqual([]);
    const diff = compareWithModel([outcome({ dnat: '198.18.1.12:8080' })], x);
    expect(diff).toEqual([
      'the model selects 198.18.1.11:8080 but the rules never send this packet there (rules not synced yet?)',
      'the rules send 100.0% to 198.18.1.12:8080, which the model excludes (not ready)',
    ]);
  });

  it('formats steps, probability taken, masquerade, verdict, endpoints, exclusions and the vxlan hop', () => {
    const steps = [
      { table: 'nat' as const, hook: 'PREROUTING', chain: 'KPX-SVC-X', rule: '-m statistic --mode random --probability 0.5 -j KPX-SEP-A', target: 'KPX-SEP-A', chance: 0.5, probability: 0.5 },
      { table: 'nat' as const, hook: 'PREROUTING', chain: 'KPX-SEP-A', rule: '-j DNAT --to-destination 198.18.2.21:8080', target: 'DNAT', probability: 0.5 },
      { table: 'nat' as const, hook: 'POSTROUTING', chain: 'KPX-POSTROUTING', rule: '-j MASQUERADE --random-fully', target: 'MASQUERADE', probability: 0.5 },
    ];
    const x = explainEndpoints(front(sp()), [ep('198.18.1.11', 'node-a'), ep('198.18.2.21', 'node-b'), ep('198.18.1.12', 'node-a', { ready: false, serving: false })], NODE, 'node');
    const j: Journey = {
      packet: { src: '198.18.0.10', dst: '198.19.0.10', dport: 80, proto: 'tcp', from: 'node' },
      mode: 'iptables',
      rules: 'live',
      outcomes: [
        {
          ...outcome({ probability: 0.5, dnat: '198.18.2.21:8080', masquerade: true, steps }),
          route: { target: '198.18.2.21', dev: 'flannel.1', gateway: '198.18.2.0', vxlan: { device: 'flannel.1', vni: 1, remote: '198.19.0.12', mac: '0e:6b:70:00:00:02' } },
        },
        outcome({ probability: 0.5, verdict: 'REJECT', decidedBy: '-j REJECT', steps: [] }),
      ],
      endpoints: x,
      mismatches: [],
      notes: [],
    };
    const text = formatJourney(j);
    expect(text).toContain('kpx trace: tcp 198.18.0.10 -> 198.19.0.10:80, sent by the node itself; iptables mode');
    expect(text).toContain('service default/web:http (TCP), reached as its ClusterIP');
    expect(text).toMatch(/ {3}50\.0% {2}198\.18\.1\.11:8080 +node-a \(zone-1\)/);
    expect(text).toMatch(/198\.18\.1\.12:8080 +node-a +not ready/);
    expect(text).toContain('nat/PREROUTING     KPX-SVC-X');
    expect(text).toContain('[taken with probability 0.5000; 50.0% of packets get here]');
    expect(text).toContain('masquerade: yes (nat/KPX-POSTROUTING: -j MASQUERADE --random-fully)');
    expect(text).toContain('next hop for 198.18.2.21: via 198.18.2.0 dev flannel.1');
    expect(text).toContain('vxlan flannel.1 (VNI 1): encapsulated to 198.19.0.12, inner next hop 0e:6b:70:00:00:02');
    expect(text).toContain('outcome 2: 50.0%  REJECT  not translated');
    expect(text).toContain('verdict: REJECT by -j REJECT');
    // a rejected packet has no masquerade decision and no next hop
    expect(text.split('outcome 2:')[1]).not.toMatch(/masquerade|next hop/);
  });

  it('without a kernel, says the route is not known; without a model, says the endpoints cannot be explained', () => {
    const base: Journey = { packet: { src: '198.18.0.1', dst: '198.19.0.10', dport: 80, proto: 'tcp', from: 'external', inInterface: 'eth0' }, mode: 'iptables', rules: 'rendered', outcomes: [outcome({ dnat: '198.18.1.11:8080' })], mismatches: [], notes: [] };
    expect(formatJourney(base)).toContain('next hop: not known (no kernel asked: --manifests; use --live on the node)');
    expect(formatJourney({ ...base, rules: 'live' })).toContain('endpoints: no model');
    expect(formatJourney({ ...base, endpoints: null })).toContain('service: none has this address, port and protocol');
  });
});

describe('kpx trace, IPVS mode (rendered from the examples)', () => {
  it('names the virtual server, its scheduler and real servers, the rules and ipsets met, and the masquerade mark', async () => {
    const { execa } = await import('execa');
    const { KPX_BIN, REPO } = await import('../substrate/netns.js');
    const r = await execa(process.execPath, [KPX_BIN, 'trace', '--manifests', 'examples', '--hostname-override', 'node-a', '--mode', 'ipvs', '--src', '198.18.0.99', '--dst', '198.18.0.10:31762/tcp', '--json', '--log-level', 'silent'], { cwd: REPO });
    const j = JSON.parse(r.stdout) as Journey;
    expect(j.mode).toBe('ipvs');
    expect(j.ipvs).toEqual({ virtualServer: 'TCP 198.18.0.10:31762', scheduler: 'rr', persistence: 0, realServers: [{ addr: '198.18.1.31:8080', weight: 1 }, { addr: '198.18.2.32:8080', weight: 1 }] });
    expect(j.outcomes.map((o) => [o.realServer, o.probability, o.masquerade])).toEqual([
      ['198.18.1.31:8080', 0.5, true],
      ['198.18.2.32:8080', 0.5, true],
    ]);
    // the NodePort's bitmap set marked it for masquerade on the way
    expect(j.outcomes[0]!.steps.map((s) => s.rule).join('\n')).toContain('--match-set KPX-NODE-PORT-TCP dst -j KPX-MARK-MASQ');
    expect(j.mismatches).toEqual([]);
  });
});

describe('kpx trace --help', () => {
  it('lists the flags of a trace and none of the proxy-only ones', () => {
    const help = addTraceFlags(new Command('trace')).helpInformation();
    for (const f of ['--src', '--dst', '--from', '--mode', '--live', '--manifests', '--json', '--kubeconfig', '--hostname-override', '--cluster-cidr']) expect(help).toContain(f);
    for (const f of ['--metrics-bind-address', '--healthz-bind-address', '--bind-address', '--cleanup', '--write-config-to', '--iptables-sync-period', '--oom-score-adj', '--once', '--dry-run', '--from-node']) {
      expect(help).not.toContain(f);
    }
  });
});
