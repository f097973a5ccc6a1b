// kpx's nft rules as one abstract form that both of their sources read into: the rule text
// kpx writes (the renderer) and `nft -j list table` JSON (the kernel's, libnftables schema).
// The tracer walks this form only, so a rendered table and a live one are traced alike.
// Only the expressions and statements kpx's renderer writes (plus counters) are known;
// anything else becomes a rule marked `unsupported`, which the tracer refuses when it
// reaches it (a hand-added rule elsewhere in the table does not stop a trace).
import { joinHostPort, parseIP, splitHostPort } from '../util/ip.js';
import { type BaseChainSpec, type Element, type ListedTable } from './format.js';

/** What a match or a key reads from the packet. */
export type Expr =
  | { readonly kind: 'payload'; readonly protocol: 'ip' | 'ip6' | 'th' | 'tcp' | 'udp' | 'sctp'; readonly field: 'saddr' | 'daddr' | 'sport' | 'dport' }
  | { readonly kind: 'meta'; readonly key: 'l4proto' | 'mark' | 'iifname' | 'oifname' }
  | { readonly kind: 'ct'; readonly key: 'state' | 'status' }
  /** `fib <flags> type`: the route type of the address (only `type` results are known) */
  | { readonly kind: 'fib'; readonly flag: 'saddr' | 'daddr' }
  | { readonly kind: 'numgen'; readonly mod: number; readonly offset: number }
  | { readonly kind: 'and'; readonly expr: Expr; readonly mask: number }
  | { readonly kind: 'concat'; readonly parts: readonly Expr[] };

/** A right-hand side, an element key or one of its components. Literals are canonical text. */
export type Value =
  | { readonly kind: 'lit'; readonly text: string }
  | { readonly kind: 'prefix'; readonly addr: string; readonly len: number }
  | { readonly kind: 'range'; readonly lo: string; readonly hi: string }
  | { readonly kind: 'concat'; readonly parts: readonly Value[] }
  | { readonly kind: 'ref'; readonly set: string }
  /** an anonymous set, or a list of flags (`ct state new,established`) */
  | { readonly kind: 'set'; readonly elems: readonly Value[] };

export type Verdict = { readonly kind: 'accept' | 'drop' | 'return' | 'continue' } | { readonly kind: 'jump' | 'goto'; readonly chain: string };

export interface MapElem<T> {
  readonly key: Value;
  readonly data: T;
}

export interface NatTarget {
  readonly addr: string;
  readonly port?: number;
}

export type Stmt =
  /** `==` also stands for libnftables' `in` (flags: ct state, ct status) */
  | { readonly kind: 'match'; readonly left: Expr; readonly op: '==' | '!='; readonly right: Value }
  | { readonly kind: 'verdict'; readonly verdict: Verdict }
  | { readonly kind: 'vmap'; readonly key: Expr; readonly map: { readonly kind: 'ref'; readonly set: string } | { readonly kind: 'inline'; readonly elems: readonly MapElem<Verdict>[] } }
  | { readonly kind: 'reject' }
  | { readonly kind: 'dnat'; readonly to: NatTarget }
  /** `dnat ip addr . port to <key> map { ... }` */
  | { readonly kind: 'dnatMap'; readonly key: Expr; readonly elems: readonly MapElem<NatTarget>[] }
  | { readonly kind: 'masquerade'; readonly flags: readonly string[] }
  /** `mark set <value>` or `mark set mark or|xor|and <value>` */
  | { readonly kind: 'mark'; readonly op: 'set' | 'or' | 'xor' | 'and'; readonly value: number }
  | { readonly kind: 'setUpdate'; readonly op: 'update' | 'add'; readonly set: string; readonly key: Expr }
  | { readonly kind: 'counter' };

export interface NftRule {
  readonly stmts: readonly Stmt[];
  readonly comment?: string;
  /** the kernel's handle (live rules) */
  readonly handle?: number;
  /** why this rule cannot be evaluated; the original text or JSON follows */
  readonly unsupported?: string;
}

export interface NftChainModel {
  readonly name: string;
  readonly base?: BaseChainSpec;
  readonly policy: 'accept' | 'drop';
  readonly rules: readonly NftRule[];
}

export interface NftSetModel {
  readonly name: string;
  readonly kind: 'set' | 'map';
  readonly flags: readonly string[];
  readonly timeout?: number;
  /** verdict maps carry data; sets do not */
  readonly elems: ReadonlyArray<{ readonly key: Value; readonly data?: Verdict }>;
}

/** One nft table as the tracer walks it. */
export interface NftTableModel {
  readonly family: string;
  readonly name: string;
  readonly chains: ReadonlyMap<string, NftChainModel>;
  readonly sets: ReadonlyMap<string, NftSetModel>;
}

export class NftRuleError extends Error {}

// ---------------------------------------------------------------------------------------
// Literals

const PROTO_NUMBERS: Record<string, string> = { '6': 'tcp', '17': 'udp', '132': 'sctp' };

/** Canonical literal text: numbers in decimal (0x4000 -> 16384), addresses as parseIP prints them. */
export function canonLiteral(text: string): string {
  if (/^0x[0-9a-f]+$/i.test(text)) return BigInt(text).toString();
  if (/^\d+$/.test(text)) return BigInt(text).toString();
  return parseIP(text)?.text ?? text;
}

/** Protocol literals by name (nft may print a number for an unnamed one). */
export const protoName = (text: string): string => PROTO_NUMBERS[text] ?? text;

const lit = (text: string): Value => ({ kind: 'lit', text: canonLiteral(text) });

function atom(token: string, quoted = false): Value {
  if (quoted) return { kind: 'lit', text: token };
  const slash = token.lastIndexOf('/');
  if (slash > 0 && parseIP(token.slice(0, slash)) && /^\d+$/.test(token.slice(slash + 1))) {
    return { kind: 'prefix', addr: parseIP(token.slice(0, slash))!.text, len: Number(token.slice(slash + 1)) };
  }
  const dash = token.indexOf('-');
  if (dash > 0) {
    const [lo, hi] = [token.slice(0, dash), token.slice(dash + 1)];
    const both = (f: (x: string) => boolean) => f(lo) && f(hi);
    if (both((x) => parseIP(x) !== null) || both((x) => /^\d+$/.test(x))) return { kind: 'range', lo: canonLiteral(lo), hi: canonLiteral(hi) };
  }
  return lit(token);
}

/** An element key as kpx writes it (and as format.ts's valueText reads nft's JSON back): "a . b . c". */
export function parseValueText(text: string): Value {
  const parts = text.split(' . ').map((p) => p.trim());
  const one = (p: string) => (p.startsWith('"') && p.endsWith('"') ? atom(p.slice(1, -1), true) : atom(p));
  return parts.length === 1 ? one(parts[0]!) : { kind: 'concat', parts: parts.map(one) };
}

/** A verdict as kpx writes it: "goto NAME", "jump NAME", "drop", ... */
export function parseVerdictText(text: string): Verdict {
  const t = text.trim();
  const m = /^(jump|goto) (\S+)$/.exec(t);
  if (m) return { kind: m[1] as 'jump' | 'goto', chain: m[2]! };
  if (t === 'accept' || t === 'drop' || t === 'return' || t === 'continue') return { kind: t };
  throw new NftRuleError(`unknown verdict ${t}`);
}

export function elementFromText(e: Element): { key: Value; data?: Verdict } {
  return { key: parseValueText(e.key), ...(e.value !== undefined ? { data: parseVerdictText(e.value) } : {}) };
}

// ---------------------------------------------------------------------------------------
// Rule text (the renderer's) -> rule

interface Token {
  readonly t: string;
  readonly quoted: boolean;
}

function tokenize(text: string): Token[] {
  const out: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
    } else if (c === '"') {
      const j = text.indexOf('"', i + 1);
      if (j < 0) throw new NftRuleError('unterminated string');
      out.push({ t: text.slice(i + 1, j), quoted: true });
      i = j + 1;
    } else if (c === '{' || c === '}' || c === ',') {
      out.push({ t: c, quoted: false });
      i++;
    } else {
      let j = i;
      while (j < text.length && !/[\s{},"]/.test(text[j]!)) j++;
      out.push({ t: text.slice(i, j), quoted: false });
      i = j;
    }
  }
  return out;
}

const META_KEYS = new Set(['l4proto', 'mark', 'iifname', 'oifname']);
const L4 = new Set(['th', 'tcp', 'udp', 'sctp']);
const VERDICTS = new Set(['accept', 'drop', 'return', 'continue', 'jump', 'goto']);
const MASQ_FLAGS = new Set(['fully-random', 'random', 'persistent']);

class RuleParser {
  private i = 0;
  constructor(private readonly toks: Token[]) {}

  private peek(k = 0): string | undefined {
    const t = this.toks[this.i + k];
    return t && !t.quoted ? t.t : t ? `"${t.t}"` : undefined;
  }
  private next(): Token {
    const t = this.toks[this.i++];
    if (!t) throw new NftRuleError('unexpected end of rule');
    return t;
  }
  private word(): string {
    const t = this.next();
    if (t.quoted) throw new NftRuleError(`unexpected string "${t.t}"`);
    return t.t;
  }
  private expect(w: string): void {
    const t = this.word();
    if (t !== w) throw new NftRuleError(`expected ${w}, got ${t}`);
  }
  private number(): number {
    const w = this.word();
    if (!/^(0x[0-9a-f]+|\d+)$/i.test(w)) throw new NftRuleError(`expected a number, got ${w}`);
    return Number(BigInt(w));
  }
  get done(): boolean {
    return this.i >= this.toks.length;
  }

  rule(): { stmts: Stmt[]; comment?: string } {
    const stmts: Stmt[] = [];
    let comment: string | undefined;
    while (!this.done) {
      const w = this.peek()!;
      if (w === 'comment') {
        this.next();
        const t = this.next();
        if (!t.quoted) throw new NftRuleError('comment without a string');
        comment = t.t;
      } else stmts.push(this.stmt(w));
    }
    return { stmts, ...(comment !== undefined ? { comment } : {}) };
  }

  private stmt(w: string): Stmt {
    const keyword = this.keywordStmt(w);
    if (keyword) return keyword;
    const left = this.expr();
    if (this.peek() === 'set' && left.kind === 'meta' && left.key === 'mark') return this.markSet();
    if (this.peek() === 'vmap') {
      this.next();
      if (this.peek() === '{') return { kind: 'vmap', key: left, map: { kind: 'inline', elems: this.elems((p) => p.verdict()) } };
      return { kind: 'vmap', key: left, map: { kind: 'ref', set: this.ref() } };
    }
    let op: '==' | '!=' = '==';
    if (this.peek() === '==' || this.peek() === '!=') op = this.word() as '==' | '!=';
    return { kind: 'match', left, op, right: this.value() };
  }

  /** Statements that start with their keyword; null: the statement starts with an expression. */
  private keywordStmt(w: string): Stmt | null {
    if (VERDICTS.has(w)) return { kind: 'verdict', verdict: this.verdict() };
    if (w === 'reject') return this.reject();
    if (w === 'masquerade') return this.masquerade();
    if (w === 'dnat') return this.dnat();
    if (w === 'counter') {
      this.next();
      if (this.peek() === 'packets') this.i += 4;
      return { kind: 'counter' };
    }
    if ((w === 'update' || w === 'add') && this.peek(1)?.startsWith('@')) {
      this.next();
      const set = this.word().slice(1);
      this.expect('{');
      const key = this.expr();
      this.expect('}');
      return { kind: 'setUpdate', op: w, set, key };
    }
    return null;
  }

  private reject(): Stmt {
    this.expect('reject');
    // `reject with icmp type port-unreachable`, `with tcp reset`: the packet is dropped all the same
    if (this.peek() === 'with') {
      this.i += 2; // with icmp|icmpx|icmpv6|tcp
      if (this.peek() === 'type') this.i++;
      this.i++; // port-unreachable, reset, ...
    }
    return { kind: 'reject' };
  }

  private masquerade(): Stmt {
    this.expect('masquerade');
    const flags: string[] = [];
    while (this.peek() && MASQ_FLAGS.has(this.peek()!)) {
      flags.push(this.word());
      if (this.peek() === ',') this.next();
    }
    return { kind: 'masquerade', flags };
  }

  private ref(): string {
    const w = this.word();
    if (!w.startsWith('@')) throw new NftRuleError(`expected @set, got ${w}`);
    return w.slice(1);
  }

  verdict(): Verdict {
    const w = this.word();
    if (w === 'jump' || w === 'goto') return { kind: w, chain: this.word() };
    if (w === 'accept' || w === 'drop' || w === 'return' || w === 'continue') return { kind: w };
    throw new NftRuleError(`unknown verdict ${w}`);
  }

  private markSet(): Stmt {
    this.expect('set');
    if (this.peek() === 'mark' || (this.peek() === 'meta' && this.peek(1) === 'mark')) {
      // not this.expr(): it would read `mark and X` as one expression
      this.i += this.peek() === 'meta' ? 2 : 1;
      const op = this.word();
      const ops: Record<string, 'or' | 'xor' | 'and'> = { or: 'or', '|': 'or', xor: 'xor', '^': 'xor', and: 'and', '&': 'and' };
      if (!ops[op]) throw new NftRuleError(`unknown mark operation ${op}`);
      return { kind: 'mark', op: ops[op], value: this.number() };
    }
    return { kind: 'mark', op: 'set', value: this.number() };
  }

  private dnat(): Stmt {
    this.expect('dnat');
    if (this.peek() === 'ip' || this.peek() === 'ip6') this.next();
    if (this.peek() === 'addr') {
      this.next();
      this.expect('.');
      this.expect('port');
    }
    this.expect('to');
    const w = this.peek();
    if (w === 'numgen') {
      const key = this.expr();
      this.expect('map');
      return { kind: 'dnatMap', key, elems: this.elems((p) => natFromValue(p.elemValue())) };
    }
    return { kind: 'dnat', to: natFromText(this.word()) };
  }

  /** `{ key : data, ... }` */
  private elems<T>(data: (p: RuleParser) => T): MapElem<T>[] {
    this.expect('{');
    const out: MapElem<T>[] = [];
    while (this.peek() !== '}') {
      const key = this.elemValue();
      this.expect(':');
      out.push({ key, data: data(this) });
      if (this.peek() === ',') this.next();
    }
    this.expect('}');
    return out;
  }

  /** One element key: "a . b . c". */
  elemValue(): Value {
    const parts: Value[] = [this.atomValue()];
    while (this.peek() === '.') {
      this.next();
      parts.push(this.atomValue());
    }
    return parts.length === 1 ? parts[0]! : { kind: 'concat', parts };
  }

  private atomValue(): Value {
    const t = this.next();
    return atom(t.t, t.quoted);
  }

  private value(): Value {
    const w = this.peek();
    if (w === undefined) throw new NftRuleError('a match without a value');
    if (w.startsWith('@')) return { kind: 'ref', set: this.ref() };
    if (w === '{') {
      this.next();
      const elems: Value[] = [];
      while (this.peek() !== '}') {
        elems.push(this.elemValue());
        if (this.peek() === ',') this.next();
      }
      this.expect('}');
      return { kind: 'set', elems };
    }
    const first = this.atomValue();
    if (this.peek() !== ',') return first;
    // a flag list: ct state new,established
    const elems = [first];
    while (this.peek() === ',') {
      this.next();
      elems.push(this.atomValue());
    }
    return { kind: 'set', elems };
  }

  expr(): Expr {
    const parts: Expr[] = [this.primary()];
    while (this.peek() === '.') {
      this.next();
      parts.push(this.primary());
    }
    let e: Expr = parts.length === 1 ? parts[0]! : { kind: 'concat', parts };
    if (this.peek() === 'and' || this.peek() === '&') {
      this.next();
      e = { kind: 'and', expr: e, mask: this.number() };
    }
    return e;
  }

  private primary(): Expr {
    const w = this.word();
    if (w === 'ip' || w === 'ip6' || L4.has(w)) return this.payload(w);
    if (w === 'mark' || w === 'iifname' || w === 'oifname') return { kind: 'meta', key: w };
    if (w === 'meta') {
      const k = this.word();
      if (!META_KEYS.has(k)) throw new NftRuleError(`meta ${k} is not traced`);
      return { kind: 'meta', key: k as 'mark' };
    }
    if (w === 'ct') {
      const k = this.word();
      if (k !== 'state' && k !== 'status') throw new NftRuleError(`ct ${k} is not traced`);
      return { kind: 'ct', key: k };
    }
    if (w === 'fib') {
      const f = this.word();
      if (f !== 'saddr' && f !== 'daddr') throw new NftRuleError(`fib ${f} is not traced`);
      this.expect('type');
      return { kind: 'fib', flag: f };
    }
    if (w === 'numgen') return this.numgen();
    throw new NftRuleError(`unknown expression ${w}`);
  }

  private payload(protocol: string): Expr {
    const f = this.word();
    const ok = protocol === 'ip' || protocol === 'ip6' ? f === 'saddr' || f === 'daddr' : f === 'sport' || f === 'dport';
    if (!ok) throw new NftRuleError(`${protocol} ${f} is not traced`);
    return { kind: 'payload', protocol: protocol as 'ip', field: f as 'saddr' };
  }

  private numgen(): Expr {
    this.expect('random');
    this.expect('mod');
    const mod = this.number();
    let offset = 0;
    if (this.peek() === 'offset') {
      this.next();
      offset = this.number();
    }
    return { kind: 'numgen', mod, offset };
  }
}

function natFromText(text: string): NatTarget {
  const hp = splitHostPort(text);
  const addr = parseIP(hp ? hp.host : text)?.text;
  if (!addr) throw new NftRuleError(`cannot read dnat target ${text}`);
  return hp ? { addr, port: hp.port } : { addr };
}

function natFromValue(v: Value): NatTarget {
  if (v.kind === 'lit') return natFromText(v.text);
  const [a, p] = v.kind === 'concat' && v.parts.length === 2 ? v.parts : [];
  if (a?.kind === 'lit' && p?.kind === 'lit') return { addr: natFromText(a.text).addr, port: Number(p.text) };
  throw new NftRuleError('cannot read a dnat map element');
}

/** A rule as kpx writes it; a rule it cannot read comes back `unsupported`. */
export function parseRule(text: string): NftRule {
  try {
    return new RuleParser(tokenize(text)).rule();
  } catch (err) {
    if (err instanceof NftRuleError) return { stmts: [], unsupported: `${err.message}: ${text}` };
    throw err;
  }
}

// ---------------------------------------------------------------------------------------
// `nft -j` JSON -> rule

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => !!v && typeof v === 'object' && !Array.isArray(v);
const only = (o: Json): [string, unknown] => {
  const e = Object.entries(o);
  if (e.length !== 1) throw new NftRuleError(`expected one key in ${JSON.stringify(o)}`);
  return e[0]!;
};

/** Readers of one JSON expression kind; null: a form the tracer does not know. */
const EXPR_JSON: Record<string, (v: unknown, o: Json) => Expr | null> = {
  payload: (_v, o) => {
    const p = String(o.protocol);
    const f = String(o.field);
    const l3 = (p === 'ip' || p === 'ip6') && (f === 'saddr' || f === 'daddr');
    const l4 = L4.has(p) && (f === 'sport' || f === 'dport');
    return l3 || l4 ? { kind: 'payload', protocol: p as 'ip', field: f as 'saddr' } : null;
  },
  meta: (_v, o) => (META_KEYS.has(String(o.key)) ? { kind: 'meta', key: String(o.key) as 'mark' } : null),
  ct: (_v, o) => ((o.key === 'state' || o.key === 'status') && o.dir === undefined ? { kind: 'ct', key: o.key } : null),
  fib: (_v, o) => {
    const flags: unknown[] = Array.isArray(o.flags) ? o.flags : [o.flags];
    const f = flags[0];
    return o.result === 'type' && flags.length === 1 && (f === 'saddr' || f === 'daddr') ? { kind: 'fib', flag: f } : null;
  },
  numgen: (_v, o) => (o.mode === 'random' ? { kind: 'numgen', mod: Number(o.mod), offset: Number(o.offset ?? 0) } : null),
  concat: (v) => (Array.isArray(v) ? { kind: 'concat', parts: v.map(exprFromJson) } : null),
  '&': (v) => (Array.isArray(v) && v.length === 2 && typeof v[1] === 'number' ? { kind: 'and', expr: exprFromJson(v[0]), mask: v[1] } : null),
};

function exprFromJson(j: unknown): Expr {
  if (!isObj(j)) throw new NftRuleError(`not an expression: ${JSON.stringify(j)}`);
  const [k, v] = only(j);
  const e = EXPR_JSON[k]?.(v, isObj(v) ? v : {});
  if (!e) throw new NftRuleError(`expression ${JSON.stringify(j)} is not traced`);
  return e;
}

function valueFromJson(j: unknown): Value {
  // prefixes and ranges come as objects: a string is one literal (or a set reference)
  if (typeof j === 'string') return j.startsWith('@') ? { kind: 'ref', set: j.slice(1) } : lit(j);
  if (typeof j === 'number') return lit(String(j));
  if (Array.isArray(j)) return { kind: 'set', elems: j.map(valueFromJson) };
  if (isObj(j)) {
    const [k, v] = only(j);
    if (k === 'prefix' && isObj(v)) return { kind: 'prefix', addr: canonLiteral(String(v.addr)), len: Number(v.len) };
    if (k === 'range' && Array.isArray(v) && v.length === 2) return { kind: 'range', lo: canonLiteral(String(v[0])), hi: canonLiteral(String(v[1])) };
    if (k === 'concat' && Array.isArray(v)) return { kind: 'concat', parts: v.map(valueFromJson) };
    if (k === 'set') return { kind: 'set', elems: (Array.isArray(v) ? v : [v]).map(valueFromJson) };
    if (k === 'elem' && isObj(v)) return valueFromJson(v.val);
  }
  throw new NftRuleError(`value ${JSON.stringify(j)} is not traced`);
}

export function verdictFromJson(j: unknown): Verdict {
  const [k, v] = typeof j === 'string' ? [j, null] : isObj(j) ? only(j) : ['', null];
  if (k === 'jump' || k === 'goto') return { kind: k, chain: String((v as Json).target) };
  if (k === 'accept' || k === 'drop' || k === 'return' || k === 'continue') return { kind: k };
  throw new NftRuleError(`verdict ${JSON.stringify(j)} is not traced`);
}

/** `[key, data]` pairs of an anonymous map. */
function mapPairs(data: unknown): Array<[unknown, unknown]> {
  const set = isObj(data) && Array.isArray(data.set) ? (data.set as unknown[]) : null;
  if (!set || !set.every((e) => Array.isArray(e) && e.length === 2)) throw new NftRuleError(`map ${JSON.stringify(data)} is not traced`);
  return set as Array<[unknown, unknown]>;
}

function natFromJson(j: unknown): NatTarget {
  const v = valueFromJson(j);
  return natFromValue(v);
}

function dnatFromJson(o: Json): Stmt | null {
  if (typeof o.addr === 'string') {
    const addr = parseIP(o.addr)?.text;
    if (!addr) return null;
    return { kind: 'dnat', to: typeof o.port === 'number' ? { addr, port: o.port } : { addr } };
  }
  const m = isObj(o.addr) && isObj(o.addr.map) ? o.addr.map : null;
  if (!m || o.port !== undefined) return null;
  return { kind: 'dnatMap', key: exprFromJson(m.key), elems: mapPairs(m.data).map(([a, b]) => ({ key: valueFromJson(a), data: natFromJson(b) })) };
}

function mangleFromJson(o: Json): Stmt | null {
  const key = exprFromJson(o.key);
  if (key.kind !== 'meta' || key.key !== 'mark') return null;
  if (typeof o.value === 'number') return { kind: 'mark', op: 'set', value: o.value };
  if (!isObj(o.value)) return null;
  const [opk, args] = only(o.value);
  const ops: Record<string, 'or' | 'xor' | 'and'> = { '|': 'or', '^': 'xor', '&': 'and' };
  if (!ops[opk] || !Array.isArray(args) || args.length !== 2 || typeof args[1] !== 'number') return null;
  const inner = exprFromJson(args[0]);
  return inner.kind === 'meta' && inner.key === 'mark' ? { kind: 'mark', op: ops[opk], value: args[1] } : null;
}

const verdictStmt = (_v: unknown, _o: Json, j: Json): Stmt => ({ kind: 'verdict', verdict: verdictFromJson(j) });

/** Readers of one JSON statement kind; null: a form the tracer does not know. */
const STMT_JSON: Record<string, (v: unknown, o: Json, j: Json) => Stmt | null> = {
  match: (_v, o) => {
    const op = o.op === 'in' || o.op === '==' ? '==' : o.op === '!=' ? '!=' : null;
    return op ? { kind: 'match', left: exprFromJson(o.left), op, right: valueFromJson(o.right) } : null;
  },
  accept: verdictStmt,
  drop: verdictStmt,
  return: verdictStmt,
  continue: verdictStmt,
  jump: verdictStmt,
  goto: verdictStmt,
  vmap: (_v, o) => {
    const key = exprFromJson(o.key);
    if (typeof o.data === 'string' && o.data.startsWith('@')) return { kind: 'vmap', key, map: { kind: 'ref', set: o.data.slice(1) } };
    return { kind: 'vmap', key, map: { kind: 'inline', elems: mapPairs(o.data).map(([a, b]) => ({ key: valueFromJson(a), data: verdictFromJson(b) })) } };
  },
  reject: () => ({ kind: 'reject' }),
  dnat: (_v, o) => dnatFromJson(o),
  masquerade: (_v, o) => ({ kind: 'masquerade', flags: Array.isArray(o.flags) ? o.flags.map(String) : typeof o.flags === 'string' ? [o.flags] : [] }),
  mangle: (_v, o) => mangleFromJson(o),
  set: (_v, o) =>
    (o.op === 'update' || o.op === 'add') && typeof o.set === 'string' ? { kind: 'setUpdate', op: o.op, set: o.set.replace(/^@/, ''), key: exprFromJson(o.elem) } : null,
  counter: () => ({ kind: 'counter' }),
};

function stmtFromJson(j: unknown): Stmt {
  if (!isObj(j)) throw new NftRuleError(`not a statement: ${JSON.stringify(j)}`);
  const [k, v] = only(j);
  const st = STMT_JSON[k]?.(v, isObj(v) ? v : {}, j);
  if (!st) throw new NftRuleError(`statement ${JSON.stringify(j)} is not traced`);
  return st;
}

/** A rule's `expr` array from `nft -j list ...`; one the tracer cannot read comes back `unsupported`. */
export function ruleFromJson(expr: readonly unknown[], comment?: string, handle?: number): NftRule {
  const extra = { ...(comment !== undefined ? { comment } : {}), ...(handle !== undefined ? { handle } : {}) };
  try {
    return { stmts: expr.map(stmtFromJson), ...extra };
  } catch (err) {
    if (err instanceof NftRuleError) return { stmts: [], ...extra, unsupported: `${err.message} (rule ${JSON.stringify(expr)})` };
    throw err;
  }
}

/** A listed table (format.ts's parseListing) in the tracer's form. */
export function tableFromListing(t: ListedTable): NftTableModel {
  const chains = new Map<string, NftChainModel>();
  for (const c of t.chains.values()) {
    chains.set(c.name, {
      name: c.name,
      ...(c.base ? { base: c.base } : {}),
      policy: c.policy ?? 'accept',
      rules: c.rules.map((r) => ruleFromJson(r.expr, r.comment, r.handle)),
    });
  }
  const sets = new Map<string, NftSetModel>();
  for (const s of t.sets.values()) {
    sets.set(s.spec.name, {
      name: s.spec.name,
      kind: s.spec.kind,
      flags: s.spec.flags ?? [],
      ...(s.spec.timeout !== undefined ? { timeout: s.spec.timeout } : {}),
      elems: s.elements.map(elementFromText),
    });
  }
  return { family: t.family, name: t.name, chains, sets };
}

// ---------------------------------------------------------------------------------------
// Rule -> text (what a trace shows; nft syntax, kpx's spelling)

const hex = (n: number): string => `0x${n.toString(16)}`;

export function exprText(e: Expr): string {
  switch (e.kind) {
    case 'payload':
      return `${e.protocol} ${e.field}`;
    case 'meta':
      return e.key === 'l4proto' ? 'meta l4proto' : e.key;
    case 'ct':
      return `ct ${e.key}`;
    case 'fib':
      return `fib ${e.flag} type`;
    case 'numgen':
      return `numgen random mod ${e.mod}${e.offset ? ` offset ${e.offset}` : ''}`;
    case 'and':
      return `${exprText(e.expr)} and ${hex(e.mask)}`;
    case 'concat':
      return e.parts.map(exprText).join(' . ');
  }
}

export function valueText(v: Value, quote = false): string {
  switch (v.kind) {
    case 'lit':
      return quote ? `"${v.text}"` : v.text;
    case 'prefix':
      return `${v.addr}/${v.len}`;
    case 'range':
      return `${v.lo}-${v.hi}`;
    case 'concat':
      return v.parts.map((p) => valueText(p, quote)).join(' . ');
    case 'ref':
      return `@${v.set}`;
    case 'set':
      return `{ ${v.elems.map((x) => valueText(x, quote)).join(', ')} }`;
  }
}

export const verdictText = (v: Verdict): string => (v.kind === 'jump' || v.kind === 'goto' ? `${v.kind} ${v.chain}` : v.kind);
const natText = (n: NatTarget): string => (n.port !== undefined ? joinHostPort(n.addr, n.port) : n.addr);

function matchText(s: Extract<Stmt, { kind: 'match' }>): string {
  const quote = s.left.kind === 'meta' && (s.left.key === 'iifname' || s.left.key === 'oifname');
  // flags print as a list (ct state new,established)
  const right = s.left.kind === 'ct' && s.right.kind === 'set' ? s.right.elems.map((x) => valueText(x)).join(',') : valueText(s.right, quote);
  const op = s.op === '!=' ? '!= ' : s.left.kind === 'and' ? '== ' : '';
  return `${exprText(s.left)} ${op}${right}`;
}

function stmtText(s: Stmt): string {
  switch (s.kind) {
    case 'match':
      return matchText(s);
    case 'verdict':
      return verdictText(s.verdict);
    case 'vmap':
      return `${exprText(s.key)} vmap ${s.map.kind === 'ref' ? `@${s.map.set}` : `{ ${s.map.elems.map((e) => `${valueText(e.key)} : ${verdictText(e.data)}`).join(', ')} }`}`;
    case 'reject':
      return 'reject';
    case 'dnat':
      return `dnat to ${natText(s.to)}`;
    case 'dnatMap': {
      const fam = s.elems.some((e) => e.data.addr.includes(':')) ? 'ip6' : 'ip';
      return `dnat ${fam} addr . port to ${exprText(s.key)} map { ${s.elems.map((e) => `${valueText(e.key)} : ${e.data.addr} . ${e.data.port ?? 0}`).join(', ')} }`;
    }
    case 'masquerade':
      return s.flags.length ? `masquerade ${s.flags.join(',')}` : 'masquerade';
    case 'mark':
      return s.op === 'set' ? `mark set ${hex(s.value)}` : `mark set mark ${s.op} ${hex(s.value)}`;
    case 'setUpdate':
      return `${s.op} @${s.set} { ${exprText(s.key)} }`;
    case 'counter':
      return 'counter';
  }
}

/** The rule in nft syntax (rendered rules read back print as kpx wrote them, up to number spelling). */
export function ruleText(r: NftRule): string {
  if (r.unsupported) return `(cannot be traced: ${r.unsupported})`;
  const body = r.stmts.map(stmtText).join(' ');
  return r.comment !== undefined ? `${body} comment "${r.comment}"` : body;
}
