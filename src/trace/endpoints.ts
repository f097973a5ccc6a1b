// Which endpoints a packet to a service can reach from this node, and why the others
// cannot: the model's side of `kpx trace` (pure). Uses the same endpoint selection as the
// renderers (categorizeEndpoints), then states for every endpoint left out the first rule
// that left it out: readiness, terminating, traffic policy Local, topology hints.
import { categorizeEndpoints, type TopologyMode } from '../model/topology.js';
import type { Endpoint, ModelView, Protocol, ServicePort } from '../model/types.js';
import { cidrContains, parseCIDR, parseIP } from '../util/ip.js';

export type FrontendKind = 'ClusterIP' | 'NodePort' | 'externalIP' | 'LoadBalancer IP';
export type TraceSource = 'pod' | 'node' | 'external';

export interface Frontend {
  readonly servicePort: ServicePort;
  readonly kind: FrontendKind;
}

/** The service port a packet is addressed to; NodePorts on any address `isNodePortAddress` accepts. */
export function findFrontend(
  view: ModelView,
  pkt: { readonly dst: string; readonly dport: number; readonly proto: string },
  isNodePortAddress: (ip: string) => boolean,
): Frontend | null {
  const dst = parseIP(pkt.dst)?.text ?? pkt.dst;
  const proto = pkt.proto.toUpperCase() as Protocol;
  let nodePort: Frontend | null = null;
  for (const key of view.serviceKeys()) {
    for (const sp of view.portsOf(key)) {
      if (sp.protocol !== proto) continue;
      if (sp.port === pkt.dport) {
        if (sp.clusterIP === dst) return { servicePort: sp, kind: 'ClusterIP' };
        if (sp.externalIPs.includes(dst)) return { servicePort: sp, kind: 'externalIP' };
        if (sp.loadBalancerVIPs.includes(dst)) return { servicePort: sp, kind: 'LoadBalancer IP' };
      }
      if (sp.nodePort === pkt.dport && !nodePort && isNodePortAddress(dst)) nodePort = { servicePort: sp, kind: 'NodePort' };
    }
  }
  return nodePort;
}

export interface ChosenEndpoint {
  readonly addr: string;
  readonly node: string | undefined;
  readonly zone: string | undefined;
  /** share of new connections (equal shares: iptables' statistic chain, IPVS with weight 1) */
  readonly probability: number;
}

export interface ExcludedEndpoint {
  readonly addr: string;
  readonly node: string | undefined;
  readonly zone: string | undefined;
  readonly reason: string;
}

export interface EndpointExplanation {
  readonly service: string;
  readonly protocol: Protocol;
  readonly kind: FrontendKind;
  /** which traffic policy applies to this packet, and why */
  readonly policy: 'Cluster' | 'Local';
  readonly policyWhy: string;
  readonly topology: TopologyMode;
  readonly chosen: readonly ChosenEndpoint[];
  readonly excluded: readonly ExcludedEndpoint[];
  /** what happens when nothing is chosen: REJECT (no endpoint anywhere) or DROP (none for this policy) */
  readonly whenNone?: 'REJECT' | 'DROP';
  readonly notes: readonly string[];
}

interface PolicyChoice {
  readonly policy: 'Cluster' | 'Local';
  readonly why: string;
}

function policyFor(sp: ServicePort, kind: FrontendKind, source: TraceSource): PolicyChoice {
  if (kind === 'ClusterIP') {
    return sp.internalPolicyLocal
      ? { policy: 'Local', why: 'internalTrafficPolicy: Local (ClusterIP traffic goes to this node\'s endpoints only)' }
      : { policy: 'Cluster', why: 'internalTrafficPolicy: Cluster' };
  }
  if (!sp.externalPolicyLocal) return { policy: 'Cluster', why: 'externalTrafficPolicy: Cluster' };
  if (source === 'external') return { policy: 'Local', why: 'externalTrafficPolicy: Local (external clients reach this node\'s endpoints only, source kept)' };
  return {
    policy: 'Cluster',
    why: `externalTrafficPolicy: Local, but the packet comes from ${source === 'pod' ? 'a local pod' : 'the node itself'}: short-circuited to any endpoint, as kube-proxy does`,
  };
}

function hintText(ep: Endpoint, topology: TopologyMode): string {
  if (topology === 'PreferSameNode') return `topology hints: hinted for node(s) ${ep.nodeHints?.join(',') || '(none)'}, not this node`;
  return `topology hints: hinted for zone(s) ${ep.zoneHints?.join(',') || '(none)'}, not this node's zone`;
}

function reasonFor(ep: Endpoint, ctx: { policy: 'Cluster' | 'Local'; topology: TopologyMode; anyReady: boolean; anyLocalReady: boolean; nodeName: string }): string {
  if (!ep.ready && !(ep.serving && ep.terminating)) return ep.terminating ? 'terminating and no longer serving' : 'not ready';
  if (ctx.policy === 'Local' && !ep.isLocal) return `on node ${ep.nodeName ?? '(unknown)'}: traffic policy Local keeps this packet on ${ctx.nodeName}'s endpoints`;
  if (!ep.ready) {
    const ready = ctx.policy === 'Local' ? ctx.anyLocalReady : ctx.anyReady;
    if (ready) return 'terminating (still serving): used only when no endpoint is ready';
  }
  if (ctx.topology !== '') return hintText(ep, ctx.topology);
  return 'not selected';
}

/** loadBalancerSourceRanges keep this packet out: an LB IP, ranges given, and its source in none of them. */
function outsideSourceRanges(front: Frontend, src: string | undefined): boolean {
  const ranges = front.servicePort.loadBalancerSourceRanges;
  if (front.kind !== 'LoadBalancer IP' || !ranges.length || src === undefined) return false;
  return !ranges.some((r) => {
    const c = parseCIDR(r);
    return !!c && cidrContains(c, src);
  });
}

/**
 * Endpoints a packet from `source` (address `src`, when known) to this frontend may reach
 * from this node, and why the others may not.
 */
export function explainEndpoints(front: Frontend, endpoints: readonly Endpoint[], node: { nodeName: string; zone: string | undefined }, source: TraceSource, src?: string): EndpointExplanation {
  const sp = front.servicePort;
  if (outsideSourceRanges(front, src)) {
    const reason = `source ${src} is not in loadBalancerSourceRanges (${sp.loadBalancerSourceRanges.join(', ')}): the firewall drops it before any endpoint is chosen`;
    return {
      service: sp.name,
      protocol: sp.protocol,
      kind: front.kind,
      policy: sp.externalPolicyLocal && source === 'external' ? 'Local' : 'Cluster',
      policyWhy: 'loadBalancerSourceRanges decide first',
      topology: '',
      chosen: [],
      excluded: endpoints.map((ep) => ({ addr: ep.addr, node: ep.nodeName, zone: ep.zone, reason })),
      whenNone: 'DROP',
      notes: [],
    };
  }
  const cat = categorizeEndpoints(sp, endpoints, node);
  const { policy, why } = policyFor(sp, front.kind, source);
  const use = policy === 'Local' ? cat.local : cat.cluster;
  const chosenSet = new Set(use);
  const share = use.length ? 1 / use.length : 0;
  const chosen = use.map((ep) => ({ addr: ep.addr, node: ep.nodeName, zone: ep.zone, probability: share }));
  const ctx = {
    policy,
    topology: policy === 'Cluster' ? cat.topology : ('' as TopologyMode),
    anyReady: endpoints.some((e) => e.ready),
    anyLocalReady: endpoints.some((e) => e.ready && e.isLocal),
    nodeName: node.nodeName,
  };
  const excluded = endpoints.filter((ep) => !chosenSet.has(ep)).map((ep) => ({ addr: ep.addr, node: ep.nodeName, zone: ep.zone, reason: reasonFor(ep, ctx) }));
  const notes: string[] = [];
  if (ctx.topology !== '') notes.push(`topology: ${ctx.topology} (every ready endpoint is hinted and one is for this ${ctx.topology === 'PreferSameNode' ? 'node' : `zone, ${node.zone}`})`);
  else if (policy === 'Cluster' && endpoints.some((e) => e.ready && (e.zoneHints?.length || e.nodeHints?.length))) {
    notes.push('topology hints ignored: not every ready endpoint carries one, or none is for this node or zone');
  }
  if (sp.affinitySeconds > 0) notes.push(`sessionAffinity: ClientIP (${sp.affinitySeconds} s): a client seen within that time goes back to the endpoint it had`);
  if (chosen.length === 0 && endpoints.length === 0) notes.push('the service has no endpoints');
  return {
    service: sp.name,
    protocol: sp.protocol,
    kind: front.kind,
    policy,
    policyWhy: why,
    topology: ctx.topology,
    chosen,
    excluded,
    ...(chosen.length === 0 ? { whenNone: cat.hasAny ? ('DROP' as const) : ('REJECT' as const) } : {}),
    notes,
  };
}

/**
 * Session affinity, live: the client is already in an xt_recent list (nftables: an affinity set), and the rules send it
 * to one endpoint only. The other endpoints the policy allows are excluded for that reason.
 */
export function withAffinity(ex: EndpointExplanation, reached: ReadonlyMap<string, number>, client: string, lists: readonly string[], kind: 'xt_recent' | 'nft set' = 'xt_recent'): EndpointExplanation {
  if (!lists.length || reached.size !== 1) return ex;
  const [bound] = [...reached.keys()];
  if (!ex.chosen.some((c) => c.addr === bound)) return ex;
  const reason = `session affinity: ${client} is bound to ${bound} (${kind} ${lists.join(', ')})`;
  return {
    ...ex,
    chosen: ex.chosen.filter((c) => c.addr === bound).map((c) => ({ ...c, probability: 1 })),
    excluded: [...ex.chosen.filter((c) => c.addr !== bound).map((c) => ({ addr: c.addr, node: c.node, zone: c.zone, reason })), ...ex.excluded],
  };
}
