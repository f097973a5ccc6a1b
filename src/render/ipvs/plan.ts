// IPVS mode, diff side: plan the changes that take what the kernel has (as src/ipvs/format
// parses it) to the desired state: one `ipvsadm -R` batch and one `ipset restore` batch,
// never a flush. Pure.
import { parseIP } from '../../util/ip.js';
import { canonicalMember, rsLine, setAdd, setCreate, setDel, setDestroy, vsLine } from '../../ipvs/format.js';
import {
  isExcluded,
  type IpsetSpec,
  type IpvsDesired,
  type IpvsRenderConfig,
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

/**
 * The changes from `kernel` to `desired`. A virtual server is kpx's when its address is on
 * kpx's dummy interface or is a NodePort address, and not in excludeCIDRs; others are
 * never touched. Removed TCP real servers drain: weight 0 first, deleted once they have no
 * connections or after the bound; UDP and SCTP ones go at once (their flows are cut by
 * the conntrack cleanup, as in kube-proxy).
 */
export function planIpvs(desired: IpvsDesired, kernel: IpvsKernelState, cfg: Pick<IpvsRenderConfig, 'excludeCIDRs' | 'nodePortIPs'>, drain: DrainPolicy): IpvsPlan {
  const family = desired.family;
  const vs = virtualServerOps(desired, kernel, cfg, drain);
  const sets = setOps(desired, kernel);
  return {
    ipvsadm: vs.ops.length ? `${vs.ops.join('\n')}\n` : '',
    ipsetBefore: sets.before.length ? `${sets.before.join('\n')}\n` : '',
    ipsetAfter: sets.after.length ? `${sets.after.join('\n')}\n` : '',
    addressesToAdd: [...desired.addresses].filter((a) => !kernel.addresses.has(a)).sort(),
    addressesToDelete: [...kernel.addresses].filter((a) => !desired.addresses.has(a) && parseIP(a)?.family === family).sort(),
    draining: vs.draining,
    counts: vs.counts,
  };
}

type Counts = IpvsPlan['counts'];

/** -A/-E/-a/-e/-d/-D lines that take the kernel's virtual servers to the desired ones. */
function virtualServerOps(
  desired: IpvsDesired,
  kernel: IpvsKernelState,
  cfg: Pick<IpvsRenderConfig, 'excludeCIDRs' | 'nodePortIPs'>,
  drain: DrainPolicy,
): { ops: string[]; draining: string[]; counts: Counts } {
  const ops: string[] = [];
  const draining: string[] = [];
  const counts = { servicesAdded: 0, servicesDeleted: 0, realsAdded: 0, realsDeleted: 0, realsDrained: 0 };
  const ours = new Set([...kernel.addresses, ...desired.addresses, ...cfg.nodePortIPs]);
  const owned = (vs: VirtualServer) => ours.has(vs.ip) && parseIP(vs.ip)?.family === desired.family && !isExcluded(cfg, vs.ip);
  for (const [key, want] of desired.services) {
    const have = kernel.services.get(key);
    if (!have) {
      ops.push(vsLine('-A', want));
      counts.servicesAdded++;
    } else if (have.scheduler !== want.scheduler || have.persistence !== want.persistence) ops.push(vsLine('-E', want));
    realServerOps(key, want, have, kernel, drain, { ops, draining, counts });
  }
  for (const [key, have] of kernel.services) {
    if (desired.services.has(key) || !owned(have)) continue;
    ops.push(vsLine('-D', have));
    counts.servicesDeleted++;
  }
  return { ops, draining, counts };
}

/**
 * Real servers of one virtual server. Removed TCP real servers drain: weight 0 first,
 * deleted once they have no connections or after the bound; UDP and SCTP ones go at once.
 */
function realServerOps(
  key: string,
  want: VirtualServer,
  have: VirtualServer | undefined,
  kernel: IpvsKernelState,
  drain: DrainPolicy,
  out: { ops: string[]; draining: string[]; counts: Counts },
): void {
  const { ops, counts } = out;
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
    if (want.proto !== 'tcp' || conns === 0 || drain.now - started >= drain.boundMs) {
      ops.push(rsLine('-d', want, cur));
      counts.realsDeleted++;
      continue;
    }
    if (cur.weight !== 0) {
      ops.push(rsLine('-e', want, { ...cur, weight: 0 }));
      counts.realsDrained++;
    }
    out.draining.push(id);
  }
}

/** ipset lines: creates and adds before the iptables rules, deletes and destroys after. */
function setOps(desired: IpvsDesired, kernel: IpvsKernelState): { before: string[]; after: string[] } {
  const before: string[] = [];
  const after: string[] = [];
  for (const [name, want] of desired.sets) {
    const have = kernel.sets.get(name);
    if (!have) before.push(setCreate(want));
    for (const m of want.members) {
      const c = canonicalMember(m);
      if (!have?.members.has(c)) before.push(setAdd(name, c));
    }
    const wanted = new Set([...want.members].map(canonicalMember));
    for (const m of have?.members ?? []) if (!wanted.has(m)) after.push(setDel(name, m));
  }
  for (const [name, have] of kernel.sets) if (!desired.sets.has(name) && have.family === desired.family) after.push(setDestroy(name));
  return { before, after };
}
