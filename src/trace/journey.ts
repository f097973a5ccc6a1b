// A packet's journey as `kpx trace` prints it: the rules it meets (hook, table, chain, the
// rule that matched, the probability taken), where DNAT sends it, whether it is
// masqueraded, the verdict; the endpoints it may reach and why the others are excluded;
// and where the kernel sends it next. Building the journey from its parts and formatting
// it are pure; the parts come from the tracer, the model and `ip route get`.
import type { Outcome, TraceStep } from './tracer.js';
import type { EndpointExplanation, TraceSource } from './endpoints.js';
import type { RouteInfo } from './route.js';
import { joinHostPort, splitHostPort } from '../util/ip.js';

export interface JourneyPacket {
  readonly src: string;
  readonly dst: string;
  readonly dport: number;
  readonly proto: 'tcp' | 'udp' | 'sctp';
  readonly from: TraceSource;
  /** the interface it arrives on (not for packets the node sends) */
  readonly inInterface?: string;
}

/** The IPVS virtual server a packet met, with its real servers. */
export interface IpvsMatch {
  readonly virtualServer: string;
  readonly scheduler: string;
  readonly persistence: number;
  readonly realServers: ReadonlyArray<{ readonly addr: string; readonly weight: number }>;
}

export interface JourneyOutcome extends Outcome {
  /** IPVS mode: the real server IPVS forwards to (then `dnat` is it too) */
  readonly realServer?: string;
  /** where the kernel sends it next; absent when it is delivered to the node or dropped */
  readonly route?: RouteInfo;
}

export interface Journey {
  readonly packet: JourneyPacket;
  readonly mode: 'iptables' | 'ipvs' | 'nftables';
  readonly rules: 'live' | 'rendered';
  readonly outcomes: readonly JourneyOutcome[];
  /** undefined: no model to explain with; null: no service has this address and port */
  readonly endpoints?: EndpointExplanation | null;
  readonly ipvs?: IpvsMatch | null;
  /** where the rules and the model disagree */
  readonly mismatches: readonly string[];
  readonly notes: readonly string[];
}

/** IPVS mode: an outcome delivered to a virtual server becomes one outcome per real server, by weight. */
export function throughIpvs(outcomes: readonly Outcome[], vs: IpvsMatch | null, masqueradeMark: number): JourneyOutcome[] {
  const out: JourneyOutcome[] = [];
  const total = vs ? vs.realServers.reduce((a, r) => a + r.weight, 0) : 0;
  for (const o of outcomes) {
    const masquerade = o.masquerade || (o.mark & masqueradeMark) !== 0;
    if (!vs || o.verdict !== 'ACCEPT' || o.delivery !== 'local') {
      out.push({ ...o, masquerade });
      continue;
    }
    if (total === 0) {
      // a virtual server without (weighted) real servers: the kernel answers port unreachable
      out.push({ ...o, masquerade, verdict: 'REJECT', decidedBy: `IPVS virtual server ${vs.virtualServer} has no real server with weight > 0` });
      continue;
    }
    for (const rs of vs.realServers) {
      if (rs.weight === 0) continue;
      out.push({ ...o, masquerade, probability: (o.probability * rs.weight) / total, dnat: rs.addr, realServer: rs.addr, delivery: 'forward' });
    }
  }
  return out;
}

/** Where the rules and the model disagree about the endpoints. */
export function compareWithModel(outcomes: readonly Outcome[], ex: EndpointExplanation | null | undefined): string[] {
  if (!ex) return [];
  const out: string[] = [];
  const reached = new Map<string, number>();
  for (const o of outcomes) if (o.dnat && o.verdict === 'ACCEPT') reached.set(o.dnat, (reached.get(o.dnat) ?? 0) + o.probability);
  for (const c of ex.chosen) if (!reached.has(c.addr)) out.push(`the model selects ${c.addr} but the rules never send this packet there (rules not synced yet?)`);
  const chosen = new Set(ex.chosen.map((c) => c.addr));
  for (const [addr, p] of reached) {
    if (chosen.has(addr)) continue;
    const why = ex.excluded.find((e) => e.addr === addr)?.reason;
    out.push(`the rules send ${pct(p)} to ${addr}, which the model excludes${why ? ` (${why})` : ''}`);
  }
  if (ex.chosen.length === 0 && ex.whenNone && !outcomes.some((o) => o.verdict === ex.whenNone)) {
    out.push(`the model expects ${ex.whenNone} (no endpoint for this packet) but the rules do not`);
  }
  return out;
}

const pct = (p: number) => `${(p * 100).toFixed(1)}%`;

function fromText(p: JourneyPacket): string {
  if (p.from === 'node') return 'sent by the node itself';
  return `from ${p.from === 'pod' ? 'a pod' : 'an external client'}, arriving on ${p.inInterface ?? '?'}`;
}

function stepLine(s: TraceStep): string {
  const where = `${s.table}/${s.hook}`.padEnd(18);
  const chance = s.chance !== undefined ? `   [taken with probability ${s.chance.toFixed(4)}; ${pct(s.probability)} of packets get here]` : '';
  return `    ${where} ${s.chain.padEnd(22)} ${s.rule}${chance}`;
}

function masqueradeLine(o: JourneyOutcome, mode: Journey['mode']): string {
  const masq = o.steps.find((s) => s.target === 'MASQUERADE' || s.target === 'SNAT');
  if (masq) return `masquerade: yes (${masq.table}/${masq.chain}: ${masq.rule})`;
  if (o.masquerade) return mode === 'ipvs' ? 'masquerade: yes (marked; KPX-POSTROUTING masquerades what IPVS forwards)' : 'masquerade: yes';
  if (o.delivery === 'local' && !o.realServer) return 'masquerade: no (delivered to the node)';
  return 'masquerade: no (not marked for masquerade: the source address is kept)';
}

function routeLine(r: RouteInfo | undefined, rules: 'live' | 'rendered'): string {
  if (!r) return rules === 'live' ? 'next hop: -' : 'next hop: not known (no kernel asked: --manifests; use --live on the node)';
  if (r.error) return `next hop: ${r.target}: ${r.error}`;
  const parts = [`next hop for ${r.target}:`];
  if (r.type && r.type !== 'unicast') parts.push(r.type);
  parts.push(r.gateway ? `via ${r.gateway}` : 'on link', `dev ${r.dev ?? '?'}`);
  if (r.prefsrc) parts.push(`src ${r.prefsrc}`);
  let line = parts.join(' ');
  if (r.vxlan) {
    const vx = r.vxlan;
    line += `\n    vxlan ${vx.device}${vx.vni !== undefined ? ` (VNI ${vx.vni})` : ''}: encapsulated to ${vx.remote ?? '(no FDB entry)'}${vx.remoteNode ? ` (node ${vx.remoteNode})` : ''}${vx.mac ? `, inner next hop ${vx.mac}` : ''}`;
  }
  return line;
}

function endpointsText(ex: EndpointExplanation | null | undefined, mode: Journey['mode']): string[] {
  if (ex === undefined) return ['endpoints: no model (give --manifests, or --kubeconfig/--master or in-cluster config, to explain them); the outcomes below are what the rules do'];
  if (ex === null) return ['service: none has this address, port and protocol'];
  const lines = [`service ${ex.service} (${ex.protocol}), reached as its ${ex.kind}`, `  policy: ${ex.policyWhy}`];
  const share = mode === 'ipvs' ? 'share of new connections by the scheduler' : 'probability';
  if (ex.chosen.length) {
    lines.push(`  endpoints this packet may reach (${share}):`);
    for (const c of ex.chosen) lines.push(`    ${pct(c.probability).padStart(6)}  ${c.addr.padEnd(22)} ${c.node ?? ''}${c.zone ? ` (${c.zone})` : ''}`);
  } else {
    lines.push(`  endpoints this packet may reach: none -> ${ex.whenNone}${ex.whenNone === 'DROP' ? ' (endpoints exist, none for this packet)' : ' (no usable endpoint anywhere)'}`);
  }
  if (ex.excluded.length) {
    lines.push('  excluded:');
    for (const e of ex.excluded) lines.push(`    ${e.addr.padEnd(22)} ${(e.node ?? '').padEnd(10)} ${e.reason}`);
  }
  for (const n of ex.notes) lines.push(`  ${n}`);
  return lines;
}

function ipvsText(vs: IpvsMatch | null | undefined): string[] {
  if (vs === undefined) return [];
  if (vs === null) return ['IPVS: no virtual server for this address and port'];
  const lines = [`IPVS virtual server ${vs.virtualServer}, scheduler ${vs.scheduler}${vs.persistence ? `, persistent ${vs.persistence} s` : ''}`];
  if (!vs.realServers.length) lines.push('  no real servers');
  for (const r of vs.realServers) lines.push(`  -> ${r.addr.padEnd(22)} weight ${r.weight}`);
  return lines;
}

function outcomeText(o: JourneyOutcome, i: number, j: Journey): string[] {
  const where = o.dnat ? `DNAT to ${o.dnat}` : o.delivery === 'local' ? 'delivered to the node' : 'not translated';
  const lines = [`outcome ${i + 1}: ${pct(o.probability)}  ${o.verdict}  ${where}`];
  lines.push('  rules met (table/hook, chain, rule):');
  if (!o.steps.length) lines.push('    (no rule acted: built-in policies)');
  for (const s of o.steps) lines.push(stepLine(s));
  if (o.realServer) lines.push(`  IPVS: forwarded to real server ${o.realServer}`);
  if (o.verdict === 'ACCEPT') lines.push(`  ${masqueradeLine(o, j.mode)}`);
  const verdictWhy = o.decidedBy ? ` by ${o.decidedBy}` : o.delivery === 'local' && !o.realServer ? ' (delivered to the node)' : j.packet.from === 'node' ? ' (sent out)' : ' (forwarded)';
  lines.push(`  verdict: ${o.verdict}${verdictWhy}`);
  if (o.verdict === 'ACCEPT' && !(o.delivery === 'local' && !o.realServer)) lines.push(`  ${routeLine(o.route, j.rules)}`);
  return lines;
}

export function formatJourney(j: Journey): string {
  const p = j.packet;
  const lines = [`kpx trace: ${p.proto} ${p.src} -> ${joinHostPort(p.dst, p.dport)}, ${fromText(p)}; ${j.mode} mode, ${j.rules === 'live' ? 'the kernel\'s rules' : 'rules rendered from the manifests/API'}`, ''];
  lines.push(...endpointsText(j.endpoints, j.mode));
  const ipvs = ipvsText(j.ipvs);
  if (ipvs.length) lines.push('', ...ipvs);
  for (const [i, o] of j.outcomes.entries()) lines.push('', ...outcomeText(o, i, j));
  if (j.mismatches.length) lines.push('', 'the rules and the model disagree:', ...j.mismatches.map((m) => `  ${m}`));
  if (j.notes.length) lines.push('', ...j.notes);
  return `${lines.join('\n')}\n`;
}

/** The address a forwarded outcome is routed to: its DNAT target, or the destination. */
export function routeTarget(o: Outcome, dst: string): string {
  if (!o.dnat) return dst;
  return splitHostPort(o.dnat)?.host ?? o.dnat;
}
