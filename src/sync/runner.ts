// A bounded-frequency runner, like kube-proxy's: requests are coalesced; the function runs
// at most once per minInterval, at least once per maxInterval, never concurrently; a failed
// run is retried with exponential backoff (from minInterval up to maxInterval). While it
// backs off, new requests wait for the retry: a sync that keeps failing (a large ruleset
// the kernel refuses) is not re-rendered and re-applied on every change.
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export class BoundedFrequencyRunner {
  private lastRun = Number.NEGATIVE_INFINITY;
  private pending = false;
  private running: Promise<void> | null = null;
  private retryAt: number | null = null;
  private failures = 0;
  private timer: unknown = null;
  private stopped = true;
  /** runs done (for tests and metrics) */
  runs = 0;

  /** consecutive failed runs */
  get consecutiveFailures(): number {
    return this.failures;
  }

  constructor(
    private readonly fn: () => Promise<boolean>,
    readonly minIntervalMs: number,
    readonly maxIntervalMs: number,
    private readonly clock: Clock = realClock,
    /** a run that threw (rather than returning false): told once, with its cause */
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  start(): void {
    this.stopped = false;
    this.reschedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.running;
  }

  /** Asks for a run as soon as minInterval allows. */
  run(): void {
    this.pending = true;
    this.reschedule();
  }

  /** Resolves when no run is in progress. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private reschedule(): void {
    if (this.stopped || this.running) return;
    const now = this.clock.now();
    let next = this.lastRun + this.maxIntervalMs;
    if (this.retryAt !== null) next = Math.min(next, Math.max(this.retryAt, this.lastRun + this.minIntervalMs));
    else if (this.pending) next = Math.min(next, this.lastRun + this.minIntervalMs);
    if (this.timer !== null) this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => {
      this.timer = null;
      this.exec();
    }, Math.max(0, next - now));
  }

  private exec(): void {
    if (this.stopped || this.running) return;
    this.pending = false;
    this.retryAt = null;
    this.lastRun = this.clock.now();
    this.runs++;
    this.running = (async () => {
      let ok = false;
      try {
        ok = await this.fn();
      } catch (err) {
        ok = false;
        this.onError(err instanceof Error ? err : new Error(String(err)));
      }
      if (ok) this.failures = 0;
      else {
        this.failures++;
        const backoff = Math.min(this.maxIntervalMs, Math.max(this.minIntervalMs, 1000) * 2 ** (this.failures - 1));
        this.retryAt = this.clock.now() + backoff;
      }
    })().finally(() => {
      this.running = null;
      this.reschedule();
    });
  }
}
