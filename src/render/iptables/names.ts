// Chain names kpx owns. All start with KPX- (kube-proxy and kubelet own KUBE-),
// and are at most 28 characters (the iptables limit), derived from stable hashes.
import { createHash } from 'node:crypto';

export const KPX_PREFIX = 'KPX-';

// Fixed chains (names mirror kube-proxy's so its users find their way around).
export const CHAIN = {
  services: 'KPX-SERVICES',
  externalServices: 'KPX-EXTERNAL-SERVICES',
  externalNodePorts: 'KPX-EXTERNAL-NODEPORTS',
  nodePorts: 'KPX-NODEPORTS',
  postrouting: 'KPX-POSTROUTING',
  markMasq: 'KPX-MARK-MASQ',
  forward: 'KPX-FORWARD',
  proxyFirewall: 'KPX-PROXY-FIREWALL',
  firewall: 'KPX-FIREWALL',
  canary: 'KPX-CANARY',
} as const;

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** First 16 base32 characters of sha256(input): 80 bits, collision-safe at any cluster size. */
export function hash16(input: string): string {
  const digest = createHash('sha256').update(input).digest();
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const byte of digest) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < 16) {
      out += BASE32[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
    if (out.length >= 16) break;
    buffer &= (1 << bits) - 1;
  }
  return out;
}

/** Per-service-port chains, keyed like kube-proxy's: port name plus protocol. */
export function servicePortChains(portName: string, protocol: string) {
  const h = hash16(`${portName}${protocol}`);
  return {
    /** endpoints for Cluster traffic policy */
    svc: `KPX-SVC-${h}`,
    /** endpoints for Local traffic policy (this node's only) */
    svl: `KPX-SVL-${h}`,
    /** external destinations (NodePort, externalIPs, LB IPs) */
    ext: `KPX-EXT-${h}`,
    /** loadBalancerSourceRanges filter */
    fw: `KPX-FW-${h}`,
  };
}

export function endpointChain(portName: string, protocol: string, endpoint: string): string {
  return `KPX-SEP-${hash16(`${portName}${protocol}${endpoint}`)}`;
}

/** Interior and leaf chains of a dispatch tree. */
export function dispatchChain(tag: string, prefixId: string): string {
  return `KPX-${tag}-${hash16(`${tag}|${prefixId}`)}`;
}

export function isKpxChain(name: string): boolean {
  return name.startsWith(KPX_PREFIX);
}
