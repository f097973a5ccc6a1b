// The thin iptables applier: one iptables-restore --noflush per family and sync, so each
// table changes atomically. It remembers what it programmed, so a partial sync writes
// only what changed, and it reads the kernel back only when it cannot trust that memory
// (start, after a failure, after an external flush): iptables-save is expensive at scale.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import {
  jumpsByChain,
  kernelView,
  parseSave,
  planFull,
  planPartial,
  type KernelTableView,
  type RestorePlan,
  type SavedChain,
} from '../render/iptables/restore.js';
import { TABLES, type BuiltinJump, type IptablesRuleset, type RenderResult, type TableName } from '../render/iptables/ruleset.js';
import { CHAIN } from '../render/iptables/names.js';
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
      `iptables-restore (${family}) failed: ${firstLine(stderr)}${line !== undefined ? ` at line ${line}: ${offending ?? '?'}` : ''}`,
    );
  }
}

function firstLine(s: string): string {
  return s.split('\n').find((l) => l.trim() && !l.startsWith('Try `'))?.trim() ?? 'unknown error';
}

export interface ApplyResult {
  readonly full: boolean;
  readonly plan: RestorePlan;
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

  get bins() {
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
   * unless `full` or the programmed state is unknown.
   */
  async plan(desired: IptablesRuleset, render: RenderResult, full: boolean): Promise<{ full: boolean; plan: RestorePlan }> {
    if (!full && !render.full && this.trusted) return { full: false, plan: planPartial(render.delta) };
    const kernel = this.trusted && render.previous ? this.viewFromMemory(render.previous) : await this.readKernel();
    return { full: true, plan: planFull(desired, kernel, this.batchLines, BATCH_ABOVE_LINES) };
  }

  /** A full plan as if the kernel had nothing of kpx's (dry runs where the kernel cannot be read). */
  planAgainstEmpty(desired: IptablesRuleset): { full: boolean; plan: RestorePlan } {
    const empty: KernelTableView = { chains: new Set(), jumps: new Map() };
    return { full: true, plan: planFull(desired, { filter: empty, nat: empty }, this.batchLines, BATCH_ABOVE_LINES) };
  }

  async apply(desired: IptablesRuleset, render: RenderResult, full: boolean): Promise<ApplyResult> {
    const result = await this.plan(desired, render, full);
    // one process; the plan's batches are separate COMMITs (transactions) within it
    if (!result.plan.empty) await this.restore(result.plan);
    this.trusted = true;
    this.programmedJumps = desired.jumps;
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
    for (const t of TABLES) out[t] = { chains: previous[t], jumps: jumpsByChain(this.programmedJumps, t) };
    return out;
  }

  async save(table: TableName): Promise<string> {
    const r = await this.runner.run(this.bins.save, ['-t', table], { timeoutMs: 600_000 });
    if (r.exitCode !== 0) throw new Error(`${this.bins.save} -t ${table} failed: ${firstLine(r.stderr)}`);
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
        this.log.debug({ family: this.family, table: t, stderr: firstLine(r.stderr) }, 'canary chain missing');
        return false;
      }
    }
    return true;
  }
}
