// Parses iptables rule arguments (as kpx renders them, or as iptables-save prints them)
// into matches and a target the tracer can evaluate.
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

export function parseRule(text: string): ParsedRule {
  const t = tokenize(text);
  const r: ParsedRule = { text, unknown: [], targetArgs: [] };
  let negate = false;
  let i = 0;
  const next = () => t[++i] ?? '';
  for (; i < t.length; i++) {
    const tok = t[i]!;
    if (tok === '!') {
      negate = true;
      continue;
    }
    const neg = negate;
    negate = false;
    switch (tok) {
      case '-s':
      case '--source':
        r.src = { cidr: cidrOf(next()), negate: neg };
        break;
      case '-d':
      case '--destination':
        r.dst = { cidr: cidrOf(next()), negate: neg };
        break;
      case '-i':
        r.inIface = { name: next(), negate: neg };
        break;
      case '-o':
        r.outIface = { name: next(), negate: neg };
        break;
      case '-p':
        r.proto = { name: next(), negate: neg };
        break;
      case '-m':
        next(); // module names carry no meaning of their own here
        break;
      case '--dst-range':
      case '--src-range': {
        const [lo, hi] = next().split('-');
        if (!lo || !hi) throw new Error(`bad range in: ${text}`);
        r[tok === '--dst-range' ? 'dstRange' : 'srcRange'] = { lo, hi, negate: neg };
        break;
      }
      case '--dport':
      case '--destination-port':
        r.dport = { ...ports(next()), negate: neg };
        break;
      case '--sport':
        r.sport = { ...ports(next()), negate: neg };
        break;
      case '--comment':
        r.comment = next();
        break;
      case '--src-type':
        r.srcType = { type: next(), negate: neg };
        break;
      case '--dst-type':
        r.dstType = { type: next(), negate: neg };
        break;
      case '--ctstate':
        r.ctstate = { states: next().split(','), negate: neg };
        break;
      case '--mark': {
        const [v, m] = next().split('/');
        r.mark = { value: num(v!), mask: m ? num(m) : 0xffffffff, negate: neg };
        break;
      }
      case '--mode':
        next(); // statistic: only "random" is rendered
        break;
      case '--probability':
        r.probability = Number(next());
        break;
      case '--name':
        r.recent = { ...(r.recent ?? { mode: 'rcheck' }), name: next() };
        break;
      case '--rcheck':
      case '--set':
      case '--update':
        r.recent = { ...(r.recent ?? { name: '' }), mode: tok.slice(2) as 'rcheck' | 'set' | 'update' };
        break;
      case '--seconds':
        r.recent = { ...(r.recent ?? { name: '', mode: 'rcheck' }), seconds: Number(next()) };
        break;
      case '--reap':
      case '--rsource':
        break;
      case '--mask':
        next();
        break;
      case '--match-set':
        (r.sets ??= []).push({ name: next(), flags: next().split(','), negate: neg });
        break;
      case '--physdev-is-in':
        r.physdevIsIn = { negate: neg };
        break;
      case '--vaddr':
      case '--vproto':
      case '--vport':
        (r.ipvs ??= {})[tok.slice(2)] = next();
        break;
      case '-j':
      case '-g':
        r.target = next();
        r.targetArgs = t.slice(i + 1);
        i = t.length;
        break;
      default:
        r.unknown.push(tok);
    }
  }
  return r;
}
