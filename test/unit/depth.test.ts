// The depth bound of whole rendered rulesets (docs/design.md, "Dispatch trees"): every path
// from a built-in chain, through every kind of chain kpx renders (dispatch trees, FW, EXT,
// SVC/SVL, SEP, the masquerade mark), measured by walking the rendered chains' text, for
// sequential, apiserver-random, clustered and adversarial addresses, IPv4 and IPv6, LB IPs
// and external IPs far from the ClusterIPs, and NodePorts anywhere in several node port
// ranges, up to 100,000 service ports per family; and the renderer's guard, which refuses a
// deeper ruleset before the kernel sees it.
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { DepthError, MAX_CHAIN_DEPTH, renderIptables } from '../../src/render/iptables/ruleset.js';
import { unitHash } from '../../src/render/iptables/dispatch.js';
import { tablesFromRuleset } from '../../src/trace/tracer.js';
import { bigIntToIP, ipToBigInt, type IPFamily } from '../../src/util/ip.js';
import { silentLogger } from '../../src/util/log.js';
import { allocator, seededRandom } from '../../bench/synthetic.js';
import { endpointSlice, service, type PortSpec } from '../substrate/manifests.js';
import { baseConfig } from '../substrate/render-config.js';
import { chainDepth } from '../substrate/kernel.js';

/** How ClusterIPs are laid out. */
type Layout = 'sequential' | 'apiserver' | 'random /64' | 'clustered' | 'adversarial' | 'powers of two';
type PortRange = readonly [number, number];

/** The documented bound: D(N) = ceil(log8(N / 32)) tree levels, 7 + D(N) chains from a base chain. */
function documentedBound(entries: number): number {
  let d = 0;
  while (32 * 8 ** d < entries) d++;
  return 7 + d;
}

// IPv4 has only 198.18.0.0/15 for tests: ClusterIPs in its first /16, LB IPs and external IPs in the second
const V4 = { service: '198.18.0.0/16', far: '198.19.0.0', farther: '198.19.128.0', wide: '198.18.0.0' };
const V6 = { service: '2001:2:0:ff::/108', far: '2001:2:9::', farther: '2001:2:a::', wide: '2001:2:0:ff::' };

/**
 * Keys ending a chunk at exactly the places that make the most chains: the i-th key ends a
 * chunk at level l (its hash at l is high) when floor(i / 8^l) % 8 === 7, and at the first
 * level where it does not end one its hash is low. Every chain then has exactly `min` (8)
 * units at every level, the deepest tree any keys can force.
 */
function adversarial(n: number, base: bigint, seed: number): bigint[] {
  const r = seededRandom(seed);
  const HIGH = 0x80000000;
  const out: bigint[] = [];
  let k = base;
  for (let i = 0; i < n; i++) {
    let top = 0;
    for (let q = i; q % 8 === 7; q = Math.floor(q / 8)) top++;
    for (;;) {
      k += 1n + BigInt(r(3));
      let ok = unitHash(k, top) < HIGH;
      for (let l = 0; l < top && ok; l++) ok = unitHash(k, l) >= HIGH;
      if (ok) break;
    }
    out.push(k);
  }
  return out;
}

/** base + sums of few powers of two below 2^bits: all alike in their high bits, one branch full. */
function powers(n: number, base: bigint, bits: number): bigint[] {
  const out: bigint[] = [];
  const pick = (from: number, left: number, acc: bigint) => {
    if (out.length >= n) return;
    if (left === 0) return void out.push(base + acc);
    for (let b = from; b < bits && out.length < n; b++) pick(b + 1, left - 1, acc | (1n << BigInt(b)));
  };
  for (let c = 1; out.length < n; c++) pick(0, c, 0n);
  return out;
}

/** n ClusterIPs of a layout, distinct. */
function clusterIPs(layout: Layout, family: IPFamily, n: number, seed: number): string[] {
  const v6 = family === 'IPv6';
  const fam = v6 ? V6 : V4;
  const r = seededRandom(seed);
  const wide = ipToBigInt(fam.wide);
  switch (layout) {
    case 'sequential':
    case 'apiserver': {
      const a = allocator({ serviceCIDR: V4.service, serviceCIDR6: V6.service, seed, layout });
      return Array.from({ length: n }, () => a.clusterIP(family));
    }
    case 'random /64': {
      const set = new Set<bigint>();
      while (set.size < n) set.add(wide + (BigInt(r(2 ** 31)) << 33n) + (BigInt(r(2 ** 31)) << 2n) + BigInt(r(4)));
      return [...set].map((k) => bigIntToIP(k, family));
    }
    case 'clustered': {
      // dense blocks of 256 consecutive addresses at random places (the IPv4 /16, or the /64)
      const blocks = new Set<bigint>();
      while (blocks.size * 256 < n) blocks.add(BigInt(v6 ? r(2 ** 31) : r(2 ** 8)) << (v6 ? 24n : 8n));
      return [...blocks].flatMap((b) => Array.from({ length: 256 }, (_, j) => bigIntToIP(wide + b + BigInt(j), family))).slice(0, n);
    }
    case 'adversarial':
      return adversarial(n, wide + 1n, seed).map((k) => bigIntToIP(k, family));
    case 'powers of two':
      return powers(n, wide, v6 ? 64 : 16).map((k) => bigIntToIP(k, family));
  }
}

interface Cluster {
  readonly state: ClusterState;
  readonly servicePorts: number;
  /** the most entries any one tree can get: address entries (IP x port) or NodePorts */
  readonly treeEntries: number;
}

/**
 * n service ports' worth of services, with every feature that adds a chain level:
 * - every 7th a LoadBalancer (LB IP far from the ClusterIPs), every other one of them with
 *   source ranges (FW), every third of them with a Local external policy (SVL, health check
 *   node port);
 * - every 11th with an external IP (farther still), every 22nd with a Local external policy;
 * - every 3rd a NodePort, while the range has ports;
 * - every 5th with ClientIP affinity, every 17th with a Local internal policy (SVL);
 * - every 19th with three ports (TCP, UDP, SCTP: the three NodePort trees, and entries
 *   sharing a key); every 13th without endpoints (the filter trees), every 26th with its
 *   endpoints all on another node (Local policies DROP);
 * - masquerade marks: the local detector is on (the masquerade head in SVC chains), and
 *   EXT chains mark for masquerade.
 * Services with endpoints take the layout's first addresses in order and the rest the next
 * ones, so an adversarial layout is adversarial for the nat tree they all land in.
 */
function cluster(target: number, family: IPFamily, layout: Layout, range: PortRange): Cluster {
  const s = new ClusterState('node-a', silentLogger);
  const v6 = family === 'IPv6';
  const fam = v6 ? V6 : V4;
  const lbBase = ipToBigInt(fam.far);
  const extBase = ipToBigInt(fam.farther);
  const ports = allocator({ serviceCIDR: V4.service, seed: target + 2, nodePortRange: range });
  let portsLeft = range[1] - range[0] + 1;
  const nodePort = () => (portsLeft-- > 0 ? ports.nodePort() : undefined);
  const multi = (i: number) => i % 19 === 0;
  // services needed for `target` ports
  let n = 0;
  for (let p = 0; p < target; n++) p += multi(n) ? 3 : 1;
  const served = Array.from({ length: n }, (_, i) => i % 13 !== 0);
  const ips = clusterIPs(layout, family, n, target);
  const servedIPs = ips.slice(0, served.filter(Boolean).length);
  const otherIPs = ips.slice(servedIPs.length);
  let servicePorts = 0;
  let addressEntries = 0;
  let nodePorts = 0;
  for (let i = 0; i < n; i++) {
    const ip = served[i] ? servedIPs.shift()! : otherIPs.shift()!;
    const lb = i % 7 === 0;
    const external = i % 11 === 0;
    const protos: Array<PortSpec['protocol']> = multi(i) ? ['TCP', 'UDP', 'SCTP'] : ['TCP'];
    const wantsNodePort = lb || i % 3 === 0;
    const portSpecs: PortSpec[] = protos.map((protocol, k) => {
      const np = wantsNodePort ? nodePort() : undefined;
      if (np !== undefined) nodePorts++;
      return { name: `p${k}`, protocol, port: 80 + k, targetPort: 8080 + k, ...(np !== undefined ? { nodePort: np } : {}) };
    });
    const hasNodePort = portSpecs.some((p) => p.nodePort !== undefined);
    const localExternal = (lb && i % 21 === 0) || (external && i % 22 === 0);
    const spec: Record<string, unknown> = { ipFamilies: [family] };
    if (lb) {
      if (i % 14 === 0) spec.loadBalancerSourceRanges = [v6 ? '2001:2::/48' : '198.18.0.0/15', v6 ? '2001:2:f::/64' : '198.19.0.0/16'];
      if (!hasNodePort) spec.allocateLoadBalancerNodePorts = false;
    }
    if (localExternal) {
      spec.externalTrafficPolicy = 'Local';
      if (lb) spec.healthCheckNodePort = range[0] + (i % (range[1] - range[0] + 1));
    }
    if (external) spec.externalIPs = [bigIntToIP(extBase + BigInt(i / 11), family)];
    if (i % 5 === 0) Object.assign(spec, { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 600 } } });
    if (i % 17 === 0) spec.internalTrafficPolicy = 'Local';
    s.apply({
      kind: 'Service',
      current: service({
        name: `s${i}`,
        type: lb ? 'LoadBalancer' : hasNodePort ? 'NodePort' : 'ClusterIP',
        clusterIP: ip,
        ports: portSpecs,
        spec,
        ...(lb ? { status: { loadBalancer: { ingress: [{ ip: bigIntToIP(lbBase + BigInt(i / 7), family) }] } } } : {}),
      }),
    } as Change);
    servicePorts += portSpecs.length;
    addressEntries += portSpecs.length * (1 + (lb ? 1 : 0) + (external ? 1 : 0));
    if (!served[i]) continue;
    const ep = (k: number) => (v6 ? `2001:2:1::${(k % 60000).toString(16)}` : `198.18.${1 + (k % 200)}.${10 + (k % 240)}`);
    const elsewhere = i % 26 === 1;
    // two endpoints (one here, one on another node) where a Local policy tells them apart
    const local = i % 17 === 0 || localExternal;
    s.apply({
      kind: 'EndpointSlice',
      current: endpointSlice({
        service: `s${i}`,
        family,
        ports: protos.map((protocol, k) => ({ name: `p${k}`, protocol, port: 8080 + k })),
        endpoints: [{ ip: ep(2 * i), node: elsewhere ? 'node-c' : 'node-a' }, ...(local ? [{ ip: ep(2 * i + 1), node: 'node-b' }] : [])],
      }),
    } as Change);
  }
  return { state: s, servicePorts, treeEntries: Math.max(addressEntries, nodePorts) };
}

const DEFAULT_RANGE: PortRange = [30000, 32767];
const ALL_PORTS: PortRange = [1, 65535];
const ELEVEN: PortRange = [30000, 30010];

const cfgFor = (family: IPFamily) => ({
  ...baseConfig,
  family,
  nodeIPs: [family === 'IPv4' ? '198.18.0.10' : '2001:2::10'],
  localDetector: { source: family === 'IPv4' ? '198.18.1.0/24' : '2001:2:1::/64' },
  reducedComments: true,
});

describe('rendered rulesets stay within the documented depth bound', () => {
  // 100,000 service ports in IPv6 (the /64 layout); IPv4 whole rulesets stop at 30,000, as the
  // test range 198.18.0.0/15 cannot hold 100,000 services' ClusterIPs, LB IPs and external IPs
  // (test/unit/dispatch.test.ts checks IPv4 dispatch trees to 100,000 keys); each 100k case takes ~20 s
  const cases: Array<[IPFamily, Layout, PortRange, number[]]> = [
    ['IPv4', 'apiserver', DEFAULT_RANGE, [1000, 30_000]],
    ['IPv4', 'sequential', ALL_PORTS, [10_000]],
    ['IPv4', 'clustered', ELEVEN, [10_000]],
    ['IPv4', 'adversarial', DEFAULT_RANGE, [10_000]],
    ['IPv4', 'powers of two', ALL_PORTS, [10_000]],
    ['IPv6', 'apiserver', DEFAULT_RANGE, [1000, 10_000]],
    ['IPv6', 'random /64', ALL_PORTS, [100_000]],
    ['IPv6', 'sequential', ELEVEN, [10_000]],
    ['IPv6', 'clustered', DEFAULT_RANGE, [10_000]],
    ['IPv6', 'adversarial', ALL_PORTS, [30_000]],
    ['IPv6', 'powers of two', ELEVEN, [10_000]],
  ];
  for (const [family, layout, range, sizes] of cases) {
    it(`${family}, ${layout} ClusterIPs, NodePorts in ${range.join('-')}: deepest path <= 7 + D(N) and <= ${MAX_CHAIN_DEPTH}`, async () => {
      const figures: string[] = [];
      for (const n of sizes) {
        // each size renders in one synchronous stretch: let the worker answer vitest between them
        await new Promise((r) => setImmediate(r));
        const c = cluster(n, family, layout, range);
        const rs = renderIptables(c.state.view(family), cfgFor(family));
        // every service port was taken and rendered (none refused as invalid)
        expect(rs.servicePortCount).toBe(c.servicePorts);
        const measured = chainDepth(tablesFromRuleset(rs));
        const deepest = Math.max(...Object.values(measured));
        const bound = documentedBound(c.treeEntries);
        expect(deepest, `${family} ${layout} ${n}`).toBeLessThanOrEqual(bound);
        expect(deepest, `${family} ${layout} ${n}`).toBeLessThanOrEqual(MAX_CHAIN_DEPTH);
        // the renderer's own figure (what its guard checks) is the measured one
        expect(rs.chainDepth).toBe(deepest);
        figures.push(`${c.servicePorts}: nat ${measured.nat}, filter ${measured.filter} (bound ${bound})`);
      }
      console.log(`depth ${family} ${layout} ${range.join('-')}: ${figures.join('; ')}`);
    }, 300_000);
  }

  it('the adversarial layout makes the deepest tree: 8 units in nearly every chain, a level more than random addresses', () => {
    // 8^3 * 32 = 16,384 < 20,000 keys: 4 tree levels are possible, and adversarial keys force them
    const oneTree = (ips: string[]) => {
      const s = new ClusterState('node-a', silentLogger);
      ips.forEach((ip, i) => {
        s.apply({ kind: 'Service', current: service({ name: `a${i}`, clusterIP: ip, ports: [{ name: 'p', port: 80 }] }) } as Change);
        s.apply({ kind: 'EndpointSlice', current: endpointSlice({ service: `a${i}`, ports: [{ name: 'p', port: 80 }], endpoints: [{ ip: '198.18.1.10' }] }) } as Change);
      });
      return renderIptables(s.view('IPv4'), cfgFor('IPv4'));
    };
    const rs = oneTree(clusterIPs('adversarial', 'IPv4', 20_000, 5));
    // PREROUTING -> KPX-SERVICES -> 4 tree levels -> SVC -> SEP -> MARK-MASQ
    expect(chainDepth(tablesFromRuleset(rs)).nat).toBe(2 + 4 + 3);
    const lengths = [...rs.table('nat')].filter(([name]) => name.startsWith('KPX-DST-')).map(([, b]) => b.split('\n').length);
    // chunks of 8; the last of each level takes the remainder (8 to 15)
    expect(Math.min(...lengths)).toBe(8);
    expect(lengths.filter((l) => l === 8).length / lengths.length).toBeGreaterThan(0.95);
    // the same number of apiserver-allocated addresses: about 15 units a chain, 3 levels
    expect(chainDepth(tablesFromRuleset(oneTree(clusterIPs('apiserver', 'IPv4', 20_000, 5)))).nat).toBe(2 + 3 + 3);
  });
});

describe('the depth guard', () => {
  it('refuses, naming the limit, a ruleset the kernel would refuse', () => {
    // a shape that cuts chains of 2: 3000 entries make a tree far deeper than the limit
    const cfg = { ...baseConfig, localDetector: null, treeShape: { min: 2, max: 4 } };
    const s = cluster(3000, 'IPv4', 'apiserver', DEFAULT_RANGE);
    let err: unknown;
    try {
      renderIptables(s.state.view('IPv4'), cfg);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DepthError);
    expect((err as Error).message).toMatch(/dispatch tree DST with \d+ entries would make a path \d+ chains deep; kpx allows 12 \(nf_tables refuses more than 16/);
  });
});
