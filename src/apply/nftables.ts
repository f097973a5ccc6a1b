// The thin nftables applier: one `nft -f -` transaction per family and sync, so kpx's table
// changes atomically. It remembers what it programmed (a hash per chain and set, every
// element), so a partial sync writes only the chains and elements that changed and never
// reads the kernel back. It reads the kernel only when it cannot trust that memory: at
// start and after a failed transaction.
//
// The table records its own state: the chain `kpx-state` holds one rule whose comment is a
// digest of everything else kpx wrote (an XOR of per-chain, per-set and per-element hashes,
// kept up to date by every transaction in the same transaction). Reading it costs one
// `nft -j list chain` (tens of ms at any size), where listing the rules of a large table is
// very slow in nft 1.0.6 (19 s at 5,000 services x 10 endpoints, 72 s at 10,000: it grows
// with the square of the size). At start:
// - digest == the desired state's: the kernel already holds it; nothing is written (when
//   kpx-state counts retired chains waiting for deletion, chain and set names are listed
//   once to find them);
// - digest == what this process last programmed (after a failed transaction, which the
//   kernel rolled back): the memory is still right; the next transaction is a diff;
// - anything else (no table, another kpx version, a table edited by hand): the table is
//   deleted and re-created in ONE transaction (`add table; delete table; add table; ...`),
//   so nothing is ever half-built.
//
// Chains that are no longer used are flushed in the transaction that stops using them, and
// deleted later (kube-proxy does the same: before kernel 6.2 a chain stays "in use" for a
// moment after the last map element pointing to it is deleted). Deleting (elements, chains,
// sets) makes nft 1.0.6 read every chain of the table first (~1 s per 50k chains, see
// src/nftables/format.ts), so stale chains are deleted in a transaction that pays that
// anyway, or once they are older than `staleMaxAgeMs`, or on cleanup().
//
// Measured on this machine (2 shared cores, kernel 6.18, nft 1.0.6), N services x 10
// endpoints (every tenth a NodePort), each in a fresh namespace, by
// the nftables bench (now bench/nftables.ts; "nft floor" = a bare `nft -f` of the same text):
//
//   services  full sync (ONE transaction)  nft floor  partial (1 endpoint)  delete 1 service  restart
//   1,000     0.96 s                       0.94 s     51 ms                 79 ms             0.23 s
//   5,000     5.5 s                        4.9 s      167 ms                0.85 s            0.71 s
//   10,000    10.8 s                       9.9 s      312 ms                3.6 s             3.0 s
//   30,000    41.8 s                       34.9 s     872 ms                29 s              (*)
//   kube-proxy's anonymous vmaps (endpointSelection 'vmap'): 1,000: 1.44 s, 5,000: 61 s.
// The rows above are the old layout (10 endpoint chains per service). Since the policy
// chains DNAT directly (no endpoint chains without affinity, as kube-proxy v1.36), a bare
// `nft -f` of the full sync is 0.34-0.37 s at 1,000 and 2.0 s at 5,000 (was 0.9-1.1 s and
// 4.5 s); kube-proxy's shape (one anonymous numgen map per service) is 0.32-0.35 s at
// 1,000 but 6-11 s at 5,000. Scale run (npm run scale, real apiserver, both proxies in the
// same run, kubeproxy_sync_full_proxy_rules_duration_seconds): 1,000 services kpx 1.13 s
// vs kube-proxy 0.93 s; 5,000: kpx 4.62 s vs kube-proxy 11.56 s. Partial (1 endpoint)
// 136 ms / 150 ms vs kube-proxy 341 ms / 8.39 s.
// (*) 37.6 s before kpx-state counted retired chains (it listed every chain name).
// The full sync is the kernel's and nft's work (the floor); linear with 'rules', quadratic
// with anonymous vmaps (__nft_set_trans_bind walks the transaction for each anonymous set).
// A partial sync is nearly all `nft -f`: any transaction that adds a rule makes kernel 6.18
// validate every chain reachable from the base chains (nft_table_validate), which grows
// with the table whatever writes it. Deletions add nft 1.0.6's read of every chain.
import { hash } from 'node:crypto';
import { release } from 'node:os';
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import { nftFamily, parseListing, Transaction, type BaseChainSpec, type Element, type NftFamily, type SetSpec, setDeclaration } from '../nftables/format.js';
import { CHAIN, chainRank, TABLE } from '../render/nftables/names.js';
import type { NftablesRenderer, NftChainDef, NftDelta, NftRenderResult } from '../render/nftables/ruleset.js';
import type { ApplyStage, CommandRunner } from './exec.js';

const STATE_PREFIX = 'kpx ';

export class NftablesError extends Error {
  constructor(
    readonly family: IPFamily,
    readonly stderr: string,
    readonly statement: string | undefined,
    /**
     * retired chains and sets the failed transaction was to delete: kpx deletes them in a
     * sync's transaction, where kube-proxy runs a cleanup transaction of its own
     */
    readonly staleDeletions = 0,
  ) {
    super(`nft (${family}) failed: ${nftReason(stderr)}${statement ? ` in: ${statement.length > 300 ? `${statement.slice(0, 300)}...` : statement}` : ''}`);
  }
}

/** nft's error lines without the echo of the input and the caret lines. */
export function nftReason(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && /Error:/.test(l))
    .map((l) => l.replace(/^\/dev\/stdin:/, 'line '));
  return lines.length ? lines.join('; ') : stderr.trim() || 'unknown error';
}

export interface NftApplyReport {
  readonly family: IPFamily;
  /** planned from a full render or from reading the kernel */
  readonly full: boolean;
  /** the table was deleted and re-created in this transaction */
  readonly recreated: boolean;
  /** statements written (0: nothing was run) */
  readonly statements: number;
  /** statements that make nft read every chain first (deletions) */
  readonly slowStatements: number;
  readonly chainsWritten: number;
  /** chains no longer used, flushed now and deleted later */
  readonly chainsRetired: number;
  readonly chainsDeleted: number;
  readonly setsAdded: number;
  readonly setsDeleted: number;
  readonly elementsAdded: number;
  readonly elementsRemoved: number;
  /** the transaction as written ('' when nothing was run) */
  readonly text: string;
}

interface Programmed {
  readonly chains: Map<string, bigint>;
  readonly sets: Map<string, { readonly kind: 'set' | 'map'; readonly hash: bigint }>;
  /** set -> key -> value ('' in a set) */
  readonly elements: Map<string, Map<string, string>>;
  digest: bigint;
  stateChain: boolean;
}

interface Stale {
  readonly kind: 'chain' | 'set' | 'map';
  readonly since: number;
}

const h64 = (text: string): bigint => BigInt(`0x${hash('sha1', text, 'hex').slice(0, 16)}`);
const chainHash = (c: NftChainDef): bigint =>
  h64(`C\0${c.name}\0${c.base ? `${c.base.type} ${c.base.hook} ${c.base.priority}` : ''}\0${c.rules.join('\n')}`);
const setHash = (s: SetSpec): bigint => h64(`S\0${s.kind}\0${s.name}\0${setDeclaration(s)}`);
const elementHash = (set: string, key: string, value: string): bigint => h64(`E\0${set}\0${key}\0${value}`);

/** What a renderer wants, hashed: the applier's view of a desired state. */
interface Desired {
  readonly chains: Map<string, { readonly def: NftChainDef; readonly hash: bigint }>;
  readonly sets: Map<string, { readonly spec: SetSpec; readonly hash: bigint }>;
  readonly elements: Map<string, Map<string, string>>;
  readonly digest: bigint;
}

function desiredOf(r: NftablesRenderer): Desired {
  let digest = 0n;
  const chains = new Map<string, { def: NftChainDef; hash: bigint }>();
  for (const def of r.chains()) {
    const hsh = chainHash(def);
    chains.set(def.name, { def, hash: hsh });
    digest ^= hsh;
  }
  const sets = new Map<string, { spec: SetSpec; hash: bigint }>();
  for (const spec of r.sets()) {
    const hsh = setHash(spec);
    sets.set(spec.name, { spec, hash: hsh });
    digest ^= hsh;
  }
  const elements = new Map<string, Map<string, string>>();
  for (const [set, key, value] of r.elements()) {
    let m = elements.get(set);
    if (!m) elements.set(set, (m = new Map<string, string>()));
    m.set(key, value ?? '');
    digest ^= elementHash(set, key, value ?? '');
  }
  return { chains, sets, elements, digest };
}

const toHex = (d: bigint): string => d.toString(16).padStart(16, '0');

export interface NftablesApplierOptions {
  /** a retired chain or set is deleted no sooner than this (default: 0 on kernel >= 6.2, else 1000) */
  readonly staleDelayMs?: number;
  /** and no later than this, even in a transaction that would otherwise need no deletion (30 s) */
  readonly staleMaxAgeMs?: number;
  readonly now?: () => number;
}

/** Kernels before 6.2 release a chain a moment after the last map element pointing to it goes. */
export function defaultStaleDelay(kernelRelease = release()): number {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  if (!m) return 1000;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > 6 || (maj === 6 && min >= 2) ? 0 : 1000;
}

export class NftablesApplier {
  private memory: Programmed | null = null;
  private trusted = false;
  private readonly stale = new Map<string, Stale>();
  private readonly fam: NftFamily;
  private readonly staleDelayMs: number;
  private readonly staleMaxAgeMs: number;
  private readonly now: () => number;

  constructor(
    readonly family: IPFamily,
    private readonly runner: CommandRunner,
    private readonly log: Logger,
    opts: NftablesApplierOptions = {},
  ) {
    this.fam = nftFamily(family);
    this.staleDelayMs = opts.staleDelayMs ?? defaultStaleDelay();
    this.staleMaxAgeMs = opts.staleMaxAgeMs ?? 30_000;
    this.now = opts.now ?? Date.now;
  }

  get isTrusted(): boolean {
    return this.trusted;
  }

  /** The digest of what this applier last programmed (null before its first sync). */
  get digest(): bigint | null {
    return this.memory?.digest ?? null;
  }

  /** Chains and sets retired and not yet deleted. */
  get staleCount(): number {
    return this.stale.size;
  }

  /** Forget that the kernel is known: the next apply reads it first. */
  invalidate(): void {
    this.trusted = false;
  }

  /**
   * Applies a render: its delta when the kernel is known and the render was partial,
   * otherwise everything (diffed against memory, or against what the kernel says).
   * `stage` is told which part (read, plan, apply) runs from then on.
   */
  async apply(r: NftablesRenderer, result: NftRenderResult, opts: { full?: boolean; stage?: (s: ApplyStage) => void } = {}): Promise<NftApplyReport> {
    const stage = opts.stage ?? (() => {});
    if (this.trusted && this.memory && result.kind === 'delta' && !opts.full) {
      stage('plan');
      const plan = this.planPartial(r, result.delta, this.memory);
      stage('apply');
      return this.run(plan, false);
    }
    // nft reads kpx-state while the desired state is written out and hashed (each takes
    // tens of ms on a first sync)
    stage('reading the kernel');
    const reading = this.trusted ? null : this.readState();
    reading?.catch(() => {}); // awaited below; this only keeps a throw in desiredOf from leaving it unhandled
    stage('plan');
    const desired = desiredOf(r);
    if (reading) {
      stage('reading the kernel');
      const state = await reading;
      stage('plan');
      const digest = state?.digest ?? null;
      if (this.memory && digest === this.memory.digest) {
        this.trusted = true;
      } else if (digest === desired.digest) {
        stage('apply');
        await this.adopt(desired, state!.stale);
        return this.report(true, false, null);
      } else {
        const plan = this.planRecreate(desired);
        stage('apply');
        return this.run(plan, true, desired);
      }
    }
    const plan = this.planFull(r, desired, this.memory!);
    stage('apply');
    return this.run(plan, true);
  }

  /** The whole render as one transaction that builds the table from nothing (kpx render). */
  textFromEmpty(r: NftablesRenderer): string {
    return this.planRecreate(desiredOf(r), false).tx.text;
  }

  /**
   * What apply() would send this kernel for a full sync, without sending it (`run --once
   * --dry-run`): nothing when kpx-state says the kernel holds this ruleset, else the
   * transaction that replaces the table. Reads the kernel; changes nothing.
   */
  async textAgainstKernel(r: NftablesRenderer): Promise<string> {
    const desired = desiredOf(r);
    const state = await this.readState();
    if (state?.digest === desired.digest) return '';
    return this.planRecreate(desired).tx.text;
  }

  /** Deletes retired chains and sets (all of them with `force`, else those old enough). */
  async cleanup(opts: { force?: boolean } = {}): Promise<NftApplyReport> {
    if (!this.trusted || !this.memory) return this.report(false, false, null);
    const tx = new Transaction(this.fam, TABLE);
    const c = { chainsDeleted: 0, setsDeleted: 0 };
    this.deleteStale(tx, opts.force ? Infinity : this.now(), c);
    if (tx.empty) return this.report(false, false, null);
    tx.flushChain(CHAIN.state).addChain(CHAIN.state, [stateRule(this.memory.digest, this.stale.size - this.deletedByCleanup.length)]);
    return this.run({ tx, counts: { ...ZERO, ...c }, commit: () => this.commitStale() }, false);
  }

  /** The digest in the kernel's kpx-state chain (null: no table, no state, unreadable). */
  async readDigest(): Promise<bigint | null> {
    return (await this.readState())?.digest ?? null;
  }

  /** kpx-state: the digest, and how many retired chains and sets wait to be deleted. */
  async readState(): Promise<{ digest: bigint; stale: number } | null> {
    const r = await this.runner.run('nft', ['-j', 'list', 'chain', this.fam, TABLE, CHAIN.state]);
    if (r.exitCode !== 0) {
      if (!/No such file or directory/.test(r.stderr)) this.log.warn({ family: this.family, err: nftReason(r.stderr) }, 'cannot read kpx-state');
      return null;
    }
    try {
      const t = parseListing(r.stdout).get(`${this.fam} ${TABLE}`);
      const m = /^kpx ([0-9a-f]{16}) retired=(\d+)$/.exec(t?.chains.get(CHAIN.state)?.rules[0]?.comment ?? '');
      return m ? { digest: BigInt(`0x${m[1]}`), stale: Number(m[2]) } : null;
    } catch {
      return null;
    }
  }

  /** The kernel holds the desired state: remember it, and retire whatever else is in the table. */
  private async adopt(desired: Desired, retired: number): Promise<void> {
    this.memory = memoryOf(desired, true);
    this.trusted = true;
    this.stale.clear();
    // kpx-state counts the retired chains and sets: list names only when there are some
    if (retired === 0) return;
    const since = this.now() - this.staleMaxAgeMs;
    for (const what of ['chains', 'sets'] as const) {
      const r = await this.runner.run('nft', ['-j', 'list', what, this.fam]);
      if (r.exitCode !== 0) continue;
      const t = parseListing(r.stdout).get(`${this.fam} ${TABLE}`);
      if (what === 'chains') {
        for (const name of t?.chains.keys() ?? []) if (!desired.chains.has(name) && name !== CHAIN.state) this.stale.set(name, { kind: 'chain', since });
      } else {
        for (const [name, s] of t?.sets ?? []) if (!desired.sets.has(name)) this.stale.set(name, { kind: s.spec.kind, since });
      }
    }
    if (this.stale.size) this.log.info({ family: this.family, leftovers: this.stale.size }, 'kpx table holds leftovers; they are deleted with a later transaction');
  }

  private planRecreate(desired: Desired, replace = true): Plan {
    const tx = new Transaction(this.fam, TABLE);
    if (replace) tx.addTable().deleteTable();
    tx.addTable('rules for kpx');
    const counts = { ...ZERO };
    for (const { spec } of desired.sets.values()) {
      tx.addSet(spec);
      counts.setsAdded++;
    }
    for (const { def } of desired.chains.values()) {
      tx.addChain(def.name, def.rules, def.base);
      counts.chainsWritten++;
    }
    for (const [set, els] of desired.elements) {
      const spec = desired.sets.get(set)!.spec;
      const list: Element[] = [];
      for (const [key, value] of els) list.push(value === '' ? { key } : { key, value });
      tx.addSet(spec, list);
      counts.elementsAdded += list.length;
    }
    const memory = memoryOf(desired, true);
    tx.addChain(CHAIN.state, [stateRule(memory.digest, 0)]);
    return {
      tx,
      counts,
      commit: () => {
        this.memory = memory;
        this.stale.clear();
      },
    };
  }

  private planFull(r: NftablesRenderer, desired: Desired, memory: Programmed): Plan {
    const ch = new Changes();
    for (const [name, { spec, hash: hsh }] of desired.sets) {
      const m = memory.sets.get(name);
      if (m && m.hash !== hsh) throw new Error(`set ${name} changed its declaration; kpx never does that`);
      if (!m) ch.addSets.set(name, spec);
    }
    for (const name of memory.sets.keys()) if (!desired.sets.has(name)) ch.removeSets.add(name);
    for (const [name, { def, hash: hsh }] of desired.chains) if (memory.chains.get(name) !== hsh) ch.writeChains.set(name, { def, hash: hsh });
    for (const name of memory.chains.keys()) if (!desired.chains.has(name)) ch.removeChains.add(name);
    for (const set of new Set([...memory.elements.keys(), ...desired.elements.keys()])) {
      const have = memory.elements.get(set) ?? new Map<string, string>();
      const want = desired.elements.get(set) ?? new Map<string, string>();
      for (const [k, v] of have) if (want.get(k) !== v) ch.remove(set, k);
      for (const [k, v] of want) if (have.get(k) !== v) ch.add(set, k, v);
    }
    return this.planChanges(r, ch, memory);
  }

  private planPartial(r: NftablesRenderer, delta: NftDelta, memory: Programmed): Plan {
    const ch = new Changes();
    for (const [name, spec] of delta.addSets) if (!memory.sets.has(name)) ch.addSets.set(name, spec);
    for (const name of delta.removeSets) if (memory.sets.has(name)) ch.removeSets.add(name);
    for (const [name, def] of delta.writeChains) {
      const hsh = chainHash(def);
      if (memory.chains.get(name) !== hsh) ch.writeChains.set(name, { def, hash: hsh });
    }
    for (const name of delta.removeChains) if (memory.chains.has(name)) ch.removeChains.add(name);
    for (const [set, keys] of delta.removeElements) for (const k of keys) if (memory.elements.get(set)?.has(k)) ch.remove(set, k);
    for (const [set, els] of delta.addElements) addElementChanges(ch, set, els, memory.elements.get(set));
    return this.planChanges(r, ch, memory);
  }

  /** The transaction for a set of changes, and how memory looks once it is committed. */
  private planChanges(r: NftablesRenderer, ch: Changes, memory: Programmed): Plan {
    const tx = new Transaction(this.fam, TABLE);
    const counts = { ...ZERO };
    const now = this.now();
    const unstale: string[] = [];
    const writes = this.writeChanges(tx, r, ch, memory, counts, unstale);
    const { retiring, deleted } = this.retire(tx, ch, memory, now, unstale, counts);

    // The digest after commit; memory itself is changed in place once nft succeeded (a
    // copy would cost O(table) per partial sync).
    const { digest, setHashes } = digestAfter(memory, ch, writes);
    const stateChain = memory.stateChain;
    if (!tx.empty) {
      const retired = this.stale.size - unstale.length + retiring.size - deleted.length;
      if (stateChain) tx.flushChain(CHAIN.state);
      tx.addChain(CHAIN.state, [stateRule(digest, retired)]);
    }
    return {
      tx,
      counts,
      commit: () => {
        updateMemory(memory, ch, writes, setHashes);
        memory.digest = digest;
        if (!tx.empty) memory.stateChain = true;
        this.memory = memory;
        for (const n of unstale) this.stale.delete(n);
        for (const [n, st] of retiring) this.stale.set(n, st);
        for (const n of deleted) this.stale.delete(n);
      },
    };
  }

  /**
   * Writes the changes into the transaction (sets, chains in rank order, elements, chain
   * flushes) and counts them; names of retired entries wanted again go to `unstale`.
   * Returns the chain writes in the order written.
   */
  private writeChanges(tx: Transaction, r: NftablesRenderer, ch: Changes, memory: Programmed, counts: typeof ZERO, unstale: string[]): ChainWrite[] {
    for (const [name, spec] of ch.addSets) {
      if (this.stale.has(name)) unstale.push(name);
      else tx.addSet(spec);
      counts.setsAdded++;
    }
    const writes = [...ch.writeChains.values()].sort((a, b) => chainRank(a.def.name) - chainRank(b.def.name));
    for (const { def } of writes) {
      if (memory.chains.has(def.name)) tx.flushChain(def.name).addChain(def.name, def.rules);
      else if (this.stale.has(def.name)) {
        // retired (flushed) and wanted again before it was deleted
        unstale.push(def.name);
        tx.addChain(def.name, def.rules);
      } else tx.addChain(def.name, def.rules, def.base);
      counts.chainsWritten++;
    }
    for (const [set, keys] of ch.removeElements) {
      tx.deleteElements(set, [...keys]);
      counts.elementsRemoved += keys.size;
    }
    for (const [set, els] of ch.addElements) {
      const spec = r.setSpec(set);
      if (!spec) throw new Error(`elements for ${set}, which is not a fixed map or set`);
      tx.addSet(spec, [...els].map(([key, value]) => (value === '' ? { key } : { key, value })));
      counts.elementsAdded += els.size;
    }
    for (const name of ch.removeChains) {
      tx.flushChain(name);
      counts.chainsRetired++;
    }
    return writes;
  }

  /**
   * The chains and sets the changes retire, and the deletions of retired ones added to the
   * transaction: retired chains and sets go in a transaction that deletes something anyway
   * (nft reads every chain for it already), or once the oldest has waited staleMaxAgeMs.
   */
  private retire(
    tx: Transaction,
    ch: Changes,
    memory: Programmed,
    now: number,
    unstale: readonly string[],
    counts: typeof ZERO,
  ): { retiring: Map<string, Stale>; deleted: string[] } {
    const retiring = new Map<string, Stale>();
    for (const name of ch.removeChains) retiring.set(name, { kind: 'chain', since: now });
    for (const name of ch.removeSets) retiring.set(name, { kind: memory.sets.get(name)!.kind, since: now });
    let oldest = Infinity;
    for (const s of this.stale.values()) oldest = Math.min(oldest, s.since);
    const deleting = { chainsDeleted: 0, setsDeleted: 0 };
    let deleted: string[] = [];
    if (tx.slowStatements > 0 || now - oldest >= this.staleMaxAgeMs) {
      const pending = new Map([...this.stale].filter(([n]) => !unstale.includes(n)));
      for (const [n, s] of retiring) pending.set(n, s);
      deleted = this.deleteFrom(tx, pending, now, deleting);
    }
    Object.assign(counts, deleting);
    return { retiring, deleted };
  }

  /** Adds deletions of the stale entries old enough; returns their names. */
  private deleteFrom(tx: Transaction, pending: ReadonlyMap<string, Stale>, now: number, c: { chainsDeleted: number; setsDeleted: number }): string[] {
    const out: string[] = [];
    // chains first: a retired chain may still refer to a retired set
    const ordered = [...pending].sort(([, a], [, b]) => (a.kind === 'chain' ? 0 : 1) - (b.kind === 'chain' ? 0 : 1));
    for (const [name, s] of ordered) {
      if (now !== Infinity && now - s.since < this.staleDelayMs) continue;
      if (s.kind === 'chain') {
        tx.deleteChain(name);
        c.chainsDeleted++;
      } else {
        tx.deleteSet({ kind: s.kind, name });
        c.setsDeleted++;
      }
      out.push(name);
    }
    return out;
  }

  private deletedByCleanup: string[] = [];

  private deleteStale(tx: Transaction, now: number, c: { chainsDeleted: number; setsDeleted: number }): void {
    this.deletedByCleanup = this.deleteFrom(tx, this.stale, now, c);
  }

  private commitStale(): void {
    for (const n of this.deletedByCleanup) this.stale.delete(n);
    this.deletedByCleanup = [];
  }

  private async run(plan: Plan, full: boolean, recreated?: Desired): Promise<NftApplyReport> {
    const { tx } = plan;
    if (tx.empty) {
      plan.commit();
      this.trusted = true;
      return this.report(full, false, null);
    }
    const text = tx.text;
    const r = await this.runner.run('nft', ['-f', '-'], { input: text, timeoutMs: 600_000 });
    if (r.exitCode !== 0) {
      this.trusted = false;
      const m = /^\/dev\/stdin:(\d+):/m.exec(r.stderr);
      const statement = m ? text.split('\n')[Number(m[1]) - 1] : undefined;
      throw new NftablesError(this.family, r.stderr, statement, plan.counts.chainsDeleted + plan.counts.setsDeleted);
    }
    plan.commit();
    this.trusted = true;
    return this.report(full, !!recreated, { text, statements: tx.length, slow: tx.slowStatements, ...plan.counts });
  }

  private report(
    full: boolean,
    recreated: boolean,
    w: ({ text: string; statements: number; slow: number } & typeof ZERO) | null,
  ): NftApplyReport {
    const written = w ?? NOTHING_WRITTEN;
    return {
      family: this.family,
      full,
      recreated,
      statements: written.statements,
      slowStatements: written.slow,
      chainsWritten: written.chainsWritten,
      chainsRetired: written.chainsRetired,
      chainsDeleted: written.chainsDeleted,
      setsAdded: written.setsAdded,
      setsDeleted: written.setsDeleted,
      elementsAdded: written.elementsAdded,
      elementsRemoved: written.elementsRemoved,
      text: written.text,
    };
  }
}

const ZERO = { chainsWritten: 0, chainsRetired: 0, chainsDeleted: 0, setsAdded: 0, setsDeleted: 0, elementsAdded: 0, elementsRemoved: 0 };

/** A report's figures when no transaction ran. */
const NOTHING_WRITTEN: { text: string; statements: number; slow: number } & typeof ZERO = { text: '', statements: 0, slow: 0, ...ZERO };

type ChainWrite = { readonly def: NftChainDef; readonly hash: bigint };

/**
 * Adds a delta's elements of one set to the changes: an element that holds another value
 * is removed first; one that holds the same value is left alone (unless it is being removed).
 */
function addElementChanges(ch: Changes, set: string, els: Iterable<readonly [string, string | undefined]>, have: ReadonlyMap<string, string> | undefined): void {
  for (const [k, v] of els) {
    const value = v ?? '';
    const cur = have?.get(k);
    if (cur === value && !ch.removes(set, k)) continue;
    if (cur !== undefined && !ch.removes(set, k)) ch.remove(set, k);
    ch.add(set, k, value);
  }
}

/** The table's digest once the changes are committed, and the hashes of the added sets. */
function digestAfter(memory: Programmed, ch: Changes, writes: readonly ChainWrite[]): { digest: bigint; setHashes: Map<string, bigint> } {
  let digest = memory.digest;
  const setHashes = new Map<string, bigint>();
  for (const [name, spec] of ch.addSets) {
    const hsh = setHash(spec);
    setHashes.set(name, hsh);
    digest ^= hsh;
  }
  for (const name of ch.removeSets) digest ^= memory.sets.get(name)!.hash;
  for (const { def, hash: hsh } of writes) {
    const old = memory.chains.get(def.name);
    if (old !== undefined) digest ^= old;
    digest ^= hsh;
  }
  for (const name of ch.removeChains) digest ^= memory.chains.get(name)!;
  for (const [set, keys] of ch.removeElements) {
    const m = memory.elements.get(set)!;
    for (const k of keys) digest ^= elementHash(set, k, m.get(k)!);
  }
  for (const [set, els] of ch.addElements) for (const [k, v] of els) digest ^= elementHash(set, k, v);
  return { digest, setHashes };
}

/** Memory's chains, sets and elements after a committed transaction of these changes. */
function updateMemory(memory: Programmed, ch: Changes, writes: readonly ChainWrite[], setHashes: ReadonlyMap<string, bigint>): void {
  for (const [name, spec] of ch.addSets) memory.sets.set(name, { kind: spec.kind, hash: setHashes.get(name)! });
  for (const name of ch.removeSets) memory.sets.delete(name);
  for (const { def, hash: hsh } of writes) memory.chains.set(def.name, hsh);
  for (const name of ch.removeChains) memory.chains.delete(name);
  for (const [set, keys] of ch.removeElements) for (const k of keys) memory.elements.get(set)!.delete(k);
  for (const [set, els] of ch.addElements) {
    let m = memory.elements.get(set);
    if (!m) memory.elements.set(set, (m = new Map<string, string>()));
    for (const [k, v] of els) m.set(k, v);
  }
}

interface Plan {
  readonly tx: Transaction;
  readonly counts: typeof ZERO;
  readonly commit: () => void;
}

/**
 * kpx-state's one rule: never reached (nothing jumps to kpx-state); its comment is the
 * record. A counter, not a verdict: adding a rule with a verdict (even `return`) or a nat
 * statement makes the kernel validate every chain reachable from the base chains at commit
 * (~60 ms at 10,000 services), and this rule is rewritten by every transaction; with a
 * counter, a transaction that only changes elements of data sets skips that walk.
 */
const stateRule = (digest: bigint, retired: number): string => `counter comment "${STATE_PREFIX}${toHex(digest)} retired=${retired}"`;

function memoryOf(d: Desired, stateChain: boolean): Programmed {
  return {
    chains: new Map([...d.chains].map(([n, c]) => [n, c.hash])),
    sets: new Map([...d.sets].map(([n, s]) => [n, { kind: s.spec.kind, hash: s.hash }])),
    elements: new Map([...d.elements].map(([s, m]) => [s, new Map(m)])),
    digest: d.digest,
    stateChain,
  };
}

/** Changes to make, grouped the way a transaction writes them. */
class Changes {
  readonly addSets = new Map<string, SetSpec>();
  readonly removeSets = new Set<string>();
  readonly writeChains = new Map<string, { def: NftChainDef; hash: bigint }>();
  readonly removeChains = new Set<string>();
  readonly addElements = new Map<string, Map<string, string>>();
  readonly removeElements = new Map<string, Set<string>>();

  add(set: string, key: string, value: string): void {
    let m = this.addElements.get(set);
    if (!m) this.addElements.set(set, (m = new Map<string, string>()));
    m.set(key, value);
  }

  remove(set: string, key: string): void {
    let s = this.removeElements.get(set);
    if (!s) this.removeElements.set(set, (s = new Set()));
    s.add(key);
  }

  removes(set: string, key: string): boolean {
    return !!this.removeElements.get(set)?.has(key);
  }
}

// ---------------------------------------------------------------------------------------

export class NftablesUnavailable extends Error {}

/** The nft binary and the kernel features kpx's table needs, with a clear error when not. */
export async function checkNftables(runner: CommandRunner): Promise<{ version: string }> {
  const v = await runner.run('nft', ['--version']).catch((err: Error) => ({ exitCode: 127, stdout: '', stderr: err.message }));
  if (v.exitCode !== 0) {
    throw new NftablesUnavailable(`nft is not installed or does not run (${v.stderr.trim() || `exit ${v.exitCode}`}): install nftables (nft 1.0.1 or newer)`);
  }
  const m = /v(\d+)\.(\d+)\.(\d+)/.exec(v.stdout);
  if (!m) throw new NftablesUnavailable(`cannot read nft's version from ${JSON.stringify(v.stdout.trim())}`);
  const [maj, min, patch] = [Number(m[1]), Number(m[2]), Number(m[3])];
  if (maj < 1 || (maj === 1 && min === 0 && patch < 1)) {
    throw new NftablesUnavailable(`nft ${m[0]} is too old: kpx needs nft 1.0.1 or newer (older ones read every table, and can fail on other tables' rules)`);
  }
  const probe = new Transaction('ip', 'kpx-probe');
  probe
    .addTable()
    .addSet({ kind: 'set', name: 'probe-affinity', type: 'ipv4_addr', flags: ['dynamic', 'timeout'], timeout: 10 })
    .addChain('probe-masq', ['mark set mark or 0x4000'])
    .addChain('probe-endpoint', ['ip saddr 198.18.0.1 jump probe-masq', 'update @probe-affinity { ip saddr }', 'meta l4proto tcp dnat to 198.18.0.1:80'])
    .addChain('probe-service', [
      'ip saddr @probe-affinity goto probe-endpoint',
      'numgen random mod 2 0 goto probe-endpoint',
      'numgen random mod 2 vmap { 0 : goto probe-endpoint, 1 : goto probe-endpoint }',
    ])
    .addSet({ kind: 'map', name: 'probe-ips', type: 'ipv4_addr . inet_proto . inet_service', data: 'verdict' }, [{ key: '198.18.0.2 . tcp . 80', value: 'goto probe-service' }])
    .addChain(
      'probe-nat',
      ['ip daddr . meta l4proto . th dport vmap @probe-ips', 'fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap { tcp . 30000 : goto probe-service }'],
      { type: 'nat', hook: 'prerouting', priority: -100 },
    )
    .addChain('probe-post', ['mark and 0x4000 == 0 return', 'masquerade fully-random'], { type: 'nat', hook: 'postrouting', priority: 100 })
    .addChain('probe-filter', ['ct state new ip daddr 198.18.0.3 reject'], { type: 'filter', hook: 'input', priority: -110 });
  const r = await runner.run('nft', ['--check', '-f', '-'], { input: probe.text });
  if (r.exitCode !== 0) {
    if (/syntax error/.test(r.stderr)) throw new Error(`kpx's nftables probe does not parse (a bug in kpx): ${nftReason(r.stderr)}`);
    throw new NftablesUnavailable(
      `the kernel (${release()}) refuses the nf_tables features kpx uses (verdict maps with concatenations, numgen, fib, dynamic sets with timeouts, NAT): ${nftReason(r.stderr)}. kube-proxy's nftables mode needs kernel 5.13 or newer`,
    );
  }
  return { version: m[0].slice(1) };
}

/** Removes kpx's nftables tables (both families); other tables are left alone. Idempotent. */
export async function removeNftablesTables(runner: CommandRunner, log: Logger): Promise<{ removed: NftFamily[] }> {
  const removed: NftFamily[] = [];
  for (const fam of ['ip', 'ip6'] as const) {
    // Delete, and read "absent" from the error: `nft list tables` reads the whole ruleset in
    // nft 1.0.6 (every iptables-nft rule too: 0.7 s at 1,000 services in iptables mode,
    // over a minute at 10,000, after every iptables-mode start), a delete reads nothing.
    const r = await runner.run('nft', ['-f', '-'], { input: new Transaction(fam, TABLE).deleteTable().text }).catch((err: Error) => {
      log.debug({ family: fam, err: err.message }, 'cannot run nft');
      return null;
    });
    if (!r) continue;
    if (r.exitCode === 0) removed.push(fam);
    else if (!/No such file or directory/.test(r.stderr)) throw new Error(`cannot delete table ${fam} ${TABLE}: ${nftReason(r.stderr)}`);
  }
  return { removed };
}

export type { BaseChainSpec };
