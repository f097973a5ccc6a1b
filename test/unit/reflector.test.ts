// The reflector's optional resources (ServiceCIDRs): a list refused as forbidden or not
// found counts as an empty first list, so the initial sync is not held up, and what a later
// list finds is handed on; a required resource keeps the source waiting.
import { describe, expect, it } from 'vitest';
import { Reflector, type ListPage, type ResourceApi } from '../../src/source/kube/reflector.js';
import type { Change } from '../../src/model/state.js';
import { silentLogger } from '../../src/util/log.js';

const OPTS = { pageSize: 10, watchIdleTimeoutMs: 60_000, relistPeriodMs: 0, backoff: { initialMs: 5, maxMs: 10 } };
const cidr = { apiVersion: 'networking.k8s.io/v1', kind: 'ServiceCIDR', metadata: { name: 'kubernetes', resourceVersion: '7' }, spec: { cidrs: ['198.19.0.0/16'] } };

/** Lists fail with `code` `failures` times, then return the ServiceCIDR; watches stay open and silent. */
function api(code: number, failures: number): ResourceApi & { lists: number } {
  const a = {
    lists: 0,
    list(): Promise<ListPage> {
      a.lists++;
      if (a.lists <= failures) return Promise.reject(Object.assign(new Error('refused'), { code }));
      return Promise.resolve({ items: [cidr], resourceVersion: '7', continueToken: undefined });
    },
    watch: () => Promise.resolve(() => {}),
  };
  return a;
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

function run(code: number, optional: boolean, failures = 3) {
  const changes: Change[] = [];
  let listed = 0;
  const fake = api(code, failures);
  const r = new Reflector('ServiceCIDR', fake, { onChange: (c) => changes.push(c), onListed: () => listed++ }, { ...OPTS, optional }, silentLogger);
  r.start();
  return { r, fake, changes, listed: () => listed };
}

describe('reflector: optional resources', () => {
  for (const code of [403, 404]) {
    it(`an optional resource whose list answers ${code} counts as listed (empty), and a later list hands on what it finds`, async () => {
      const { r, fake, changes, listed } = run(code, true);
      await until(() => listed() === 1);
      expect(changes).toEqual([]);
      await until(() => changes.length === 1);
      expect(fake.lists).toBe(4);
      expect(changes[0]).toMatchObject({ kind: 'ServiceCIDR', current: { metadata: { name: 'kubernetes' }, spec: { cidrs: ['198.19.0.0/16'] } } });
      expect(listed()).toBe(1);
      await r.stop();
    });
  }

  it('a required resource is listed only once its list succeeds; other errors hold up an optional one too', async () => {
    // 20 failures: the check after the second list cannot race the first success
    const required = run(403, false, 20);
    await until(() => required.fake.lists >= 2);
    expect(required.listed()).toBe(0);
    await until(() => required.listed() === 1);
    expect(required.fake.lists).toBe(21);
    await required.r.stop();
    const unreachable = run(500, true, 20);
    await until(() => unreachable.fake.lists >= 2);
    expect(unreachable.listed()).toBe(0);
    await until(() => unreachable.listed() === 1);
    await unreachable.r.stop();
  });
});
