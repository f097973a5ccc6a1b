// Table-driven proof of the iptables layout through the tracer: for every combination of
// traffic policy, destination kind, source location and endpoint state, the outcome the
// rules produce equals what kube-proxy's semantics say (the oracle below, written
// independently of the renderer).
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { renderIptables } from '../../src/render/iptables/ruleset.js';
import { Tracer, tablesFromRuleset, type Outcome, type TracePacket } from '../../src/trace/tracer.js';
import { silentLogger } from '../../src/util/log.js';
import { endpointSlice, node, service, type EndpointSpec } from '../substrate/manifests.js';
import { NODE_LOCAL_ADDRESSES, baseConfig } from '../substrate/render-config.js';

const CIP = '198.19.0.10';
const VIP = '198.19.100.1';
const EXTIP = '198.19.200.1';
const NODEPORT = 30080;
const L = { ip: '198.18.1.11', node: 'node-a' };
const L2 = { ip: '198.18.1.12', node: 'node-a' };
const R = { ip: '198.18.2.21', node: 'node-b' };

type EpState = 'ready' | 'terminating' | 'dead';
const endpointSets: Record<string, Array<[typeof L, EpState]>> = {
  none: [],
  localReady: [[L, 'ready']],
  remoteReady: [[R, 'ready']],
  both: [
    [L, 'ready'],
    [R, 'ready'],
  ],
  localTerminatingRemoteReady: [
    [L, 'terminating'],
    [R, 'ready'],
  ],
  allTerminating: [
    [L, 'terminating'],
    [L2, 'terminating'],
    [R, 'terminating'],
  ],
  notServing: [[L, 'dead']],
};

const sources = {
  pod: { src: '198.18.1.50', from: { inIface: 'kpxbr0', bridged: true } },
  node: { src: '198.18.0.10', from: 'local' as const },
  external: { src: '198.18.0.1', from: { inIface: 'eth0' } },
};
const destinations = { clusterIP: [CIP, 80], nodePort: ['198.18.0.10', NODEPORT], lbIP: [VIP, 80], externalIP: [EXTIP, 80] } as const;

interface Expected {
  verdict: 'ACCEPT' | 'DROP' | 'REJECT';
  targets: string[];
  masquerade: boolean;
}

/** kube-proxy's semantics, stated directly. */
function oracle(eps: Array<[typeof L, EpState]>, etpLocal: boolean, itpLocal: boolean, src: keyof typeof sources, dst: keyof typeof destinations): Expected {
  const ready = eps.filter(([, s]) => s === 'ready').map(([e]) => e);
  const term = eps.filter(([, s]) => s === 'terminating').map(([e]) => e);
  const cluster = ready.length ? ready : term;
  const localReady = ready.filter((e) => e.node === 'node-a');
  const local = localReady.length ? localReady : term.filter((e) => e.node === 'node-a');
  const hasAny = cluster.length > 0;
  const to = (list: typeof ready) => list.map((e) => `${e.ip}:8080`).sort();
  if (dst === 'clusterIP') {
    const use = itpLocal ? local : cluster;
    if (use.length === 0) return { verdict: hasAny ? 'DROP' : 'REJECT', targets: [], masquerade: false };
    // off-cluster sources (the node, external clients) are masqueraded
    return { verdict: 'ACCEPT', targets: to(use), masquerade: src !== 'pod' };
  }
  if (!hasAny) {
    // the node's own packets to a non-local VIP just leave the node, as with kube-proxy
    if (src === 'node' && dst !== 'nodePort') return { verdict: 'ACCEPT', targets: [], masquerade: false };
    return { verdict: 'REJECT', targets: [], masquerade: false };
  }
  if (!etpLocal) return { verdict: 'ACCEPT', targets: to(cluster), masquerade: true };
  if (src === 'pod') return { verdict: 'ACCEPT', targets: to(cluster), masquerade: false };
  if (src === 'node') return { verdict: 'ACCEPT', targets: to(cluster), masquerade: true };
  if (local.length === 0) return { verdict: 'DROP', targets: [], masquerade: false };
  return { verdict: 'ACCEPT', targets: to(local), masquerade: false };
}

function tracerFor(eps: Array<[typeof L, EpState]>, etpLocal: boolean, itpLocal: boolean): Tracer {
  const s = new ClusterState('node-a', silentLogger);
  const add = (kind: Change['kind'], current: object) => s.apply({ kind, current } as Change);
  add('Node', node({ ips: ['198.18.0.10'], podCIDRs: ['198.18.1.0/24'], zone: 'z1' }));
  add(
    'Service',
    service({
      name: 'svc',
      type: 'LoadBalancer',
      clusterIP: CIP,
      ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: NODEPORT }],
      spec: {
        externalIPs: [EXTIP],
        externalTrafficPolicy: etpLocal ? 'Local' : 'Cluster',
        internalTrafficPolicy: itpLocal ? 'Local' : 'Cluster',
        ...(etpLocal ? { healthCheckNodePort: 32000 } : {}),
      },
      status: { loadBalancer: { ingress: [{ ip: VIP }] } },
    }),
  );
  const spec = (e: typeof L, st: EpState): EndpointSpec => ({
    ip: e.ip,
    node: e.node,
    ready: st === 'ready',
    serving: st !== 'dead',
    terminating: st !== 'ready',
  });
  add('EndpointSlice', endpointSlice({ service: 'svc', ports: [{ name: 'http', port: 8080 }], endpoints: eps.map(([e, st]) => spec(e, st)) }));
  const rs = renderIptables(s.view('IPv4'), baseConfig);
  return new Tracer(tablesFromRuleset(rs), { localAddresses: NODE_LOCAL_ADDRESSES });
}

function summarize(outs: Outcome[]): Expected & { probabilities: number[] } {
  const verdicts = [...new Set(outs.map((o) => o.verdict))];
  if (verdicts.length !== 1) throw new Error(`mixed verdicts ${JSON.stringify(outs)}`);
  const masq = [...new Set(outs.map((o) => o.masquerade))];
  if (masq.length !== 1) throw new Error(`mixed masquerade ${JSON.stringify(outs)}`);
  return {
    verdict: verdicts[0]!,
    targets: outs.filter((o) => o.dnat).map((o) => o.dnat!).sort(),
    masquerade: masq[0]!,
    probabilities: outs.map((o) => o.probability),
  };
}

describe('tracer: policy x destination x source x endpoint state', () => {
  for (const [setName, eps] of Object.entries(endpointSets)) {
    for (const etpLocal of [false, true]) {
      for (const itpLocal of [false, true]) {
        const tracer = tracerFor(eps, etpLocal, itpLocal);
        for (const src of Object.keys(sources) as Array<keyof typeof sources>) {
          for (const dst of Object.keys(destinations) as Array<keyof typeof destinations>) {
            const name = `${setName} etp=${etpLocal ? 'Local' : 'Cluster'} itp=${itpLocal ? 'Local' : 'Cluster'} ${src} -> ${dst}`;
            it(name, () => {
              const [host, port] = destinations[dst];
              const pkt: TracePacket = { family: 'IPv4', proto: 'tcp', src: sources[src].src, dst: host, dport: port, from: sources[src].from };
              const got = summarize(tracer.trace(pkt));
              const want = oracle(eps, etpLocal, itpLocal, src, dst);
              expect({ verdict: got.verdict, targets: got.targets, masquerade: got.masquerade }).toEqual(want);
              // random selection is uniform over the chosen endpoints
              for (const p of got.probabilities) expect(p).toBeCloseTo(1 / Math.max(1, want.targets.length), 6);
            });
          }
        }
      }
    }
  }
});

describe('tracer: source ranges, affinity and the CLI', () => {
  function rangedTracer(recent?: Set<string>) {
    const s = new ClusterState('node-a', silentLogger);
    const add = (kind: Change['kind'], current: object) => s.apply({ kind, current } as Change);
    add(
      'Service',
      service({
        name: 'lb',
        type: 'LoadBalancer',
        clusterIP: CIP,
        ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: NODEPORT }],
        spec: { loadBalancerSourceRanges: ['198.18.0.1/32', '198.18.0.10/32'], sessionAffinity: 'ClientIP' },
        status: { loadBalancer: { ingress: [{ ip: VIP }] } },
      }),
    );
    add('EndpointSlice', endpointSlice({ service: 'lb', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: L.ip }, { ip: R.ip, node: 'node-b' }] }));
    const rs = renderIptables(s.view('IPv4'), baseConfig);
    return new Tracer(tablesFromRuleset(rs), { localAddresses: NODE_LOCAL_ADDRESSES, recent });
  }
  const to = (src: string, from: TracePacket['from'], dst = VIP, dport = 80): TracePacket => ({ family: 'IPv4', proto: 'tcp', src, dst, dport, from });

  it('lets listed sources and the node in, drops the rest in KPX-PROXY-FIREWALL', () => {
    const t = rangedTracer();
    expect(summarize(t.trace(to('198.18.0.1', { inIface: 'eth0' }))).targets).toEqual([`${L.ip}:8080`, `${R.ip}:8080`]);
    expect(summarize(t.trace(to('198.18.0.10', 'local'))).verdict).toBe('ACCEPT');
    const denied = t.trace(to('198.18.0.2', { inIface: 'eth0' }));
    expect(denied).toHaveLength(1);
    expect(denied[0]!.verdict).toBe('DROP');
    expect(denied[0]!.decidedBy).toContain('traffic not accepted by KPX-FW-');
    // NodePorts ignore source ranges
    expect(summarize(t.trace(to('198.18.0.2', { inIface: 'eth0' }, '198.18.0.10', NODEPORT))).verdict).toBe('ACCEPT');
  });

  it('sends a client with an affinity entry back to its endpoint, and records new entries', () => {
    const first = rangedTracer().trace(to('198.18.0.1', { inIface: 'eth0' }));
    expect(first.every((o) => o.recentSet.length === 1)).toBe(true);
    const remembered = first.find((o) => o.dnat === `${R.ip}:8080`)!.recentSet[0]!;
    const again = rangedTracer(new Set([remembered])).trace(to('198.18.0.1', { inIface: 'eth0' }));
    expect(again.map((o) => [o.dnat, o.probability])).toEqual([[`${R.ip}:8080`, 1]]);
  });

  it('kpx trace explains where a packet goes', async () => {
    const { execa } = await import('execa');
    const { KPX_BIN, REPO } = await import('../substrate/netns.js');
    const r = await execa(process.execPath, [KPX_BIN, 'trace', '--manifests', 'examples', '--hostname-override', 'node-a', '--src', '198.18.1.5', '--dst', '198.19.224.9', '--dport', '80', '--in-interface', 'cbr0', '--log-level', 'silent'], { cwd: REPO });
    expect(r.stdout).toContain('\noutcome 1: 100.0%  REJECT  not translated\n');
    expect(r.stdout).toContain('shop/reports:http has no endpoints');
    const np = await execa(process.execPath, [KPX_BIN, 'trace', '--manifests', 'examples', '--hostname-override', 'node-a', '--src', '198.18.0.1', '--dst', '198.18.0.10', '--dport', '31762', '--json', '--log-level', 'silent'], { cwd: REPO });
    const outs = (JSON.parse(np.stdout) as { outcomes: Outcome[] }).outcomes;
    expect(outs.map((o) => [o.dnat, o.masquerade])).toEqual([
      ['198.18.1.31:8080', true],
      ['198.18.2.32:8080', true],
    ]);
  });
});

describe('tracer: the dispatch layout at scale', () => {
  it('a new connection to a random ClusterIP among 10k apiserver-allocated services walks a bounded number of rules', async () => {
    const { syntheticCluster } = await import('../../bench/synthetic.js');
    const { DEFAULT_SHAPE, depthBound } = await import('../../src/render/iptables/dispatch.js');
    const cluster = syntheticCluster(10_000, 10);
    const serviceIP = (i: number) => cluster.serviceIP(i);
    const s = new ClusterState('node-a', silentLogger);
    for (const c of cluster.changes()) s.apply(c);
    const rs = renderIptables(s.view('IPv4'), { ...baseConfig, reducedComments: true });
    const tracer = new Tracer(tablesFromRuleset(rs), { localAddresses: NODE_LOCAL_ADDRESSES });
    let seed = 5;
    let worst = 0;
    for (let k = 0; k < 300; k++) {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      const i = seed % 10_000;
      const outs = tracer.trace({ family: 'IPv4', proto: 'tcp', src: '198.18.1.50', dst: serviceIP(i), dport: 80, from: { inIface: 'kpxbr0' } });
      expect(outs.every((o) => o.verdict === 'ACCEPT' && o.dnat)).toBe(true);
      expect(outs.reduce((a, o) => a + o.probability, 0)).toBeCloseTo(1, 6);
      worst = Math.max(worst, ...outs.map((o) => o.rules.nat));
    }
    // kube-proxy's layout: up to ~10k KUBE-SERVICES rules for the same packet. kpx's: the
    // root, at most depthBound levels of at most `max` rules, then the service's chains
    // (masquerade check, endpoint choice: up to 10, the endpoint's 2 rules)
    const bound = (depthBound(11_000) + 1) * DEFAULT_SHAPE.max + 1 + 10 + 2;
    console.log(`tracer at 10k services: worst walk ${worst} nat rules (bound ${bound})`);
    expect(worst).toBeLessThanOrEqual(bound);
  });
});
