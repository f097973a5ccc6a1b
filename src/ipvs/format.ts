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

/** Parses `ipvsadm -Sn` (ipvsadm -R's input format). Fwmark services are not kpx's: skipped. */
export function parseIpvsSave(text: string): Map<string, VirtualServer> {
  const out = new Map<string, { proto: IpvsProto; ip: string; port: number; scheduler: string; persistence: number; reals: Map<string, RealServer> }>();
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    const cmd = t[0];
    if (cmd !== '-A' && cmd !== '-a') continue;
    const proto = FLAG_PROTO[t[1] ?? ''];
    const hp = ipPort(t[2] ?? '');
    if (!proto || !hp) continue;
    const key = vsKey(proto, hp.ip, hp.port);
    const opt = (flag: string) => {
      const i = t.indexOf(flag);
      return i >= 0 ? t[i + 1] : undefined;
    };
    if (cmd === '-A') {
      out.set(key, { proto, ip: hp.ip, port: hp.port, scheduler: opt('-s') ?? 'wlc', persistence: Number(opt('-p') ?? (t.includes('-p') ? 360 : 0)), reals: new Map() });
    } else {
      const real = ipPort(opt('-r') ?? '');
      const vs = out.get(key);
      if (real && vs) vs.reals.set(joinHostPort(real.ip, real.port), { ip: real.ip, port: real.port, weight: Number(opt('-w') ?? 1) });
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

/** Parses `ipset save` (only kpx's sets). */
export function parseIpsetSave(text: string): Map<string, IpsetSpec> {
  const sets = new Map<string, { name: string; type: SetType; family: IPFamily; members: Set<string> }>();
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    if (t[0] === 'create' && t[1] && isKpxSet(t[1])) {
      sets.set(t[1], { name: t[1], type: t[2] as SetType, family: t.includes('inet6') ? 'IPv6' : 'IPv4', members: new Set() });
    } else if (t[0] === 'add' && t[1] && t[2]) {
      sets.get(t[1])?.members.add(canonicalMember(t[2]));
    }
  }
  return sets;
}

export function vsLine(cmd: '-A' | '-E' | '-D', vs: Pick<VirtualServer, 'proto' | 'ip' | 'port' | 'scheduler' | 'persistence'>): string {
  const base = `${cmd} ${PROTO_FLAG[vs.proto]} ${joinHostPort(vs.ip, vs.port)}`;
  if (cmd === '-D') return base;
  return `${base} -s ${vs.scheduler}${vs.persistence ? ` -p ${vs.persistence}` : ''}`;
}

export function rsLine(cmd: '-a' | '-e' | '-d', vs: VirtualServer, rs: RealServer): string {
  const base = `${cmd} ${PROTO_FLAG[vs.proto]} ${joinHostPort(vs.ip, vs.port)} -r ${joinHostPort(rs.ip, rs.port)}`;
  return cmd === '-d' ? base : `${base} -m -w ${rs.weight}`;
}

export const setCreate = (s: IpsetSpec): string =>
  s.type === 'bitmap:port'
    ? `create ${s.name} bitmap:port range 0-65535 -exist`
    : `create ${s.name} ${s.type} family ${s.family === 'IPv4' ? 'inet' : 'inet6'} -exist`;


export const setAdd = (set: string, member: string): string => `add ${set} ${member} -exist`;
export const setDel = (set: string, member: string): string => `del ${set} ${member} -exist`;
export const setDestroy = (set: string): string => `destroy ${set}`;
