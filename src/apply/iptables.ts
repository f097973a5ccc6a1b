// The thin iptables applier: one iptables-restore --noflush per family and sync, so each
// table changes atomically. It remembers what it programmed, so a partial sync writes
// only what changed, and it reads the kernel back only when it cannot trust that memory
// (start, after a failure, after an external flush): iptables-save is expensive at scale.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import {
  jumpsByChain,
  kernelView,
  compareWithKernel,
  planFull,
  planPartial,
  type KernelTableView,
  type RestorePlan,
} from '../render/iptables/restore.js';
import { parseSave, type SavedChain } from '../iptables/save.js';
import { TABLES, type BuiltinJump, type IptablesRuleset, type RenderResult, type TableName } from '../render/iptables/ruleset.js';
import { CHAIN, type Generation } from '../render/iptables/names.js';
import { binaries, type IptablesBackend } from './backend.js';
import type { CommandRunner } from './exec.js';

export const FULL_SYNC_BATCH_LINES = 4000;
/** Full syncs up to this size stay one atomic transaction per table (~600 services x 10 endpoints). */
export const BATCH_ABOVE_LINES = 20_000;

export class RestoreError extends Error {
  constructor(
    readonly family: IPFamily,
    readonly stderr: string,
    readonly line: number | undefined,
    readonly offending: string | undefined,
  ) {
    super(
      `iptables-restore (${family}) failed: ${restoreReason(stderr)}${line !== undefined ? ` at line ${line}: ${offending ?? '?'}` : ''}`,
    );
  }
}

/**
 * What iptables-restore said went wrong, without its banner and usage hints:
 * "iptables-nft-restore v1.8.9 (nf_tables): \nline 38: RULE_INSERT failed (Too many
 * links): rule in chain OUTPUT" gives "line 38: RULE_INSERT failed (Too many links): ...".
 */
export function restoreReason(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^\S*tables\S*(?:-restore|-save)? v[\d.]+ \([^)]*\):\s*/, '').trim())
    .filter((l) => l && !l.startsWith('Try `') && !/^Error occurred at line: \d+$/.test(l));
  if (!lines.length) return 'unknown error';
  // nft reports a refused commit once per rule of the transaction: the first few say it all
  return lines.length > 3 ? `${lines.slice(0, 3).join('; ')}; and ${lines.length - 3} more lines like these` : lines.join('; ');
}


export interface ApplyResult {
  readonly full: boolean;
  readonly plan: RestorePlan;
}

/** What plan() decided: a plan, or that the other name set must be rendered first. */
export type Planned = ApplyResult | { readonly full: true; readonly switchNeeded: number };

/**
 * A full sync rewrites changed serving chains in place, in one transaction, up to this many
 * lines; beyond, it writes the other name set and switches (see planFull).
 */
export const IN_PLACE_LINES = 4000;

/** A plan of rules without a second name set (plan() never asks them to switch). */
export function fixedPlan(p: Planned): ApplyResult {
  if ('switchNeeded' in p) throw new Error('rules with a single name set cannot switch to another');
  return p;
}

export function otherGeneration(g: Record<TableName, Generation>): Record<TableName, Generation> {
  return { nat: g.nat === 0 ? 1 : 0, filter: g.filter === 0 ? 1 : 0 };
}

export class IptablesApplier {
  /**
   * The kernel holds exactly what the renderer had at the last successful apply. While
   * true, partial syncs apply the renderer's delta and nothing is read back; a failure or
   * an external flush makes it false, and the next sync reads the kernel and writes all.
   */
  private trusted = false;
  /** kpx's jumps in built-in chains as last programmed */
  private programmedJumps: readonly BuiltinJump[] = [];
  /** the nat table as last read from the kernel (until taken), for conntrack cleanup */
  private kernelNat: Map<string, SavedChain> | null = null;
  /** the name set each table serves from, as last programmed */
  private programmedGeneration: Record<TableName, Generation> | null = null;
  /** the kernel as read by fullSyncGeneration(), for the plans of the same sync */
  private kernelRead: Record<TableName, KernelTableView> | null = null;

  constructor(
    readonly family: IPFamily,
    readonly backend: IptablesBackend,
    private readonly runner: CommandRunner,
    private readonly log: Logger,
  ) {}

  /** Full syncs on nft are cut into transactions (COMMITs) of about this many lines (see planFull). */
  get batchLines(): number {
    return this.backend === 'nft' ? FULL_SYNC_BATCH_LINES : Infinity;
  }

  get bins(): ReturnType<typeof binaries> {
    return binaries(this.family, this.backend);
  }

  /** Forget what was programmed: the next apply reads the kernel and writes everything. */
  invalidate(): void {
    this.trusted = false;
  }

  get isTrusted(): boolean {
    return this.trusted;
  }

  /**
   * Plans without touching anything (also for --dry-run): partial (the render's delta)
   * unless `full` or the programmed state is unknown. A full plan that would rewrite the
   * serving chains in place and finds more of them changed than one transaction should
   * carry asks for the other name set instead (`switchNeeded`).
   */
  async plan(desired: IptablesRuleset, render: RenderResult, full: boolean): Promise<Planned> {
    if (!full && render.kind === 'delta' && this.trusted) return { full: false, plan: planPartial(render.delta) };
    if (this.trusted && render.kind === 'full' && render.previous) {
      return { full: true, plan: planFull(desired, this.viewFromMemory(render.previous), this.batchLines, BATCH_ABOVE_LINES) };
    }
    const kernel = (this.kernelRead ??= await this.readKernel());
    const { unchanged, changedLines, totalLines } = compareWithKernel(desired, kernel);
    const inPlace = TABLES.some((t) => kernel[t].chains.size > 0 && desired.generation?.[t] === (kernel[t].generation ?? 0));
    // a plan that is cut into transactions must not rewrite more serving chains than one carries
    const batched = this.batchLines !== Infinity && totalLines > BATCH_ABOVE_LINES;
    if (inPlace && batched && changedLines > IN_PLACE_LINES) return { full: true, switchNeeded: changedLines };
    return { full: true, plan: planFull(desired, kernel, this.batchLines, BATCH_ABOVE_LINES, unchanged) };
  }

  /**
   * The name set a full sync starts from in each table. Trusted: the one not serving
   * (the kernel's chains are known by name only, so nothing serving may be rewritten).
   * Otherwise the kernel is read (the plans of the same sync reuse it) and the serving
   * set is tried first: only the chains that changed are written, in one transaction;
   * plan() asks for the other set when too many changed.
   */
  async fullSyncGeneration(): Promise<Record<TableName, Generation>> {
    this.kernelRead = null;
    if (this.trusted && this.programmedGeneration) return otherGeneration(this.programmedGeneration);
    const kernel = (this.kernelRead = await this.readKernel());
    return { nat: kernel.nat.generation ?? 0, filter: kernel.filter.generation ?? 0 };
  }

  /** A full plan as if the kernel had nothing of kpx's (dry runs where the kernel cannot be read). */
  planAgainstEmpty(desired: IptablesRuleset): { full: boolean; plan: RestorePlan } {
    const empty: KernelTableView = { chains: new Set(), jumps: new Map() };
    return { full: true, plan: planFull(desired, { filter: empty, nat: empty }, this.batchLines, BATCH_ABOVE_LINES) };
  }

  /**
   * Plans and applies rules of a single name set (the IPVS mode's fixed chains), which
   * are rewritten in place: there is no other set to switch to.
   */
  async planAndApply(desired: IptablesRuleset, render: RenderResult, full: boolean): Promise<ApplyResult> {
    return this.apply(desired, fixedPlan(await this.plan(desired, render, full)));
  }

  /** Applies a plan from plan() (one process; the plan's batches are separate COMMITs within it). */
  async apply(desired: IptablesRuleset, result: ApplyResult): Promise<ApplyResult> {
    this.kernelRead = null;
    if (!result.plan.empty) await this.restore(result.plan);
    this.trusted = true;
    this.programmedJumps = desired.jumps;
    this.programmedGeneration = desired.generation ?? null;
    return result;
  }

  /** Runs one restore of the plan's batches; on failure forgets the programmed state (next sync is full). */
  async restore(plan: RestorePlan): Promise<void> {
    const r = await this.runner.run(this.bins.restore, ['-w', '5', '--noflush'], { input: plan.batches(), timeoutMs: 600_000 });
    if (r.exitCode === 0) return;
    this.trusted = false;
    const m = /line:? (\d+)/.exec(r.stderr);
    const line = m ? Number(m[1]) : undefined;
    // the input is generated again for the report (it was streamed, not kept)
    const lines = line === undefined ? [] : plan.text.split('\n');
    // nft reports the COMMIT line for some errors; show the last rule before it then.
    let offending = line !== undefined ? lines[line - 1] : undefined;
    if (offending === 'COMMIT' && line !== undefined && line >= 2) offending = `${lines[line - 2]} (before COMMIT)`;
    throw new RestoreError(this.family, r.stderr, line, offending);
  }

  /** A full sync while trusted: the kernel has the previous render's chains and our jumps. */
  private viewFromMemory(previous: Record<TableName, Set<string>>): Record<TableName, KernelTableView> {
    const out = {} as Record<TableName, KernelTableView>;
    for (const t of TABLES) out[t] = { chains: previous[t], jumps: jumpsByChain(this.programmedJumps, t), generation: this.programmedGeneration?.[t] ?? 0 };
    return out;
  }

  async save(table: TableName): Promise<string> {
    const r = await this.runner.run(this.bins.save, ['-t', table], { timeoutMs: 600_000 });
    if (r.exitCode !== 0) throw new Error(`${this.bins.save} -t ${table} failed: ${restoreReason(r.stderr)}`);
    return r.stdout;
  }

  async readKernel(): Promise<Record<TableName, KernelTableView>> {
    const out = {} as Record<TableName, KernelTableView>;
    for (const t of TABLES) {
      const saved = parseSave(await this.save(t));
      if (t === 'nat') this.kernelNat = saved.get('nat') ?? new Map();
      out[t] = kernelView(saved, t);
    }
    return out;
  }

  /** The nat rules found in the kernel by the last full read, once. */
  takeKernelNat(): Map<string, SavedChain> | null {
    const n = this.kernelNat;
    this.kernelNat = null;
    return n;
  }

  /**
   * True when every table still has kpx's canary chain. An external flush (firewalld
   * reload, iptables -F -X) removes it; then the next sync must be full.
   */
  async canaryPresent(): Promise<boolean> {
    for (const t of TABLES) {
      const r = await this.runner.run(this.bins.iptables, ['-w', '5', '-t', t, '-S', CHAIN.canary]);
      if (r.exitCode !== 0) {
        this.log.debug({ family: this.family, table: t, stderr: restoreReason(r.stderr) }, 'canary chain missing');
        return false;
      }
    }
    return true;
  }
}
