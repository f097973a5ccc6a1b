// The nftables mode for `kpx trace`: walks the first packet of a connection through kpx's
// table (`ip kpx` / `ip6 kpx`) the way the kernel would, and returns every possible outcome
// with its probability, as the iptables tracer does (same Outcome and TraceStep types, so
// the journey formats it alike). The table comes from the renderer (rule text) or from
// `nft -j list table` (the kernel's JSON); both are read into src/nftables/rules.ts's form
// first, so there is one walker.
//
// Hooks, as netfilter runs them: a packet from outside meets the prerouting base chains
// (by priority), then input (to the node) or forward and postrouting; one the node sends
// meets output, then postrouting or input. An `accept` ends one base chain only: the next
// base chain of the hook still runs; drop and reject end the packet. `dnat` and
// `masquerade` end their chain with accept. The table's other tables (none of kpx's) are not
// walked. As the iptables tracer, a packet the node sends to itself skips postrouting.
import type { CommandRunner } from '../apply/exec.js';
import type { BaseChainSpec, SetSpec } from '../nftables/format.js';
import { nftFamily, parseListing } from '../nftables/format.js';
import {
  elementFromText,
  exprText,
  parseRule,
  protoName,
  ruleText,
  tableFromListing,
  valueText,
  verdictText,
  type Expr,
  type MapElem,
  type NatTarget,
  type NftChainModel,
  type NftRule,
  type NftSetModel,
  type NftTableModel,
  type Stmt,
  type Value,
  type Verdict,
} from '../nftables/rules.js';
import type { NftablesRenderer } from '../render/nftables/ruleset.js';
import { TABLE } from '../render/nftables/names.js';
import { cidrContains, ipToBigInt, joinHostPort, parseCIDR, parseIP, type IPFamily } from '../util/ip.js';
import { mergeOutcomes, outcomeOf, TraceError, type Outcome, type TraceEnv, type TracePacket, type TraceStep, type WalkState } from './tracer.js';

/** The renderer's table (what a sync would write) in the walker's form. */
export function tableFromRenderer(r: NftablesRenderer): NftTableModel {
  return tableFromText(r.family, r.chains(), r.sets(), r.elements());
}

/** kpx's table in the walker's form from its chains (rule text), sets and elements as kpx writes them. */
export function tableFromText(
  family: IPFamily,
  chainList: Iterable<{ readonly name: string; readonly base?: BaseChainSpec; readonly rules: readonly string[] }>,
  setList: Iterable<SetSpec>,
  elements: Iterable<readonly [string, string, string | undefined]>,
): NftTableModel {
  const chains = new Map<string, NftChainModel>();
  for (const c of chainList) chains.set(c.name, { name: c.name, ...(c.base ? { base: c.base } : {}), policy: 'accept', rules: c.rules.map(parseRule) });
  const sets = new Map<string, { name: string; kind: 'set' | 'map'; flags: string[]; timeout?: number; elems: NftSetModel['elems'][number][] }>();
  for (const s of setList) sets.set(s.name, { name: s.name, kind: s.kind, flags: [...(s.flags ?? [])], ...(s.timeout !== undefined ? { timeout: s.timeout } : {}), elems: [] });
  for (const [set, key, value] of elements) sets.get(set)?.elems.push(elementFromText({ key, ...(value !== undefined ? { value } : {}) }));
  return { family: nftFamily(family), name: TABLE, chains, sets };
}

/** kpx's live table: `nft -j list table ip|ip6 kpx` in the current network namespace. */
export async function liveNftTable(runner: CommandRunner, family: IPFamily): Promise<NftTableModel> {
  const fam = nftFamily(family);
  const r = await runner.run('nft', ['-j', 'list', 'table', fam, TABLE]);
  if (r.exitCode !== 0) throw new Error(`nft -j list table ${fam} ${TABLE}: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
  const t = parseListing(r.stdout).get(`${fam} ${TABLE}`);
  if (!t) throw new Error(`nft -j list table ${fam} ${TABLE}: no such table in the listing`);
  return tableFromListing(t);
}

/** Sets that rules add to at run time (`update @set { ... }`): session affinity. */
export function dynamicSets(t: NftTableModel): Set<string> {
  const out = new Set<string>();
  for (const c of t.chains.values()) for (const r of c.rules) for (const s of r.stmts) if (s.kind === 'setUpdate') out.add(s.set);
  return out;
}

/** The dynamic sets `src` is in now (live: the kernel's elements), like xt_recent lists. */
export function affinitySetsWith(t: NftTableModel, src: string): Set<string> {
  const ip = parseIP(src)?.text ?? src;
  const out = new Set<string>();
  for (const name of dynamicSets(t)) {
    if (t.sets.get(name)?.elems.some((e) => e.key.kind === 'lit' && e.key.text === ip)) out.add(name);
  }
  return out;
}

interface State extends WalkState {
  type: BaseChainSpec['type'];
}

/** next: go on with the next rule; return: leave this chain; the rest end the base chain or the packet. */
type Kind = 'next' | 'return' | 'accept' | 'drop' | 'reject';
interface Branch {
  s: State;
  r: Kind;
  /** the rule that dropped or rejected */
  by?: string;
}

const final = (b: Branch) => b.r === 'drop' || b.r === 'reject';

/** What a statement that ends a rule does, in the journey's words and in the kernel's. */
interface Act {
  readonly target: string;
  /** as `nft monitor trace` prints the verdict */
  readonly verdict: string;
}

export class NftTracer {
  private readonly local: ReadonlySet<string>;
  private readonly dynamic: ReadonlySet<string>;
  private readonly hooks = new Map<string, NftChainModel[]>();

  constructor(
    private readonly table: NftTableModel,
    private readonly env: TraceEnv,
  ) {
    this.local = new Set(env.localAddresses.map((a) => parseIP(a)?.text ?? a));
    this.dynamic = dynamicSets(table);
    for (const c of table.chains.values()) {
      if (!c.base) continue;
      const list = this.hooks.get(c.base.hook) ?? [];
      list.push(c);
      this.hooks.set(c.base.hook, list);
    }
    // base chains of one hook run by priority, lowest first (the kernel keeps registration order for equal ones)
    for (const list of this.hooks.values()) list.sort((a, b) => a.base!.priority - b.base!.priority);
  }

  /** Every outcome, merged by where the packet ends (as the iptables tracer returns them). */
  trace(pkt: TracePacket): Outcome[] {
    return mergeOutcomes(this.paths(pkt));
  }

  /** Every path the packet may take, unmerged: one outcome per way through the rules. */
  paths(pkt: TracePacket): Outcome[] {
    const start: State = { p: 1, mark: 0, masq: false, nat: 0, filter: 0, chains: [], recentSet: [], hook: '', type: 'filter', steps: [] };
    const local = pkt.from === 'local';
    const outs: Outcome[] = [];
    for (const b of this.hook(local ? 'output' : 'prerouting', pkt, [{ s: start, r: 'accept' }])) {
      if (final(b)) {
        outs.push(this.outcome(b, pkt, 'forward'));
        continue;
      }
      const toLocal = this.local.has(b.s.dnatIP ?? pkt.dst);
      const hooks = toLocal ? ['input'] : local ? ['postrouting'] : ['forward', 'postrouting'];
      let xs: Branch[] = [b];
      for (const h of hooks) xs = this.hook(h, pkt, xs);
      for (const x of xs) outs.push(this.outcome(x, pkt, toLocal ? 'local' : 'forward'));
    }
    return outs.filter((o) => o.probability > 0);
  }

  private outcome(b: Branch, pkt: TracePacket, delivery: 'local' | 'forward'): Outcome {
    const verdict = b.r === 'drop' ? 'DROP' : b.r === 'reject' ? 'REJECT' : 'ACCEPT';
    return outcomeOf(b.s, verdict, b.by || undefined, pkt, delivery);
  }

  /** The base chains of one hook, in priority order, for every branch still going. */
  private hook(hook: string, pkt: TracePacket, branches: Branch[]): Branch[] {
    let live = branches;
    for (const chain of this.hooks.get(hook) ?? []) {
      const next: Branch[] = [];
      for (const b of live) {
        if (final(b)) {
          next.push(b);
          continue;
        }
        for (const x of this.walk(chain, pkt, { ...b.s, hook, type: chain.base!.type }, 0)) {
          // the end of a base chain is its policy; accept passes the packet on to the next base chain
          if (x.r === 'return' || x.r === 'next') next.push(chain.policy === 'drop' ? { s: x.s, r: 'drop', by: `policy drop of ${chain.name}` } : { s: x.s, r: 'accept' });
          else next.push(x);
        }
      }
      live = next;
    }
    return live;
  }

  private chain(name: string): NftChainModel {
    const c = this.table.chains.get(name);
    if (!c) throw new TraceError(`jump or goto to missing chain ${name}`);
    return c;
  }

  /** One chain's rules; what falls off the end returns to the caller. */
  private walk(chain: NftChainModel, pkt: TracePacket, s0: State, depth: number): Branch[] {
    if (depth > 64) throw new TraceError(`chain depth exceeded at ${chain.name}`);
    let live: State[] = [s0];
    const done: Branch[] = [];
    for (const rule of chain.rules) {
      if (live.length === 0) break;
      const next: State[] = [];
      for (const st of live) {
        const s = { ...st, [st.type]: st[st.type] + 1 };
        for (const b of this.rule(chain, rule, pkt, s, depth)) {
          if (b.r === 'next') next.push(b.s);
          else done.push(b);
        }
      }
      live = next;
    }
    return [...done, ...live.map((s): Branch => ({ s, r: 'return' }))];
  }

  /** A rule's statements in order; probabilistic matches and numgen maps split the branch. */
  private rule(chain: NftChainModel, rule: NftRule, pkt: TracePacket, s0: State, depth: number): Branch[] {
    if (rule.unsupported) throw new TraceError(`cannot evaluate a rule in ${chain.name}: ${rule.unsupported}`);
    const ctx: RuleContext = { chain: chain.name, text: ruleText(rule), pkt, depth, out: [] };
    // partial branches that matched every statement so far, with the chance this rule took
    let items: Pending[] = [{ s: s0, chance: 1 }];
    for (const stmt of rule.stmts) items = items.flatMap((it) => this.stmt(stmt, it, ctx));
    // matched every statement and none ended the rule: the kernel traces "verdict continue"
    const act = rule.stmts.some((x) => x.kind === 'mark') ? 'MARK' : rule.stmts.some((x) => x.kind === 'setUpdate') ? 'SET' : '';
    for (const { s, chance } of items) ctx.out.push({ s: step(ctx, s, chance, { target: act, verdict: 'continue' }), r: 'next' });
    return ctx.out;
  }

  /** One statement for one partial branch: what goes on to the next statement (ended branches go to ctx.out). */
  private stmt(stmt: Stmt, it: Pending, ctx: RuleContext): Pending[] {
    const { s, chance } = it;
    const { out, text, pkt } = ctx;
    switch (stmt.kind) {
      case 'match': {
        const m = this.matchChance(stmt, pkt, s);
        if (m < 1) out.push({ s: { ...s, p: s.p * (1 - m) }, r: 'next' });
        return m > 0 ? [{ s: { ...s, p: s.p * m }, chance: chance * m }] : [];
      }
      case 'vmap':
        for (const [q, el] of this.lookupVerdict(stmt, pkt, s)) {
          const sq = { ...s, p: s.p * q };
          if (!el) {
            out.push({ s: sq, r: 'next' });
            continue;
          }
          const shown = `${text}   [${valueText(el.key)} : ${verdictText(el.data)}]`;
          out.push(...this.verdict(el.data, pkt, step(ctx, sq, chance * q, actOf(el.data), shown), ctx.depth, shown));
        }
        return [];
      case 'verdict':
        out.push(...this.verdict(stmt.verdict, pkt, step(ctx, s, chance, actOf(stmt.verdict)), ctx.depth, text));
        return [];
      case 'reject':
        out.push({ s: step(ctx, s, chance, { target: 'REJECT', verdict: 'drop' }), r: 'reject', by: text });
        return [];
      case 'dnat':
        out.push({ s: { ...step(ctx, s, chance, { target: 'DNAT', verdict: 'accept' }), ...dnatTo(stmt.to) }, r: 'accept' });
        return [];
      case 'dnatMap':
        for (const [q, el] of this.lookup(stmt.key, stmt.elems, pkt, s)) {
          const sq = { ...s, p: s.p * q };
          // no element for the number drawn: the lookup breaks the rule, which then does not match
          if (!el) out.push({ s: sq, r: 'next' });
          else {
            const shown = `${text}   [${valueText(el.key)} : ${joinHostPort(el.data.addr, el.data.port ?? pkt.dport)}]`;
            out.push({ s: { ...step(ctx, sq, chance * q, { target: 'DNAT', verdict: 'accept' }, shown), ...dnatTo(el.data) }, r: 'accept' });
          }
        }
        return [];
      case 'masquerade':
        out.push({ s: { ...step(ctx, s, chance, { target: 'MASQUERADE', verdict: 'accept' }), masq: true }, r: 'accept' });
        return [];
      case 'mark':
        return [{ s: { ...s, mark: markAfter(stmt, s.mark) }, chance }];
      case 'setUpdate':
        return [{ s: { ...s, recentSet: [...s.recentSet, stmt.set] }, chance }];
      case 'counter':
        return [it];
    }
  }

  /** A verdict: jump and goto walk the chain (a goto's return leaves the calling chain too). */
  private verdict(v: Verdict, pkt: TracePacket, s: State, depth: number, text: string): Branch[] {
    switch (v.kind) {
      case 'accept':
        return [{ s, r: 'accept' }];
      case 'drop':
        return [{ s, r: 'drop', by: text }];
      case 'return':
        return [{ s, r: 'return' }];
      case 'continue':
        return [{ s, r: 'next' }];
      case 'jump':
      case 'goto': {
        const inner = this.walk(this.chain(v.chain), pkt, { ...s, chains: [...s.chains, v.chain] }, depth + 1);
        const back: Kind = v.kind === 'jump' ? 'next' : 'return';
        return inner.map((b) => (b.r === 'return' || b.r === 'next' ? { ...b, r: back } : b));
      }
    }
  }

  /** 1 = matches, 0 = does not, in between: a numgen draw matches with that probability. */
  private matchChance(m: Extract<Stmt, { kind: 'match' }>, pkt: TracePacket, s: State): number {
    if (m.left.kind === 'numgen') {
      const { mod, offset } = m.left;
      let hits = 0;
      for (let v = offset; v < offset + mod; v++) if (this.compare([String(v)], m.right, m.left) === (m.op === '==')) hits++;
      return hits / mod;
    }
    const key = this.read(m.left, pkt, s);
    // a field the packet does not have (tcp dport of a UDP packet) matches neither == nor !=
    if (key === null) return 0;
    return this.compare(key, m.right, m.left) === (m.op === '==') ? 1 : 0;
  }

  /** The packet's value(s) for an expression: one string per concatenated part; null if absent. */
  private read(e: Expr, pkt: TracePacket, s: State): string[] | null {
    const dst = s.dnatIP ?? pkt.dst;
    switch (e.kind) {
      case 'payload':
        return readPayload(e, pkt, s);
      case 'meta':
        return [readMeta(e.key, pkt, s)];
      case 'ct':
        // the first packet of a connection: NEW; its status has DNAT once a dnat ran
        return e.key === 'state' ? ['new'] : s.dnatIP ? ['dnat'] : [''];
      case 'fib':
        return [this.local.has(e.flag === 'saddr' ? pkt.src : dst) ? 'local' : 'unicast'];
      case 'numgen':
        throw new TraceError('numgen inside a concatenation is not traced');
      case 'and': {
        const v = this.read(e.expr, pkt, s);
        if (!v || v.length !== 1 || !/^\d+$/.test(v[0]!)) throw new TraceError(`cannot mask ${exprText(e)}`);
        return [String((Number(v[0]) & e.mask) >>> 0)];
      }
      case 'concat': {
        const parts: string[] = [];
        for (const p of e.parts) {
          const v = this.read(p, pkt, s);
          if (v === null) return null;
          parts.push(...v);
        }
        return parts;
      }
    }
  }

  /** Does the packet's key equal (or fall in) the value, or is it in the set? */
  private compare(key: string[], v: Value, left: Expr): boolean {
    switch (v.kind) {
      case 'ref': {
        const set = this.set(v.set);
        if (this.dynamic.has(set.name) && this.env.recent?.has(set.name)) return true;
        return set.elems.some((e) => keyMatches(key, e.key, left));
      }
      case 'set':
        return v.elems.some((e) => keyMatches(key, e, left));
      default:
        return keyMatches(key, v, left);
    }
  }

  private set(name: string): NftSetModel {
    const s = this.table.sets.get(name);
    if (!s) throw new TraceError(`reference to missing set or map @${name}`);
    return s;
  }

  /** Outcomes of a verdict map lookup, with probabilities; undefined: no element (the rule does not match). */
  private lookupVerdict(stmt: Extract<Stmt, { kind: 'vmap' }>, pkt: TracePacket, s: State): Array<[number, MapElem<Verdict> | undefined]> {
    const elems: ReadonlyArray<MapElem<Verdict>> =
      stmt.map.kind === 'inline' ? stmt.map.elems : this.set(stmt.map.set).elems.flatMap((e) => (e.data ? [{ key: e.key, data: e.data }] : []));
    return this.lookup(stmt.key, elems, pkt, s);
  }

  private lookup<T>(key: Expr, elems: ReadonlyArray<MapElem<T>>, pkt: TracePacket, s: State): Array<[number, MapElem<T> | undefined]> {
    if (key.kind === 'numgen') {
      const out: Array<[number, MapElem<T> | undefined]> = [];
      for (let v = key.offset; v < key.offset + key.mod; v++) out.push([1 / key.mod, elems.find((e) => keyMatches([String(v)], e.key, key))]);
      return out;
    }
    const k = this.read(key, pkt, s);
    return [[1, k ? elems.find((e) => keyMatches(k, e.key, key)) : undefined]];
  }
}

interface Pending {
  readonly s: State;
  readonly chance: number;
}

interface RuleContext {
  readonly chain: string;
  readonly text: string;
  readonly pkt: TracePacket;
  readonly depth: number;
  /** branches that left the rule (no match, or a verdict) */
  readonly out: Branch[];
}

/** The state after a rule acted, with the step that records it. */
function step(ctx: RuleContext, s: State, chance: number, act: Act, shown = ctx.text): State {
  const st: TraceStep = { table: s.type, hook: s.hook, chain: ctx.chain, rule: shown, target: act.target, verdict: act.verdict, ...(chance < 1 ? { chance } : {}), probability: s.p };
  return { ...s, steps: [...s.steps, st] };
}

function readPayload(e: Extract<Expr, { kind: 'payload' }>, pkt: TracePacket, s: State): string[] | null {
  if (e.protocol === 'ip' || e.protocol === 'ip6') {
    if ((e.protocol === 'ip') !== (pkt.family === 'IPv4')) return null;
    return [e.field === 'saddr' ? pkt.src : (s.dnatIP ?? pkt.dst)];
  }
  if (e.protocol !== 'th' && e.protocol !== pkt.proto) return null;
  if (e.field === 'dport') return [String(s.dnatPort ?? pkt.dport)];
  if (pkt.sport === undefined) throw new TraceError(`a source port match needs the packet's source port: ${exprText(e)}`);
  return [String(pkt.sport)];
}

function readMeta(key: Extract<Expr, { kind: 'meta' }>['key'], pkt: TracePacket, s: State): string {
  switch (key) {
    case 'l4proto':
      return pkt.proto;
    case 'mark':
      return String(s.mark);
    case 'iifname':
      // the node's own packets have no input interface
      return pkt.from === 'local' ? '' : pkt.from.inIface;
    case 'oifname':
      throw new TraceError('oifname (the output interface) is not traced');
  }
}

function actOf(v: Verdict): Act {
  if (v.kind === 'jump' || v.kind === 'goto') return { target: v.chain, verdict: verdictText(v) };
  return { target: v.kind.toUpperCase(), verdict: v.kind };
}

function dnatTo(t: NatTarget): Partial<State> {
  return { dnatIP: t.addr, ...(t.port !== undefined ? { dnatPort: t.port } : {}) };
}

function markAfter(m: Extract<Stmt, { kind: 'mark' }>, mark: number): number {
  switch (m.op) {
    case 'set':
      return m.value >>> 0;
    case 'or':
      return (mark | m.value) >>> 0;
    case 'xor':
      return (mark ^ m.value) >>> 0;
    case 'and':
      return (mark & m.value) >>> 0;
  }
}

/** The parts of an expression, flattened like its value. */
function partsOf(e: Expr): Expr[] {
  return e.kind === 'concat' ? e.parts.flatMap(partsOf) : [e];
}

/** One key (the packet's values, one per part) against one element or right-hand side. */
function keyMatches(key: string[], v: Value, left: Expr): boolean {
  const vals = v.kind === 'concat' ? v.parts : [v];
  if (vals.length !== key.length) return false;
  const parts = partsOf(left);
  return vals.every((x, i) => componentMatches(key[i]!, x, parts[i] ?? left));
}

function componentMatches(k: string, v: Value, part: Expr): boolean {
  switch (v.kind) {
    case 'lit':
      return literalMatches(k, v.text, part);
    case 'prefix': {
      const c = parseCIDR(`${v.addr}/${v.len}`);
      return !!c && cidrContains(c, k);
    }
    case 'range':
      return inRange(k, v.lo, v.hi);
    case 'set':
      // a flag list (ct state new,established) or an anonymous set inside a concatenation
      return v.elems.some((e) => componentMatches(k, e, part));
    default:
      return false;
  }
}

function literalMatches(k: string, text: string, part: Expr): boolean {
  if (part.kind === 'meta' && part.key === 'l4proto') return protoName(text) === k;
  if (part.kind === 'meta' && (part.key === 'iifname' || part.key === 'oifname')) return ifaceMatches(text, k);
  return (parseIP(text)?.text ?? text) === (parseIP(k)?.text ?? k);
}

/** Ports or addresses, both ends included. */
function inRange(k: string, lo: string, hi: string): boolean {
  if (/^\d+$/.test(lo) && /^\d+$/.test(k)) return Number(k) >= Number(lo) && Number(k) <= Number(hi);
  const a = parseIP(k);
  if (!a || parseIP(lo)?.family !== a.family) return false;
  const x = ipToBigInt(a.text);
  return x >= ipToBigInt(lo) && x <= ipToBigInt(hi);
}

/** nft's interface names: a trailing `*` is a wildcard (`\*` a literal star). */
function ifaceMatches(pattern: string, iface: string): boolean {
  if (pattern.endsWith('\\*')) return iface === `${pattern.slice(0, -2)}*`;
  return pattern.endsWith('*') ? iface.startsWith(pattern.slice(0, -1)) : iface === pattern;
}
