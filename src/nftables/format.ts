// The nft text format: kpx's one place for writing `nft -f` transactions, reading them
// back (the in-memory fake, tests), and parsing `nft -j list ...` JSON (the applier's reads,
// and the tracer's through rules.ts, which reads rule expressions).
//
// Which statement forms kpx writes matters for speed, not only for meaning. nft 1.0.6
// (Debian 12) fetches every chain of the table before it runs a transaction holding an
// `add rule`, `add element`, a `delete` of anything, ...: about 1 s per 50k chains. A chain
// written with its rules inline (`add chain ip kpx NAME { rule ; rule ; }`), a map or set
// with its elements inline (`add map ip kpx NAME { type ... ; elements = { ... } ; }`) and
// `flush chain` need no such fetch. So the writer uses those forms, and only deletions pay.
import type { IPFamily } from '../util/ip.js';

export type NftFamily = 'ip' | 'ip6';
export const nftFamily = (f: IPFamily): NftFamily => (f === 'IPv4' ? 'ip' : 'ip6');

/** The longest chain, set or map name the kernel takes (NFT_NAME_MAXLEN 256, with the NUL). */
export const NAME_MAX = 255;
/** Comments are kept as user data of at most 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN). */
export const COMMENT_MAX = 128;

/**
 * A comment as nft reads it back: nft's scanner ends a quoted string at the next `"` and
 * has no escapes, so double quotes become single ones; line breaks become spaces; the text
 * is cut to 128 bytes (on a character boundary).
 */
export function commentText(text: string): string {
  let t = text.replace(/"/g, "'").replace(/[\r\n\t]+/g, ' ');
  while (Buffer.byteLength(t) > COMMENT_MAX) t = t.slice(0, -1);
  return t;
}

export const quoted = (text: string): string => `"${commentText(text)}"`;

/** A base chain's hook: type, hook and numeric priority (kpx never uses symbolic ones). */
export interface BaseChainSpec {
  readonly type: 'filter' | 'nat';
  readonly hook: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';
  readonly priority: number;
}

/** A set or map as kpx declares it. */
export interface SetSpec {
  readonly kind: 'set' | 'map';
  readonly name: string;
  /** key type, e.g. "ipv4_addr . inet_proto . inet_service" (or "typeof ..." text) */
  readonly type: string;
  /** data type of a map, e.g. "verdict" */
  readonly data?: string;
  readonly flags?: readonly string[];
  /** seconds */
  readonly timeout?: number;
  readonly comment?: string;
}

/** One element: the key (components joined by " . ") and, in a map, the value. */
export interface Element {
  readonly key: string;
  readonly value?: string;
}

export const elementText = (e: Element): string => (e.value === undefined ? e.key : `${e.key} : ${e.value}`);

/** The declaration inside `add set|map T NAME { ... }`, without elements. */
export function setDeclaration(s: SetSpec): string {
  const parts: string[] = [];
  const type = s.type.startsWith('typeof ') ? s.type : `type ${s.type}`;
  parts.push(s.kind === 'map' ? `${type} : ${s.data ?? 'verdict'}` : type);
  if (s.flags?.length) parts.push(`flags ${s.flags.join(',')}`);
  if (s.timeout !== undefined) parts.push(`timeout ${s.timeout}s`);
  if (s.comment) parts.push(`comment ${quoted(s.comment)}`);
  return parts.join(' ; ');
}

/**
 * An `nft -f` transaction for one table: statements in order, applied atomically by the
 * kernel (all or nothing). Text is built as lines; `text` joins them once.
 */
export class Transaction {
  private readonly lines: string[] = [];
  private readonly prefix: string;
  /** statements that make nft 1.0.6 read every chain first (see the top of this file) */
  slowStatements = 0;

  constructor(
    readonly family: NftFamily,
    readonly table: string,
  ) {
    this.prefix = `${family} ${table}`;
  }

  get length(): number {
    return this.lines.length;
  }

  get empty(): boolean {
    return this.lines.length === 0;
  }

  addTable(comment?: string): this {
    this.lines.push(comment ? `add table ${this.prefix} { comment ${quoted(comment)} ; }` : `add table ${this.prefix}`);
    return this;
  }

  deleteTable(): this {
    this.slowStatements++;
    this.lines.push(`delete table ${this.prefix}`);
    return this;
  }

  /** `add chain` with its rules inline (creates the chain, or appends to an existing one). */
  addChain(name: string, rules: readonly string[] = [], base?: BaseChainSpec, comment?: string): this {
    const body: string[] = [];
    if (base) body.push(`type ${base.type} hook ${base.hook} priority ${base.priority} ; policy accept`);
    if (comment) body.push(`comment ${quoted(comment)}`);
    for (const r of rules) body.push(r);
    this.lines.push(body.length ? `add chain ${this.prefix} ${name} { ${body.join(' ; ')} ; }` : `add chain ${this.prefix} ${name}`);
    return this;
  }

  flushChain(name: string): this {
    this.lines.push(`flush chain ${this.prefix} ${name}`);
    return this;
  }

  deleteChain(name: string): this {
    this.slowStatements++;
    this.lines.push(`delete chain ${this.prefix} ${name}`);
    return this;
  }

  /** Declares a set or map, with elements to add (existing ones must not be repeated). */
  addSet(spec: SetSpec, elements: readonly Element[] = []): this {
    const decl = setDeclaration(spec);
    const elems = elements.length ? ` ; elements = { ${elements.map(elementText).join(', ')} }` : '';
    this.lines.push(`add ${spec.kind} ${this.prefix} ${spec.name} { ${decl}${elems} ; }`);
    return this;
  }

  flushSet(spec: Pick<SetSpec, 'kind' | 'name'>): this {
    this.lines.push(`flush ${spec.kind} ${this.prefix} ${spec.name}`);
    return this;
  }

  deleteSet(spec: Pick<SetSpec, 'kind' | 'name'>): this {
    this.slowStatements++;
    this.lines.push(`delete ${spec.kind} ${this.prefix} ${spec.name}`);
    return this;
  }

  /** Deletes elements by key (values are not needed, and not written). */
  deleteElements(set: string, keys: readonly string[]): this {
    if (!keys.length) return this;
    this.slowStatements++;
    this.lines.push(`delete element ${this.prefix} ${set} { ${keys.join(', ')} }`);
    return this;
  }

  get text(): string {
    return this.lines.length ? `${this.lines.join('\n')}\n` : '';
  }
}

// ---------------------------------------------------------------------------------------
// Reading transactions back (the fake and tests). Only the forms the writer above emits
// are understood, plus `add rule` and `add element`, which tests and people write.

export type Statement =
  | { readonly op: 'add' | 'delete' | 'flush'; readonly obj: 'table'; readonly family: string; readonly table: string; readonly comment?: string }
  | {
      readonly op: 'add';
      readonly obj: 'chain';
      readonly family: string;
      readonly table: string;
      readonly name: string;
      readonly base?: BaseChainSpec;
      readonly comment?: string;
      readonly rules: readonly string[];
    }
  | { readonly op: 'flush' | 'delete'; readonly obj: 'chain'; readonly family: string; readonly table: string; readonly name: string }
  | { readonly op: 'add'; readonly obj: 'rule'; readonly family: string; readonly table: string; readonly chain: string; readonly rule: string }
  | {
      readonly op: 'add';
      readonly obj: 'set';
      readonly family: string;
      readonly table: string;
      readonly spec: SetSpec;
      readonly elements: readonly Element[];
    }
  | { readonly op: 'flush' | 'delete'; readonly obj: 'set'; readonly family: string; readonly table: string; readonly kind: 'set' | 'map'; readonly name: string }
  | {
      readonly op: 'add' | 'delete';
      readonly obj: 'element';
      readonly family: string;
      readonly table: string;
      readonly name: string;
      readonly elements: readonly Element[];
    };

export class ParseError extends Error {
  constructor(
    readonly line: number,
    message: string,
  ) {
    super(`line ${line}: ${message}`);
  }
}

/** Splits on `sep` outside quotes and outside braces (depth 0). */
export function splitTop(text: string, sep: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let inQuote = false;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') inQuote = !inQuote;
    else if (inQuote) continue;
    else if (c === '{') depth++;
    else if (c === '}') depth--;
    else if (depth === 0 && text.startsWith(sep, i)) {
      out.push(text.slice(start, i));
      start = i + sep.length;
      i += sep.length - 1;
    }
  }
  out.push(text.slice(start));
  return out.map((s) => s.trim()).filter((s) => s.length > 0);
}

/** The text between the first `{` at depth 0 and its matching `}`; null without braces. */
function braceBody(text: string): { head: string; body: string | null; rest: string } {
  let inQuote = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') inQuote = !inQuote;
    if (inQuote || c !== '{') continue;
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text[j]!;
      if (d === '"') inQuote = !inQuote;
      if (inQuote) continue;
      if (d === '{') depth++;
      else if (d === '}' && --depth === 0) return { head: text.slice(0, i).trim(), body: text.slice(i + 1, j), rest: text.slice(j + 1).trim() };
    }
    throw new Error('unbalanced braces');
  }
  return { head: text.trim(), body: null, rest: '' };
}

const unquote = (s: string): string => (s.startsWith('"') && s.endsWith('"') ? s.slice(1, -1) : s);

export function parseElements(body: string): Element[] {
  return splitTop(body, ',').map((e) => {
    const parts = splitTop(e, ' : ');
    if (parts.length === 1) return { key: normalizeKey(parts[0]!) };
    if (parts.length === 2) return { key: normalizeKey(parts[0]!), value: parts[1]!.replace(/\s+/g, ' ') };
    throw new Error(`cannot read element ${e}`);
  });
}

const normalizeKey = (k: string): string => k.split(' . ').map((p) => p.trim()).join(' . ');

function parseSetBody(kind: 'set' | 'map', name: string, body: string): { spec: SetSpec; elements: Element[] } {
  let type = '';
  let data: string | undefined;
  let flags: string[] | undefined;
  let timeout: number | undefined;
  let comment: string | undefined;
  let elements: Element[] = [];
  for (const part of splitTop(body, ';').flatMap((p) => splitTop(p, '\n'))) {
    if (part.startsWith('type ') || part.startsWith('typeof ')) {
      const t = part.startsWith('type ') ? part.slice(5) : part;
      const [k, d] = kind === 'map' ? (splitTop(t, ' : ') as [string, string?]) : [t, undefined];
      type = k;
      data = d;
    } else if (part.startsWith('flags ')) flags = part.slice(6).split(',').map((f) => f.trim());
    else if (part.startsWith('timeout ')) timeout = parseDuration(part.slice(8));
    else if (part.startsWith('comment ')) comment = unquote(part.slice(8).trim());
    else if (part.startsWith('elements')) {
      const b = braceBody(part).body;
      elements = b && b.trim() ? parseElements(b) : [];
    } else if (part.startsWith('size ') || part.startsWith('policy ')) continue;
    else throw new Error(`unknown ${kind} attribute: ${part}`);
  }
  if (!type) throw new Error(`${kind} ${name} has no type`);
  const spec: SetSpec = {
    kind,
    name,
    type,
    ...(data !== undefined ? { data } : {}),
    ...(flags ? { flags } : {}),
    ...(timeout !== undefined ? { timeout } : {}),
    ...(comment !== undefined ? { comment } : {}),
  };
  return { spec, elements };
}

/** "10800s", "3h", "1d2h3m4s" -> seconds. */
export function parseDuration(text: string): number {
  let total = 0;
  const re = /(\d+)(ms|d|h|m|s)/g;
  let m: RegExpExecArray | null;
  let seen = false;
  while ((m = re.exec(text.trim()))) {
    seen = true;
    const n = Number(m[1]);
    total += m[2] === 'd' ? n * 86400 : m[2] === 'h' ? n * 3600 : m[2] === 'm' ? n * 60 : m[2] === 's' ? n : n / 1000;
  }
  if (!seen) throw new Error(`cannot read duration ${text}`);
  return total;
}

function parseChainBody(body: string): { base?: BaseChainSpec; comment?: string; rules: string[] } {
  let base: BaseChainSpec | undefined;
  let comment: string | undefined;
  const rules: string[] = [];
  for (const part of splitTop(body, ';').flatMap((p) => splitTop(p, '\n'))) {
    const m = /^type (filter|nat) hook (\w+) priority (-?\d+)$/.exec(part);
    if (m) {
      base = { type: m[1] as 'filter' | 'nat', hook: m[2] as BaseChainSpec['hook'], priority: Number(m[3]) };
      continue;
    }
    if (/^policy (accept|drop)$/.test(part)) continue;
    if (part.startsWith('comment "') && part.endsWith('"') && splitTop(part, ' ').length === 2) {
      comment = unquote(part.slice(8));
      continue;
    }
    rules.push(part);
  }
  return { ...(base ? { base } : {}), ...(comment !== undefined ? { comment } : {}), rules };
}

/** Reads a transaction written by Transaction (and `add rule` / `add element` lines). */
export function parseTransaction(text: string): Statement[] {
  const out: Statement[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    try {
      out.push(parseStatement(line));
    } catch (err) {
      throw new ParseError(i + 1, (err as Error).message);
    }
  });
  return out;
}

/** A statement's leading words, `<op> <object> <family> <table> [<name>]`, and its braces. */
interface StatementHead {
  readonly line: string;
  readonly op: 'add' | 'delete' | 'flush';
  readonly obj: string;
  readonly family: string;
  readonly table: string;
  /** the fifth word: the chain, set or map name */
  readonly name: string | undefined;
  /** what is inside the braces; null without braces */
  readonly body: string | null;
}

function parseStatement(line: string): Statement {
  const { head, body } = braceBody(line);
  const words = head.split(/\s+/);
  const [op, obj, family, table] = words as [string, string, string, string];
  if (!['add', 'delete', 'flush'].includes(op)) throw new Error(`unknown command ${op}`);
  if (!family || !table) throw new Error(`incomplete statement: ${line}`);
  const h: StatementHead = { line, op: op as StatementHead['op'], obj, family, table, name: words[4], body };
  switch (obj) {
    case 'table':
      return parseTableStatement(h);
    case 'chain':
      return parseChainStatement(h);
    case 'rule':
      return parseRuleStatement(h);
    case 'set':
    case 'map':
      return parseSetStatement(h, obj);
    case 'element':
      return parseElementStatement(h);
    default:
      throw new Error(`unknown object ${obj}`);
  }
}

function parseTableStatement({ op, family, table, body }: StatementHead): Statement {
  const comment = body ? parseChainBody(body).comment : undefined;
  return { op: op as 'add', obj: 'table', family, table, ...(comment !== undefined ? { comment } : {}) };
}

function parseChainStatement({ op, family, table, name, body }: StatementHead): Statement {
  if (!name) throw new Error('chain without a name');
  if (op === 'add') return { op, obj: 'chain', family, table, name, ...(body !== null ? parseChainBody(body) : { rules: [] }) };
  return { op: op as 'flush', obj: 'chain', family, table, name };
}

function parseRuleStatement({ line, op, obj, family, table, name: chain }: StatementHead): Statement {
  if (op !== 'add' || !chain) throw new Error(`cannot read ${line}`);
  const rule = line.slice(line.indexOf(chain, `${op} ${obj} ${family} ${table}`.length) + chain.length).trim();
  return { op, obj: 'rule', family, table, chain, rule };
}

function parseSetStatement({ op, family, table, name, body }: StatementHead, kind: 'set' | 'map'): Statement {
  if (!name) throw new Error(`${kind} without a name`);
  if (op === 'add') {
    if (body === null) throw new Error(`${kind} ${name} has no declaration`);
    return { op, obj: 'set', family, table, ...parseSetBody(kind, name, body) };
  }
  return { op: op as 'flush', obj: 'set', family, table, kind, name };
}

function parseElementStatement({ line, op, family, table, name, body }: StatementHead): Statement {
  if (!name || body === null || op === 'flush') throw new Error(`cannot read ${line}`);
  return { op: op as 'add', obj: 'element', family, table, name, elements: body.trim() ? parseElements(body) : [] };
}

/** Names of the chains a rule jumps or goes to (also inside anonymous verdict maps). */
export function ruleTargets(rule: string): string[] {
  const out: string[] = [];
  const re = /\b(?:jump|goto) ([A-Za-z_.][A-Za-z0-9_./-]*)/g;
  let m: RegExpExecArray | null;
  const text = rule.replace(/comment "[^"]*"/g, '');
  while ((m = re.exec(text))) out.push(m[1]!);
  return out;
}

/** Names of the sets and maps a rule refers to (`@name`). */
export function ruleSets(rule: string): string[] {
  const out: string[] = [];
  const re = /@([A-Za-z_.][A-Za-z0-9_./-]*)/g;
  let m: RegExpExecArray | null;
  const text = rule.replace(/comment "[^"]*"/g, '');
  while ((m = re.exec(text))) out.push(m[1]!);
  return out;
}

/** The chain an element's verdict goes to, if any. */
export function verdictTarget(value: string | undefined): string | null {
  const m = value ? /^(?:jump|goto) (\S+)$/.exec(value) : null;
  return m ? m[1]! : null;
}

// ---------------------------------------------------------------------------------------
// Parsing `nft -j list ...` output.

export interface ListedRule {
  readonly chain: string;
  readonly handle: number;
  readonly comment?: string;
  /** the rule's expressions as nft's JSON gives them */
  readonly expr: readonly unknown[];
}

export interface ListedChain {
  readonly name: string;
  readonly handle: number;
  readonly base?: BaseChainSpec;
  /** a base chain's policy */
  readonly policy?: 'accept' | 'drop';
  readonly rules: ListedRule[];
}

export interface ListedSet {
  readonly spec: SetSpec;
  readonly elements: Element[];
}

export interface ListedTable {
  readonly family: string;
  readonly name: string;
  readonly chains: Map<string, ListedChain>;
  readonly sets: Map<string, ListedSet>;
}

type Json = Record<string, unknown>;

/** Reads `nft -j list table|chains|chain|sets|maps|set|map ...` output; tables by "family name". */
export function parseListing(text: string): Map<string, ListedTable> {
  const doc = JSON.parse(text) as { nftables?: Json[] };
  const tables = new Map<string, ListedTable>();
  const tableOf = (family: string, name: string): ListedTable => {
    const key = `${family} ${name}`;
    let t = tables.get(key);
    if (!t) tables.set(key, (t = { family, name, chains: new Map(), sets: new Map() }));
    return t;
  };
  const pendingRules: Array<[ListedTable, ListedRule]> = [];
  for (const item of doc.nftables ?? []) {
    const [kind, raw] = Object.entries(item)[0] ?? [];
    if (!kind || !raw || typeof raw !== 'object') continue;
    const o = raw as Json;
    switch (kind) {
      case 'table':
        tableOf(String(o.family), String(o.name));
        break;
      case 'chain': {
        const t = tableOf(String(o.family), String(o.table));
        const base =
          typeof o.hook === 'string'
            ? { type: String(o.type) as BaseChainSpec['type'], hook: o.hook as BaseChainSpec['hook'], priority: Number(o.prio) }
            : undefined;
        const pol = o.policy;
        const policy: { policy?: 'accept' | 'drop' } = pol === 'accept' || pol === 'drop' ? { policy: pol } : {};
        t.chains.set(String(o.name), { name: String(o.name), handle: Number(o.handle), ...(base ? { base } : {}), ...policy, rules: [] });
        break;
      }
      case 'rule': {
        const t = tableOf(String(o.family), String(o.table));
        pendingRules.push([
          t,
          {
            chain: String(o.chain),
            handle: Number(o.handle),
            ...(typeof o.comment === 'string' ? { comment: o.comment } : {}),
            expr: Array.isArray(o.expr) ? o.expr : [],
          },
        ]);
        break;
      }
      case 'set':
      case 'map': {
        const t = tableOf(String(o.family), String(o.table));
        t.sets.set(String(o.name), listedSet(kind, o));
        break;
      }
      default:
        break;
    }
  }
  for (const [t, r] of pendingRules) {
    let c = t.chains.get(r.chain);
    if (!c) t.chains.set(r.chain, (c = { name: r.chain, handle: -1, rules: [] }));
    c.rules.push(r);
  }
  return tables;
}

function typeText(t: unknown): string {
  return Array.isArray(t) ? t.map(String).join(' . ') : String(t);
}

function listedSet(kind: 'set' | 'map', o: Json): ListedSet {
  const flags = Array.isArray(o.flags) ? (o.flags as unknown[]).map(String) : undefined;
  const spec: SetSpec = {
    kind,
    name: String(o.name),
    type: typeText(o.type),
    ...(kind === 'map' ? { data: typeText(o.map) } : {}),
    ...(flags ? { flags } : {}),
    ...(typeof o.timeout === 'number' ? { timeout: o.timeout } : {}),
    ...(typeof o.comment === 'string' ? { comment: o.comment } : {}),
  };
  const elements: Element[] = [];
  for (const e of Array.isArray(o.elem) ? (o.elem as unknown[]) : []) {
    if (kind === 'map' && Array.isArray(e) && e.length === 2) elements.push({ key: valueText(e[0]), value: verdictText(e[1]) });
    else elements.push({ key: valueText(e) });
  }
  return { spec, elements };
}

/** One element key (or key component) as kpx writes it. */
export function valueText(v: unknown): string {
  if (typeof v === 'string' || typeof v === 'number') return String(v);
  if (Array.isArray(v)) return v.map(valueText).join(' . ');
  if (v && typeof v === 'object') {
    const o = v as Json;
    if ('concat' in o) return valueText(o.concat);
    if ('elem' in o) return valueText((o.elem as Json).val);
    if ('prefix' in o) {
      const p = o.prefix as Json;
      return `${valueText(p.addr)}/${String(p.len)}`;
    }
    if ('range' in o) return (o.range as unknown[]).map(valueText).join('-');
    if ('val' in o) return valueText(o.val);
  }
  return JSON.stringify(v);
}

/** A verdict as kpx writes it: "goto NAME", "jump NAME", "drop", "accept", ... */
export function verdictText(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object') {
    const [k, arg] = Object.entries(v as Json)[0] ?? [];
    if (k === 'goto' || k === 'jump') return `${k} ${String((arg as Json).target)}`;
    if (k) return k;
  }
  return valueText(v);
}
