// Chain names kpx owns. All start with KPX- (kube-proxy and kubelet own KUBE-),
// and are at most 28 characters (the iptables limit), derived from stable hashes.
import { hash } from 'node:crypto';

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

const BASE32_CODES = [...BASE32].map((c) => c.charCodeAt(0));

/**
 * prefix + the first 16 base32 characters of sha256(input): 80 bits, collision-safe at any
 * cluster size (kube-proxy names its chains the same way). Built in one String.fromCharCode
 * call so the name is a flat string, not a rope V8 must flatten again for every Map lookup.
 */
export function hashName(prefix: string, input: string): string {
  return hashNames([prefix], input)[0]!;
}

/** One hash, several prefixed names. */
export function hashNames(prefixes: readonly string[], input: string): string[] {
  // One-shot native hash with hex output: no Buffer per call, which makes it ~4x faster
  // than createHash().digest() here. 80 bits = 20 hex digits = 16 base32 characters.
  const hex = hash('sha256', input, 'hex');
  const suffix = new Array<number>(16);
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < 20; i++) {
    const c = hex.charCodeAt(i);
    acc = ((acc << 4) | (c <= 57 ? c - 48 : c - 87)) & 0xff;
    bits += 4;
    if (bits >= 5) {
      bits -= 5;
      suffix[o++] = BASE32_CODES[(acc >>> bits) & 31]!;
    }
  }
  return prefixes.map((p) => {
    const codes = new Array<number>(p.length + 16);
    for (let i = 0; i < p.length; i++) codes[i] = p.charCodeAt(i);
    for (let i = 0; i < 16; i++) codes[p.length + i] = suffix[i]!;
    return String.fromCharCode(...codes);
  });
}

/**
 * Which of two name sets a table's non-fixed chains use. A full sync writes the set the
 * kernel is not using, switches the fixed chains over in one transaction, then deletes the
 * old set: a full sync that fails half-way leaves what was serving untouched.
 */
export type Generation = 0 | 1;

/** Generation 0 hashes the name's input as it is (the names kpx always had); 1 salts it. */
const salted = (input: string, generation: Generation): string => (generation === 0 ? input : `${input}\u0000g1`);

/**
 * What stands for a service port in a hashed chain name: its name "ns/name:port" (the
 * names kpx always had) when that text reads back one way only, that is when the Service
 * key holds no ":" and no part a NUL (always, for names the apiserver accepts). Otherwise a
 * length-prefixed form that starts with two NULs, which the first form never does: so
 * "x" with port "a:b" and "x:a" with port "b" (once one chain) get different names.
 */
export function servicePortId(sp: { readonly serviceKey: string; readonly portName: string; readonly name: string }): string {
  const { serviceKey, portName } = sp;
  if (!serviceKey.includes(':') && !serviceKey.includes('\u0000') && !portName.includes('\u0000')) return sp.name;
  return `\u0000\u0000${serviceKey.length}:${serviceKey}${portName.length}:${portName}`;
}

/**
 * Per-service-port chains, keyed like kube-proxy's: the service port (servicePortId) plus
 * protocol, joined with NUL, which no part of the input can hold.
 */
const SERVICE_PREFIXES = ['KPX-SVC-', 'KPX-SVL-', 'KPX-EXT-', 'KPX-FW-'];

export interface ServicePortChains {
  /** endpoints for Cluster traffic policy */
  readonly svc: string;
  /** endpoints for Local traffic policy (this node's only) */
  readonly svl: string;
  /** external destinations (NodePort, externalIPs, LB IPs) */
  readonly ext: string;
  /** loadBalancerSourceRanges filter */
  readonly fw: string;
}

export function servicePortChains(portId: string, protocol: string, generation: Generation = 0): ServicePortChains {
  const [svc, svl, ext, fw] = hashNames(SERVICE_PREFIXES, salted(`${portId}\u0000${protocol}`, generation)) as [string, string, string, string];
  return {
    /** endpoints for Cluster traffic policy */
    svc,
    /** endpoints for Local traffic policy (this node's only) */
    svl,
    /** external destinations (NodePort, externalIPs, LB IPs) */
    ext,
    /** loadBalancerSourceRanges filter */
    fw,
  };
}

export function endpointChain(portId: string, protocol: string, endpoint: string, generation: Generation = 0): string {
  return hashName('KPX-SEP-', salted(`${portId}\u0000${protocol}\u0000${endpoint}`, generation));
}

/** Interior and leaf chains of a dispatch tree. */
export function dispatchChain(tag: string, id: string, generation: Generation = 0): string {
  return hashName(`KPX-${tag}-`, salted(`${tag}|${id}`, generation));
}

/** The rule in KPX-CANARY that says a table serves from generation 1 (generation 0 has none). */
export function generationMarker(g: Generation): string {
  return `-m comment --comment "kpx generation ${g}"`;
}

/** The generation a table's KPX-CANARY rules record. */
export function generationOf(canaryRules: readonly string[]): Generation {
  return canaryRules.some((r) => r.includes('kpx generation 1')) ? 1 : 0;
}

/** Fixed chains: written in place by every sync, in both generations. */
const FIXED: ReadonlySet<string> = new Set(Object.values(CHAIN));
export function isFixedChain(name: string): boolean {
  return FIXED.has(name);
}

export function isKpxChain(name: string): boolean {
  return name.startsWith(KPX_PREFIX);
}
