import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BoundedFrequencyRunner, realClock } from '../../src/sync/runner.js';

describe('bounded-frequency runner', () => {
  beforeEach(() => vi.useFakeTimers({ now: 0 }));
  afterEach(() => vi.useRealTimers());

  function make(result: () => boolean = () => true) {
    const times: number[] = [];
    const r = new BoundedFrequencyRunner(
      async () => {
        times.push(Date.now());
        return result();
      },
      1000,
      30_000,
      realClock,
    );
    return { r, times };
  }

  it('coalesces a burst of requests into at most one run per minInterval', async () => {
    const { r, times } = make();
    r.start();
    r.run();
    await vi.advanceTimersByTimeAsync(0);
    for (let i = 0; i < 50; i++) {
      r.run();
      await vi.advanceTimersByTimeAsync(10);
    }
    await vi.advanceTimersByTimeAsync(2000);
    expect(times).toEqual([0, 1000]);
    await r.stop();
  });

  it('runs at least once per maxInterval without requests', async () => {
    const { r, times } = make();
    r.start();
    r.run();
    await vi.advanceTimersByTimeAsync(95_000);
    expect(times).toEqual([0, 30_000, 60_000, 90_000]);
    await r.stop();
  });

  it('retries a failed run with backoff, not waiting for maxInterval', async () => {
    let fail = 2;
    const { r, times } = make(() => fail-- <= 0);
    r.start();
    r.run();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(times.slice(0, 3)).toEqual([0, 1000, 3000]);
    await r.stop();
  });

  it('keeps backing off while a run keeps failing, even with requests arriving, up to maxInterval', async () => {
    const { r, times } = make(() => false);
    r.start();
    r.run();
    // a change every 100 ms does not make a failing sync run more often
    for (let t = 0; t < 120_000; t += 100) {
      r.run();
      await vi.advanceTimersByTimeAsync(100);
    }
    expect(times.slice(0, 7)).toEqual([0, 1000, 3000, 7000, 15_000, 31_000, 61_000]);
    expect(r.consecutiveFailures).toBe(times.length);
    await r.stop();
  });

  it('tells a run that throws, with its cause, once, and retries it with backoff like a failed one', async () => {
    const errors: string[] = [];
    let throws = 1;
    const times: number[] = [];
    const r = new BoundedFrequencyRunner(
      () => {
        times.push(Date.now());
        return throws-- > 0 ? Promise.reject(new Error('boom')) : Promise.resolve(true);
      },
      1000,
      30_000,
      realClock,
      (err) => errors.push(err.message),
    );
    r.start();
    r.run();
    await vi.advanceTimersByTimeAsync(5000);
    expect(errors).toEqual(['boom']);
    expect(times.slice(0, 2)).toEqual([0, 1000]);
    expect(r.consecutiveFailures).toBe(0);
    await r.stop();
  });
});
