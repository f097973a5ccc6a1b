// Synthetic clusters for benchmarks and scale tests: N services with E endpoints each, as
// Service/EndpointSlice objects, addressed the way a real apiserver addresses them.
//
// The apiserver allocates a ClusterIP uniformly at random in the service CIDR's upper
// ("dynamic") band, falling back to the lower ("static") band only when the upper one is
// full, with the first address kept for the `kubernetes` Service (KEP-3070). NodePorts
// are allocated the same way over --service-node-port-range (KEP-3668). Sequential
// addresses are one layout among several (`layout: 'sequential'`), never the default: they
// make the tries and hashes of a proxy look better balanced than real clusters are.
import { bigIntToIP, ipToBigInt, parseCIDR, type IPFamily } from '../src/util/ip.js';
import type { Change } from '../src/model/state.js';

/** xorshift32: small, seeded, the same sequence on every machine. */
export function seededRandom(seed: number): (n: number) => number {
  let x = seed >>> 0 || 0x2545f491;
  return (n: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    // two draws for ranges beyond 2^32 are not needed: bands here are at most 2^32
    return Math.floor((x / 0x100000000) * n);
  };
}

/** A bitmap-style allocator over [0, size) with the apiserver's static/dynamic bands. */
class BandAllocator {
  private readonly used = new Set<number>();
  constructor(
    private readonly size: number,
    private readonly band: number,
    private readonly random: (n: number) => number,
  ) {}

  /** A random free offset in the upper band, scanning forward from it; then the lower band. */
  next(): number {
    for (const [lo, hi] of [
      [this.band, this.size],
      [0, this.band],
    ] as const) {
      const n = hi - lo;
      if (n <= 0) continue;
      const start = this.random(n);
      for (let k = 0; k < n; k++) {
        const off = lo + ((start + k) % n);
        if (!this.used.has(off)) {
          this.used.add(off);
          return off;
        }
      }
    }
    throw new Error(`range full (${this.size} addresses)`);
  }

  take(off: number): void {
    this.used.add(off);
  }
}

export interface AllocatorOptions {
  readonly serviceCIDR: string;
  readonly serviceCIDR6?: string;
  readonly nodePortRange?: readonly [number, number];
  readonly seed: number;
  /** 'apiserver' (default): random as above; 'sequential': the old test layout */
  readonly layout?: 'apiserver' | 'sequential';
}

export interface Allocator {
  clusterIP(family?: IPFamily): string;
  nodePort(): number;
}

function cidrAllocator(cidr: string, random: (n: number) => number, sequential: boolean): () => string {
  const c = parseCIDR(cidr);
  if (!c) throw new Error(`bad CIDR ${cidr}`);
  const hostBits = (c.family === 'IPv4' ? 32 : 128) - c.bits;
  // the bitmap allocator covers at most 2^20 addresses of an IPv6 range (a /108); IPv4
  // service CIDRs are at most a /12 (kube-apiserver refuses larger ones)
  const span = 2 ** Math.min(hostBits, 20);
  // usable offsets: not the network address, not the IPv4 broadcast address
  const size = span - (c.family === 'IPv4' ? 2 : 1);
  const band = Math.min(Math.max(16, Math.floor(size / 16)), 256);
  const base = ipToBigInt(c.address) + 1n;
  const alloc = new BandAllocator(size, band, random);
  alloc.take(0); // the kubernetes Service's address
  let seq = 1;
  return () => bigIntToIP(base + BigInt(sequential ? seq++ : alloc.next()), c.family);
}

/** ClusterIPs and NodePorts as a real apiserver hands them out. */
export function allocator(opts: AllocatorOptions): Allocator {
  const random = seededRandom(opts.seed);
  const sequential = opts.layout === 'sequential';
  const v4 = cidrAllocator(opts.serviceCIDR, random, sequential);
  const v6 = opts.serviceCIDR6 ? cidrAllocator(opts.serviceCIDR6, random, sequential) : null;
  const [lo, hi] = opts.nodePortRange ?? [30000, 32767];
  const ports = new BandAllocator(hi - lo + 1, Math.min(Math.max(16, Math.floor((hi - lo + 1) / 32)), 128), random);
  let seqPort = lo;
  return {
    clusterIP: (family: IPFamily = 'IPv4') => {
      if (family === 'IPv6' && !v6) throw new Error('no IPv6 service CIDR');
      return family === 'IPv6' ? v6!() : v4();
    },
    nodePort: () => (sequential ? seqPort++ : lo + ports.next()),
  };
}

const POD_BASE = ipToBigInt('198.18.4.0');
const POD_SPACE = 60_000n;
const POD6_BASE = ipToBigInt('2001:2:4::');

export function podIP(n: number, family: IPFamily = 'IPv4'): string {
  return family === 'IPv4' ? bigIntToIP(POD_BASE + (BigInt(n) % POD_SPACE), 'IPv4') : bigIntToIP(POD6_BASE + BigInt(n), 'IPv6');
}

export interface SyntheticOptions {
  readonly services: number;
  readonly endpoints: number;
  readonly seed?: number;
  readonly serviceCIDR?: string;
  readonly serviceCIDR6?: string;
  /** every k-th service is dual-stack (0: none) */
  readonly dualStackEvery?: number;
  /** every k-th service is a NodePort, while the range has ports (0: none) */
  readonly nodePortEvery?: number;
  readonly nodePortRange?: readonly [number, number];
  readonly layout?: 'apiserver' | 'sequential';
}

interface ServiceAddresses {
  readonly ips: readonly string[];
  readonly nodePort?: number;
}

/**
 * A synthetic cluster, allocated once: `service(i)` and `slice(i)` always describe the
 * same objects, so a benchmark can change one and write it back.
 */
export class SyntheticCluster {
  readonly opts: Required<Omit<SyntheticOptions, 'serviceCIDR6' | 'nodePortRange'>> & Pick<SyntheticOptions, 'serviceCIDR6' | 'nodePortRange'>;
  private readonly addrs: ServiceAddresses[] = [];

  constructor(opts: SyntheticOptions) {
    this.opts = {
      seed: 1,
      serviceCIDR: '198.19.0.0/16',
      dualStackEvery: 0,
      nodePortEvery: 10,
      layout: 'apiserver',
      ...opts,
    };
    const o = this.opts;
    const serviceCIDR6 = o.serviceCIDR6 ?? (o.dualStackEvery ? '2001:2:0:ff::/108' : undefined);
    const alloc = allocator({ serviceCIDR: o.serviceCIDR, seed: o.seed, layout: o.layout, ...(serviceCIDR6 ? { serviceCIDR6 } : {}), ...(o.nodePortRange ? { nodePortRange: o.nodePortRange } : {}) });
    const [lo, hi] = o.nodePortRange ?? [30000, 32767];
    let portsLeft = hi - lo + 1;
    for (let i = 0; i < o.services; i++) {
      const dual = o.dualStackEvery > 0 && i % o.dualStackEvery === 0;
      const ips = dual ? [alloc.clusterIP('IPv4'), alloc.clusterIP('IPv6')] : [alloc.clusterIP('IPv4')];
      const np = o.nodePortEvery > 0 && i % o.nodePortEvery === 0 && portsLeft-- > 0;
      this.addrs.push(np ? { ips, nodePort: alloc.nodePort() } : { ips });
    }
  }

  get size(): number {
    return this.addrs.length;
  }

  /** The IPv4 ClusterIP of service i (its IPv6 one with family IPv6, if dual-stack). */
  serviceIP(i: number, family: IPFamily = 'IPv4'): string {
    const ip = this.addrs[i]!.ips.find((x) => x.includes(':') === (family === 'IPv6'));
    if (!ip) throw new Error(`svc-${i} has no ${family} ClusterIP`);
    return ip;
  }

  nodePort(i: number): number | undefined {
    return this.addrs[i]!.nodePort;
  }

  isDualStack(i: number): boolean {
    return this.addrs[i]!.ips.length === 2;
  }

  name(i: number): { name: string; namespace: string } {
    return { name: `svc-${i}`, namespace: `ns-${i % 50}` };
  }

  service(i: number): object {
    const a = this.addrs[i]!;
    return {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { ...this.name(i), resourceVersion: '1' },
      spec: {
        type: a.nodePort ? 'NodePort' : 'ClusterIP',
        clusterIP: a.ips[0],
        clusterIPs: a.ips,
        ipFamilies: a.ips.map((ip) => (ip.includes(':') ? 'IPv6' : 'IPv4')),
        ipFamilyPolicy: a.ips.length === 2 ? 'PreferDualStack' : 'SingleStack',
        ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, ...(a.nodePort ? { nodePort: a.nodePort } : {}) }],
      },
    };
  }

  /** The service's EndpointSlices (one per family); `offset` moves its endpoints to other pod IPs. */
  slices(i: number, offset = 0): object[] {
    const families: IPFamily[] = this.isDualStack(i) ? ['IPv4', 'IPv6'] : ['IPv4'];
    return families.map((family) => this.slice(i, offset, family));
  }

  slice(i: number, offset = 0, family: IPFamily = 'IPv4'): object {
    const e = this.opts.endpoints;
    return {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name: `svc-${i}-${family === 'IPv4' ? 'abcde' : 'v6xyz'}`,
        namespace: this.name(i).namespace,
        labels: { 'kubernetes.io/service-name': `svc-${i}`, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' },
        annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': new Date().toISOString() },
      },
      addressType: family,
      ports: [{ name: 'http', protocol: 'TCP', port: 8080 }],
      endpoints: Array.from({ length: e }, (_, j) => ({
        addresses: [podIP(i * e + j + offset, family)],
        conditions: { ready: true, serving: true, terminating: false },
        nodeName: `node-${j % 20}`,
      })),
    };
  }

  /** Every object, Service then its slices, in creation order. */
  *objects(): Generator<object> {
    for (let i = 0; i < this.size; i++) {
      yield this.service(i);
      yield* this.slices(i);
    }
  }

  changes(): Change[] {
    return [...this.objects()].map((current) => ({ kind: (current as { kind: Change['kind'] }).kind, current }) as Change);
  }
}

/** A synthetic cluster with the defaults benchmarks use (every tenth service a NodePort). */
export function syntheticCluster(services: number, endpoints: number, more: Partial<SyntheticOptions> = {}): SyntheticCluster {
  return new SyntheticCluster({ services, endpoints, ...more });
}
