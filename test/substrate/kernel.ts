// Compares what the kernel holds with what kpx says it wants, chain by chain.
import { parseSave, ruleTarget, BUILTIN_CHAINS } from '../../src/iptables/save.js';
import { createHash } from 'node:crypto';
import { CHAIN, isFixedChain, isKpxChain } from '../../src/render/iptables/names.js';

export type ChainState = Record<string, Record<string, string[]>>;

/** iptables stores probabilities as 32-bit fractions: compare them at 6 decimals. */
export function normalizeRule(rule: string): string {
  return rule.replace(/--probability (\S+)/, (_, p: string) => `--probability ${Number(p).toFixed(6)}`);
}

/** KPX chains (and built-in chains' jumps to them) from iptables-save output. */
export function ownedState(saveText: string): ChainState {
  const out: ChainState = {};
  for (const [table, chains] of parseSave(saveText)) {
    for (const [name, chain] of chains) {
      if (isKpxChain(name)) (out[table] ??= {})[name] = chain.rules.map(normalizeRule);
      else if (BUILTIN_CHAINS.has(name)) {
        const jumps = chain.rules.filter((r) => isKpxChain(ruleTarget(r) ?? ''));
        if (jumps.length) (out[table] ??= {})[name] = jumps.map(normalizeRule);
      }
    }
  }
  return out;
}

/** The chains a full restore plan (kpx render) leaves, with their rules. */
export function plannedChains(planText: string, family: 'IPv4' | 'IPv6' = 'IPv4'): ChainState {
  const out: ChainState = {};
  let table = '';
  let inFamily = false;
  for (const line of planText.split('\n')) {
    if (line.startsWith('# kpx ')) inFamily = line.startsWith(`# kpx ${family} `);
    if (!inFamily) continue;
    if (line.startsWith('*')) table = line.slice(1);
    else if (line.startsWith(':')) ((out[table] ??= {})[line.slice(1).split(' ')[0]!] ??= []);
    else if (line.startsWith('-X ')) delete out[table]?.[line.slice(3)]; // flushed, then deleted
    else if (line.startsWith('-A ')) {
      const sp = line.indexOf(' ', 3);
      const chain = line.slice(3, sp);
      ((out[table] ??= {})[chain] ??= []).push(normalizeRule(line.slice(sp + 1)));
    }
  }
  return out;
}

/**
 * Only the KPX- chains of a state (drops built-in chains), with the chains that are not
 * fixed renamed after what they contain (their rules, with their targets renamed the same
 * way) and the canary's generation marker dropped: two states are equal when they hold
 * the same rules, whichever of kpx's two name sets (names.ts, Generation) they use.
 */
export function kpxChainsOnly(s: ChainState): ChainState {
  const out: ChainState = {};
  for (const [t, chains] of Object.entries(s)) {
    const canon = new Map<string, string>();
    const name = (c: string): string => {
      if (isFixedChain(c) || !isKpxChain(c) || !(c in chains)) return c;
      let n = canon.get(c);
      if (n === undefined) {
        n = `KPX-C-${createHash('sha256').update(JSON.stringify(rename(chains[c]!))).digest('hex').slice(0, 16)}`;
        canon.set(c, n);
      }
      return n;
    };
    const rename = (rules: string[]) =>
      rules.map((r) => {
        const target = ruleTarget(r);
        return target ? ` ${r}`.replace(new RegExp(` -([jg]) ${target}(?= |$)`), (_, k: string) => ` -${k} ${name(target)}`).slice(1) : r;
      });
    for (const [c, rules] of Object.entries(chains)) {
      if (!isKpxChain(c)) continue;
      (out[t] ??= {})[name(c)] = c === CHAIN.canary ? [] : rename(rules);
    }
  }
  return out;
}

/**
 * The longest path of chains from a built-in chain (base chain included), per table: what
 * nf_tables checks against its limit of 16 when the ruleset is committed.
 */
export function chainDepth(tables: ReadonlyMap<string, ReadonlyMap<string, readonly string[]>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [table, chains] of tables) {
    const memo = new Map<string, number>();
    const depth = (name: string, onPath: Set<string>): number => {
      const known = memo.get(name);
      if (known !== undefined) return known;
      if (onPath.has(name)) throw new Error(`loop through ${table}/${name}`);
      onPath.add(name);
      let d = 1;
      for (const r of chains.get(name) ?? []) {
        const target = ruleTarget(r);
        if (target && chains.has(target) && !BUILTIN_CHAINS.has(target)) d = Math.max(d, 1 + depth(target, onPath));
      }
      onPath.delete(name);
      memo.set(name, d);
      return d;
    };
    out[table] = Math.max(0, ...[...chains.keys()].filter((c) => BUILTIN_CHAINS.has(c)).map((c) => depth(c, new Set())));
  }
  return out;
}
