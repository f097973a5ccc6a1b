// IPVS mode, diff side: parse what the kernel has (`ipvsadm -Sn`, `ipvsadm -Ln`,
// `ipset save`, the dummy's addresses) and plan the changes that take it to the desired
// state: one `ipvsadm -R` batch and one `ipset restore` batch, never a flush. Pure.
import { joinHostPort, parseIP, type IPFamily } from '../../util/ip.js';
import {
  isExcluded,
  isKpxSet,
  vsKey,
  type IpsetSpec,
  type IpvsDesired,
  type IpvsProto,
  type IpvsRenderConfig,
  type RealServer,
  type SetType,
  type VirtualServer,
} from './ipvs.js';

export interface IpvsKernelState {
  readonly services: ReadonlyMap<string, VirtualServer>;
  /** "vsKey>ip:port" -> active + inactive connections (only read while something drains) */
  readonly connections?: ReadonlyMap<string, number>;
  readonly sets: ReadonlyMap<string, IpsetSpec>;
  /** addresses on kpx's dummy interface */
  readonly addresses: ReadonlySet<string>;
}

const PROTO_FLAG: Record<IpvsProto, string> = { tcp: '-t', udp: '-u', sctp: '--sctp-service' };
const FLAG_PROTO: Record<string, IpvsProto> = { '-t': 'tcp', '--tcp-service': 'tcp', '-u': 'udp', '--udp-service': 'udp', '--sctp-service': 'sctp' };

/** "[2001:2::1]:80" or "198.19.0.10:80" -> ip, port (canonical ip text) */
function splitHostPort(s: string): { ip: string; port: number } | null {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(s);
  const ip = m ? parseIP(m[1]!) : null;
  return m && ip ? { ip: ip.text, port: Number(m[2]) } : null;
}

/** Parses `ipvsadm -Sn` (ipvsadm -R's input format). Fwmark services are not kpx's: skipped. */
export function parseIpvsSave(text: string): Map<string, VirtualServer> {
  const out = new Map<string, { proto: IpvsProto; ip: string; port: number; scheduler: string; persistence: number; reals: Map<string, RealServer> }>();
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    const cmd = t[0];
    if (cmd !== '-A' && cmd !== '-a') continue;
    const proto = FLAG_PROTO[t[1] ?? ''];
    const hp = splitHostPort(t[2] ?? '');
    if (!proto || !hp) continue;
    const key = vsKey(proto, hp.ip, hp.port);
    const opt = (flag: string) => {
      const i = t.indexOf(flag);
      return i >= 0 ? t[i + 1] : undefined;
    };
    if (cmd === '-A') {
      out.set(key, { proto, ip: hp.ip, port: hp.port, scheduler: opt('-s') ?? 'wlc', persistence: Number(opt('-p') ?? (t.includes('-p') ? 360 : 0)), reals: new Map() });
    } else {
      const real = splitHostPort(opt('-r') ?? '');
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
      const hp = splitHostPort(vs[2]!);
      current = hp ? vsKey(vs[1]!.toLowerCase() as IpvsProto, hp.ip, hp.port) : null;
      continue;
    }
    const rs = /^\s+->\s+(\S+)\s+\S+\s+\d+\s+(\d+)\s+(\d+)/.exec(line);
    const hp = rs ? splitHostPort(rs[1]!) : null;
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

export interface IpvsPlan {
  /** input for `ipvsadm -R`: -A/-E/-a/-e/-d/-D lines; empty when nothing changes */
  readonly ipvsadm: string;
  /** input for `ipset restore` that must run before the iptables rules (creates, adds) */
  readonly ipsetBefore: string;
  /** input for `ipset restore` after the iptables rules (deletes, destroys) */
  readonly ipsetAfter: string;
  readonly addressesToAdd: readonly string[];
  readonly addressesToDelete: readonly string[];
  /** real servers now draining (weight 0), by "vsKey>ip:port" */
  readonly draining: readonly string[];
  readonly counts: { servicesAdded: number; servicesDeleted: number; realsAdded: number; realsDeleted: number; realsDrained: number };
}

export interface DrainPolicy {
  readonly now: number;
  /** when each draining real server started draining (kpx's memory; missing = now) */
  readonly since: ReadonlyMap<string, number>;
  /** a draining TCP real server is deleted after this long even with connections */
  readonly boundMs: number;
}

export function vsLine(cmd: '-A' | '-E' | '-D', vs: Pick<VirtualServer, 'proto' | 'ip' | 'port' | 'scheduler' | 'persistence'>): string {
  const base = `${cmd} ${PROTO_FLAG[vs.proto]} ${joinHostPort(vs.ip, vs.port)}`;
  if (cmd === '-D') return base;
  return `${base} -s ${vs.scheduler}${vs.persistence ? ` -p ${vs.persistence}` : ''}`;
}

function rsLine(cmd: '-a' | '-e' | '-d', vs: VirtualServer, rs: RealServer): string {
  const base = `${cmd} ${PROTO_FLAG[vs.proto]} ${joinHostPort(vs.ip, vs.port)} -r ${joinHostPort(rs.ip, rs.port)}`;
  return cmd === '-d' ? base : `${base} -m -w ${rs.weight}`;
}

const setCreate = (s: IpsetSpec) =>
  s.type === 'bitmap:port'
    ? `create ${s.name} bitmap:port range 0-65535 -exist`
    : `create ${s.name} ${s.type} family ${s.family === 'IPv4' ? 'inet' : 'inet6'} -exist`;

/**
 * The changes from `kernel` to `desired`. A virtual server is kpx's when its address is on
 * kpx's dummy interface or is a NodePort address, and not in excludeCIDRs; others are
 * never touched. Removed TCP real servers drain: weight 0 first, deleted once they have no
 * connections or after the bound; UDP and SCTP ones go at once (their flows are cut by
 * the conntrack cleanup, as in kube-proxy).
 */
export function planIpvs(desired: IpvsDesired, kernel: IpvsKernelState, cfg: Pick<IpvsRenderConfig, 'excludeCIDRs' | 'nodePortIPs'>, drain: DrainPolicy): IpvsPlan {
  const ops: string[] = [];
  const draining: string[] = [];
  const counts = { servicesAdded: 0, servicesDeleted: 0, realsAdded: 0, realsDeleted: 0, realsDrained: 0 };
  const family = desired.family;
  const ours = new Set([...kernel.addresses, ...desired.addresses, ...cfg.nodePortIPs]);
  const owned = (vs: VirtualServer) => ours.has(vs.ip) && parseIP(vs.ip)?.family === family && !isExcluded(cfg, vs.ip);

  for (const [key, want] of desired.services) {
    const have = kernel.services.get(key);
    if (!have) {
      ops.push(vsLine('-A', want));
      counts.servicesAdded++;
    } else if (have.scheduler !== want.scheduler || have.persistence !== want.persistence) {
      ops.push(vsLine('-E', want));
    }
    for (const [addr, rs] of want.reals) {
      const cur = have?.reals.get(addr);
      if (!cur) {
        ops.push(rsLine('-a', want, rs));
        counts.realsAdded++;
      } else if (cur.weight !== rs.weight) ops.push(rsLine('-e', want, rs));
    }
    for (const [addr, cur] of have?.reals ?? []) {
      if (want.reals.has(addr)) continue;
      const id = `${key}>${addr}`;
      const conns = kernel.connections?.get(id);
      const started = drain.since.get(id) ?? drain.now;
      const drained = want.proto !== 'tcp' || conns === 0 || drain.now - started >= drain.boundMs;
      if (drained) {
        ops.push(rsLine('-d', want, cur));
        counts.realsDeleted++;
      } else {
        if (cur.weight !== 0) {
          ops.push(rsLine('-e', want, { ...cur, weight: 0 }));
          counts.realsDrained++;
        }
        draining.push(id);
      }
    }
  }
  for (const [key, have] of kernel.services) {
    if (desired.services.has(key) || !owned(have)) continue;
    ops.push(vsLine('-D', have));
    counts.servicesDeleted++;
  }

  const before: string[] = [];
  const after: string[] = [];
  for (const [name, want] of desired.sets) {
    const have = kernel.sets.get(name);
    if (!have) before.push(setCreate(want));
    for (const m of want.members) {
      const c = canonicalMember(m);
      if (!have?.members.has(c)) before.push(`add ${name} ${c} -exist`);
    }
    const wanted = new Set([...want.members].map(canonicalMember));
    for (const m of have?.members ?? []) if (!wanted.has(m)) after.push(`del ${name} ${m} -exist`);
  }
  for (const [name, have] of kernel.sets) if (!desired.sets.has(name) && have.family === family) after.push(`destroy ${name}`);

  return {
    ipvsadm: ops.length ? `${ops.join('\n')}\n` : '',
    ipsetBefore: before.length ? `${before.join('\n')}\n` : '',
    ipsetAfter: after.length ? `${after.join('\n')}\n` : '',
    addressesToAdd: [...desired.addresses].filter((a) => !kernel.addresses.has(a)).sort(),
    addressesToDelete: [...kernel.addresses].filter((a) => !desired.addresses.has(a) && parseIP(a)?.family === family).sort(),
    draining,
    counts,
  };
}
