// The model: pure data derived from Services, EndpointSlices and this node's Node.
// Model objects are never mutated (readonly types), but not Object.freeze()d: frozen objects
// are about 10x slower to read in V8, and the renderer reads 10^5 endpoints per full render.
// Objects here are immutable; a change replaces them, so renderers can cache by identity.
import type { IPFamily, ParsedCIDR } from '../util/ip.js';

export type Protocol = 'TCP' | 'UDP' | 'SCTP';
export type ServiceType = 'ClusterIP' | 'NodePort' | 'LoadBalancer';

/** One port of one Service in one IP family: what kube-proxy calls a ServicePort. */
export interface ServicePort {
  /** "namespace/name:portName" (":portName" omitted when empty), kube-proxy's ServicePortName. */
  readonly name: string;
  /** "namespace/name" */
  readonly serviceKey: string;
  readonly portName: string;
  readonly protocol: Protocol;
  readonly family: IPFamily;
  readonly type: ServiceType;
  readonly clusterIP: string;
  readonly port: number;
  /** 0 when the port has no NodePort. */
  readonly nodePort: number;
  readonly externalIPs: readonly string[];
  /** LoadBalancer ingress IPs that the node must capture (ipMode Proxy excluded). */
  readonly loadBalancerVIPs: readonly string[];
  /** Canonical CIDRs; empty means everyone may use the LB IPs. */
  readonly loadBalancerSourceRanges: readonly string[];
  readonly externalPolicyLocal: boolean;
  readonly internalPolicyLocal: boolean;
  /** ClientIP affinity timeout in seconds; 0 when sessionAffinity is None. */
  readonly affinitySeconds: number;
  /** 0 unless externalTrafficPolicy Local on a LoadBalancer. */
  readonly healthCheckNodePort: number;
}

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
  /** "ip:port" ("[ip]:port" for IPv6), computed once */
  readonly addr: string;
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  readonly nodeName: string | undefined;
  readonly zone: string | undefined;
  /** undefined when the slice gave no zone hints for this endpoint */
  readonly zoneHints: readonly string[] | undefined;
  readonly nodeHints: readonly string[] | undefined;
  /** nodeName equals this node's name */
  readonly isLocal: boolean;
}

export interface NodeFacts {
  readonly name: string;
  /** this node's own addresses by family, InternalIP first */
  readonly ips: Readonly<Record<IPFamily, readonly string[]>>;
  readonly podCIDRs: readonly ParsedCIDR[];
  readonly labels: Readonly<Record<string, string>>;
  readonly zone: string | undefined;
  /** metadata.deletionTimestamp is set */
  readonly deleting: boolean;
  /** tainted ToBeDeletedByClusterAutoscaler */
  readonly toBeDeleted: boolean;
}

/** What a renderer reads of the model for one family (ClusterState.view() provides it). */
export interface ModelView {
  readonly family: IPFamily;
  /** sorted, so full renders are deterministic */
  serviceKeys(): Iterable<string>;
  /** this family's ports of one service, sorted */
  portsOf(serviceKey: string): readonly ServicePort[];
  endpointsOf(sp: ServicePort): readonly Endpoint[];
}

/** A service port with the endpoints a sync programmed for it (health checks, conntrack). */
export interface ServicePortState {
  readonly servicePort: ServicePort;
  readonly endpoints: readonly Endpoint[];
}

/** Unique key of a service port within one family: name plus protocol. */
export function servicePortId(sp: Pick<ServicePort, 'name' | 'protocol'>): string {
  return `${sp.name}/${sp.protocol}`;
}
