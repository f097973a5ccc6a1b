// IPVS mode, render side: from the model to the IPVS state, ipset members and dummy
// interface addresses kpx wants. Pure: no I/O. Follows kube-proxy's IPVS mode: one virtual
// server per service IP:port:protocol (cluster IP, external IPs, LB IPs, and each NodePort
// on each node address), real servers in masquerading mode with weight 1, sessionAffinity
// as persistence; the iptables side is in rules.ts.
import { categorizeEndpoints, externallyAccessible } from '../../model/topology.js';
import type { Endpoint, Protocol, ServicePort } from '../../model/types.js';
import { cidrContains, joinHostPort, type IPFamily, type ParsedCIDR } from '../../util/ip.js';
import type { ModelView } from '../../model/types.js';
import type { LocalDetector } from '../iptables/config.js';

export const IPVS_DEVICE = 'kpx-ipvs0';

export type IpvsProto = 'tcp' | 'udp' | 'sctp';

export interface RealServer {
  readonly ip: string;
  readonly port: number;
  readonly weight: number;
}

export interface VirtualServer {
  readonly proto: IpvsProto;
  readonly ip: string;
  readonly port: number;
  readonly scheduler: string;
  /** persistence timeout in seconds (sessionAffinity ClientIP); 0 = none */
  readonly persistence: number;
  /** "ip:port" -> real server */
  readonly reals: ReadonlyMap<string, RealServer>;
}

/** ipset types kpx uses, with the member syntax each takes. */
export type SetType = 'hash:ip' | 'hash:ip,port' | 'hash:ip,port,ip' | 'hash:ip,port,net' | 'bitmap:port';

export interface IpsetSpec {
  readonly name: string;
  readonly type: SetType;
  readonly family: IPFamily;
  /** canonical members as `ipset save` prints them */
  readonly members: ReadonlySet<string>;
}

/** Everything kpx wants in one family's IPVS mode. */
export interface IpvsDesired {
  readonly family: IPFamily;
  /** "proto|ip:port" -> virtual server */
  readonly services: ReadonlyMap<string, VirtualServer>;
  /** service addresses on the dummy interface */
  readonly addresses: ReadonlySet<string>;
  readonly sets: ReadonlyMap<string, IpsetSpec>;
  /** service ports and their endpoints (health check servers, conntrack cleanup) */
  readonly ports: ReadonlyArray<{ readonly servicePort: ServicePort; readonly endpoints: readonly Endpoint[] }>;
  /** Local policy without local endpoints while endpoints exist elsewhere */
  readonly noLocalEndpoints: { readonly internal: number; readonly external: number };
}

export interface IpvsRenderConfig {
  readonly family: IPFamily;
  readonly nodeName: string;
  readonly zone: string | undefined;
  /** from config, validated there (rr, wrr, lc, ...) */
  readonly scheduler: string;
  /** addresses NodePort virtual servers are created on (never the dummy's) */
  readonly nodePortIPs: readonly string[];
  readonly localDetector: LocalDetector;
  readonly masqueradeAll: boolean;
  /** e.g. "0x4000" */
  readonly masqueradeMark: string;
  readonly randomFully: boolean;
  readonly conntrackTCPLiberal: boolean;
  /** virtual servers in these ranges are not kpx's: never created, changed or deleted */
  readonly excludeCIDRs: readonly ParsedCIDR[];
}

/** Set names: kube-proxy's IPVS-mode sets under KPX- (IPv4) and KPX6- (IPv6) prefixes. */
export const SET = {
  clusterIP: 'CLUSTER-IP',
  loopBack: 'LOOP-BACK',
  externalIP: 'EXTERNAL-IP',
  externalIPLocal: 'EXTERNAL-IP-LOCAL',
  loadBalancer: 'LOAD-BALANCER',
  loadBalancerLocal: 'LOAD-BALANCER-LOCAL',
  loadBalancerFW: 'LOAD-BALANCER-FW',
  loadBalancerSourceCIDR: 'LOAD-BALANCER-SOURCE-CIDR',
  nodePortTCP: 'NODE-PORT-TCP',
  nodePortLocalTCP: 'NODE-PORT-LOCAL-TCP',
  nodePortUDP: 'NODE-PORT-UDP',
  nodePortLocalUDP: 'NODE-PORT-LOCAL-UDP',
  nodePortSCTP: 'NODE-PORT-SCTP',
  nodePortLocalSCTP: 'NODE-PORT-LOCAL-SCTP',
  healthCheckNodePort: 'HEALTH-CHECK-NODE-PORT',
  ipvsIPs: 'IPVS-IPS',
} as const;
type SetKey = keyof typeof SET;

const SET_TYPES: Record<SetKey, SetType> = {
  clusterIP: 'hash:ip,port',
  loopBack: 'hash:ip,port,ip',
  externalIP: 'hash:ip,port',
  externalIPLocal: 'hash:ip,port',
  loadBalancer: 'hash:ip,port',
  loadBalancerLocal: 'hash:ip,port',
  loadBalancerFW: 'hash:ip,port',
  loadBalancerSourceCIDR: 'hash:ip,port,net',
  nodePortTCP: 'bitmap:port',
  nodePortLocalTCP: 'bitmap:port',
  nodePortUDP: 'bitmap:port',
  nodePortLocalUDP: 'bitmap:port',
  nodePortSCTP: 'bitmap:port',
  nodePortLocalSCTP: 'bitmap:port',
  healthCheckNodePort: 'bitmap:port',
  ipvsIPs: 'hash:ip',
};

export const setPrefix = (family: IPFamily): string => (family === 'IPv4' ? 'KPX-' : 'KPX6-');
export const setName = (family: IPFamily, key: SetKey): string => `${setPrefix(family)}${SET[key]}`;
export const isKpxSet = (name: string): boolean => name.startsWith('KPX-') || name.startsWith('KPX6-');

export const ipvsProto = (p: Protocol): IpvsProto => p.toLowerCase() as IpvsProto;
export const vsKey = (proto: IpvsProto, ip: string, port: number): string => `${proto}|${joinHostPort(ip, port)}`;

const nodePortSets = {
  tcp: ['nodePortTCP', 'nodePortLocalTCP'],
  udp: ['nodePortUDP', 'nodePortLocalUDP'],
  sctp: ['nodePortSCTP', 'nodePortLocalSCTP'],
} as const satisfies Record<IpvsProto, readonly [SetKey, SetKey]>;

export function isExcluded(cfg: Pick<IpvsRenderConfig, 'excludeCIDRs'>, ip: string): boolean {
  return cfg.excludeCIDRs.some((c) => cidrContains(c, ip));
}

export function renderIpvs(view: ModelView, cfg: IpvsRenderConfig): IpvsDesired {
  const b = new IpvsBuilder(cfg);
  for (const key of [...view.serviceKeys()].sort()) for (const sp of view.portsOf(key)) b.add(sp, view.endpointsOf(sp));
  return b.result();
}

/** Accumulates the virtual servers, set members and addresses of service ports. */
class IpvsBuilder {
  private readonly services = new Map<string, VirtualServer>();
  private readonly addresses = new Set<string>();
  private readonly members = new Map<SetKey, Set<string>>((Object.keys(SET) as SetKey[]).map((k) => [k, new Set<string>()]));
  private readonly ports: Array<{ servicePort: ServicePort; endpoints: readonly Endpoint[] }> = [];
  private readonly noLocal = { internal: 0, external: 0 };

  constructor(private readonly cfg: IpvsRenderConfig) {}

  private member(k: SetKey, m: string): void {
    this.members.get(k)!.add(m);
  }

  private virtual(sp: ServicePort, ip: string, port: number, eps: readonly Endpoint[]): void {
    if (isExcluded(this.cfg, ip)) return;
    const proto = ipvsProto(sp.protocol);
    const reals = new Map<string, RealServer>();
    for (const ep of eps) reals.set(joinHostPort(ep.ip, ep.port), { ip: ep.ip, port: ep.port, weight: 1 });
    this.services.set(vsKey(proto, ip, port), { proto, ip, port, scheduler: this.cfg.scheduler, persistence: sp.affinitySeconds, reals });
  }

  add(sp: ServicePort, endpoints: readonly Endpoint[]): void {
    this.ports.push({ servicePort: sp, endpoints });
    const cat = categorizeEndpoints(sp, endpoints, this.cfg);
    const proto = ipvsProto(sp.protocol);
    const member = (ip: string) => `${ip},${proto}:${sp.port}`;
    // kube-proxy's IPVS mode: internal traffic policy picks the cluster IP's endpoints,
    // external policy the endpoints of NodePorts, external IPs and LB IPs; under
    // externalTrafficPolicy Local with no local endpoint it gives those the cluster's
    // endpoints (pods and the node reach them; external clients' packets go there
    // unmasqueraded, the Local sets skip the masquerade), as the differential test shows
    const internal = sp.internalPolicyLocal ? cat.local : cat.cluster;
    const external = sp.externalPolicyLocal && cat.local.length > 0 ? cat.local : cat.cluster;
    if (sp.internalPolicyLocal && cat.hasAny && cat.local.length === 0) this.noLocal.internal++;
    if (sp.externalPolicyLocal && externallyAccessible(sp) && cat.hasAny && cat.local.length === 0) this.noLocal.external++;
    // hairpin: an endpoint reaching itself through the service is masqueraded
    for (const ep of cat.allReachable) this.member('loopBack', `${ep.ip},${proto}:${ep.port},${ep.ip}`);
    this.addresses.add(sp.clusterIP);
    this.member('clusterIP', member(sp.clusterIP));
    this.virtual(sp, sp.clusterIP, sp.port, internal);
    for (const ip of sp.externalIPs) {
      this.addresses.add(ip);
      this.member('externalIP', member(ip));
      if (sp.externalPolicyLocal) this.member('externalIPLocal', member(ip));
      this.virtual(sp, ip, sp.port, external);
    }
    for (const ip of sp.loadBalancerVIPs) this.loadBalancer(sp, ip, member(ip), external);
    if (sp.nodePort) {
      const [all, local] = nodePortSets[proto];
      this.member(all, String(sp.nodePort));
      if (sp.externalPolicyLocal) this.member(local, String(sp.nodePort));
      for (const ip of this.cfg.nodePortIPs) this.virtual(sp, ip, sp.nodePort, external);
    }
    if (sp.healthCheckNodePort) this.member('healthCheckNodePort', String(sp.healthCheckNodePort));
  }

  private loadBalancer(sp: ServicePort, ip: string, member: string, external: readonly Endpoint[]): void {
    this.addresses.add(ip);
    this.member('loadBalancer', member);
    if (sp.externalPolicyLocal) this.member('loadBalancerLocal', member);
    if (sp.loadBalancerSourceRanges.length) {
      this.member('loadBalancerFW', member);
      for (const range of sp.loadBalancerSourceRanges) this.member('loadBalancerSourceCIDR', `${member},${range}`);
    }
    this.virtual(sp, ip, sp.port, external);
  }

  result(): IpvsDesired {
    const family = this.cfg.family;
    for (const ip of this.addresses) this.member('ipvsIPs', ip);
    const sets = new Map<string, IpsetSpec>();
    for (const [k, m] of this.members) {
      const name = setName(family, k);
      sets.set(name, { name, type: SET_TYPES[k], family, members: m });
    }
    return { family, services: this.services, addresses: this.addresses, sets, ports: this.ports, noLocalEndpoints: this.noLocal };
  }
}
