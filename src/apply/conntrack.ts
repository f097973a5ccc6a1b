// Stale conntrack cleanup for UDP and SCTP. Their flows have no handshake to break, so a
// flow that was DNATed to an endpoint keeps going there after the endpoint is gone. After
// each successful sync, kpx deletes flows whose original destination is a service
// frontend (IP:port or NodePort) and whose reply source is not a serving endpoint of it.
// Unlike kube-proxy's regressions (kubernetes#139628, #141371), a service scaled to zero or
// deleted counts as "no serving endpoints": all its flows go.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import type { ServicePortState } from '../model/types.js';
import type { SavedChain } from '../iptables/save.js';
import { isKpxChain } from '../render/iptables/names.js';
import { parseRule } from '../iptables/rule.js';
import type { CommandRunner } from './exec.js';

export type CtProto = 'udp' | 'sctp';

/** Frontends of UDP/SCTP service ports and the endpoints each may answer from. */
export interface Frontends {
  /** "ip|port|proto" -> serving endpoints "ip|port" */
  readonly addresses: Map<string, Set<string>>;
  /** "port|proto" -> serving endpoints "ip|port" */
  readonly nodePorts: Map<string, Set<string>>;
}

export interface ConntrackEntry {
  readonly proto: CtProto;
  readonly origSrc: string;
  readonly origDst: string;
  readonly origSport: number;
  readonly origDport: number;
  readonly replySrc: string;
  readonly replySport: number;
}

export function frontendsOf(fragments: Iterable<ServicePortState>): Frontends {
  const addresses = new Map<string, Set<string>>();
  const nodePorts = new Map<string, Set<string>>();
  for (const f of fragments) {
    const sp = f.servicePort;
    if (sp.protocol === 'TCP') continue;
    const proto = sp.protocol.toLowerCase();
    const serving = new Set(f.endpoints.filter((e) => e.serving).map((e) => `${e.ip}|${e.port}`));
    for (const ip of [sp.clusterIP, ...sp.externalIPs, ...sp.loadBalancerVIPs]) addresses.set(`${ip}|${sp.port}|${proto}`, serving);
    if (sp.nodePort) nodePorts.set(`${sp.nodePort}|${proto}`, serving);
  }
  return { addresses, nodePorts };
}

/**
 * UDP/SCTP frontends in rules kpx programmed earlier (read back from the kernel at start),
 * so a service deleted while kpx was not running still has its flows cleaned.
 */
export function frontendsFromRules(nat: ReadonlyMap<string, SavedChain>, protocols = /-p (udp|sctp)/): Frontends {
  const addresses = new Map<string, Set<string>>();
  const nodePorts = new Map<string, Set<string>>();
  for (const [chain, c] of nat) {
    if (!isKpxChain(chain)) continue;
    for (const text of c.rules) {
      if (!/-j KPX-(SVC|SVL|EXT|FW)-/.test(text) || !protocols.test(text)) continue;
      const r = parseRule(text);
      if (!r.proto || !r.dport || r.dport.lo !== r.dport.hi) continue;
      const full = r.dst && r.dst.cidr.bits === (r.dst.cidr.family === 'IPv4' ? 32 : 128);
      if (r.dst && full && !r.dst.negate) addresses.set(`${r.dst.cidr.address}|${r.dport.lo}|${r.proto.name}`, new Set());
      else if (!r.dst) nodePorts.set(`${r.dport.lo}|${r.proto.name}`, new Set());
    }
  }
  return { addresses, nodePorts };
}

/** Adds frontends that existed before but are gone now, with no endpoints. */
export function withDeleted(now: Frontends, before: Frontends | undefined): Frontends {
  if (!before) return now;
  const addresses = new Map(now.addresses);
  const nodePorts = new Map(now.nodePorts);
  for (const k of before.addresses.keys()) if (!addresses.has(k)) addresses.set(k, new Set());
  for (const k of before.nodePorts.keys()) if (!nodePorts.has(k)) nodePorts.set(k, new Set());
  return { addresses, nodePorts };
}

/** Parses `conntrack -L` output (first tuple = original, second = reply). */
export function parseConntrack(text: string): ConntrackEntry[] {
  const out: ConntrackEntry[] = [];
  for (const line of text.split('\n')) {
    const proto = line.split(/\s+/, 1)[0];
    if (proto !== 'udp' && proto !== 'sctp') continue;
    const vals: Record<string, string[]> = {};
    for (const m of line.matchAll(/\b(src|dst|sport|dport)=(\S+)/g)) (vals[m[1]!] ??= []).push(m[2]!);
    if (vals.src?.length !== 2 || vals.sport?.length !== 2) continue;
    out.push({
      proto,
      origSrc: vals.src[0]!,
      origDst: vals.dst![0]!,
      origSport: Number(vals.sport[0]),
      origDport: Number(vals.dport![0]),
      replySrc: vals.src[1]!,
      replySport: Number(vals.sport[1]),
    });
  }
  return out;
}

/** One delete filter per stale (frontend, endpoint) pair. */
export interface DeleteFilter {
  readonly proto: CtProto;
  readonly origDst?: string;
  readonly origDport: number;
  readonly replySrc: string;
  readonly replySport: number;
}

export function staleFilters(entries: readonly ConntrackEntry[], fe: Frontends): DeleteFilter[] {
  const out = new Map<string, DeleteFilter>();
  for (const e of entries) {
    const reply = `${e.replySrc}|${e.replySport}`;
    const byAddr = fe.addresses.get(`${e.origDst}|${e.origDport}|${e.proto}`);
    if (byAddr) {
      if (!byAddr.has(reply)) {
        const f = { proto: e.proto, origDst: e.origDst, origDport: e.origDport, replySrc: e.replySrc, replySport: e.replySport };
        out.set(JSON.stringify(f), f);
      }
      continue;
    }
    const byPort = fe.nodePorts.get(`${e.origDport}|${e.proto}`);
    if (byPort && !byPort.has(reply)) {
      const f = { proto: e.proto, origDport: e.origDport, replySrc: e.replySrc, replySport: e.replySport };
      out.set(JSON.stringify(f), f);
    }
  }
  return [...out.values()];
}

/**
 * Service addresses (ip|port, TCP) that have serving endpoints. A connection attempt made
 * while such a frontend had no rule leaves an un-NATed SYN_SENT entry (2 minutes); a later
 * SYN from the same source port matches it and bypasses the new DNAT. kube-proxy leaves
 * these; kpx deletes them when the frontend starts being served.
 */
export function servedTcpFrontends(ports: Iterable<ServicePortState>): Set<string> {
  const out = new Set<string>();
  for (const { servicePort: sp, endpoints } of ports) {
    if (sp.protocol !== 'TCP' || !endpoints.some((e) => e.serving)) continue;
    for (const ip of [sp.clusterIP, ...sp.externalIPs, ...sp.loadBalancerVIPs]) out.add(`${ip}|${sp.port}`);
  }
  return out;
}

export class ConntrackCleaner {
  private last = new Map<IPFamily, Frontends>();
  private lastTcp = new Map<IPFamily, Set<string>>();

  constructor(
    private readonly runner: CommandRunner,
    private readonly log: Logger,
    /** flows deleted (metrics) */
    private readonly onDeleted: (family: IPFamily, flows: number) => void = () => {},
    /** one cleanup's duration in seconds (metrics) */
    private readonly onCleaned: (family: IPFamily, seconds: number) => void = () => {},
  ) {}

  /** Frontends served before this process started (from the kernel's rules). */
  seed(family: IPFamily, before: Frontends): void {
    const had = this.last.get(family);
    this.last.set(family, had ? withDeleted(had, before) : before);
  }

  /** Deletes stale flows for one family; returns how many filters were applied. */
  async clean(family: IPFamily, fragments: Iterable<ServicePortState>): Promise<number> {
    const started = performance.now();
    try {
      return await this.cleanFamily(family, [...fragments]);
    } finally {
      this.onCleaned(family, (performance.now() - started) / 1000);
    }
  }

  private async cleanFamily(family: IPFamily, ports: ServicePortState[]): Promise<number> {
    await this.cleanUnNatedTcp(family, ports);
    const current = frontendsOf(ports);
    const fe = withDeleted(current, this.last.get(family));
    this.last.set(family, current);
    if (fe.addresses.size === 0 && fe.nodePorts.size === 0) return 0;
    const fam = family === 'IPv4' ? 'ipv4' : 'ipv6';
    const entries: ConntrackEntry[] = [];
    for (const proto of ['udp', 'sctp'] as const) {
      const r = await this.runner.run('conntrack', ['-L', '-f', fam, '-p', proto]);
      if (r.exitCode !== 0) {
        this.log.warn({ family, proto, err: r.stderr.trim() }, 'cannot list conntrack entries');
        continue;
      }
      entries.push(...parseConntrack(r.stdout));
    }
    const filters = staleFilters(entries, fe);
    for (const f of filters) {
      const args = ['-D', '-f', fam, '-p', f.proto, '--orig-port-dst', String(f.origDport), '--reply-src', f.replySrc, '--reply-port-src', String(f.replySport)];
      if (f.origDst) args.push('--orig-dst', f.origDst);
      const r = await this.runner.run('conntrack', args);
      // exit 1 with "0 flow entries" just means the flow already expired
      const n = Number(/(\d+) flow entries have been deleted/.exec(r.stderr)?.[1] ?? 0);
      if (n) this.onDeleted(family, n);
      this.log.debug({ family, filter: f, deleted: n }, 'deleted stale conntrack entries');
    }
    if (filters.length) this.log.info({ family, filters: filters.length }, 'cleaned stale UDP/SCTP conntrack entries');
    return filters.length;
  }

  /**
   * TCP service addresses the kernel's rules served before this process's first sync, so
   * a restart does not count them all as new. Nothing of kpx's there (a fresh node): unknown.
   */
  seedTcp(family: IPFamily, nat: ReadonlyMap<string, SavedChain>): void {
    if (this.lastTcp.has(family) || ![...nat.keys()].some(isKpxChain)) return;
    const fe = frontendsFromRules(nat, /-p tcp/);
    this.lastTcp.set(family, new Set([...fe.addresses.keys()].map((k) => k.slice(0, k.lastIndexOf('|')))));
  }

  /** Deletes un-NATed TCP entries (reply source = the service address) of newly served frontends. */
  private async cleanUnNatedTcp(family: IPFamily, ports: readonly ServicePortState[]): Promise<void> {
    const now = servedTcpFrontends(ports);
    const before = this.lastTcp.get(family);
    this.lastTcp.set(family, now);
    // the first sync after a start serves everything "newly": nothing to compare with
    if (!before) return;
    const fam = family === 'IPv4' ? 'ipv4' : 'ipv6';
    for (const fe of now) {
      if (before.has(fe)) continue;
      const [ip, port] = fe.split('|') as [string, string];
      const r = await this.runner.run('conntrack', ['-D', '-f', fam, '-p', 'tcp', '--orig-dst', ip, '--orig-port-dst', port, '--reply-src', ip]);
      const n = Number(/(\d+) flow entries have been deleted/.exec(r.stderr)?.[1] ?? 0);
      if (n) {
        this.onDeleted(family, n);
        this.log.info({ family, frontend: fe, deleted: n }, 'deleted un-NATed TCP conntrack entries of a newly served service address');
      }
    }
  }
}
