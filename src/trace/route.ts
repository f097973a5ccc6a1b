// Where the kernel sends a packet next: `ip route get` in the current network namespace,
// and for a VXLAN egress device the remote VTEP it is encapsulated to (neighbour entry of
// the next hop, then the FDB entry of that MAC). Argv arrays only, never a shell string.
import type { CommandRunner } from '../apply/exec.js';

export interface VxlanHop {
  readonly device: string;
  readonly vni?: number;
  /** the inner next hop's MAC (neighbour entry) */
  readonly mac?: string;
  /** the underlay address the packet is encapsulated to: the remote node */
  readonly remote?: string;
  /** the name of the node owning `remote`, when known */
  readonly remoteNode?: string;
}

export interface RouteInfo {
  /** the address looked up (an endpoint, or the destination if not translated) */
  readonly target: string;
  readonly type?: string;
  readonly dev?: string;
  readonly gateway?: string;
  readonly prefsrc?: string;
  readonly vxlan?: VxlanHop;
  /** the lookup failed, or the route is not known (no kernel to ask) */
  readonly error?: string;
}

interface RouteJson {
  type?: string;
  dst?: string;
  gateway?: string;
  dev?: string;
  prefsrc?: string;
}

/** `ip -j route get` output (an array of one route). */
export function parseRouteGet(json: string): Omit<RouteInfo, 'target'> {
  const r = (JSON.parse(json) as RouteJson[])[0];
  if (!r) return { error: 'no route' };
  return { ...(r.type ? { type: r.type } : {}), ...(r.dev ? { dev: r.dev } : {}), ...(r.gateway ? { gateway: r.gateway } : {}), ...(r.prefsrc ? { prefsrc: r.prefsrc } : {}) };
}

/** `ip -j -d link show dev X`: the VXLAN id when the device is a vxlan device, else null. */
export function parseVxlanLink(json: string): { vni?: number } | null {
  const l = (JSON.parse(json) as Array<{ linkinfo?: { info_kind?: string; info_data?: { id?: number } } }>)[0];
  if (l?.linkinfo?.info_kind !== 'vxlan') return null;
  const id = l.linkinfo.info_data?.id;
  return id === undefined ? {} : { vni: id };
}

/** `ip -j neigh show to IP dev X`: the neighbour's MAC. */
export function parseNeighMac(json: string): string | undefined {
  const n = (JSON.parse(json) as Array<{ lladdr?: string }>)[0];
  return n?.lladdr?.toLowerCase();
}

/** `bridge fdb show dev X`: the remote VTEP for a MAC (or the all-zeros default entry). */
export function fdbRemote(text: string, mac: string | undefined): string | undefined {
  let fallback: string | undefined;
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    const i = t.indexOf('dst');
    if (i < 0 || !t[i + 1]) continue;
    const m = t[0]!.toLowerCase();
    if (mac && m === mac) return t[i + 1];
    if (m === '00:00:00:00:00:00' && !fallback) fallback = t[i + 1];
  }
  return fallback;
}

async function json(runner: CommandRunner, cmd: string, args: string[]): Promise<{ ok: true; text: string } | { ok: false; error: string }> {
  const r = await runner.run(cmd, args);
  if (r.exitCode !== 0) return { ok: false, error: `${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.exitCode}`}` };
  return { ok: true, text: r.stdout };
}

/** The VXLAN hop for a route leaving on `dev`, or undefined when `dev` is not a vxlan device. */
async function vxlanHop(runner: CommandRunner, dev: string, nextHop: string): Promise<VxlanHop | undefined> {
  const link = await json(runner, 'ip', ['-j', '-d', 'link', 'show', 'dev', dev]);
  const vx = link.ok ? parseVxlanLink(link.text) : null;
  if (!vx) return undefined;
  const neigh = await json(runner, 'ip', ['-j', 'neigh', 'show', 'to', nextHop, 'dev', dev]);
  const mac = neigh.ok ? parseNeighMac(neigh.text) : undefined;
  const fdb = await runner.run('bridge', ['fdb', 'show', 'dev', dev]);
  const remote = fdb.exitCode === 0 ? fdbRemote(fdb.stdout, mac) : undefined;
  return { device: dev, ...vx, ...(mac ? { mac } : {}), ...(remote ? { remote } : {}) };
}

/**
 * `ip route get TARGET [from SRC [iif IFACE]]`: a forwarded packet is looked up as it
 * arrives (from its source, on its interface); if the kernel refuses that (rp_filter, a
 * source it would not accept), the plain lookup.
 */
export async function routeGet(runner: CommandRunner, target: string, opts: { src?: string; iif?: string } = {}): Promise<RouteInfo> {
  const attempts: string[][] = [];
  if (opts.src && opts.iif) attempts.push(['from', opts.src, 'iif', opts.iif]);
  if (opts.src && !opts.iif) attempts.push(['from', opts.src]);
  attempts.push([]);
  let error = '';
  for (const extra of attempts) {
    const r = await json(runner, 'ip', ['-j', 'route', 'get', target, ...extra]);
    if (!r.ok) {
      error = r.error;
      continue;
    }
    const route = parseRouteGet(r.text);
    const vxlan = route.dev ? await vxlanHop(runner, route.dev, route.gateway ?? target) : undefined;
    return { target, ...route, ...(vxlan ? { vxlan } : {}) };
  }
  return { target, error };
}
