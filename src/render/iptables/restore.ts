// iptables-save / iptables-restore text: parsing what the kernel has, and planning the
// restore input that takes it to what kpx wants. Pure text work; src/apply runs binaries.
import { CHAIN, generationOf, isKpxChain, type Generation } from './names.js';
import { countLines, sameChain } from '../../iptables/format.js';
import { BUILTIN_CHAINS, jumpTargets, ruleTarget, type SavedTables } from '../../iptables/save.js';
import type { BuiltinJump, IptablesRuleset, RenderDelta, TableName } from './ruleset.js';
import { TABLES } from './ruleset.js';

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** What kpx owns in one table of the kernel. */
export interface KernelTableView {
  readonly chains: ReadonlySet<string>;
  /** built-in chain -> its rules that jump to KPX- chains, in order */
  readonly jumps: ReadonlyMap<string, readonly string[]>;
  /** the name set the table serves from (its canary's marker); null without a canary */
  readonly generation?: Generation | null;
  /** the rules of kpx's chains, when the kernel was read (not from memory) */
  readonly rules?: ReadonlyMap<string, readonly string[]>;
}

export function kernelView(saved: SavedTables | undefined, table: string): KernelTableView {
  const canary = saved?.get(table)?.get(CHAIN.canary);
  const generation = canary ? generationOf(canary.rules) : null;
  const chains = new Set<string>();
  const rules = new Map<string, readonly string[]>();
  const jumps = new Map<string, string[]>();
  for (const [name, chain] of saved?.get(table) ?? []) {
    if (isKpxChain(name)) {
      chains.add(name);
      rules.set(name, chain.rules);
    }
    if (BUILTIN_CHAINS.has(name)) {
      const ours = chain.rules.filter((r) => isKpxChain(ruleTarget(r) ?? ''));
      if (ours.length) jumps.set(name, ours);
    }
  }
  return { chains, jumps, generation, rules };
}

/** Chains the kernel already holds exactly as desired (a full sync need not write them). */
export type Unchanged = Record<TableName, ReadonlySet<string>>;

/**
 * Compares the desired chains with the kernel's, for a full sync that would rewrite the
 * chains serving now: which are already right, and how many lines the changed ones that
 * serve now would take to rewrite (they must change in one transaction).
 */
export function compareWithKernel(
  desired: IptablesRuleset,
  kernel: Record<TableName, KernelTableView>,
): { unchanged: Unchanged; changedLines: number; totalLines: number } {
  const unchanged = {} as Record<TableName, Set<string>>;
  let changedLines = 0;
  let totalLines = 0;
  for (const table of TABLES) {
    const have = kernel[table].rules;
    const same = (unchanged[table] = new Set<string>());
    for (const [name, text] of desired.chains(table)) {
      const lines = countLines(text) + 1;
      totalLines += lines;
      const rules = have?.get(name);
      if (rules === undefined) continue;
      if (sameChain(name, text, rules)) same.add(name);
      else changedLines += lines;
    }
  }
  return { unchanged, changedLines, totalLines };
}

/** One table's transaction (or a part of one): "*table", declarations, rules, "COMMIT". */
interface Section {
  readonly table: string;
  /** chains flushed (declared) */
  readonly declare: readonly string[];
  readonly jumpOps: readonly string[];
  /** chain blocks (the renderer's strings), joined only when written */
  readonly blocks: readonly string[];
  readonly deletes: readonly string[];
}

function partText(part: readonly Section[]): string {
  // plain loops: a table can have ~10^5 entries (too many to spread into push)
  const out: string[] = [];
  for (const s of part) {
    out.push(`*${s.table}`);
    for (const c of s.declare) out.push(`:${c} - [0:0]`);
    for (const l of s.jumpOps) out.push(l);
    for (const b of s.blocks) out.push(b);
    for (const c of s.deletes) out.push(`-X ${c}`);
    out.push('COMMIT');
  }
  return `${out.join('\n')}\n`;
}

export interface PlanStats {
  chainsWritten: number;
  rulesWritten: number;
  readonly rulesWrittenByTable: Record<TableName, number>;
  chainsDeleted: number;
  jumpsChanged: number;
}

const noStats = (): PlanStats => ({ chainsWritten: 0, rulesWritten: 0, rulesWrittenByTable: { filter: 0, nat: 0 }, chainsDeleted: 0, jumpsChanged: 0 });

/**
 * iptables-restore --noflush input, generated batch by batch while it is written: a full
 * sync at 10k services never holds its 30 MB payload as one text (nor the endpoint
 * chains, which the renderer does not keep as text). The figures are counted as the
 * batches are generated; reading one before that generates the plan once.
 */
export class RestorePlan {
  private counted: PlanStats | null = null;
  private batchTotal = 0;

  constructor(
    private readonly generate: (stats: PlanStats) => Iterable<string>,
    /** nothing to write */
    readonly empty: boolean,
  ) {}

  /**
   * The input as its transactions (COMMIT sections; one per table unless batched), in
   * order, generated anew on each call. Each is atomic; their order keeps every jump
   * pointing at a chain that exists.
   */
  *batches(): Generator<string> {
    const stats = noStats();
    let n = 0;
    for (const b of this.generate(stats)) {
      n++;
      yield b;
    }
    this.counted = stats;
    this.batchTotal = n;
  }

  private stats(): PlanStats {
    if (!this.counted) for (const _ of this.batches());
    return this.counted!;
  }

  get chainsWritten(): number {
    return this.stats().chainsWritten;
  }
  get rulesWritten(): number {
    return this.stats().rulesWritten;
  }
  get rulesWrittenByTable(): Readonly<Record<TableName, number>> {
    return this.stats().rulesWrittenByTable;
  }
  get chainsDeleted(): number {
    return this.stats().chainsDeleted;
  }
  get jumpsChanged(): number {
    return this.stats().jumpsChanged;
  }
  get batchCount(): number {
    this.stats();
    return this.batchTotal;
  }

  /** The whole input as one string (dry runs, error reports, tests); "" when empty. */
  get text(): string {
    return [...this.batches()].join('');
  }
}

/** Collects sections into batches; `take()` hands over the finished batches. */
class PlanWriter {
  private current: Section[] = [];
  private parts: Section[][] = [];
  readonly stats = noStats();

  /** One table's section: flush/create `write` chains with their blocks, delete `deletes`. */
  table(name: string, write: Iterable<readonly [string, string]>, deletes: readonly string[], jumpOps: readonly string[]): void {
    const declare: string[] = [];
    const blocks: string[] = [];
    for (const [chain, b] of write) {
      declare.push(chain);
      this.stats.chainsWritten++;
      if (b) {
        blocks.push(b);
        const n = countLines(b);
        this.stats.rulesWritten += n;
        if (name === 'filter' || name === 'nat') this.stats.rulesWrittenByTable[name] += n;
      }
    }
    if (declare.length === 0 && deletes.length === 0 && jumpOps.length === 0) return;
    this.stats.chainsDeleted += deletes.length;
    this.stats.jumpsChanged += jumpOps.length;
    // a deleted chain is flushed (declared) in the same transaction first
    this.current.push({ table: name, declare: deletes.length ? [...declare, ...deletes] : declare, jumpOps, blocks, deletes });
  }

  /** Flushing (declaring) stale chains without deleting them: first step of a batched delete. */
  flushOnly(name: string, chains: readonly string[]): void {
    if (chains.length) this.current.push({ table: name, declare: chains, jumpOps: [], blocks: [], deletes: [] });
  }

  /** Deleting chains already flushed by an earlier batch. */
  deleteOnly(name: string, chains: readonly string[]): void {
    if (chains.length === 0) return;
    this.stats.chainsDeleted += chains.length;
    this.current.push({ table: name, declare: [], jumpOps: [], blocks: [], deletes: chains });
  }

  /** Ends the current batch: what follows goes to a separate restore. */
  cut(): void {
    if (this.current.length) this.parts.push(this.current);
    this.current = [];
  }

  /** The finished batches' text, each once. */
  *take(): Generator<string> {
    this.cut();
    const parts = this.parts;
    this.parts = [];
    for (const p of parts) yield partText(p);
  }

  /** A plan of what was written (kept as references; text generated on each read). */
  plan(): RestorePlan {
    this.cut();
    const parts = this.parts;
    const stats = this.stats;
    return new RestorePlan(function* (out) {
      Object.assign(out, { ...stats, rulesWrittenByTable: { ...stats.rulesWrittenByTable } });
      for (const p of parts) yield partText(p);
    }, parts.length === 0);
  }
}

/**
 * iptables-nft-restore (1.8.9, measured on this machine) slows down superlinearly with the
 * size of ONE transaction (a *table ... COMMIT section): 1k services x 10 endpoints take
 * ~6 s, 2k ~34 s, 4k ~300 s, for kube-proxy's layout and kpx's alike. The same rules cut
 * into transactions of a few thousand lines, in one process, take ~1 s for 1k and ~2 s
 * for 2k. So on the nft backend a full sync is cut into transactions of maxLines, in
 * three steps: (1) the chains of the name set the kernel is not serving from (and fixed
 * chains it lacks), leaves first, so a rule is only written after the chains it jumps to;
 * (2) one transaction per table that rewrites the fixed chains in place and sets the
 * jumps from the built-in chains: the switch; (3) the old chains, flushed then deleted.
 * A failure in (1) or (2) leaves the table serving what it served before; one in (3)
 * leaves unreachable chains the next full sync deletes. Legacy rewrites the whole table
 * on each commit, so it keeps one transaction per table, and so do full syncs of at most
 * batchAbove lines (atomic, at a cost that is still small). A batched plan is generated
 * while it is written: only one batch exists as text.
 */
export function planFull(
  desired: IptablesRuleset,
  kernel: Record<TableName, KernelTableView>,
  maxLines = Infinity,
  batchAbove = 0,
  unchanged?: Unchanged,
): RestorePlan {
  const wanted = (table: TableName): Iterable<readonly [string, string]> => {
    const skip = unchanged?.[table];
    const all = desired.leavesFirst ? desired.chains(table) : leavesFirst(desired.chains(table));
    return skip?.size ? filterChains(all, skip) : all;
  };
  // Small enough: one transaction per table, so a failure rolls everything back.
  if (maxLines !== Infinity && batchAbove > 0) {
    let total = 0;
    count: for (const table of TABLES) {
      for (const [, b] of desired.chains(table)) if ((total += countLines(b) + 1) > batchAbove) break count;
    }
    if (total <= batchAbove) maxLines = Infinity;
  }
  const stale = {} as Record<TableName, string[]>;
  const jumpOps = {} as Record<TableName, string[]>;
  for (const table of TABLES) {
    stale[table] = [];
    if (kernel[table].chains.size) {
      const names = new Set<string>();
      for (const [n] of desired.chains(table)) names.add(n);
      stale[table] = [...kernel[table].chains].filter((c) => !names.has(c)).sort();
    }
    jumpOps[table] = builtinJumpOps(desired, kernel[table], table);
  }
  if (maxLines === Infinity) {
    const w = new PlanWriter();
    for (const table of TABLES) w.table(table, wanted(table), stale[table], jumpOps[table]);
    return w.plan();
  }
  const limit = maxLines;
  const inPlace = desired.inPlace ?? (() => true);
  // Does the table serve from the name set being written? Then every chain it has serves
  // (a rewrite in place: only the changed ones are written, all in step 2); otherwise
  // only the fixed chains do.
  const servingSet = (t: TableName) => !desired.generation || desired.generation[t] === (kernel[t].generation ?? 0);
  return new RestorePlan(function* (stats) {
    const w = new PlanWriter();
    // 1. In batches: every chain the kernel does not have, and every chain of the name set
    //    the kernel is not serving from. Nothing serving changes: none of these is
    //    reachable until step 2.
    const rewrite = {} as Record<TableName, Array<readonly [string, string]>>;
    let lines = 0;
    for (const table of TABLES) {
      rewrite[table] = [];
      const serving = servingSet(table);
      let group: Array<readonly [string, string]> = [];
      for (const entry of wanted(table)) {
        if ((serving || inPlace(entry[0])) && kernel[table].chains.has(entry[0])) {
          rewrite[table].push(entry);
          continue;
        }
        const n = entry[1] ? countLines(entry[1]) + 1 : 1;
        if (lines > 0 && lines + n > limit) {
          w.table(table, group, [], []);
          group = [];
          yield* w.take();
          lines = 0;
        }
        group.push(entry);
        lines += n;
      }
      w.table(table, group, [], []);
    }
    yield* w.take();
    // 2. One transaction per table (filter first, nat last): the serving chains that
    //    change (the fixed chains, roots of the trees; in a rewrite in place, every changed
    //    chain) and the jumps from the built-in chains. This is the switch; if it fails,
    //    the table serves what it served before.
    for (const table of TABLES) w.table(table, rewrite[table], [], jumpOps[table]);
    yield* w.take();
    // 3. In batches: what nothing refers to any more (the old name set, stale chains).
    removeInBatches(w, TABLES.map((t) => [t, stale[t]] as const), limit);
    yield* w.take();
    Object.assign(stats, w.stats);
  }, false);
}

function* filterChains(all: Iterable<readonly [string, string]>, skip: ReadonlySet<string>): Generator<readonly [string, string]> {
  for (const e of all) if (!skip.has(e[0])) yield e;
}

/** Flushes every chain (so none references another), then deletes them, in batches. */
function removeInBatches(w: PlanWriter, byTable: Iterable<readonly [string, readonly string[]]>, maxLines: number): void {
  const tables = [...byTable];
  for (const phase of ['flush', 'delete'] as const) {
    for (const [table, chains] of tables) {
      for (let i = 0; i < chains.length; i += maxLines) {
        w.cut();
        const part = chains.slice(i, i + maxLines);
        if (phase === 'flush') w.flushOnly(table, part);
        else w.deleteOnly(table, part);
      }
    }
  }
}

/** One table's jumps from built-in chains, grouped by chain, in order. */
export function jumpsByChain(jumps: readonly BuiltinJump[], table: TableName): Map<string, string[]> {
  const byChain = new Map<string, string[]>();
  for (const j of jumps) {
    if (j.table !== table) continue;
    let l = byChain.get(j.chain);
    if (!l) byChain.set(j.chain, (l = []));
    l.push(j.rule);
  }
  return byChain;
}

/** -D/-I operations that make kpx's jumps the top rules of each built-in chain, in order. */
function builtinJumpOps(desired: IptablesRuleset, view: KernelTableView, table: TableName): string[] {
  const ops: string[] = [];
  const byChain = jumpsByChain(desired.jumps, table);
  const builtins = new Set([...byChain.keys(), ...view.jumps.keys()]);
  for (const chain of [...builtins].sort()) {
    const wantJumps = byChain.get(chain) ?? [];
    const have = view.jumps.get(chain) ?? [];
    if (sameRules(have, wantJumps)) continue;
    for (const r of have) ops.push(`-D ${chain} ${r}`);
    for (let i = wantJumps.length - 1; i >= 0; i--) ops.push(`-I ${chain} 1 ${wantJumps[i]}`);
  }
  return ops;
}

/** Chains in an order where every chain comes after the chains its rules jump to. */
export function leavesFirst(chains: Iterable<readonly [string, string]>): Array<readonly [string, string]> {
  const byName = new Map(chains);
  const done = new Set<string>();
  const out: Array<readonly [string, string]> = [];
  for (const root of byName.keys()) {
    if (done.has(root)) continue;
    // iterative post-order DFS: chains can be deep (dispatch trees), recursion is avoided
    const stack: Array<{ name: string; targets: string[] | null }> = [{ name: root, targets: null }];
    done.add(root);
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      if (top.targets === null) {
        top.targets = [];
        for (const t of jumpTargets(byName.get(top.name) ?? '')) top.targets.push(t);
      }
      const next = top.targets.pop();
      if (next === undefined) {
        stack.pop();
        out.push([top.name, byName.get(top.name)!]);
      } else if (byName.has(next) && !done.has(next)) {
        done.add(next);
        stack.push({ name: next, targets: null });
      }
    }
  }
  return out;
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

/**
 * Restore input that removes everything kpx owns in the given saved tables: jumps from
 * built-in chains first, then the chains (flushed, then deleted), in batches of maxLines
 * on nft for the same reason as planFull.
 */
export function planCleanup(saved: SavedTables, ownsChain: (name: string) => boolean = isKpxChain, maxLines = Infinity): RestorePlan {
  const w = new PlanWriter();
  const owned = new Map<string, string[]>();
  for (const [table, chains] of saved) {
    const jumpOps: string[] = [];
    const deletes: string[] = [];
    for (const [name, chain] of chains) {
      if (ownsChain(name)) deletes.push(name);
      else if (BUILTIN_CHAINS.has(name)) {
        for (const r of chain.rules) if (ownsChain(ruleTarget(r) ?? '')) jumpOps.push(`-D ${name} ${r}`);
      }
    }
    deletes.sort();
    if (maxLines === Infinity) w.table(table, [], deletes, jumpOps);
    else {
      w.table(table, [], [], jumpOps);
      owned.set(table, deletes);
    }
  }
  removeInBatches(w, owned, maxLines);
  return w.plan();
}
