// One driver for every proxy mode: each sync, for each IP family, builds the mode's config
// from this node's facts, decides full or partial, and hands the family's backend one
// step (render, plan, apply). The driver owns what every mode shares: which families to
// sync, the decision to go full (first sync, a failure, a change of the node's facts, an
// external flush), and failures: any failure at any stage is logged once with its cause
// and stage and forces the next sync of that family to be full, so no change taken from
// the model is lost (kube-proxy's deferred needFullSync). What runs outside any family
// (host facts, choosing the families, the cleanup after a good sync) is guarded alike: its
// failure fails the whole sync and forces every family full. A mode is its backends (see
// modes.ts); adding one adds files, not branches here.
import type { KpxConfig } from '../config/config.js';
import type { KpxMode } from '../config/modes.js';
import { changedServices, type ClusterState, type PendingChanges } from '../model/state.js';
import type { ModelView, NodeFacts, ServicePortState } from '../model/types.js';
import type { Logger } from '../util/log.js';
import { isLoopback, type IPFamily } from '../util/ip.js';
import type { ApplyStage, CommandRunner } from '../apply/exec.js';
import type { HostFacts } from '../apply/host.js';
import type { SavedChain } from '../iptables/save.js';

export type ProxyMode = KpxMode;

/** Where in a family's sync a failure happened. */
export type FamilyStage = 'config' | 'render' | ApplyStage;
/** Where outside the families: reading the host's addresses, choosing the families, the cleanup after a good sync. */
export type DriverStage = 'host facts' | 'families' | 'after sync';
/** Where in a sync a failure happened. */
export type SyncStage = DriverStage | FamilyStage;

/** Everything a mode's config is built from (for one family). */
export interface NodeContext {
  readonly config: KpxConfig;
  readonly node: NodeFacts | null;
  readonly host: HostFacts;
  /** the family's ServiceCIDR ranges (only the nftables mode acts on them, as kube-proxy's) */
  readonly serviceCIDRs: readonly string[];
}

/** One sync of one family, as the driver hands it to the family's backend. */
export interface SyncStep<C> {
  readonly view: ModelView;
  readonly config: C;
  /** services changed since the last sync, or everything */
  readonly changed: ReadonlySet<string> | 'all';
  /** start, failure, node facts or flush: the backend must not trust what it programmed */
  readonly full: boolean;
  /** names the stage a failure from here on belongs to */
  stage(stage: FamilyStage): void;
}

/** What every family sync reports, whatever the mode. */
export interface SyncCounts {
  readonly full: boolean;
  readonly renderMs: number;
  readonly applyMs: number;
  readonly servicePorts: number;
  /** service ports whose rules were rendered anew (not reused from the cache) */
  readonly servicePortsRendered: number;
  readonly chainsWritten: number;
  readonly rulesWritten: number;
  readonly rulesWrittenByTable: { readonly filter: number; readonly nat: number };
  readonly chainsDeleted: number;
  readonly ruleCounts: { readonly filter: number; readonly nat: number };
  readonly noLocalEndpoints: { readonly internal: number; readonly external: number };
  /** every service port and its endpoints after this sync */
  ports(): Iterable<ServicePortState>;
  /** the nat rules found in the kernel when this (full) sync read it */
  readonly kernelNatBefore?: ReadonlyMap<string, SavedChain>;
}

export const NO_COUNTS: Omit<SyncCounts, 'full' | 'ports'> = {
  renderMs: 0,
  applyMs: 0,
  servicePorts: 0,
  servicePortsRendered: 0,
  chainsWritten: 0,
  rulesWritten: 0,
  rulesWrittenByTable: { filter: 0, nat: 0 },
  chainsDeleted: 0,
  ruleCounts: { filter: 0, nat: 0 },
  noLocalEndpoints: { internal: 0, external: 0 },
};

/** A mode's own part of a report (the iptables mode: its renderer, for tools and tests). */
export interface ModeDetail {
  readonly mode: ProxyMode;
  /** what the sync wrote, for its log line, where the mode's unit is not iptables rules (nftables: statements) */
  readonly written?: Readonly<Record<string, number>>;
}

/** One family's sync: what it did, and whether it failed (and where). */
export type FamilySyncReport<D extends ModeDetail = ModeDetail> = SyncCounts &
  D & { readonly family: IPFamily } & ({ readonly ok: true; readonly error?: undefined } | { readonly ok: false; readonly error: Error; readonly stage: FamilyStage });

export interface SyncReport<D extends ModeDetail = ModeDetail> {
  readonly mode: ProxyMode;
  readonly families: ReadonlyArray<FamilySyncReport<D>>;
  readonly ok: boolean;
  /** a failure outside the families (they are listed as far as they synced) */
  readonly error?: Error;
  readonly stage?: DriverStage;
}

/** The families a failure outside them fails: every family synced so far (IPv4 before the first sync). */
export function familiesFailedBy(report: SyncReport, known: readonly IPFamily[]): IPFamily[] {
  if (!report.error) return [];
  return known.length ? [...known] : ['IPv4'];
}

/** One family of one mode. */
export interface FamilyBackend<C, D extends ModeDetail> {
  /** the family's config; returns `previous` itself when nothing it depends on changed */
  config(ctx: NodeContext, previous: C | undefined): C;
  /** what the backend programmed is still what the kernel has */
  readonly trusted: boolean;
  /** forget what was programmed: the next step reads the kernel and writes everything */
  invalidate(): void;
  /** renders, plans and applies (or, in a dry run, prints) */
  sync(step: SyncStep<C>): Promise<SyncCounts & D>;
  /** what a failed sync reports of this mode */
  failed(config: C | undefined): SyncCounts & D;
  /** kpx's canary is still in the kernel (false after an external flush) */
  canaryPresent(): Promise<boolean>;
  /** addresses NodePorts and health check ports answer on, under this config */
  nodePortAddresses(config: C): 'all' | readonly string[];
}

/** A proxy mode: its families, and what it does once at start and after a good sync. */
export interface ModeBackend<C, D extends ModeDetail> {
  readonly mode: ProxyMode;
  init(): Promise<void>;
  hostFacts(): HostFacts;
  family(family: IPFamily): FamilyBackend<C, D>;
  /** after a sync in which every family succeeded (e.g. remove another mode's leftovers) */
  afterSuccess?(): Promise<void>;
}

export interface ProxierOptions {
  readonly config: KpxConfig;
  readonly state: ClusterState;
  readonly runner: CommandRunner;
  readonly log: Logger;
  /** where --dry-run prints what would be applied */
  readonly print?: (text: string) => void;
  readonly hostFacts?: () => HostFacts;
}

/** What the controller drives. */
export interface Proxier {
  init(): Promise<void>;
  /** one sync covering `pending` (what changed since the previous sync); never throws */
  sync(pending: PendingChanges): Promise<SyncReport>;
  /**
   * What waits until a sync is reported (another mode's leftovers, after the first good
   * sync). Never throws: a failure comes back as a failed report (no family), and the next
   * sync is full.
   */
  afterReport(report: SyncReport): Promise<SyncReport | null>;
  /** the next sync reads the kernel and writes everything (failure, flush, node change) */
  requestFullSync(): void;
  /** families whose canary chains are gone (an external flush); they resync in full */
  checkCanaries(): Promise<IPFamily[]>;
  /** addresses NodePorts and health check ports answer on */
  nodePortAddresses(): 'all' | string[];
  /** families synced so far */
  knownFamilies(): IPFamily[];
}

/** `kpx render` reads nothing of the machine: the node's addresses are the Node object's. */
function hostFromNode(node: NodeFacts | null): HostFacts {
  return { addresses: { IPv4: [...(node?.ips.IPv4 ?? [])], IPv6: [...(node?.ips.IPv6 ?? [])] } };
}

/** IPv4 always; IPv6 once the node, the host or a service uses it (and from then on). */
export function familiesToSync(state: ClusterState, host: HostFacts, programmed: Iterable<IPFamily>): IPFamily[] {
  const out = new Set<IPFamily>(['IPv4', ...programmed]);
  if ((state.node?.ips.IPv6.length ?? 0) > 0 || host.addresses.IPv6.some((ip) => !isLoopback(ip)) || state.familiesInUse().has('IPv6')) {
    out.add('IPv6');
  }
  return [...out].sort();
}

export class Driver<C, D extends ModeDetail> implements Proxier {
  private readonly configs = new Map<IPFamily, C>();
  private readonly needFull = new Set<IPFamily>();
  private readonly synced = new Set<IPFamily>();
  private readonly programmed = new Set<IPFamily>();

  constructor(
    protected readonly opts: ProxierOptions,
    readonly mode: ModeBackend<C, D>,
  ) {}

  init(): Promise<void> {
    return this.mode.init();
  }

  requestFullSync(): void {
    for (const f of this.synced) {
      this.needFull.add(f);
      this.mode.family(f).invalidate();
    }
  }

  async checkCanaries(): Promise<IPFamily[]> {
    const flushed: IPFamily[] = [];
    for (const family of this.programmed) {
      const b = this.mode.family(family);
      if (!(await b.canaryPresent())) {
        flushed.push(family);
        b.invalidate();
        this.needFull.add(family);
      }
    }
    return flushed;
  }

  nodePortAddresses(): 'all' | string[] {
    if (!this.configs.size) return 'all';
    const out = new Set<string>();
    for (const [family, cfg] of this.configs) {
      const a = this.mode.family(family).nodePortAddresses(cfg);
      if (a === 'all') return 'all';
      for (const ip of a) out.add(ip);
    }
    return [...out];
  }

  knownFamilies(): IPFamily[] {
    return [...this.configs.keys()];
  }

  async sync(pending: PendingChanges): Promise<SyncReport<D>> {
    const { config, state } = this.opts;
    const reports: Array<FamilySyncReport<D>> = [];
    let stage: DriverStage = 'host facts';
    try {
      const host = this.opts.hostFacts?.() ?? (config.renderOnly ? hostFromNode(state.node) : this.mode.hostFacts());
      stage = 'families';
      const changed = changedServices(pending);
      for (const family of familiesToSync(state, host, this.programmed)) {
        reports.push(await this.syncFamily(family, { config, node: state.node, host, serviceCIDRs: state.serviceCIDRs(family) }, changed));
      }
    } catch (err) {
      return { ...this.failed(stage, err as Error), families: reports };
    }
    return { mode: this.mode.mode, families: reports, ok: reports.every((r) => r.ok) };
  }

  async afterReport(report: SyncReport): Promise<SyncReport | null> {
    if (!report.ok || this.opts.config.dryRun || !this.mode.afterSuccess) return null;
    try {
      await this.mode.afterSuccess();
      return null;
    } catch (err) {
      return this.failed('after sync', err as Error);
    }
  }

  /** A failure outside the families: logged once, and every family syncs in full next. */
  private failed(stage: DriverStage, err: Error): SyncReport<D> {
    for (const f of this.synced) this.needFull.add(f);
    this.opts.log.error({ stage, err: err.message }, 'sync failed; the previous rules stay in place');
    return { mode: this.mode.mode, families: [], ok: false, error: err, stage };
  }

  private async syncFamily(family: IPFamily, ctx: NodeContext, changed: ReadonlySet<string>): Promise<FamilySyncReport<D>> {
    const { config, state, log } = this.opts;
    const backend = this.mode.family(family);
    const previous = this.configs.get(family);
    let stage: FamilyStage = 'config';
    let full = true;
    try {
      const cfg = backend.config(ctx, previous);
      full = !this.synced.has(family) || this.needFull.has(family) || cfg !== previous || !backend.trusted;
      const counts = await backend.sync({
        view: state.view(family),
        config: cfg,
        changed: full ? 'all' : changed,
        full,
        stage: (s) => (stage = s),
      });
      this.configs.set(family, cfg);
      this.synced.add(family);
      this.needFull.delete(family);
      if (!config.dryRun) this.programmed.add(family);
      return { ...counts, family, ok: true };
    } catch (err) {
      this.synced.add(family);
      this.needFull.add(family);
      backend.invalidate();
      log.error({ family, stage, full, err: (err as Error).message }, 'sync failed; the previous rules stay in place');
      return { ...backend.failed(previous), full, family, ok: false, error: err as Error, stage };
    }
  }
}
