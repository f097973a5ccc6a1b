// Names in kpx's nftables tables. Everything lives in kpx's own table (`ip kpx`, `ip6 kpx`),
// so names need no prefix of their own. Fixed chains and maps are named as in kube-proxy's
// nftables mode, so its users find their way around.
//
// Per-service-port chains follow kube-proxy's scheme: a role prefix, 8 base32 characters of
// sha256 over the readable part (so two names that differ in one digit still look
// different, and a cut name stays unique), then the readable part:
//   service-ULMVA6XW-ns1/svc1/tcp/http            Cluster traffic policy endpoints
//   local-ULMVA6XW-ns1/svc1/tcp/http              Local traffic policy endpoints
//   external-ULMVA6XW-ns1/svc1/tcp/http           NodePort, externalIP and LB IP traffic
//   firewall-ULMVA6XW-ns1/svc1/tcp/http           loadBalancerSourceRanges
//   endpoint-5OJB2KTY-ns1/svc1/tcp/http__10.180.0.1/80   (ClientIP affinity only)
//   affinity-2BX3Q7VD-ns1/svc1/tcp/http__10.180.0.1/80   (a set; its hash also covers the timeout)
// Escaping: nft takes [A-Za-z0-9_./-] in names. Namespace, service and port names are
// DNS labels ([a-z0-9-]) once the apiserver has validated them; any other character (and
// "_", so that "__" only ever separates service from endpoint) is written as "_" plus its
// UTF-8 bytes in hex ("_5f" for "_"). IPv6 colons become dots, as in kube-proxy. Names
// longer than nft's 255 characters are cut and end in "..." (the hash keeps them unique).
import { hash } from 'node:crypto';
import { NAME_MAX } from '../../nftables/format.js';

export const TABLE = 'kpx';

export const CHAIN = {
  filterPrerouting: 'filter-prerouting',
  filterInput: 'filter-input',
  filterForward: 'filter-forward',
  filterOutput: 'filter-output',
  filterOutputPostDNAT: 'filter-output-post-dnat',
  natPrerouting: 'nat-prerouting',
  natOutput: 'nat-output',
  natPostrouting: 'nat-postrouting',
  services: 'services',
  masquerading: 'masquerading',
  markMasq: 'mark-for-masquerade',
  serviceEndpointsCheck: 'service-endpoints-check',
  nodePortEndpointsCheck: 'nodeport-endpoints-check',
  reject: 'reject-chain',
  firewallCheck: 'firewall-check',
  clusterIPsCheck: 'cluster-ips-check',
  /** holds the digest of everything else in the table (written by the applier) */
  state: 'kpx-state',
} as const;

export const SET = {
  serviceIPs: 'service-ips',
  serviceNodePorts: 'service-nodeports',
  nodePortIPs: 'nodeport-ips',
  clusterIPs: 'cluster-ips',
  noEndpointServices: 'no-endpoint-services',
  noEndpointNodePorts: 'no-endpoint-nodeports',
  firewallIPs: 'firewall-ips',
  hairpin: 'hairpin-connections',
} as const;

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** The first 8 base32 characters of sha256(text) (40 bits, as kube-proxy). */
export function hash8(text: string): string {
  const hex = hash('sha256', text, 'hex');
  // 40 bits = 10 hex digits = 8 base32 characters
  let v = BigInt(`0x${hex.slice(0, 10)}`);
  let out = '';
  for (let i = 0; i < 8; i++) {
    out = BASE32[Number(v & 31n)]! + out;
    v >>= 5n;
  }
  return out;
}

/** One name component with every character outside [A-Za-z0-9-] escaped as _XX. */
export function escapeComponent(text: string): string {
  if (/^[A-Za-z0-9-]*$/.test(text)) return text;
  let out = '';
  for (const ch of text) {
    if (/^[A-Za-z0-9-]$/.test(ch)) out += ch;
    else for (const b of Buffer.from(ch, 'utf8')) out += `_${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/** prefix + hash + "-" + readable, cut to nft's limit. */
function named(prefix: string, readable: string, hashInput: string = readable): string {
  const name = `${prefix}${hash8(hashInput)}-${readable}`;
  return name.length <= NAME_MAX ? name : `${name.slice(0, NAME_MAX - 3)}...`;
}

/** "ns/name/proto/port", the readable part of a service port's names. */
export function servicePortBase(serviceKey: string, protocol: string, portName: string): string {
  const slash = serviceKey.indexOf('/');
  const ns = serviceKey.slice(0, slash);
  const name = serviceKey.slice(slash + 1);
  return `${escapeComponent(ns)}/${escapeComponent(name)}/${protocol}/${escapeComponent(portName)}`;
}

export interface ServicePortNames {
  readonly base: string;
  readonly cluster: string;
  readonly local: string;
  readonly external: string;
  readonly firewall: string;
}

export function servicePortNames(serviceKey: string, protocol: string, portName: string): ServicePortNames {
  const base = servicePortBase(serviceKey, protocol, portName);
  return {
    base,
    cluster: named('service-', base),
    local: named('local-', base),
    external: named('external-', base),
    firewall: named('firewall-', base),
  };
}

/** The readable part of an endpoint's names: "<service port base>__<ip>/<port>". */
export function endpointBase(portBase: string, ip: string, port: number): string {
  return `${portBase}__${ip.replace(/:/g, '.')}/${port}`;
}

export function endpointChainName(portBase: string, ip: string, port: number): string {
  return named('endpoint-', endpointBase(portBase, ip, port));
}

/**
 * The affinity set of an endpoint. Its hash covers the timeout: a set's timeout cannot be
 * changed in place, so a new timeout is a new set (and the old one is deleted).
 */
export function affinitySetName(portBase: string, ip: string, port: number, timeoutSeconds: number): string {
  const readable = endpointBase(portBase, ip, port);
  return named('affinity-', readable, `${readable}|${timeoutSeconds}`);
}

/** Chains a service port owns carry a "/" (fixed chains do not), as in kube-proxy. */
export const isServiceChain = (name: string): boolean => name.includes('/');

/**
 * Where a chain sits in the call graph: every rule and element refers only to chains of a
 * lower rank (or of its own rank for none), so writing chains in rank order never refers to
 * a chain not yet written.
 */
const FIXED_RANK = new Map<string, number>(
  Object.values(CHAIN).map((n) => [n, n === CHAIN.markMasq || n === CHAIN.reject ? 0 : n.startsWith('filter-') || n.startsWith('nat-') ? 6 : 5]),
);

export function chainRank(name: string): number {
  const fixed = FIXED_RANK.get(name);
  if (fixed !== undefined) return fixed;
  if (name.startsWith('endpoint-')) return 1;
  if (name.startsWith('service-') || name.startsWith('local-')) return 2;
  if (name.startsWith('external-')) return 3;
  if (name.startsWith('firewall-')) return 4;
  return 5;
}
