// Which endpoints a service port sends traffic to, per traffic policy.
// Mirrors kube-proxy's rules: ready endpoints first, serving+terminating ones only when
// no endpoint is ready (separately for Cluster and Local policy); topology hints only
// when every ready endpoint carries them and at least one is for this node or zone.
import type { Endpoint, ServicePort } from './types.js';

export type TopologyMode = '' | 'PreferSameNode' | 'PreferSameZone';

export interface CategorizedEndpoints {
  /** endpoints for Cluster traffic policy (empty when the port never uses it) */
  readonly cluster: readonly Endpoint[];
  /** this node's endpoints for Local traffic policy (empty when unused) */
  readonly local: readonly Endpoint[];
  /** every endpoint some traffic may reach from this node (for conntrack cleanup) */
  readonly allReachable: readonly Endpoint[];
  /** the service has usable endpoints somewhere (decides REJECT vs DROP) */
  readonly hasAny: boolean;
  readonly topology: TopologyMode;
}

/** NodePort, LB IPs or externalIPs in this family. */
export function externallyAccessible(sp: ServicePort): boolean {
  return sp.nodePort !== 0 || sp.loadBalancerVIPs.length > 0 || sp.externalIPs.length > 0;
}

/** Cluster policy is used by cluster traffic (ITP Cluster) and by pod short-circuits of external traffic. */
export function usesClusterEndpoints(sp: ServicePort): boolean {
  return !sp.internalPolicyLocal || externallyAccessible(sp);
}

export function usesLocalEndpoints(sp: ServicePort): boolean {
  return sp.internalPolicyLocal || (sp.externalPolicyLocal && externallyAccessible(sp));
}

const isServingTerminating = (ep: Endpoint): boolean => ep.serving && ep.terminating;

/** What endpoint selection needs to know about this node (the render configs carry it). */
export interface ThisNode {
  readonly nodeName: string;
  readonly zone: string | undefined;
}

export function topologyMode(endpoints: readonly Endpoint[], node: ThisNode): TopologyMode {
  const { nodeName, zone } = node;
  let allNodeHints = true;
  let forNode = false;
  let allZoneHints = true;
  let forZone = false;
  let anyReady = false;
  for (const ep of endpoints) {
    if (!ep.ready) continue;
    anyReady = true;
    if (!ep.nodeHints || ep.nodeHints.length === 0) allNodeHints = false;
    else if (ep.nodeHints.includes(nodeName)) forNode = true;
    if (!ep.zoneHints || ep.zoneHints.length === 0) allZoneHints = false;
    else if (zone && ep.zoneHints.includes(zone)) forZone = true;
  }
  if (!anyReady) return '';
  if (allNodeHints && forNode) return 'PreferSameNode';
  if (allZoneHints && forZone) return 'PreferSameZone';
  return '';
}

function availableFor(ep: Endpoint, mode: TopologyMode, node: ThisNode): boolean {
  const { nodeName, zone } = node;
  switch (mode) {
    case '':
      return true;
    case 'PreferSameNode':
      return !!ep.nodeHints?.includes(nodeName);
    case 'PreferSameZone':
      return !!zone && !!ep.zoneHints?.includes(zone);
  }
}

/** Service ports with a Local policy and endpoints elsewhere but none here (the metric), over a renderer's fragments. */
export function countNoLocalEndpoints(fragments: Iterable<{ readonly noLocalEndpoints: { readonly internal: boolean; readonly external: boolean } }>): { internal: number; external: number } {
  const out = { internal: 0, external: 0 };
  for (const f of fragments) {
    if (f.noLocalEndpoints.internal) out.internal++;
    if (f.noLocalEndpoints.external) out.external++;
  }
  return out;
}

export function categorizeEndpoints(sp: ServicePort, endpoints: readonly Endpoint[], node: ThisNode): CategorizedEndpoints {
  let cluster: Endpoint[] = [];
  let hasAny = false;
  let topology: TopologyMode = '';
  if (usesClusterEndpoints(sp)) {
    topology = topologyMode(endpoints, node);
    cluster = endpoints.filter((ep) => ep.ready && availableFor(ep, topology, node));
    // No ready endpoint anywhere (topology is only chosen when one exists for us):
    // fall back to endpoints that still serve while terminating.
    if (cluster.length === 0) cluster = endpoints.filter(isServingTerminating);
    if (cluster.length > 0) hasAny = true;
  }
  if (!usesLocalEndpoints(sp)) {
    return { cluster, local: [], allReachable: cluster, hasAny, topology };
  }
  let localReady = false;
  let localServingTerminating = false;
  for (const ep of endpoints) {
    if (ep.ready) {
      hasAny = true;
      if (ep.isLocal) localReady = true;
    } else if (isServingTerminating(ep)) {
      hasAny = true;
      if (ep.isLocal) localServingTerminating = true;
    }
  }
  const local = localReady
    ? endpoints.filter((ep) => ep.isLocal && ep.ready)
    : localServingTerminating
      ? endpoints.filter((ep) => ep.isLocal && isServingTerminating(ep))
      : [];
  if (!usesClusterEndpoints(sp)) return { cluster: [], local, allReachable: local, hasAny, topology };
  const seen = new Set(cluster);
  const allReachable = [...cluster, ...local.filter((ep) => !seen.has(ep))];
  return { cluster, local, allReachable, hasAny, topology };
}
