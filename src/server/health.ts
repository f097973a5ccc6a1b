// The proxy's health, with kube-proxy's semantics: a family is unhealthy when an update
// was queued and has not been programmed within the timeout (2 x syncPeriod). Families
// that never synced are not judged; idle is healthy. kpx adds one rule: a family whose
// sync failed and failed again on the retry is unhealthy at once, with the reason.
import type { IPFamily } from '../util/ip.js';

export interface HealthStatus {
  readonly healthy: boolean;
  /** most recent successful update of any family (ms), 0 if none */
  readonly lastUpdated: number;
  readonly families: Partial<Record<IPFamily, FamilyHealth>>;
}

export interface FamilyHealth {
  lastUpdated: number;
  healthy: boolean;
  /** the last sync failed: why, since when, how many times in a row */
  error?: { reason: string; since: number; failures: number };
}

export class ProxyHealth {
  private readonly lastUpdated = new Map<IPFamily, number>();
  private readonly oldestQueued = new Map<IPFamily, number>();
  private readonly failing = new Map<IPFamily, { reason: string; since: number; failures: number }>();

  constructor(
    readonly timeoutMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** A change is waiting to be programmed (keeps the oldest time). */
  queued(families: Iterable<IPFamily>): void {
    const t = this.now();
    for (const f of families) if (!this.oldestQueued.has(f)) this.oldestQueued.set(f, t);
  }

  /** Rules for this family were programmed successfully. */
  updated(family: IPFamily): void {
    this.oldestQueued.delete(family);
    this.failing.delete(family);
    this.lastUpdated.set(family, this.now());
  }

  /** A sync of this family failed. */
  failed(family: IPFamily, reason: string): void {
    const f = this.failing.get(family);
    this.failing.set(family, { reason, since: f?.since ?? this.now(), failures: (f?.failures ?? 0) + 1 });
  }

  status(): HealthStatus {
    const now = this.now();
    const families: HealthStatus['families'] = {};
    let healthy = true;
    let last = 0;
    for (const [f, t] of this.lastUpdated) {
      const q = this.oldestQueued.get(f);
      const err = this.failing.get(f);
      const ok = (q === undefined || now - q < this.timeoutMs) && (err?.failures ?? 0) < 2;
      families[f] = { lastUpdated: t, healthy: ok, ...(err ? { error: { ...err } } : {}) };
      healthy &&= ok;
      last = Math.max(last, t);
    }
    // never programmed at all: unhealthy once the timeout passes, or failing twice
    for (const f of new Set([...this.oldestQueued.keys(), ...this.failing.keys()])) {
      if (this.lastUpdated.has(f)) continue;
      const q = this.oldestQueued.get(f);
      const err = this.failing.get(f);
      if ((q !== undefined && now - q >= this.timeoutMs) || (err?.failures ?? 0) >= 2) {
        families[f] = { lastUpdated: 0, healthy: false, ...(err ? { error: { ...err } } : {}) };
        healthy = false;
      }
    }
    return { healthy, lastUpdated: last, families };
  }
}
