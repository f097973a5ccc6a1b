// `kpx trace`: where would this packet go? Renders the rules for the given source (or
// reads the live ones with --live) and walks the packet through nat and filter.
import type { Command } from 'commander';
import { Option } from 'commander';
import { execRunner } from '../apply/exec.js';
import { out } from './output.js';
import { binaries, detectBackend } from '../apply/backend.js';
import { readHostFacts } from '../apply/host.js';
import { ConfigError, type CliFlags } from '../config/config.js';
import { parseIP, type IPFamily } from '../util/ip.js';
import { isIptablesReport } from '../sync/iptables-mode.js';
import { Tracer, tablesFromRuleset, tablesFromSave, type Outcome, type Tables } from '../trace/tracer.js';

export interface TraceFlags extends CliFlags {
  src: string;
  dst: string;
  dport: string;
  proto: 'tcp' | 'udp' | 'sctp';
  inInterface?: string;
  fromNode?: boolean;
  localAddress?: string[];
  live?: boolean;
  json?: boolean;
  logLevel?: string;
}

export function addTraceFlags(cmd: Command): Command {
  return cmd
    .requiredOption('--src <ip>', 'packet source address')
    .requiredOption('--dst <ip>', 'packet destination address')
    .requiredOption('--dport <port>', 'destination port')
    .addOption(new Option('--proto <proto>', 'protocol').choices(['tcp', 'udp', 'sctp']).default('tcp'))
    .option('--in-interface <name>', 'interface the packet arrives on (pods: the bridge) (default: eth0)')
    .option('--from-node', 'the node itself sends the packet (default: false)')
    .option('--local-address <ip...>', 'extra addresses of the node, for addrtype LOCAL (default: Node IPs, 127.0.0.1)')
    .option('--live', 'trace through the rules in the kernel (iptables-save) instead of rendering (default: false)')
    .option('--json', 'print outcomes as JSON (default: false)');
}

/** The rules to trace through and the node's addresses (what `-m addrtype LOCAL` matches). */
interface TraceRules {
  readonly tables: Tables;
  readonly local: readonly string[];
}

/** The live rules: iptables-save from the backend kpx run would use (given, or detected the same way). */
async function liveRules(flags: TraceFlags, family: IPFamily): Promise<TraceRules> {
  const backend = flags.iptablesBackend === 'legacy' || flags.iptablesBackend === 'nft' ? flags.iptablesBackend : (await detectBackend(execRunner)).backend;
  const r = await execRunner.run(binaries(family, backend).save, []);
  if (r.exitCode !== 0) throw new Error(`cannot read the rules: ${r.stderr.trim()}`);
  return { tables: tablesFromSave(r.stdout), local: readHostFacts().addresses[family] };
}

/** The rules kpx renders for the given flags (a dry run of one sync); null if the sync failed. */
async function renderedRules(flags: TraceFlags, family: IPFamily): Promise<TraceRules | null> {
  const { build } = await import('./main.js');
  const built = await build({ ...flags, once: true, dryRun: true, logLevel: flags.logLevel ?? 'warn' }, () => {});
  await built.proxier.init();
  if (!(await built.controller.runOnce())) return null;
  const found = built.controller.lastReport?.families.find((f) => f.family === family);
  if (!found) throw new Error(`no ${family} rules rendered`);
  if (!isIptablesReport(found)) throw new ConfigError('kpx trace walks iptables-mode rules; in IPVS mode use ipvsadm -Ln');
  const cfg = found.config;
  const local = [...(cfg?.nodeIPs ?? []), ...(cfg && cfg.nodePortAddresses !== 'all' ? cfg.nodePortAddresses : [])];
  return { tables: tablesFromRuleset(found.ruleset), local };
}

export async function traceCommand(flags: TraceFlags): Promise<number> {
  const src = parseIP(flags.src);
  const dst = parseIP(flags.dst);
  const dport = Number(flags.dport);
  if (!src || !dst || src.family !== dst.family) throw new ConfigError('--src/--dst: two addresses of the same family');
  if (!Number.isInteger(dport) || dport < 1 || dport > 65535) throw new ConfigError('--dport: 1-65535');
  const family = src.family;
  const rules = flags.live ? await liveRules(flags, family) : await renderedRules(flags, family);
  if (!rules) return 1;
  const local = new Set<string>([...(flags.localAddress ?? []), family === 'IPv4' ? '127.0.0.1' : '::1', ...rules.local]);
  const tracer = new Tracer(rules.tables, { localAddresses: [...local] });
  const outcomes = tracer.trace({
    family,
    src: src.text,
    dst: dst.text,
    dport,
    proto: flags.proto,
    from: flags.fromNode ? 'local' : { inIface: flags.inInterface ?? 'eth0', bridged: false },
  });
  out(flags.json ? `${JSON.stringify(outcomes, null, 2)}\n` : formatOutcomes(outcomes));
  return 0;
}

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
