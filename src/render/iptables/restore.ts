// iptables-save / iptables-restore text: parsing what the kernel has, and planning the
// restore input that takes it to what kpx wants. Pure text work; src/apply runs binaries.
import { isKpxChain } from './names.js';
import type { IptablesRuleset, RenderDelta, TableName } from './ruleset.js';
import { TABLES } from './ruleset.js';

export const BUILTIN_CHAINS = new Set(['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING']);

export interface SavedChain {
  /** policy for built-in chains ("ACCEPT"), "-" for user chains */
  readonly policy: string;
  readonly rules: string[];
}

/** table -> chain -> rules, from iptables-save output. */
export type SavedTables = Map<string, Map<string, SavedChain>>;

export function parseSave(text: string): SavedTables {
  const tables: SavedTables = new Map();
  let current: Map<string, SavedChain> | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      current = new Map();
      tables.set(line.slice(1), current);
    } else if (line === 'COMMIT') {
      current = null;
    } else if (current && line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(' ');
      if (name) current.set(name, { policy: policy ?? '-', rules: [] });
    } else if (current && line.startsWith('-A ')) {
      const sp = line.indexOf(' ', 3);
      const chain = line.slice(3, sp === -1 ? undefined : sp);
      const rule = sp === -1 ? '' : line.slice(sp + 1);
      let c = current.get(chain);
      if (!c) current.set(chain, (c = { policy: '-', rules: [] }));
      c.rules.push(rule);
    }
  }
  return tables;
}

/** The target chain of a rule ("-j X" or "-g X"), if any. */
export function ruleTarget(rule: string): string | undefined {
  const m = / -[jg] (\S+)/.exec(` ${rule}`);
  return m?.[1];
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** What kpx owns in one table of the kernel. */
export interface KernelTableView {
  readonly chains: ReadonlySet<string>;
  /** built-in chain -> its rules that jump to KPX- chains, in order */
  readonly jumps: ReadonlyMap<string, readonly string[]>;
}

export function kernelView(saved: SavedTables | undefined, table: string): KernelTableView {
  const chains = new Set<string>();
  const jumps = new Map<string, string[]>();
  for (const [name, chain] of saved?.get(table) ?? []) {
    if (isKpxChain(name)) chains.add(name);
    if (BUILTIN_CHAINS.has(name)) {
      const ours = chain.rules.filter((r) => isKpxChain(ruleTarget(r) ?? ''));
      if (ours.length) jumps.set(name, ours);
    }
  }
  return { chains, jumps };
}

export interface RestorePlan {
  /** iptables-restore --noflush input; empty when nothing changes */
  readonly text: string;
  readonly chainsWritten: number;
  readonly rulesWritten: number;
  readonly rulesWrittenByTable: Readonly<Record<TableName, number>>;
  readonly chainsDeleted: number;
  readonly jumpsChanged: number;
}

class PlanWriter {
  private readonly out: string[] = [];
  chainsWritten = 0;
  rulesWritten = 0;
  readonly byTable: Record<TableName, number> = { filter: 0, nat: 0 };
  chainsDeleted = 0;
  jumpsChanged = 0;

  /** One table's section: flush/create `write` chains with their blocks, delete `deletes`. */
  table(name: string, write: Iterable<readonly [string, string]>, deletes: readonly string[], jumpOps: readonly string[]): void {
    const decl: string[] = [];
    const blocks: string[] = [];
    for (const [chain, b] of write) {
      decl.push(`:${chain} - [0:0]`);
      this.chainsWritten++;
      if (b) {
        blocks.push(b);
        const n = countLines(b);
        this.rulesWritten += n;
        if (name === 'filter' || name === 'nat') this.byTable[name] += n;
      }
    }
    for (const chain of deletes) decl.push(`:${chain} - [0:0]`);
    if (decl.length === 0 && jumpOps.length === 0) return;
    this.chainsDeleted += deletes.length;
    this.jumpsChanged += jumpOps.length;
    // plain loops: a 10k-service table has ~10^5 entries (too many to spread into push)
    this.out.push(`*${name}`);
    for (const l of decl) this.out.push(l);
    for (const l of jumpOps) this.out.push(l);
    for (const b of blocks) this.out.push(b);
    for (const c of deletes) this.out.push(`-X ${c}`);
    this.out.push('COMMIT');
  }

  plan(): RestorePlan {
    return {
      text: this.out.length ? `${this.out.join('\n')}\n` : '',
      chainsWritten: this.chainsWritten,
      rulesWritten: this.rulesWritten,
      rulesWrittenByTable: { ...this.byTable },
      chainsDeleted: this.chainsDeleted,
      jumpsChanged: this.jumpsChanged,
    };
  }
}

function countLines(b: string): number {
  let n = 1;
  for (let i = b.indexOf('\n'); i !== -1; i = b.indexOf('\n', i + 1)) n++;
  return n;
}

/**
 * Full sync: write every chain kpx wants, delete KPX chains the kernel has but kpx no
 * longer wants, and make kpx's jumps the top rules of each built-in chain, in order.
 */
export function planFull(desired: IptablesRuleset, kernel: Record<TableName, KernelTableView>): RestorePlan {
  const w = new PlanWriter();
  for (const table of TABLES) {
    const want = [...desired.chains(table)];
    const names = new Set(want.map(([n]) => n));
    const view = kernel[table];
    const deletes = [...view.chains].filter((c) => !names.has(c)).sort();
    const jumpOps: string[] = [];
    const byChain = new Map<string, string[]>();
    for (const j of desired.jumps) {
      if (j.table !== table) continue;
      let l = byChain.get(j.chain);
      if (!l) byChain.set(j.chain, (l = []));
      l.push(j.rule);
    }
    const builtins = new Set([...byChain.keys(), ...view.jumps.keys()]);
    for (const chain of [...builtins].sort()) {
      const wantJumps = byChain.get(chain) ?? [];
      const have = view.jumps.get(chain) ?? [];
      if (sameRules(have, wantJumps)) continue;
      for (const r of have) jumpOps.push(`-D ${chain} ${r}`);
      for (let i = wantJumps.length - 1; i >= 0; i--) jumpOps.push(`-I ${chain} 1 ${wantJumps[i]}`);
    }
    w.table(table, want, deletes, jumpOps);
  }
  return w.plan();
}

/** Partial sync: write what the render changed, delete what it removed. Cost is what changed. */
export function planPartial(delta: RenderDelta): RestorePlan {
  const w = new PlanWriter();
  for (const table of TABLES) {
    const write = [...delta.write[table]].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    w.table(table, write, [...delta.remove[table]].sort(), []);
  }
  return w.plan();
}

/** Restore input that removes everything kpx owns in the given saved tables. */
export function planCleanup(saved: SavedTables, ownsChain: (name: string) => boolean = isKpxChain): RestorePlan {
  const w = new PlanWriter();
  for (const [table, chains] of saved) {
    const jumpOps: string[] = [];
    const deletes: string[] = [];
    for (const [name, chain] of chains) {
      if (ownsChain(name)) deletes.push(name);
      else if (BUILTIN_CHAINS.has(name)) {
        for (const r of chain.rules) if (ownsChain(ruleTarget(r) ?? '')) jumpOps.push(`-D ${name} ${r}`);
      }
    }
    w.table(table, [], deletes.sort(), jumpOps);
  }
  return w.plan();
}
