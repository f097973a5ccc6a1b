// IP and CIDR helpers on top of ipaddr.js. kpx never parses addresses by hand.
import ipaddr from 'ipaddr.js';

export type IPFamily = 'IPv4' | 'IPv6';
export const FAMILIES: readonly IPFamily[] = ['IPv4', 'IPv6'];

export interface ParsedCIDR {
  family: IPFamily;
  /** network address, canonical text */
  address: string;
  bits: number;
  /** canonical "address/bits" */
  text: string;
}

/** Parses an IP the way Kubernetes validation accepts it; returns canonical text or null. */
export function parseIP(raw: string): { family: IPFamily; text: string } | null {
  if (typeof raw !== 'string' || raw.length === 0 || raw.includes('%')) return null;
  if (ipaddr.IPv4.isValidFourPartDecimal(raw)) {
    // Kubernetes rejects leading zeros ("010.0.0.1"): they are ambiguous (octal?).
    if (raw.split('.').some((o) => o.length > 1 && o.startsWith('0'))) return null;
    return { family: 'IPv4', text: ipaddr.IPv4.parse(raw).toString() };
  }
  if (raw.includes(':') && ipaddr.IPv6.isValid(raw)) {
    const ip = ipaddr.IPv6.parse(raw);
    // an IPv4-mapped IPv6 address ("::ffff:198.18.0.1") is refused, as the apiserver's
    // strict IP validation does: it would be one address in two families
    if (ip.isIPv4MappedAddress()) return null;
    return { family: 'IPv6', text: ip.toString() };
  }
  return null;
}

export function parseCIDR(raw: string): ParsedCIDR | null {
  if (typeof raw !== 'string' || !raw.includes('/')) return null;
  const [addr, bitsText] = raw.split('/', 2) as [string, string];
  const ip = parseIP(addr);
  if (!ip || !/^\d{1,3}$/.test(bitsText)) return null;
  const bits = Number(bitsText);
  const max = ip.family === 'IPv4' ? 32 : 128;
  if (bits > max) return null;
  const network = ipaddr.IPv4.isValidFourPartDecimal(addr)
    ? ipaddr.IPv4.networkAddressFromCIDR(`${ip.text}/${bits}`)
    : ipaddr.IPv6.networkAddressFromCIDR(`${ip.text}/${bits}`);
  const address = network.toString();
  return { family: ip.family, address, bits, text: `${address}/${bits}` };
}

export function cidrContains(cidr: ParsedCIDR, ip: string): boolean {
  const parsed = parseIP(ip);
  if (!parsed || parsed.family !== cidr.family) return false;
  const addr = ipaddr.parse(parsed.text);
  const net = ipaddr.parse(cidr.address);
  return addr.kind() === net.kind() && (addr as ipaddr.IPv4).match(net, cidr.bits);
}

export function hostBits(family: IPFamily): number {
  return family === 'IPv4' ? 32 : 128;
}

/** "198.18.0.1" -> "198.18.0.1/32"; the form iptables-save prints for -s/-d. */
export function hostCIDR(ip: string, family: IPFamily): string {
  return `${ip}/${hostBits(family)}`;
}

export function ipToBigInt(ip: string): bigint {
  const bytes = ipaddr.parse(ip).toByteArray();
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v;
}

export function bigIntToIP(value: bigint, family: IPFamily): string {
  const n = family === 'IPv4' ? 4 : 16;
  const bytes = new Array<number>(n);
  let v = value;
  for (let i = n - 1; i >= 0; i--) {
    bytes[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return ipaddr.fromByteArray(bytes).toString();
}

/** "host:port" or "[v6]:port" -> host (may be empty: "" in ":10256") and port; null if malformed. */
export function splitHostPort(text: string): { host: string; port: number } | null {
  const m = /^\[(.*)\]:(\d+)$/.exec(text) ?? /^([^:]*):(\d+)$/.exec(text);
  return m ? { host: m[1]!, port: Number(m[2]) } : null;
}

/** host:port as DNAT and conntrack print it ("[v6]:port" for IPv6). */
export function joinHostPort(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

export function isLoopback(ip: string): boolean {
  const p = parseIP(ip);
  return !!p && ipaddr.parse(p.text).range() === 'loopback';
}

/**
 * Why the apiserver refuses this address as an endpoint or external IP (its
 * ValidateNonSpecialIP: unspecified, loopback, link-local unicast, link-local multicast),
 * or null. `ip` is canonical text (parseIP's).
 */
export function specialIPReason(ip: string): string | null {
  const p = parseIP(ip);
  if (!p) return null;
  const v = ipToBigInt(p.text);
  const inRange = (net: string, bits: number) => cidrContains({ family: p.family, address: net, bits, text: `${net}/${bits}` }, p.text);
  if (v === 0n) return `may not be unspecified (${p.family === 'IPv4' ? '0.0.0.0' : '::'})`;
  if (p.family === 'IPv4') {
    if (inRange('127.0.0.0', 8)) return 'may not be in the loopback range (127.0.0.0/8, ::1/128)';
    if (inRange('169.254.0.0', 16)) return 'may not be in the link-local range (169.254.0.0/16, fe80::/10)';
    if (inRange('224.0.0.0', 24)) return 'may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)';
    return null;
  }
  if (v === 1n) return 'may not be in the loopback range (127.0.0.0/8, ::1/128)';
  if (inRange('fe80::', 10)) return 'may not be in the link-local range (169.254.0.0/16, fe80::/10)';
  if (inRange('ff02::', 16)) return 'may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)';
  return null;
}
