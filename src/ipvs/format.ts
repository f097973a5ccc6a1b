// The ipvsadm and ipset text formats: kpx's one place for reading `ipvsadm -Sn`,
// `ipvsadm -Ln` and `ipset save`, and for writing `ipvsadm -R` and `ipset restore` lines.
import { joinHostPort, parseIP, splitHostPort, type IPFamily } from '../util/ip.js';
import { isKpxSet, vsKey, type IpsetSpec, type IpvsProto, type RealServer, type SetType, type VirtualServer } from '../render/ipvs/ipvs.js';

const PROTO_FLAG: Record<IpvsProto, string> = { tcp: '-t', udp: '-u', sctp: '--sctp-service' };
const FLAG_PROTO: Record<string, IpvsProto> = { '-t': 'tcp', '--tcp-service': 'tcp', '-u': 'udp', '--udp-service': 'udp', '--sctp-service': 'sctp' };

/** "[2001:2::1]:80" or "198.19.0.10:80" -> ip (canonical text), port */
function ipPort(s: string): { ip: string; port: number } | null {
  const hp = splitHostPort(s);
  const ip = hp ? parseIP(hp.host) : null;
  return hp && ip ? { ip: ip.text, port: hp.port } : null;
}

/** One line of `ipvsadm -R`'s input (and `ipvsadm -Sn`'s output): a command on a virtual server (-A -E -D) or a real server (-a -e -d). */
export interface IpvsLine {
  readonly cmd: '-A' | '-E' | '-D' | '-a' | '-e' | '-d';
  readonly proto: IpvsProto;
  readonly ip: string;
  readonly port: number;
  /** -s */
  readonly scheduler?: string;
  /** -p (seconds; a bare -p is ipvsadm's default, 360) */
  readonly persistence?: number;
  /** -r */
  readonly real?: { readonly ip: string; readonly port: number };
  /** -w */
  readonly weight?: number;
}

const IPVS_COMMANDS = new Set<string>(['-A', '-E', '-D', '-a', '-e', '-d']);

/** Parses one ipvsadm -R line; null when it is none of the above (or a fwmark service: not kpx's). */
export function parseIpvsLine(line: string): IpvsLine | null {
  const t = line.trim().split(/\s+/);
  const cmd = t[0] ?? '';
  const proto = FLAG_PROTO[t[1] ?? ''];
  const hp = ipPort(t[2] ?? '');
  if (!IPVS_COMMANDS.has(cmd) || !proto || !hp) return null;
  const opt = (flag: string) => {
    const i = t.indexOf(flag);
    return i >= 0 ? t[i + 1] : undefined;
  };
  const scheduler = opt('-s');
  const real = ipPort(opt('-r') ?? '');
  const weight = opt('-w');
  return {
    cmd: cmd as IpvsLine['cmd'],
    proto,
    ip: hp.ip,
    port: hp.port,
    ...(scheduler !== undefined ? { scheduler } : {}),
    ...(t.includes('-p') ? { persistence: Number(opt('-p') ?? 360) } : {}),
    ...(real ? { real } : {}),
    ...(weight !== undefined ? { weight: Number(weight) } : {}),
  };
}

/** Parses `ipvsadm -Sn` (ipvsadm -R's input format). Fwmark services are not kpx's: skipped. */
export function parseIpvsSave(text: string): Map<string, VirtualServer> {
  const out = new Map<string, { proto: IpvsProto; ip: string; port: number; scheduler: string; persistence: number; reals: Map<string, RealServer> }>();
  for (const line of text.split('\n')) {
    const l = parseIpvsLine(line);
    if (!l) continue;
    const key = vsKey(l.proto, l.ip, l.port);
    if (l.cmd === '-A') {
      out.set(key, { proto: l.proto, ip: l.ip, port: l.port, scheduler: l.scheduler ?? 'wlc', persistence: l.persistence ?? 0, reals: new Map() });
    } else if (l.cmd === '-a') {
      const vs = out.get(key);
      if (l.real && vs) vs.reals.set(joinHostPort(l.real.ip, l.real.port), { ip: l.real.ip, port: l.real.port, weight: l.weight ?? 1 });
    }
  }
  return out;
}

/**
 * Parses `ipvsadm -Ln` for connection counts per real server:
 *   TCP  198.19.0.10:80 rr
 *     -> 198.18.1.11:8080             Masq    0      1          0
 */
export function parseIpvsConnections(text: string): Map<string, number> {
  const out = new Map<string, number>();
  let current: string | null = null;
  for (const line of text.split('\n')) {
    const vs = /^(TCP|UDP|SCTP)\s+(\S+)/.exec(line);
    if (vs) {
      const hp = ipPort(vs[2]!);
      current = hp ? vsKey(vs[1]!.toLowerCase() as IpvsProto, hp.ip, hp.port) : null;
      continue;
    }
    const rs = /^\s+->\s+(\S+)\s+\S+\s+\d+\s+(\d+)\s+(\d+)/.exec(line);
    const hp = rs ? ipPort(rs[1]!) : null;
    if (current && rs && hp) out.set(`${current}>${joinHostPort(hp.ip, hp.port)}`, Number(rs[2]) + Number(rs[3]));
  }
  return out;
}

/** Host entries print without their prefix length: "10.0.0.1/32" and "10.0.0.1" are one member. */
export function canonicalMember(m: string): string {
  return m.replace(/\/(32|128)$/, '');
}

/** One line of `ipset save` / `ipset restore`: create, add, del, destroy, ... */
export interface IpsetLine {
  readonly op: string;
  readonly set: string;
  /** create: the set's type */
  readonly type?: string;
  /** create: its family */
  readonly family?: IPFamily;
  /** add, del: the member as written */
  readonly member?: string;
  /** -exist: no error for what is already there (or already gone) */
  readonly exist: boolean;
}

/** Parses one ipset line; null for a blank one. */
export function parseIpsetLine(line: string): IpsetLine | null {
  const t = line.trim().split(/\s+/);
  const [op, set] = t;
  if (!op || !set) return null;
  const exist = t.includes('-exist');
  if (op === 'create') return { op, set, ...(t[2] ? { type: t[2] } : {}), family: t.includes('inet6') ? 'IPv6' : 'IPv4', exist };
  return { op, set, ...((op === 'add' || op === 'del') && t[2] ? { member: t[2] } : {}), exist };
}

/** Parses `ipset save` (only kpx's sets). */
export function parseIpsetSave(text: string): Map<string, IpsetSpec> {
  const sets = new Map<string, { name: string; type: SetType; family: IPFamily; members: Set<string> }>();
  for (const line of text.split('\n')) {
    const l = parseIpsetLine(line);
    if (l?.op === 'create' && isKpxSet(l.set)) {
      sets.set(l.set, { name: l.set, type: l.type as SetType, family: l.family ?? 'IPv4', members: new Set() });
    } else if (l?.op === 'add' && l.member) {
      sets.get(l.set)?.members.add(canonicalMember(l.member));
    }
  }
  return sets;
}

/** A virtual server as ipvsadm names it: "-t 198.19.0.10:80". */
export function vsTarget(vs: Pick<VirtualServer, 'proto' | 'ip' | 'port'>): string {
  return `${PROTO_FLAG[vs.proto]} ${joinHostPort(vs.ip, vs.port)}`;
}

export function vsLine(cmd: '-A' | '-E' | '-D', vs: Pick<VirtualServer, 'proto' | 'ip' | 'port' | 'scheduler' | 'persistence'>): string {
  const base = `${cmd} ${vsTarget(vs)}`;
  if (cmd === '-D') return base;
  return `${base} -s ${vs.scheduler}${vs.persistence ? ` -p ${vs.persistence}` : ''}`;
}

export function rsLine(cmd: '-a' | '-e' | '-d', vs: Pick<VirtualServer, 'proto' | 'ip' | 'port'>, rs: RealServer): string {
  const base = `${cmd} ${vsTarget(vs)} -r ${joinHostPort(rs.ip, rs.port)}`;
  return cmd === '-d' ? base : `${base} -m -w ${rs.weight}`;
}

export const setCreate = (s: IpsetSpec): string =>
  s.type === 'bitmap:port'
    ? `create ${s.name} bitmap:port range 0-65535 -exist`
    : `create ${s.name} ${s.type} family ${s.family === 'IPv4' ? 'inet' : 'inet6'} -exist`;


export const setAdd = (set: string, member: string): string => `add ${set} ${member} -exist`;
export const setDel = (set: string, member: string): string => `del ${set} ${member} -exist`;
export const setDestroy = (set: string): string => `destroy ${set}`;
