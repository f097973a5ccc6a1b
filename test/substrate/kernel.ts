// Compares what the kernel holds with what kpx says it wants, chain by chain.
import { parseSave, ruleTarget, BUILTIN_CHAINS } from '../../src/render/iptables/restore.js';
import { isKpxChain } from '../../src/render/iptables/names.js';

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

/** The chains a full restore plan (kpx render) declares, with their rules. */
export function plannedChains(planText: string, family: 'IPv4' | 'IPv6' = 'IPv4'): ChainState {
  const out: ChainState = {};
  let table = '';
  let inFamily = false;
  for (const line of planText.split('\n')) {
    if (line.startsWith('# kpx ')) inFamily = line.startsWith(`# kpx ${family} `);
    if (!inFamily) continue;
    if (line.startsWith('*')) table = line.slice(1);
    else if (line.startsWith(':')) ((out[table] ??= {})[line.slice(1).split(' ')[0]!] ??= []);
    else if (line.startsWith('-A ')) {
      const sp = line.indexOf(' ', 3);
      const chain = line.slice(3, sp);
      ((out[table] ??= {})[chain] ??= []).push(normalizeRule(line.slice(sp + 1)));
    }
  }
  return out;
}

/** Only the KPX- chains of a state (drops built-in chains). */
export function kpxChainsOnly(s: ChainState): ChainState {
  const out: ChainState = {};
  for (const [t, chains] of Object.entries(s)) {
    for (const [c, rules] of Object.entries(chains)) if (isKpxChain(c)) (out[t] ??= {})[c] = rules;
  }
  return out;
}
