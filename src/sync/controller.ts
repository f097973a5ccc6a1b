// Wires a source to the cluster state and the proxier: changes are applied to the state as
// they arrive and coalesced into syncs by the bounded-frequency runner. Nothing is
// programmed before the source's initial state is complete.
import type { KpxConfig } from '../config/config.js';
import { emptyPending, type Change, type ClusterState } from '../model/state.js';
import { isClusterScoped } from '../model/kube.js';
import type { Source } from '../source/types.js';
import type { Logger } from '../util/log.js';
import type { Proxier, SyncReport } from './driver.js';
import { BoundedFrequencyRunner, realClock, type Clock } from './runner.js';
import { releaseMemory } from '../util/memory.js';

/**
 * Full syncs that rendered at least this many service ports are followed by a full GC
 * (two collections: tens of ms at 1,000 ports, after the sync is measured). 2,000 left a
 * 1,000-service start (the scale test's smallest size) carrying its start-up garbage.
 */
const RELEASE_AFTER_PORTS = 500;

export interface SyncObserver {
  /** a change arrived from the source */
  onChange?(change: Change): void;
  /** a sync was requested (queued) */
  onQueued?(): void;
  /** a sync finished; pending = what it covered */
  onSync?(report: SyncReport, pending: ReturnType<ClusterState['takePending']>, startedAt: number): void | Promise<void>;
}

export interface ControllerOptions {
  readonly config: KpxConfig;
  readonly log: Logger;
  readonly source: Source;
  readonly state: ClusterState;
  readonly proxier: Proxier;
  readonly observers?: SyncObserver[];
  readonly clock?: Clock;
}

export class Controller {
  private synced = false;
  private syncedWaiters: Array<() => void> = [];
  readonly runner: BoundedFrequencyRunner;
  private canaryTimer: NodeJS.Timeout | null = null;
  lastReport: SyncReport | null = null;

  constructor(private readonly opts: ControllerOptions) {
    this.runner = new BoundedFrequencyRunner(
      () => this.syncOnce(),
      opts.config.minSyncPeriodMs,
      opts.config.syncPeriodMs,
      opts.clock ?? realClock,
      // a sync run that throws (not the proxier's sync, which reports its failures): what
      // it took from the model may be lost, so the next sync is full
      (err) => {
        opts.log.error({ err: err.message, stack: err.stack }, 'sync run failed; the next sync is full');
        opts.proxier.requestFullSync();
      },
    );
  }

  get isSynced(): boolean {
    return this.synced;
  }

  private async startSource(): Promise<void> {
    const { source, state, log } = this.opts;
    await source.start({
      onChange: (change) => {
        state.apply(change);
        const obj = change.current ?? change.previous;
        // a child logger per change costs ~1 µs and garbage: only when debug is on
        if (obj && !isClusterScoped(change.kind) && log.isLevelEnabled('debug')) {
          log.child({ service: `${obj.metadata.namespace ?? 'default'}/${obj.metadata.name}` }).debug(
            { kind: change.kind, op: !change.previous ? 'add' : !change.current ? 'delete' : 'update' },
            'change received',
          );
        }
        for (const o of this.opts.observers ?? []) o.onChange?.(change);
        if (this.synced) this.queue();
      },
      onSynced: () => {
        if (this.synced) return;
        this.synced = true;
        log.info({ services: state.serviceCount, endpointSlices: state.sliceCount, node: !!state.node }, 'initial state complete');
        if (!state.node) log.warn({ node: state.nodeName }, 'no Node object for this node; node IPs and pod CIDRs are unknown');
        for (const w of this.syncedWaiters.splice(0)) w();
        this.queue();
      },
    });
  }

  private queue(): void {
    for (const o of this.opts.observers ?? []) o.onQueued?.();
    this.runner.run();
  }

  private waitSynced(): Promise<void> {
    return this.synced ? Promise.resolve() : new Promise((r) => this.syncedWaiters.push(r));
  }

  /** One sync; true on success. */
  async syncOnce(): Promise<boolean> {
    const { state, proxier, log } = this.opts;
    const startedAt = Date.now();
    const pending = state.takePending();
    const report = await proxier.sync(pending);
    this.lastReport = report;
    for (const f of report.families) {
      log.info(
        {
          family: f.family,
          full: f.full,
          ok: !f.error,
          servicesChanged: pending.services.size,
          endpointsChanged: pending.endpoints.size,
          servicePorts: f.servicePorts,
          chainsWritten: f.chainsWritten,
          ...(f.written ?? { rulesWritten: f.rulesWritten }),
          chainsDeleted: f.chainsDeleted,
          renderMs: round(f.renderMs),
          applyMs: round(f.applyMs),
        },
        'sync',
      );
    }
    for (const o of this.opts.observers ?? []) await o.onSync?.(report, pending, startedAt);
    // what waits for the report (another mode's leftovers) does not delay it; when it
    // fails, that is reported as a failed sync of its own, covering nothing new
    const after = await proxier.afterReport(report);
    if (after) {
      this.lastReport = after;
      for (const o of this.opts.observers ?? []) await o.onSync?.(after, emptyPending(), startedAt);
    }
    // a full sync of a large model leaves tens of MB of garbage that V8 may keep for minutes
    if (report.families.some((f) => f.full && f.servicePortsRendered >= RELEASE_AFTER_PORTS)) {
      const ms = releaseMemory();
      log.debug({ ms: ms === null ? null : round(ms) }, 'collected garbage after a full sync');
    }
    return report.ok && !after;
  }

  /** --once: wait for the initial state, sync once, stop. */
  async runOnce(): Promise<boolean> {
    await this.startSource();
    await this.waitSynced();
    try {
      return await this.syncOnce();
    } finally {
      await this.opts.source.stop();
    }
  }

  /** Long-running: syncs on changes and every syncPeriod; checks for external flushes. */
  async start(): Promise<void> {
    await this.startSource();
    await this.waitSynced();
    this.runner.start();
    if (!this.opts.config.dryRun) {
      this.canaryTimer = setInterval(() => void this.checkCanaries(), this.opts.config.syncPeriodMs);
      this.canaryTimer.unref();
    }
  }

  async checkCanaries(): Promise<void> {
    const flushed = await this.opts.proxier.checkCanaries().catch((err: Error) => {
      this.opts.log.warn({ err: err.message }, 'canary check failed');
      return [];
    });
    if (flushed.length) {
      this.opts.log.warn({ families: flushed }, 'kpx chains were flushed externally; resyncing everything');
      this.queue();
    }
  }

  async stop(): Promise<void> {
    if (this.canaryTimer) clearInterval(this.canaryTimer);
    await this.opts.source.stop();
    await this.runner.stop();
  }
}

const round = (ms: number) => Math.round(ms * 10) / 10;
