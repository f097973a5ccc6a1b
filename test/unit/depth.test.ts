// The depth bound of whole rendered rulesets (docs/design.md, "Dispatch trees"): every path
// from a built-in chain, through every kind of chain kpx renders (dispatch trees, EXT, FW,
// SVC/SVL, SEP, the masquerade mark), measured on the rendered chains themselves, for
// random and adversarial address distributions up to 100,000 service ports per family;
// and the renderer's guard, which refuses a deeper ruleset before the kernel sees it.
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { DepthError, MAX_CHAIN_DEPTH, renderIptables } from '../../src/render/iptables/ruleset.js';
import { tablesFromRuleset } from '../../src/trace/tracer.js';
import { bigIntToIP, ipToBigInt, type IPFamily } from '../../src/util/ip.js';
import { silentLogger } from '../../src/util/log.js';
import { allocator, seededRandom } from '../../bench/synthetic.js';
import { endpointSlice, service } from '../substrate/manifests.js';
import { baseConfig } from '../substrate/render-config.js';
import { chainDepth } from '../substrate/kernel.js';

type Layout = 'apiserver' | 'sequential' | 'one /24 per 256 services, far apart';

/**
 * n services of every kind: ClusterIP; every 7th a LoadBalancer with source ranges (the
 * deepest path: DST -> FW -> EXT -> SVC -> SEP -> MARK-MASQ) and Local traffic policy on
 * every other one; every 11th with an external IP far from the service CIDR; NodePorts
 * anywhere in the range; and every 13th without endpoints (the filter trees).
 */
function cluster(n: number, family: IPFamily, layout: Layout): ClusterState {
  const s = new ClusterState('node-a', silentLogger);
  const v6 = family === 'IPv6';
  const alloc = allocator({ serviceCIDR: '198.18.0.0/15', serviceCIDR6: '2001:2:0:ff::/108', seed: n, layout: layout === 'sequential' ? 'sequential' : 'apiserver' });
  const r = seededRandom(n + 1);
  const clustered = (i: number) =>
    bigIntToIP(ipToBigInt(v6 ? '2001:2:0:ff::' : '198.18.0.0') + BigInt(Math.floor(i / 256) * 65_536 * (v6 ? 1024 : 1) + (i % 256)), family);
  const lbBase = ipToBigInt(v6 ? '2001:2:9::' : '198.19.200.0');
  for (let i = 0; i < n; i++) {
    const ip = layout === 'one /24 per 256 services, far apart' ? clustered(i) : alloc.clusterIP(family);
    const lb = i % 7 === 0;
    const np = i % 3 === 0 ? 30000 + r(2768) : 0;
    const spec: Record<string, unknown> = {};
    if (lb) Object.assign(spec, { loadBalancerSourceRanges: [v6 ? '2001:2::/48' : '198.18.0.0/15'], ...(i % 14 === 0 ? { externalTrafficPolicy: 'Local' } : {}) });
    if (i % 11 === 0) spec.externalIPs = [bigIntToIP(lbBase + BigInt(50_000 + i), family)];
    s.apply({
      kind: 'Service',
      current: service({
        name: `s${i}`,
        type: lb ? 'LoadBalancer' : np ? 'NodePort' : 'ClusterIP',
        clusterIP: ip,
        ports: [{ name: 'p', port: 80, ...(np || lb ? { nodePort: np || 30000 + r(2768) } : {}) }],
        spec: { ipFamilies: [family], ...spec },
        ...(lb ? { status: { loadBalancer: { ingress: [{ ip: bigIntToIP(lbBase + BigInt(i), family) }] } } } : {}),
      }),
    } as Change);
    if (i % 13 === 0) continue;
    s.apply({
      kind: 'EndpointSlice',
      current: endpointSlice({
        service: `s${i}`,
        family,
        ports: [{ name: 'p', port: 8080 }],
        endpoints: [{ ip: v6 ? `2001:2:1::${(i % 200) + 10}` : `198.18.1.${(i % 200) + 10}`, node: i % 2 ? 'node-a' : 'node-b' }],
      }),
    } as Change);
  }
  return s;
}

describe('rendered rulesets stay within the depth bound', () => {
  const cases: Array<[IPFamily, Layout, number[]]> = [
    ['IPv4', 'apiserver', [1000, 10_000, 30_000, 100_000]],
    ['IPv4', 'sequential', [10_000, 30_000]],
    ['IPv4', 'one /24 per 256 services, far apart', [30_000]],
    ['IPv6', 'apiserver', [1000, 30_000, 100_000]],
  ];
  for (const [family, layout, sizes] of cases) {
    it(`${family}, ${layout}: the deepest path measured on the chains equals what the renderer computes, <= ${MAX_CHAIN_DEPTH}`, async () => {
      const figures: string[] = [];
      for (const n of sizes) {
        // each size renders in one synchronous stretch: let the worker answer vitest between them
        await new Promise((r) => setImmediate(r));
        const cfg = { ...baseConfig, family, nodeIPs: [family === 'IPv4' ? '198.18.0.10' : '2001:2::10'], localDetector: null, reducedComments: true };
        const rs = renderIptables(cluster(n, family, layout).view(family), cfg);
        const measured = chainDepth(tablesFromRuleset(rs));
        const deepest = Math.max(...Object.values(measured));
        expect(deepest, `${family} ${layout} ${n}`).toBeLessThanOrEqual(MAX_CHAIN_DEPTH);
        // the renderer's own figure (what its guard checks) is the truth
        expect(rs.chainDepth).toBe(deepest);
        figures.push(`${n}: nat ${measured.nat}, filter ${measured.filter} (renderer bound ${rs.chainDepth})`);
      }
      console.log(`depth ${family} ${layout}: ${figures.join('; ')}`);
    }, 300_000);
  }
});

describe('the depth guard', () => {
  it('refuses, naming the limit, a ruleset the kernel would refuse', () => {
    // a shape that cuts chains of 2: 3000 entries make a tree far deeper than the limit
    const cfg = { ...baseConfig, localDetector: null, treeShape: { min: 2, max: 4 } };
    const s = cluster(3000, 'IPv4', 'apiserver');
    let err: unknown;
    try {
      renderIptables(s.view('IPv4'), cfg);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DepthError);
    expect((err as Error).message).toMatch(/dispatch tree DST with \d+ entries would make a path \d+ chains deep; kpx allows 12 \(nf_tables refuses more than 16/);
  });
});
