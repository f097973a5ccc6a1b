// One iptables rule's arguments (as kpx renders them, or as iptables-save prints them),
// parsed into matches and a target: what the tracer evaluates and conntrack cleanup reads.
import { parseCIDR, type ParsedCIDR } from '../util/ip.js';

export interface AddrMatch {
  readonly cidr: ParsedCIDR;
  readonly negate: boolean;
}

export interface RangeMatch {
  readonly lo: string;
  readonly hi: string;
  readonly negate: boolean;
}

export interface ParsedRule {
  readonly text: string;
  src?: AddrMatch;
  dst?: AddrMatch;
  /** -m iprange: inclusive address ranges */
  srcRange?: RangeMatch;
  dstRange?: RangeMatch;
  inIface?: { name: string; negate: boolean };
  outIface?: { name: string; negate: boolean };
  proto?: { name: string; negate: boolean };
  dport?: { lo: number; hi: number; negate: boolean };
  sport?: { lo: number; hi: number; negate: boolean };
  srcType?: { type: string; negate: boolean };
  dstType?: { type: string; negate: boolean };
  ctstate?: { states: string[]; negate: boolean };
  mark?: { value: number; mask: number; negate: boolean };
  probability?: number;
  recent?: { name: string; mode: 'rcheck' | 'set' | 'update'; seconds?: number };
  sets?: Array<{ name: string; flags: string[]; negate: boolean }>;
  physdevIsIn?: { negate: boolean };
  ipvs?: Record<string, string>;
  comment?: string;
  /** unknown options are kept so the tracer can refuse to guess */
  unknown: string[];
  target?: string;
  targetArgs: string[];
}

/** Splits on spaces, keeping "quoted strings" together. */
export function tokenize(rule: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(rule); m; m = re.exec(rule)) out.push(m[1] !== undefined ? m[1] : m[2]!);
  return out;
}

function ports(spec: string): { lo: number; hi: number } {
  const [a, b] = spec.split(':');
  return { lo: Number(a), hi: Number(b ?? a) };
}

function cidrOf(text: string): ParsedCIDR {
  const withLen = text.includes('/') ? text : `${text}/${text.includes(':') ? 128 : 32}`;
  const c = parseCIDR(withLen);
  if (!c) throw new Error(`bad address ${text}`);
  return c;
}

function num(text: string): number {
  return text.startsWith('0x') ? parseInt(text, 16) : Number(text);
}

/** Reads an option's value(s) into the rule; `neg` is whether a "!" came before it. */
type OptionHandler = (r: ParsedRule, next: () => string, neg: boolean, option: string) => void;

const recent = (r: ParsedRule): NonNullable<ParsedRule['recent']> => r.recent ?? { name: '', mode: 'rcheck' };
const skipValue: OptionHandler = (_r, next) => void next();
const ignore: OptionHandler = () => {};

/** Every option kpx renders or iptables-save prints for kpx's rules (and kube-proxy's). */
const OPTIONS: Record<string, OptionHandler> = {
  '-s': (r, next, negate) => (r.src = { cidr: cidrOf(next()), negate }),
  '-d': (r, next, negate) => (r.dst = { cidr: cidrOf(next()), negate }),
  '-i': (r, next, negate) => (r.inIface = { name: next(), negate }),
  '-o': (r, next, negate) => (r.outIface = { name: next(), negate }),
  '-p': (r, next, negate) => (r.proto = { name: next(), negate }),
  // module names carry no meaning of their own here
  '-m': skipValue,
  '--dst-range': (r, next, negate) => (r.dstRange = range(next(), r.text, negate)),
  '--src-range': (r, next, negate) => (r.srcRange = range(next(), r.text, negate)),
  '--dport': (r, next, negate) => (r.dport = { ...ports(next()), negate }),
  '--sport': (r, next, negate) => (r.sport = { ...ports(next()), negate }),
  '--comment': (r, next) => (r.comment = next()),
  '--src-type': (r, next, negate) => (r.srcType = { type: next(), negate }),
  '--dst-type': (r, next, negate) => (r.dstType = { type: next(), negate }),
  '--ctstate': (r, next, negate) => (r.ctstate = { states: next().split(','), negate }),
  '--mark': (r, next, negate) => {
    const [v, m] = next().split('/');
    r.mark = { value: num(v!), mask: m ? num(m) : 0xffffffff, negate };
  },
  // statistic: only "random" is rendered
  '--mode': skipValue,
  '--probability': (r, next) => (r.probability = Number(next())),
  '--name': (r, next) => (r.recent = { ...recent(r), name: next() }),
  '--rcheck': (r, _next, _neg, o) => (r.recent = { ...recent(r), mode: o.slice(2) as 'rcheck' }),
  '--set': (r, _next, _neg, o) => (r.recent = { ...recent(r), mode: o.slice(2) as 'set' }),
  '--update': (r, _next, _neg, o) => (r.recent = { ...recent(r), mode: o.slice(2) as 'update' }),
  '--seconds': (r, next) => (r.recent = { ...recent(r), seconds: Number(next()) }),
  '--reap': ignore,
  '--rsource': ignore,
  '--mask': skipValue,
  '--match-set': (r, next, negate) => (r.sets ??= []).push({ name: next(), flags: next().split(','), negate }),
  '--physdev-is-in': (r, _next, negate) => (r.physdevIsIn = { negate }),
  '--vaddr': (r, next, _neg, o) => ((r.ipvs ??= {})[o.slice(2)] = next()),
  '--vproto': (r, next, _neg, o) => ((r.ipvs ??= {})[o.slice(2)] = next()),
  '--vport': (r, next, _neg, o) => ((r.ipvs ??= {})[o.slice(2)] = next()),
};
OPTIONS['--source'] = OPTIONS['-s']!;
OPTIONS['--destination'] = OPTIONS['-d']!;
OPTIONS['--destination-port'] = OPTIONS['--dport']!;

function range(spec: string, text: string, negate: boolean): RangeMatch {
  const [lo, hi] = spec.split('-');
  if (!lo || !hi) throw new Error(`bad range in: ${text}`);
  return { lo, hi, negate };
}

export function parseRule(text: string): ParsedRule {
  const t = tokenize(text);
  const r: ParsedRule = { text, unknown: [], targetArgs: [] };
  let negate = false;
  let i = 0;
  const next = (): string => t[++i] ?? '';
  for (; i < t.length; i++) {
    const tok = t[i]!;
    if (tok === '!') {
      negate = true;
      continue;
    }
    const neg = negate;
    negate = false;
    if (tok === '-j' || tok === '-g') {
      r.target = next();
      r.targetArgs = t.slice(i + 1);
      break;
    }
    const handler = OPTIONS[tok];
    if (handler) handler(r, next, neg, tok);
    else r.unknown.push(tok);
  }
  return r;
}
