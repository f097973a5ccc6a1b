// What the iptables renderer needs to know about this node, for one IP family.
import type { IPFamily } from '../../util/ip.js';
import type { TreeShape } from './dispatch.js';
import type { Generation } from './names.js';

/**
 * How "traffic from a local pod" is recognised (kube-proxy's detectLocalMode): by source
 * CIDR (ClusterCIDR, NodeCIDR) or by input interface (BridgeInterface, InterfaceNamePrefix
 * as "prefix+"). null: not detectable.
 */
export type LocalDetector = { readonly source: string } | { readonly inInterface: string } | null;

/** The base-field part of a rule, in iptables-save's order (-s, -d, -i). */
export function baseMatch(opts: { src?: string; dst?: string; local?: LocalDetector; negate?: boolean }): string {
  const parts: string[] = [];
  const neg = opts.negate ? '! ' : '';
  if (opts.local && 'source' in opts.local) parts.push(`${neg}-s ${opts.local.source}`);
  else if (opts.src) parts.push(`-s ${opts.src}`);
  if (opts.dst) parts.push(`-d ${opts.dst}`);
  if (opts.local && 'inInterface' in opts.local) parts.push(`${neg}-i ${opts.local.inInterface}`);
  return parts.join(' ');
}

export interface IptablesRenderConfig {
  readonly family: IPFamily;
  readonly nodeName: string;
  /** topology.kubernetes.io/zone of this node */
  readonly zone: string | undefined;
  /** this node's primary IPs in the family (LB source ranges "allow from node") */
  readonly nodeIPs: readonly string[];
  readonly localDetector: LocalDetector;
  readonly masqueradeAll: boolean;
  /** e.g. "0x4000" */
  readonly masqueradeMark: string;
  /** "all": any local address; otherwise the node addresses NodePorts answer on */
  readonly nodePortAddresses: 'all' | readonly string[];
  /** IPv4 only: NodePorts answer on 127.0.0.0/8 (needs route_localnet) */
  readonly localhostNodePorts: boolean;
  readonly randomFully: boolean;
  /** nf_conntrack_tcp_be_liberal is set: no need to drop INVALID packets */
  readonly conntrackTCPLiberal: boolean;
  /** large cluster (> 1000 endpoints): no comments on per-endpoint rules, like kube-proxy */
  readonly reducedComments?: boolean;
  /** which name set each table's non-fixed chains use (0 when absent; see names.ts) */
  readonly generation?: { readonly nat: Generation; readonly filter: Generation };
  /** how dispatch trees cut their chains (tests vary it to get deep trees from few entries) */
  readonly treeShape?: TreeShape;
}

export function masqueradeMark(bit: number): string {
  return `0x${(1 << bit >>> 0).toString(16)}`;
}
