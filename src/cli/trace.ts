// `kpx trace`: the journey of one packet as the node would handle it. Walks it through the
// rules kpx renders (or, --live, the kernel's), explains which endpoints it may reach and
// why the others are excluded (from the model: --manifests or the API), and asks the
// kernel where it goes next (--live: ip route get, and the remote VTEP of a vxlan device).
import type { Command } from 'commander';
import { Option } from 'commander';
import { readdirSync, readFileSync } from 'node:fs';
import { execRunner } from '../apply/exec.js';
import { out } from './output.js';
import { addProxyFlags } from './flags.js';
import { binaries, detectBackend } from '../apply/backend.js';
import { readHostFacts } from '../apply/host.js';
import { ConfigError, type CliFlags } from '../config/config.js';
import { isLoopback, parseIP, splitHostPort, type IPFamily } from '../util/ip.js';
import { isIptablesReport } from '../sync/iptables-mode.js';
import { isNftablesReport } from '../sync/nftables-mode.js';
import type { Built } from './main.js';
import { Tracer, tablesFromRuleset, tablesFromSave, type Outcome, type Tables, type TracePacket } from '../trace/tracer.js';
import { explainEndpoints, findFrontend, withAffinity, type EndpointExplanation, type TraceSource } from '../trace/endpoints.js';
import { compareWithModel, formatJourney, routeTarget, throughIpvs, type IpvsMatch, type Journey, type JourneyOutcome, type JourneyPacket } from '../trace/journey.js';
import { routeGet, type RouteInfo } from '../trace/route.js';
import { ipvsTraceConfig, liveIpvs, matchVirtualServer, renderedIpvs, type IpvsState } from '../trace/ipvs.js';
import { affinitySetsWith, liveNftTable, NftTracer, tableFromRenderer } from '../trace/nftables.js';
import type { NftTableModel } from '../nftables/rules.js';

type TraceMode = 'iptables' | 'ipvs' | 'nftables';

type Proto = 'tcp' | 'udp' | 'sctp';

export interface TraceFlags extends CliFlags {
  src: string;
  dst: string;
  dport?: string;
  proto?: Proto;
  from?: TraceSource;
  inInterface?: string;
  fromNode?: boolean;
  localAddress?: string[];
  mode?: TraceMode;
  live?: boolean;
  json?: boolean;
  logLevel?: string;
}

/** The proxy flags that change what a trace sees; `kpx trace --help` lists these only. */
export const TRACE_PROXY_FLAGS: ReadonlySet<string> = new Set([
  'config',
  'kubeconfig',
  'master',
  'manifests',
  'hostname-override',
  'cluster-cidr',
  'detect-local-mode',
  'pod-bridge-interface',
  'pod-interface-name-prefix',
  'masquerade-all',
  'nodeport-addresses',
  'iptables-masquerade-bit',
  'iptables-backend',
  'ipvs-scheduler',
  'log-level',
]);

export function addTraceFlags(cmd: Command): Command {
  cmd
    .requiredOption('--src <ip>', 'packet source address')
    .requiredOption('--dst <ip:port[/proto]>', 'destination: 198.19.0.10:80, [2001:2::10]:30080/udp (a bare address takes --dport and --proto)')
    .option('--dport <port>', 'destination port, when --dst has none')
    .addOption(new Option('--proto <proto>', 'protocol, when --dst has none (default: tcp)').choices(['tcp', 'udp', 'sctp']))
    .addOption(new Option('--from <where>', 'who sends it: a pod on this node (arrives bridged on the pod bridge), the node itself, or an external client (default: external)').choices(['pod', 'node', 'external']))
    .option('--in-interface <name>', 'interface it arrives on (default, --live: the route back to --src; else the pod bridge for pods, eth0 for external)')
    .addOption(new Option('--from-node', 'same as --from node').hideHelp())
    .option('--local-address <ip...>', 'extra addresses of the node, for addrtype LOCAL (default: Node IPs, 127.0.0.1)')
    .addOption(new Option('--mode <mode>', 'proxy mode whose rules to trace (default: the configured one, else iptables)').choices(['iptables', 'ipvs', 'nftables']))
    .option('--live', 'trace through the kernel\'s rules (iptables-save; IPVS: ipvsadm, ipset; nftables: nft -j list table ip|ip6 kpx) and ask it for the next hop; endpoints are explained from --manifests or the API when one is given (default: false)')
    .option('--json', 'print the journey as JSON (default: false)');
  return addProxyFlags(cmd, TRACE_PROXY_FLAGS);
}

/** "198.19.0.10:80/udp", "[2001:2::1]:80", or a bare address with --dport/--proto. */
export function parseDestination(dst: string, dport: string | undefined, proto: Proto | undefined): { ip: string; port: number; proto: Proto } {
  const slash = dst.lastIndexOf('/');
  let p = proto;
  let rest = dst;
  if (slash > 0 && /^(tcp|udp|sctp)$/i.test(dst.slice(slash + 1))) {
    p = dst.slice(slash + 1).toLowerCase() as Proto;
    rest = dst.slice(0, slash);
  }
  const hp = splitHostPort(rest);
  const ipText = hp ? hp.host : rest;
  const port = hp ? hp.port : Number(dport);
  const ip = parseIP(ipText);
  if (!ip) throw new ConfigError(`--dst: ${dst}: not an address (ip:port[/tcp|udp|sctp])`);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConfigError(`--dst: ${dst}: a port 1-65535 (in --dst or --dport)`);
  return { ip: ip.text, port, proto: p ?? 'tcp' };
}

/** The rules to trace through and the node's addresses (what `-m addrtype LOCAL` and `fib ... type local` match). */
interface TraceRules {
  /** iptables and IPVS mode */
  readonly tables?: Tables;
  readonly local: readonly string[];
  readonly ipvs?: IpvsState;
  /** nftables mode: kpx's table */
  readonly nft?: NftTableModel;
}

async function saveBinary(flags: TraceFlags, family: IPFamily): Promise<string> {
  const backend = flags.iptablesBackend === 'legacy' || flags.iptablesBackend === 'nft' ? flags.iptablesBackend : (await detectBackend(execRunner)).backend;
  return binaries(family, backend).save;
}

/** The live rules: iptables-save from the backend kpx run would use (given, or detected the same way). */
async function liveRules(flags: TraceFlags, family: IPFamily, mode: TraceMode, masqueradeBit: number): Promise<TraceRules> {
  if (mode === 'nftables') return { nft: await liveNftTable(execRunner, family), local: readHostFacts().addresses[family] };
  const save = await saveBinary(flags, family);
  if (mode === 'ipvs') {
    const ipvs = await liveIpvs(execRunner, save, family, masqueradeBit);
    return { tables: ipvs.tables, local: ipvs.local, ipvs };
  }
  const r = await execRunner.run(save, []);
  if (r.exitCode !== 0) throw new Error(`cannot read the rules: ${r.stderr.trim()}`);
  return { tables: tablesFromSave(r.stdout), local: readHostFacts().addresses[family] };
}

/** The model, synced once from the configured source (a dry run that renders and applies nothing). */
async function loadModel(flags: TraceFlags): Promise<Built | null> {
  const { build } = await import('./main.js');
  const built = await build({ ...flags, once: true, dryRun: true, renderOnly: true, logLevel: flags.logLevel ?? 'warn' }, () => {});
  await built.proxier.init();
  if (!(await built.controller.runOnce())) return null;
  return built;
}

/** The rules kpx renders for this model (the dry run's). */
function renderedRules(built: Built, family: IPFamily): TraceRules {
  if (built.config.mode === 'ipvs') {
    const cfg = ipvsTraceConfig(built.config, family, built.state.node);
    const ipvs = renderedIpvs(built.state.view(family), cfg, built.state.node?.ips[family] ?? []);
    return { tables: ipvs.tables, local: ipvs.local, ipvs };
  }
  const found = built.controller.lastReport?.families.find((f) => f.family === family);
  if (!found) throw new Error(`no ${family} rules rendered`);
  if (isNftablesReport(found)) {
    const r = found.renderer;
    const cfg = r.config;
    return { nft: tableFromRenderer(r), local: [...(cfg?.nodeIPs ?? []), ...(cfg && cfg.nodePortAddresses !== 'all' ? cfg.nodePortAddresses : [])] };
  }
  if (!isIptablesReport(found)) throw new ConfigError(`kpx trace walks iptables, IPVS or nftables mode rules, not ${found.mode}`);
  const cfg = found.config;
  const local = [...(cfg?.nodeIPs ?? []), ...(cfg && cfg.nodePortAddresses !== 'all' ? cfg.nodePortAddresses : [])];
  return { tables: tablesFromRuleset(found.ruleset), local };
}

/** A model source was named (or kpx runs in a pod): --live explains endpoints from it. */
function hasModelSource(flags: TraceFlags): boolean {
  return [flags.manifests, flags.kubeconfig, flags.master, flags.config].some((v) => typeof v === 'string' && v !== '') || !!process.env.KUBERNETES_SERVICE_HOST;
}

/** xt_recent lists (session affinity) the client is in now. */
function recentListsWith(src: string): Set<string> {
  const lists = new Set<string>();
  const dir = '/proc/net/xt_recent';
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return lists;
  }
  for (const name of names) {
    try {
      if (readFileSync(`${dir}/${name}`, 'utf8').split('\n').some((l) => l.startsWith(`src=${src} `))) lists.add(name);
    } catch {
      // a list removed while reading
    }
  }
  return lists;
}

function sourceOf(flags: TraceFlags): TraceSource {
  if (flags.from) return flags.from;
  return flags.fromNode ? 'node' : 'external';
}

async function inInterface(flags: TraceFlags, from: TraceSource, src: string): Promise<string | undefined> {
  if (from === 'node') return undefined;
  if (flags.inInterface) return flags.inInterface;
  if (flags.live) {
    const back = await routeGet(execRunner, src);
    if (back.dev) return back.dev;
  }
  if (from === 'pod') return typeof flags.podBridgeInterface === 'string' && flags.podBridgeInterface ? flags.podBridgeInterface : 'cni0';
  return 'eth0';
}

/**
 * The addresses the configuration serves NodePorts on: the node's own (`local`) unless
 * nodePortAddresses lists some (nftables mode's default is the primary IPs); 127/8 only in
 * iptables mode with localhost NodePorts, and never in IPVS mode.
 */
function nodePortAddressTest(built: Built, family: IPFamily, local: ReadonlySet<string>): (ip: string) => boolean {
  if (built.config.mode === 'ipvs') {
    const ips = new Set(ipvsTraceConfig(built.config, family, built.state.node).nodePortIPs);
    return (ip) => ips.has(ip);
  }
  const found = built.controller.lastReport?.families.find((f) => f.family === family);
  const cfg = !found ? null : isNftablesReport(found) ? found.renderer.config : isIptablesReport(found) ? found.config : null;
  if (!cfg) return (ip) => local.has(ip);
  const loopback = found && isIptablesReport(found) && !!found.config?.localhostNodePorts;
  const listed = cfg.nodePortAddresses === 'all' ? null : new Set(cfg.nodePortAddresses);
  return (ip) => (listed ? listed.has(ip) : local.has(ip)) && (loopback || !isLoopback(ip));
}

function explain(built: Built | null, pkt: TracePacket, from: TraceSource, local: ReadonlySet<string>): EndpointExplanation | null | undefined {
  if (!built) return undefined;
  const view = built.state.view(pkt.family);
  const front = findFrontend(view, pkt, nodePortAddressTest(built, pkt.family, local));
  if (!front) return null;
  return explainEndpoints(front, view.endpointsOf(front.servicePort), { nodeName: built.config.hostname, zone: built.state.node?.zone }, from, pkt.src);
}

async function withRoutes(outcomes: JourneyOutcome[], pkt: JourneyPacket, live: boolean): Promise<JourneyOutcome[]> {
  if (!live) return outcomes;
  const cache = new Map<string, RouteInfo>();
  const res: JourneyOutcome[] = [];
  for (const o of outcomes) {
    if (o.verdict !== 'ACCEPT' || (o.delivery === 'local' && !o.realServer)) {
      res.push(o);
      continue;
    }
    const target = routeTarget(o, pkt.dst);
    let route = cache.get(target);
    if (!route) {
      route = await routeGet(execRunner, target, pkt.from === 'node' ? {} : { src: pkt.src, iif: pkt.inInterface });
      cache.set(target, route);
    }
    res.push({ ...o, route });
  }
  return res;
}

function ipvsOutcomes(outcomes: Outcome[], ipvs: IpvsState | undefined, pkt: TracePacket): { outcomes: JourneyOutcome[]; vs?: IpvsMatch | null } {
  if (!ipvs) return { outcomes };
  const vs = matchVirtualServer(ipvs.services, pkt.proto, pkt.dst, pkt.dport);
  return { outcomes: throughIpvs(outcomes, vs, ipvs.masqueradeMark), vs };
}

function reachedEndpoints(outcomes: readonly Outcome[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const o of outcomes) if (o.verdict === 'ACCEPT' && o.dnat) m.set(o.dnat, (m.get(o.dnat) ?? 0) + o.probability);
  return m;
}

/** The model (when there is one to read) and the rules to trace through. */
async function modelAndRules(flags: TraceFlags, family: IPFamily): Promise<{ built: Built | null; mode: TraceMode; rules: TraceRules } | null> {
  const proxyFlags: TraceFlags = flags.mode ? { ...flags, proxyMode: flags.mode } : flags;
  const built = !flags.live || hasModelSource(flags) ? await loadModel(proxyFlags) : null;
  if (!flags.live && !built) return null;
  const mode: TraceMode = built ? built.config.mode : (flags.mode ?? 'iptables');
  const masqBit = built?.config.masqueradeBit ?? (typeof flags.iptablesMasqueradeBit === 'string' ? Number(flags.iptablesMasqueradeBit) : 14);
  const rules = flags.live ? await liveRules(flags, family, mode, masqBit) : renderedRules(built!, family);
  return { built, mode, rules };
}

/** The packet as the tracer takes it, and as the journey shows it. */
async function packetOf(flags: TraceFlags): Promise<{ pkt: TracePacket; jp: JourneyPacket }> {
  const src = parseIP(flags.src);
  const dst = parseDestination(flags.dst, flags.dport, flags.proto);
  if (!src || src.family !== parseIP(dst.ip)?.family) throw new ConfigError('--src/--dst: two addresses of the same family');
  const from = sourceOf(flags);
  const iface = await inInterface(flags, from, src.text);
  const pkt: TracePacket = {
    family: src.family,
    src: src.text,
    dst: dst.ip,
    dport: dst.port,
    proto: dst.proto,
    from: from === 'node' ? 'local' : { inIface: iface ?? 'eth0', bridged: from === 'pod' },
  };
  return { pkt, jp: { src: src.text, dst: dst.ip, dport: dst.port, proto: dst.proto, from, ...(iface ? { inInterface: iface } : {}) } };
}

export async function traceCommand(flags: TraceFlags): Promise<number> {
  const { pkt, jp } = await packetOf(flags);
  const found = await modelAndRules(flags, pkt.family);
  if (!found) return 1;
  const { built, mode, rules } = found;
  const local = new Set<string>([...(flags.localAddress ?? []), pkt.family === 'IPv4' ? '127.0.0.1' : '::1', ...rules.local]);
  // session affinity: the xt_recent lists (nftables: the affinity sets) the client is in now
  const recent = !flags.live ? new Set<string>() : rules.nft ? affinitySetsWith(rules.nft, pkt.src) : recentListsWith(pkt.src);
  const lists = rules.nft ? 'nft set' : 'xt_recent';
  const ipsets = rules.ipvs?.ipsets;
  const env = { localAddresses: [...local], recent, ...(ipsets ? { ipsets } : {}) };
  const traced = rules.nft ? new NftTracer(rules.nft, env).trace(pkt) : new Tracer(rules.tables!, env).trace(pkt);
  const { outcomes, vs } = ipvsOutcomes(traced, rules.ipvs, pkt);
  const explained = explain(built, pkt, jp.from, local);
  const endpoints = explained ? withAffinity(explained, reachedEndpoints(outcomes), pkt.src, [...recent], lists) : explained;
  const notes: string[] = [];
  if (recent.size) notes.push(`session affinity: ${pkt.src} is in ${lists === 'nft set' ? 'affinity set(s)' : 'xt_recent list(s)'} ${[...recent].join(', ')}: it goes back to the endpoint it had while the entry lasts`);
  const journey: Journey = {
    packet: jp,
    mode,
    rules: flags.live ? 'live' : 'rendered',
    outcomes: await withRoutes(outcomes, jp, !!flags.live),
    ...(endpoints !== undefined ? { endpoints } : {}),
    ...(vs !== undefined ? { ipvs: vs } : {}),
    mismatches: compareWithModel(outcomes, endpoints),
    notes,
  };
  out(flags.json ? `${JSON.stringify(journey, null, 2)}\n` : formatJourney(journey));
  return 0;
}

/** One line per outcome (the summary the tests of the tracer print). */
export function formatOutcomes(outcomes: Outcome[]): string {
  const lines = outcomes.map((o) => {
    const pct = `${(o.probability * 100).toFixed(1).padStart(5)}%`;
    const where = o.dnat ? `DNAT ${o.dnat}` : o.delivery === 'local' ? 'to the node' : 'not translated';
    const masq = o.masquerade ? ', masqueraded' : '';
    const why = o.decidedBy ? `\n        by: ${o.decidedBy}` : '';
    return `${pct}  ${o.verdict.padEnd(6)} ${where}${masq}  (${o.rules.nat} nat + ${o.rules.filter} filter rules; via ${o.chains.join(' > ') || '-'})${why}`;
  });
  return `${lines.join('\n')}\n`;
}
