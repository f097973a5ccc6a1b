// Prometheus metrics with kube-proxy's names and labels (so existing dashboards and alerts
// keep working), on a Registry of kpx's own. Histograms have every bucket bound kube-proxy's
// have, and finer ones below them: kpx's partial syncs take milliseconds.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { IPFamily } from '../util/ip.js';
import type { PendingChanges } from '../model/state.js';
import type { Change } from '../model/state.js';
import type { SyncObserver } from '../sync/controller.js';
import { familiesFailedBy, type ProxyMode, type SyncReport } from '../sync/driver.js';
import { NftablesError } from '../apply/nftables.js';

/** Sorted, without repeats (bucket bounds compared to the nanosecond). */
function bounds(...lists: number[][]): number[] {
  const byNs = new Map(lists.flat().map((b) => [Math.round(b * 1e9), Number(b.toPrecision(12))]));
  return [...byNs.entries()].sort(([a], [b]) => a - b).map(([, b]) => b);
}
const doubling = (start: number, n: number): number[] => Array.from({ length: n }, (_, i) => start * 2 ** i);
const linear = (start: number, width: number, n: number): number[] => Array.from({ length: n }, (_, i) => start + width * i);

/**
 * Every bound kube-proxy's histograms have (1 ms doubling, 15 of them), so a dashboard or
 * alert that picks an `le` keeps working, plus kpx's own from 100 µs (its partial syncs
 * take milliseconds).
 */
export const SYNC_BUCKETS = bounds(doubling(0.001, 15), doubling(0.0001, 22));
/**
 * kube-proxy's network programming bounds (0.25 s, 0.5 s, then 1 s wide to 1 min, 5 s wide to
 * 2 min, 30 s wide to 5 min), plus finer ones where kpx's latencies fall: 1 ms doubling to
 * 128 ms, and 0.75, 1.1, 1.25 and 1.5 s around the 1 s minSyncPeriod.
 */
export const PROGRAMMING_BUCKETS = bounds(
  linear(0.25, 0.25, 2),
  linear(1, 1, 59),
  linear(60, 5, 12),
  linear(120, 30, 7),
  doubling(0.001, 8),
  [0.75, 1.1, 1.25, 1.5],
);

export class KpxMetrics implements SyncObserver {
  readonly registry = new Registry();
  private readonly family = ['ip_family'] as const;

  readonly syncDuration = new Histogram({ name: 'kubeproxy_sync_proxy_rules_duration_seconds', help: 'SyncProxyRules latency in seconds', labelNames: this.family, buckets: SYNC_BUCKETS, registers: [this.registry] });
  readonly fullSyncDuration = new Histogram({ name: 'kubeproxy_sync_full_proxy_rules_duration_seconds', help: 'SyncProxyRules latency in seconds for full resyncs', labelNames: this.family, buckets: SYNC_BUCKETS, registers: [this.registry] });
  readonly partialSyncDuration = new Histogram({ name: 'kubeproxy_sync_partial_proxy_rules_duration_seconds', help: 'SyncProxyRules latency in seconds for partial resyncs', labelNames: this.family, buckets: SYNC_BUCKETS, registers: [this.registry] });
  readonly programming = new Histogram({ name: 'kubeproxy_network_programming_duration_seconds', help: 'In Cluster Network Programming Latency in seconds', labelNames: this.family, buckets: PROGRAMMING_BUCKETS, registers: [this.registry] });
  readonly lastSync = new Gauge({ name: 'kubeproxy_sync_proxy_rules_last_timestamp_seconds', help: 'The last time proxy rules were successfully synced', labelNames: this.family, registers: [this.registry] });
  readonly lastQueued = new Gauge({ name: 'kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds', help: 'The last time a sync of proxy rules was queued', labelNames: this.family, registers: [this.registry] });
  readonly endpointPending = new Gauge({ name: 'kubeproxy_sync_proxy_rules_endpoint_changes_pending', help: 'Pending proxy rules Endpoint changes', registers: [this.registry] });
  readonly endpointTotal = new Counter({ name: 'kubeproxy_sync_proxy_rules_endpoint_changes_total', help: 'Cumulative proxy rules Endpoint changes', registers: [this.registry] });
  readonly servicePending = new Gauge({ name: 'kubeproxy_sync_proxy_rules_service_changes_pending', help: 'Pending proxy rules Service changes', registers: [this.registry] });
  readonly serviceTotal = new Counter({ name: 'kubeproxy_sync_proxy_rules_service_changes_total', help: 'Cumulative proxy rules Service changes', registers: [this.registry] });
  readonly rulesTotal = new Gauge({ name: 'kubeproxy_sync_proxy_rules_iptables_total', help: 'Total number of iptables rules owned by kube-proxy', labelNames: ['table', 'ip_family'], registers: [this.registry] });
  readonly rulesLast = new Gauge({ name: 'kubeproxy_sync_proxy_rules_iptables_last', help: 'Number of iptables rules written by kube-proxy in last sync', labelNames: ['table', 'ip_family'], registers: [this.registry] });
  readonly restoreFailures = new Counter({ name: 'kubeproxy_sync_proxy_rules_iptables_restore_failures_total', help: 'Cumulative proxy iptables restore failures', labelNames: this.family, registers: [this.registry] });
  readonly nftablesSyncFailures = new Counter({ name: 'kubeproxy_sync_proxy_rules_nftables_sync_failures_total', help: 'Cumulative proxy nftables sync failures', labelNames: this.family, registers: [this.registry] });
  readonly nftablesCleanupFailures = new Counter({ name: 'kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total', help: 'Cumulative proxy nftables cleanup failures', labelNames: this.family, registers: [this.registry] });
  readonly partialRestoreFailures = new Counter({ name: 'kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total', help: 'Cumulative proxy iptables partial restore failures', labelNames: this.family, registers: [this.registry] });
  readonly noLocalEndpoints = new Gauge({ name: 'kubeproxy_sync_proxy_rules_no_local_endpoints_total', help: 'Number of services with a Local traffic policy and no endpoints', labelNames: ['traffic_policy', 'ip_family'], registers: [this.registry] });
  readonly healthz = new Counter({ name: 'kubeproxy_proxy_healthz_total', help: 'Cumulative proxy healthz HTTP status', labelNames: ['code'], registers: [this.registry] });
  readonly livez = new Counter({ name: 'kubeproxy_proxy_livez_total', help: 'Cumulative proxy livez HTTP status', labelNames: ['code'], registers: [this.registry] });
  /** kube-proxy's buckets for it: 1 ms doubling, 15 of them */
  readonly conntrackDuration = new Histogram({ name: 'kubeproxy_conntrack_reconciler_sync_duration_seconds', help: 'ReconcileConntrackFlowsLatency latency in seconds', labelNames: this.family, buckets: doubling(0.001, 15), registers: [this.registry] });
  readonly conntrackDeleted = new Counter({ name: 'kubeproxy_conntrack_reconciler_deleted_entries_total', help: 'Cumulative conntrack flows deleted by conntrack reconciler', labelNames: this.family, registers: [this.registry] });
  // kpx's own split of a sync
  readonly renderDuration = new Histogram({ name: 'kpx_sync_render_duration_seconds', help: 'Time spent rendering rules in a sync', labelNames: ['ip_family', 'sync'], buckets: SYNC_BUCKETS, registers: [this.registry] });
  readonly applyDuration = new Histogram({ name: 'kpx_sync_apply_duration_seconds', help: 'Time spent planning and applying rules (iptables-restore) in a sync', labelNames: ['ip_family', 'sync'], buckets: SYNC_BUCKETS, registers: [this.registry] });
  readonly chainsWritten = new Counter({ name: 'kpx_sync_chains_written_total', help: 'Chains written by iptables-restore', labelNames: this.family, registers: [this.registry] });
  readonly apiRelists = new Counter({ name: 'kpx_api_relists_total', help: 'Full lists of a resource from the apiserver, by reason (initial, expired, periodic)', labelNames: ['resource', 'reason'], registers: [this.registry] });
  readonly apiWatchEnds = new Counter({ name: 'kpx_api_watch_ends_total', help: 'Watches of a resource that ended, by reason (closed, gone, idle, aborted, error)', labelNames: ['resource', 'reason'], registers: [this.registry] });
  readonly chainsDeleted = new Counter({ name: 'kpx_sync_chains_deleted_total', help: 'Chains deleted by iptables-restore', labelNames: this.family, registers: [this.registry] });

  constructor(
    private readonly pending: () => PendingChanges,
    private readonly families: () => IPFamily[],
  ) {
    collectDefaultMetrics({ register: this.registry });
  }

  onChange(change: Change): void {
    if (change.kind === 'Service') this.serviceTotal.inc();
    else if (change.kind === 'EndpointSlice') this.endpointTotal.inc();
    this.updatePending();
  }

  onQueued(): void {
    const now = Date.now() / 1000;
    for (const f of this.families()) this.lastQueued.set({ ip_family: f }, now);
  }

  private updatePending(): void {
    const p = this.pending();
    this.endpointPending.set(p.endpoints.size);
    this.servicePending.set(p.services.size);
  }

  /** kube-proxy's nftables mode counts its failed transactions under its own name */
  private failures(mode: ProxyMode): Counter<'ip_family'> {
    return mode === 'nftables' ? this.nftablesSyncFailures : this.restoreFailures;
  }

  onSync(report: SyncReport, covered: PendingChanges): void {
    const now = Date.now();
    // a failure outside the families (host facts, choosing them, the cleanup after a good
    // sync) fails every family, as health has it
    for (const ip_family of familiesFailedBy(report, this.families())) this.failures(report.mode).inc({ ip_family });
    for (const f of report.families) {
      const ip_family = f.family;
      const sync = f.full ? 'full' : 'partial';
      if (f.error) {
        this.failures(f.mode).inc({ ip_family });
        // kpx deletes retired chains and sets in the sync's own transaction: when that
        // transaction fails, so did the deletion (kube-proxy's separate cleanup transaction)
        if (f.error instanceof NftablesError && f.error.staleDeletions > 0) this.nftablesCleanupFailures.inc({ ip_family });
        if (!f.full) this.partialRestoreFailures.inc({ ip_family });
        continue;
      }
      const seconds = (f.renderMs + f.applyMs) / 1000;
      this.syncDuration.observe({ ip_family }, seconds);
      (f.full ? this.fullSyncDuration : this.partialSyncDuration).observe({ ip_family }, seconds);
      this.renderDuration.observe({ ip_family, sync }, f.renderMs / 1000);
      this.applyDuration.observe({ ip_family, sync }, f.applyMs / 1000);
      this.lastSync.set({ ip_family }, now / 1000);
      for (const table of ['filter', 'nat'] as const) {
        this.rulesTotal.set({ table, ip_family }, f.ruleCounts[table]);
        this.rulesLast.set({ table, ip_family }, f.rulesWrittenByTable[table]);
      }
      this.chainsWritten.inc({ ip_family }, f.chainsWritten);
      this.chainsDeleted.inc({ ip_family }, f.chainsDeleted);
      this.noLocalEndpoints.set({ traffic_policy: 'internal', ip_family }, f.noLocalEndpoints.internal);
      this.noLocalEndpoints.set({ traffic_policy: 'external', ip_family }, f.noLocalEndpoints.external);
      for (const t of covered.triggerTimes) {
        if (t.family === f.family) this.programming.observe({ ip_family }, Math.max(0, now - t.time) / 1000);
      }
    }
    this.updatePending();
  }
}
