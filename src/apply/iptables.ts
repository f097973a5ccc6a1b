// The thin iptables applier: one iptables-restore --noflush per family and sync, so each
// table changes atomically. It remembers what it programmed, so a partial sync writes
// only what changed, and it reads the kernel back only when it cannot trust that memory
// (start, after a failure, after an external flush): iptables-save is expensive at scale.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import {
  kernelView,
  parseSave,
  planFull,
  planPartial,
  type KernelTableView,
  type RestorePlan,
  type SavedChain,
} from '../render/iptables/restore.js';
import { TABLES, type IptablesRuleset, type TableName } from '../render/iptables/ruleset.js';
import { CHAIN } from '../render/iptables/names.js';
import { binaries, type IptablesBackend } from './backend.js';
import type { CommandRunner } from './exec.js';

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

type Tables = Record<TableName, ReadonlyMap<string, readonly string[]>>;

export class IptablesApplier {
  /** what kpx last programmed successfully; null = unknown, read the kernel first */
  private programmed: Tables | null = null;
  /** the nat table as last read from the kernel (until taken), for conntrack cleanup */
  private kernelNat: Map<string, SavedChain> | null = null;

  constructor(
    readonly family: IPFamily,
    readonly backend: IptablesBackend,
    private readonly runner: CommandRunner,
    private readonly log: Logger,
  ) {}

  get bins() {
    return binaries(this.family, this.backend);
  }

  /** Forget what was programmed: the next apply reads the kernel and writes everything. */
  invalidate(): void {
    this.programmed = null;
  }

  get trusted(): boolean {
    return this.programmed !== null;
  }

  /** Plans without touching anything (for --dry-run and tests). */
  async plan(desired: IptablesRuleset, full: boolean): Promise<{ full: boolean; plan: RestorePlan }> {
    if (!full && this.programmed) return { full: false, plan: planPartial(this.programmed, desired) };
    const kernel = this.programmed ? this.viewFromMemory(desired) : await this.readKernel();
    return { full: true, plan: planFull(desired, kernel) };
  }

  /** A full plan as if the kernel had nothing of kpx's (dry runs where the kernel cannot be read). */
  planAgainstEmpty(desired: IptablesRuleset): { full: boolean; plan: RestorePlan } {
    const empty: KernelTableView = { chains: new Set(), jumps: new Map() };
    return { full: true, plan: planFull(desired, { filter: empty, nat: empty }) };
  }

  async apply(desired: IptablesRuleset, full: boolean): Promise<ApplyResult> {
    const { full: isFull, plan } = await this.plan(desired, full);
    if (plan.text) await this.restore(plan.text);
    this.programmed = { ...desired.tables };
    return { full: isFull, plan };
  }

  /** Runs one atomic restore; on failure forgets the programmed state (next sync is full). */
  async restore(text: string): Promise<void> {
    const r = await this.runner.run(this.bins.restore, ['-w', '5', '--noflush'], { input: text, timeoutMs: 600_000 });
    if (r.exitCode === 0) return;
    this.programmed = null;
    const m = /line:? (\d+)/.exec(r.stderr);
    const line = m ? Number(m[1]) : undefined;
    const lines = text.split('\n');
    // nft reports the COMMIT line for some errors; show the last rule before it then.
    let offending = line !== undefined ? lines[line - 1] : undefined;
    if (offending === 'COMMIT' && line !== undefined && line >= 2) offending = `${lines[line - 2]} (before COMMIT)`;
    throw new RestoreError(this.family, r.stderr, line, offending);
  }

  /** After a full sync with a trusted memory, stale chains and jumps come from memory. */
  private viewFromMemory(desired: IptablesRuleset): Record<TableName, KernelTableView> {
    const out = {} as Record<TableName, KernelTableView>;
    for (const t of TABLES) {
      const jumps = new Map<string, string[]>();
      for (const j of desired.jumps) {
        if (j.table !== t) continue;
        let l = jumps.get(j.chain);
        if (!l) jumps.set(j.chain, (l = []));
        l.push(j.rule);
      }
      out[t] = { chains: new Set(this.programmed![t].keys()), jumps };
    }
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
