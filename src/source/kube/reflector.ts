// One resource's list/watch loop. We do not use client-node's informer: it stops on
// errors and has known gaps (no bookmarks, no relist on 410 with deletes, no watchdog).
// The loop keeps a store of the objects it has handed on (key -> resourceVersion and
// object), so a relist can emit exactly the adds, updates and deletes it missed.
import type { Logger } from '../../util/log.js';
import { objectKey, type KubeObject, type ResourceKind } from '../../model/kube.js';
import { changeOf, type Change } from '../../model/state.js';
import { validateObject } from '../../model/validate.js';

export interface ListPage {
  readonly items: readonly unknown[];
  readonly resourceVersion: string;
  readonly continueToken: string | undefined;
}

export type WatchEvent = { type: string; object: unknown };

/** What a reflector needs from the API: paged lists and a streaming watch. */
export interface ResourceApi {
  list(opts: { limit: number; continueToken?: string }): Promise<ListPage>;
  /** Starts a watch; onEvent per event; resolves with an abort function once the stream is open. */
  watch(
    opts: { resourceVersion: string; timeoutSeconds: number },
    onEvent: (ev: WatchEvent) => void,
    onDone: (err: unknown) => void,
  ): Promise<() => void>;
}

export interface ReflectorOptions {
  /**
   * The source may go on without this resource: a list refused as forbidden (403) or not
   * found (404: an apiserver without the API) counts as an empty first list, so the
   * initial sync is not held up; the reflector keeps trying and hands on what it finds.
   */
  readonly optional?: boolean;
  readonly pageSize: number;
  readonly watchIdleTimeoutMs: number;
  readonly relistPeriodMs: number;
  readonly backoff: { readonly initialMs: number; readonly maxMs: number };
}

export interface ReflectorEvents {
  onChange(change: Change): void;
  /** the first complete list has been handed on */
  onListed(): void;
  /** counters for metrics: relists (by reason) and watch restarts (by reason) */
  onRelist?(reason: string): void;
  onWatchEnd?(reason: string): void;
}

/** Thrown (or passed to onDone) when the server says the resourceVersion is gone. */
export class GoneError extends Error {}

interface Stored {
  readonly rv: string;
  /** undefined when the latest version failed validation (we keep serving nothing new for it) */
  readonly object: KubeObject | undefined;
}

const statusCode = (err: unknown): number | undefined => {
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  const c = e?.code ?? e?.statusCode;
  return typeof c === 'number' ? c : undefined;
};

/** A watch ERROR event or an HTTP error that means "relist". */
export function isGone(err: unknown): boolean {
  if (err instanceof GoneError) return true;
  if (statusCode(err) === 410) return true;
  return /too old resource version|resourceVersion .* is too large|Expired/i.test(String((err as Error)?.message ?? ''));
}

export class Backoff {
  private attempt = 0;
  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  /** Exponential with full jitter in [d/2, d]. */
  next(): number {
    const d = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(d / 2 + (this.random() * d) / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}

export class Reflector {
  private readonly store = new Map<string, Stored>();
  private resourceVersion = '';
  private listed = false;
  private stopped = false;
  private relistWanted: string | null = 'initial';
  private abortWatch: (() => void) | null = null;
  private wake: (() => void) | null = null;
  private relistTimer: NodeJS.Timeout | null = null;
  private loop: Promise<void> | null = null;
  private readonly backoff: Backoff;
  /** events the current (or last) watch delivered: a watch that worked and then broke retries fast */
  private delivered = 0;

  constructor(
    readonly kind: ResourceKind,
    private readonly api: ResourceApi,
    private readonly events: ReflectorEvents,
    private readonly opts: ReflectorOptions,
    private readonly log: Logger,
  ) {
    this.backoff = new Backoff(opts.backoff.initialMs, opts.backoff.maxMs);
  }

  get hasListed(): boolean {
    return this.listed;
  }

  /** key -> resourceVersion of every object handed on (what kpx's model holds). */
  inventory(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [k, v] of this.store) if (v.object) out.set(k, v.rv);
    return out;
  }

  start(): void {
    if (this.opts.relistPeriodMs > 0) {
      this.relistTimer = setInterval(() => this.requestRelist('periodic'), this.opts.relistPeriodMs);
      this.relistTimer.unref();
    }
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.relistTimer) clearInterval(this.relistTimer);
    this.abortWatch?.();
    this.wake?.();
    await this.loop;
  }

  requestRelist(reason: string): void {
    this.relistWanted ??= reason;
    this.abortWatch?.();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let phase = 'watch';
      try {
        const reason = this.relistWanted;
        if (reason !== null) {
          phase = 'list';
          await this.relist(reason);
          // a relist requested while this one ran still happens
          if (this.relistWanted === reason) this.relistWanted = null;
          this.backoff.reset();
        }
        if (this.stopped) break;
        phase = 'watch';
        const { reason: end, events } = await this.watchOnce();
        this.events.onWatchEnd?.(end);
        if (end === 'gone') {
          this.log.info({ kind: this.kind, resourceVersion: this.resourceVersion }, 'watch expired (410 Gone); relisting');
          this.relistWanted ??= 'expired';
        } else if (end === 'idle') {
          this.log.warn({ kind: this.kind, idleMs: this.opts.watchIdleTimeoutMs }, 'watch silent past its bound; restarting it');
          await this.sleep(this.backoff.next());
        } else if (end === 'closed') {
          // A clean close (server timeout) resumes from the last resourceVersion at once,
          // unless it keeps closing without delivering anything.
          if (events > 0) this.backoff.reset();
          else await this.sleep(this.backoff.next());
        }
      } catch (err) {
        if (this.stopped) break;
        if (isGone(err)) {
          // an expired continue token or resourceVersion: list again from scratch
          this.log.info({ kind: this.kind, reason: describe(err) }, 'resourceVersion gone; relisting');
          this.relistWanted ??= 'expired';
          continue;
        }
        this.events.onWatchEnd?.('error');
        if (phase === 'watch' && this.delivered > 0) this.backoff.reset();
        const delay = this.backoff.next();
        this.failed(phase, err, delay);
        await this.sleep(delay);
      }
    }
  }

  /** Logs a failed list or watch; an optional resource that cannot be listed counts as listed. */
  private failed(phase: string, err: unknown, delay: number): void {
    const unavailable = this.opts.optional && phase === 'list' && (statusCode(err) === 403 || statusCode(err) === 404);
    if (unavailable && !this.listed) {
      this.listed = true;
      this.log.warn({ kind: this.kind, err: describe(err) }, `cannot list ${this.kind}; going on without it (and trying again)`);
      this.events.onListed();
    } else if (unavailable) {
      this.log.debug({ kind: this.kind, err: describe(err), retryInMs: delay }, 'list failed; retrying');
    } else {
      // The store stays the last good view: an unreachable apiserver deletes nothing.
      this.log.warn({ kind: this.kind, phase, err: describe(err), retryInMs: delay }, `${phase} failed; retrying`);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(t);
        this.wake = null;
        resolve();
      };
    });
  }

  /**
   * One page; a cut connection retries the same page (its continue token stays valid until
   * compaction) a few times, so a long list is not restarted from its first page.
   */
  private async listPage(continueToken: string | undefined): Promise<ListPage> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.api.list({ limit: this.opts.pageSize, continueToken });
      } catch (err) {
        if (attempt >= 3 || isGone(err) || this.stopped || typeof (err as { code?: unknown }).code === 'number') throw err;
        await this.sleep(200 * 2 ** attempt);
      }
    }
  }

  /** Paged list, then hand on the difference from the store (adds, updates, deletes). */
  private async relist(reason: string): Promise<void> {
    const seen = new Map<string, { rv: string; raw: unknown }>();
    let continueToken: string | undefined;
    let rv = '';
    let pages = 0;
    const t0 = performance.now();
    do {
      const page = await this.listPage(continueToken);
      pages++;
      rv = page.resourceVersion;
      for (const raw of page.items) {
        const meta = (raw as { metadata?: { name?: string; namespace?: string; resourceVersion?: string } }).metadata;
        if (!meta?.name) continue;
        seen.set(objectKey(this.kind, { metadata: meta as { name: string; namespace?: string } }), { rv: meta.resourceVersion ?? '', raw });
      }
      continueToken = page.continueToken || undefined;
    } while (continueToken && !this.stopped);
    if (this.stopped) return;

    let adds = 0;
    let updates = 0;
    let deletes = 0;
    for (const [key, { rv: objRv, raw }] of seen) {
      const had = this.store.get(key);
      if (had && had.rv === objRv) continue;
      if (had) updates++;
      else adds++;
      this.accept(key, objRv, raw);
    }
    for (const key of [...this.store.keys()]) {
      if (!seen.has(key)) {
        deletes++;
        this.remove(key);
      }
    }
    this.resourceVersion = rv;
    this.events.onRelist?.(reason);
    this.log.info(
      { kind: this.kind, reason, objects: seen.size, pages, adds, updates, deletes, resourceVersion: rv, ms: Math.round(performance.now() - t0) },
      'listed',
    );
    if (!this.listed) {
      this.listed = true;
      this.events.onListed();
    }
  }

  /** One watch from this.resourceVersion until it ends; never throws for a clean close. */
  private watchOnce(): Promise<{ reason: 'closed' | 'gone' | 'idle' | 'aborted'; events: number }> {
    return new Promise((resolve, reject) => {
      let events = 0;
      this.delivered = 0;
      let lastEventAt = Date.now();
      let ended = false;
      let idle = false;
      let aborted = false;
      let abort: (() => void) | null = null;
      const finish = (err: unknown) => {
        if (ended) return;
        ended = true;
        clearInterval(watchdog);
        this.abortWatch = null;
        if (err instanceof GoneError || (err && isGone(err))) resolve({ reason: 'gone', events });
        else if (idle) resolve({ reason: 'idle', events });
        else if (aborted || this.stopped) resolve({ reason: 'aborted', events });
        else if (err) reject(err instanceof Error ? err : new Error(JSON.stringify(err)));
        else resolve({ reason: 'closed', events });
      };
      const watchdog = setInterval(() => {
        if (Date.now() - lastEventAt > this.opts.watchIdleTimeoutMs) {
          idle = true;
          finish(null);
          abort?.();
        }
      }, Math.max(50, Math.min(5000, this.opts.watchIdleTimeoutMs / 4)));
      this.abortWatch = () => {
        aborted = true;
        finish(null);
        abort?.();
      };
      // Server-side timeout like client-go: 5 to 10 minutes, so connections are recycled.
      const timeoutSeconds = Math.round(300 * (1 + Math.random()));
      this.api
        .watch(
          { resourceVersion: this.resourceVersion, timeoutSeconds },
          (ev) => {
            if (ended) return;
            lastEventAt = Date.now();
            events++;
            this.delivered++;
            try {
              this.handleEvent(ev);
            } catch (err) {
              // settle first: aborting closes the stream, which would report a clean close
              finish(err);
              abort?.();
            }
          },
          (err) => finish(err),
        )
        .then((a) => {
          abort = a;
          if (ended) a();
        }, finish);
    });
  }

  private handleEvent(ev: WatchEvent): void {
    const obj = ev.object as { metadata?: { name?: string; namespace?: string; resourceVersion?: string }; code?: number; message?: string };
    switch (ev.type) {
      case 'BOOKMARK':
        if (obj.metadata?.resourceVersion) this.resourceVersion = obj.metadata.resourceVersion;
        return;
      case 'ERROR': {
        const err = obj.code === 410 ? new GoneError(obj.message ?? 'Gone') : Object.assign(new Error(obj.message ?? 'watch error'), { code: obj.code });
        throw err;
      }
      case 'ADDED':
      case 'MODIFIED':
      case 'DELETED': {
        const meta = obj.metadata;
        if (!meta?.name) return;
        const key = objectKey(this.kind, { metadata: meta as { name: string; namespace?: string } });
        if (ev.type === 'DELETED') this.remove(key);
        else this.accept(key, meta.resourceVersion ?? '', ev.object);
        if (meta.resourceVersion) this.resourceVersion = meta.resourceVersion;
        return;
      }
      default:
        this.log.warn({ kind: this.kind, type: ev.type }, 'unknown watch event type ignored');
    }
  }

  /** Validates and hands on an add or update. An invalid update keeps the last valid version. */
  private accept(key: string, rv: string, raw: unknown): void {
    const had = this.store.get(key);
    const v = validateObject(this.kind, raw);
    if (!v.ok) {
      this.log.warn({ kind: this.kind, object: key, reason: v.reason }, had?.object ? 'invalid update ignored; last valid version kept' : 'invalid object skipped');
      this.store.set(key, { rv, object: had?.object });
      return;
    }
    this.store.set(key, { rv, object: v.object });
    this.events.onChange(changeOf(this.kind, had?.object, v.object, 'api'));
  }

  private remove(key: string): void {
    const had = this.store.get(key);
    if (!had) return;
    this.store.delete(key);
    if (had.object) this.events.onChange(changeOf(this.kind, had.object, undefined, 'api'));
  }
}

function describe(err: unknown): string {
  const code = statusCode(err);
  const msg = (err as Error)?.message ?? String(err);
  return code ? `${code}: ${msg.split('\n')[0]}` : msg.split('\n')[0]!;
}
