// The proxy's health, with kube-proxy's semantics: a family is unhealthy when an update
// was queued and has not been programmed within the timeout (2 x syncPeriod). Families
// that never synced are not judged; idle is healthy.
import type { IPFamily } from '../util/ip.js';

export interface HealthStatus {
  readonly healthy: boolean;
  /** most recent successful update of any family (ms), 0 if none */
  readonly lastUpdated: number;
  readonly families: Partial<Record<IPFamily, { lastUpdated: number; healthy: boolean }>>;
}

export class ProxyHealth {
  private readonly lastUpdated = new Map<IPFamily, number>();
  private readonly oldestQueued = new Map<IPFamily, number>();

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
    this.lastUpdated.set(family, this.now());
  }

  status(): HealthStatus {
    const now = this.now();
    const families: HealthStatus['families'] = {};
    let healthy = true;
    let last = 0;
    for (const [f, t] of this.lastUpdated) {
      const q = this.oldestQueued.get(f);
      const ok = q === undefined || now - q < this.timeoutMs;
      families[f] = { lastUpdated: t, healthy: ok };
      healthy &&= ok;
      last = Math.max(last, t);
    }
    // queued but never programmed at all: unhealthy once the timeout passes
    for (const [f, q] of this.oldestQueued) {
      if (!this.lastUpdated.has(f) && now - q >= this.timeoutMs) {
        families[f] = { lastUpdated: 0, healthy: false };
        healthy = false;
      }
    }
    return { healthy, lastUpdated: last, families };
  }
}
