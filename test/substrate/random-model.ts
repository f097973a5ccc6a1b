// Seeded random Service catalogues for property tests of the renderers and tracers: a
// handful of services of every type, traffic policies, affinity, source ranges, and
// endpoints here and on another node in every state. ClusterIPs, LB IPs and external IPs
// are uniformly random in 198.19.0.0/16 (inside 198.18.0.0/15, apart from the node and
// pod addresses of test/substrate/render-config.ts).
import { ClusterState, type Change } from '../../src/model/state.js';
import { bigIntToIP, ipToBigInt } from '../../src/util/ip.js';
import { silentLogger } from '../../src/util/log.js';
import { endpointSlice, node, service, type EndpointSpec } from './manifests.js';

/** mulberry32: a small seeded PRNG (uniform in [0, 1)). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const SERVICE_RANGE = { base: '198.19.0.0', size: 65536 } as const;

export interface RandomService {
  readonly name: string;
  readonly type: 'ClusterIP' | 'NodePort' | 'LoadBalancer';
  readonly protocol: 'TCP' | 'UDP';
  readonly clusterIP: string;
  readonly port: number;
  readonly nodePort?: number;
  readonly vip?: string;
  readonly externalIP?: string;
  readonly sourceRanges?: readonly string[];
  readonly etpLocal: boolean;
  readonly itpLocal: boolean;
  readonly affinity: boolean;
  readonly endpoints: readonly EndpointSpec[];
}

export interface RandomModel {
  readonly services: readonly RandomService[];
  readonly state: ClusterState;
}

/** A catalogue of `count` services drawn from `seed`; the node is node-a (198.18.0.10, pods 198.18.1.0/24). */
export function randomModel(seed: number, count = 10): RandomModel {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const chance = (p: number) => rnd() < p;
  const used = new Set<string>();
  const serviceIP = (): string => {
    for (;;) {
      // uniform over the range, without its network and broadcast addresses
      const ip = bigIntToIP(ipToBigInt(SERVICE_RANGE.base) + BigInt(1 + int(SERVICE_RANGE.size - 2)), 'IPv4');
      if (!used.has(ip)) {
        used.add(ip);
        return ip;
      }
    }
  };
  const services: RandomService[] = [];
  for (let i = 0; i < count; i++) {
    const type = (['ClusterIP', 'NodePort', 'LoadBalancer'] as const)[int(3)]!;
    const external = type !== 'ClusterIP';
    const endpoints: EndpointSpec[] = [];
    const n = int(5);
    for (let e = 0; e < n; e++) {
      const local = chance(0.5);
      const state = int(6);
      endpoints.push({
        ip: `198.18.${local ? 1 : 2}.${10 + e}`,
        node: local ? 'node-a' : 'node-b',
        // mostly ready; some terminating (serving or not), some not ready
        ready: state < 4,
        serving: state < 5,
        terminating: state >= 4,
      });
    }
    services.push({
      name: `svc-${i}`,
      type,
      protocol: chance(0.7) ? 'TCP' : 'UDP',
      clusterIP: serviceIP(),
      port: 80 + int(3),
      ...(external ? { nodePort: 30000 + i } : {}),
      ...(type === 'LoadBalancer' ? { vip: serviceIP() } : {}),
      ...(chance(0.3) ? { externalIP: serviceIP() } : {}),
      ...(type === 'LoadBalancer' && chance(0.5) ? { sourceRanges: [chance(0.5) ? '198.18.0.0/24' : '198.18.0.1/32'] } : {}),
      etpLocal: external && chance(0.4),
      itpLocal: chance(0.2),
      affinity: chance(0.25),
      endpoints,
    });
  }
  const state = new ClusterState('node-a', silentLogger);
  const add = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
  add('Node', node({ ips: ['198.18.0.10'], podCIDRs: ['198.18.1.0/24'], zone: 'z1' }));
  for (const s of services) {
    add(
      'Service',
      service({
        name: s.name,
        type: s.type,
        clusterIP: s.clusterIP,
        ports: [{ name: 'p', port: s.port, protocol: s.protocol, targetPort: 8080, ...(s.nodePort ? { nodePort: s.nodePort } : {}) }],
        spec: {
          ...(s.externalIP ? { externalIPs: [s.externalIP] } : {}),
          ...(s.sourceRanges ? { loadBalancerSourceRanges: s.sourceRanges } : {}),
          ...(s.etpLocal ? { externalTrafficPolicy: 'Local' } : {}),
          // the apiserver allocates one for a Local LoadBalancer only (and the model refuses it elsewhere)
          ...(s.etpLocal && s.type === 'LoadBalancer' ? { healthCheckNodePort: 32000 + services.indexOf(s) } : {}),
          ...(s.itpLocal ? { internalTrafficPolicy: 'Local' } : {}),
          ...(s.affinity ? { sessionAffinity: 'ClientIP' } : {}),
        },
        ...(s.vip ? { status: { loadBalancer: { ingress: [{ ip: s.vip }] } } } : {}),
      }),
    );
    add('EndpointSlice', endpointSlice({ service: s.name, ports: [{ name: 'p', port: 8080, protocol: s.protocol }], endpoints: [...s.endpoints] }));
  }
  return { services, state };
}
