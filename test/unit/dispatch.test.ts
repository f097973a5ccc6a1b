import { describe, expect, it } from 'vitest';
import {
  addressDispatch,
  capacityAt,
  DEFAULT_SHAPE,
  depthBound,
  DispatchTree,
  unitHash,
  portDispatch,
  type DispatchEntry,
  type DispatchSpec,
} from '../../src/render/iptables/dispatch.js';
import { rulesOf } from '../../src/iptables/format.js';
import { bigIntToIP, ipToBigInt } from '../../src/util/ip.js';
import { allocator, seededRandom } from '../../bench/synthetic.js';

interface Built {
  rootRules: readonly string[];
  chains: Map<string, string[]>;
  depth: number;
}

function build(spec: DispatchSpec, entries: readonly DispatchEntry[]): Built {
  const t = new DispatchTree(spec);
  t.reset(entries);
  return { rootRules: [...t.rootRules], chains: new Map([...t.ownChains()].map(([n, b]) => [n, rulesOf(n, b)])), depth: t.depth };
}

/**
 * Follows a tree's rules for one key as netfilter would (first match; a chain that ends
 * without a verdict returns to the next rule of its caller): the entry rules reached,
 * rules evaluated, and chain levels entered.
 */
function lookup(out: Built, key: bigint, family: 'IPv4' | 'IPv6' | 'port'): { hits: string[]; walked: number; levels: number } {
  const hits: string[] = [];
  let walked = 0;
  let levels = 0;
  let done = false;
  const parse = (text: string) => (family === 'port' ? BigInt(text) : ipToBigInt(text));
  const visit = (rules: readonly string[], depth: number) => {
    levels = Math.max(levels, depth);
    for (const r of rules) {
      if (done) return;
      walked++;
      const range = /--dst-range (\S+)-(\S+) -j (\S+)$/.exec(r) ?? /--dport (\d+):(\d+) -j (KPX-\S+)$/.exec(r);
      const single = /^-d (\S+)\/\d+ -j (KPX-\S+)$/.exec(r) ?? /--dport (\d+) -j (KPX-\S+)$/.exec(r);
      if (range && out.chains.has(range[3]!)) {
        if (key >= parse(range[1]!) && key <= parse(range[2]!)) visit(out.chains.get(range[3]!)!, depth + 1);
      } else if (single && out.chains.has(single[2]!)) {
        if (key === parse(single[1]!)) visit(out.chains.get(single[2]!)!, depth + 1);
      } else if (entryKey(r) === key) {
        // an entry's rule ends the walk (its target is a DNAT or verdict)
        hits.push(r);
        done = true;
      }
    }
  };
  visit(out.rootRules, 0);
  return { hits, walked, levels };
}

/** The key an entry rule stands for (the entries below carry it in their rule). */
const entryKey = (r: string): bigint | undefined => {
  const m = /^key=(\d+) /.exec(r);
  return m ? BigInt(m[1]!) : undefined;
};

const entry = (key: bigint, order = '80'): DispatchEntry => ({ key, order, rule: `key=${key} port=${order} -j X` });
const ipEntry = (ip: string, port = 80): DispatchEntry => entry(ipToBigInt(ip), String(port));

const rng = seededRandom;

/** Key distributions the depth bound must hold for (distinct keys). */
function keys(kind: string, n: number, seed: number): bigint[] {
  const r = rng(seed);
  const set = new Set<bigint>();
  const v4 = ipToBigInt('198.18.0.0');
  const v6 = ipToBigInt('2001:2::');
  let guard = 0;
  let last = 0n;
  while (set.size < n) {
    if (++guard > n * 200) throw new Error(`cannot make ${n} ${kind} keys (${set.size} made)`);
    switch (kind) {
      case 'sequential':
        set.add(v4 + BigInt(set.size + 1));
        break;
      case 'random /12': // the apiserver's allocation in a /12 service CIDR
        set.add(v4 + BigInt(r(1 << 20)));
        break;
      case 'clustered': // a few dense /24s far apart
        set.add(ipToBigInt(`198.${18 + r(2)}.${r(8) * 31}.0`) + BigInt(r(256)));
        break;
      case 'random v6 /64':
        set.add(v6 + (BigInt(r(2 ** 31)) << 33n) + (BigInt(r(2 ** 31)) << 2n) + BigInt(r(4)));
        break;
      case 'random v6 /108':
        set.add(v6 + BigInt(r(1 << 20)));
        break;
      case 'a peak every min keys': {
        // increasing keys whose level-0 hashes peak every `min` keys: every leaf has
        // exactly `min` entries, the most leaves (and so the deepest tree) keys can force
        const k = (set.size ? last : v4) + 1n + BigInt(r(4096));
        const peak = set.size % DEFAULT_SHAPE.min === DEFAULT_SHAPE.min - 1;
        if (peak === unitHash(k, 0) > 0xf0000000) set.add((last = k));
        break;
      }
      case 'hashes rising for 100 keys': {
        // no local maximum for 100 keys at a time: natural chunks of 100, split evenly,
        // the most a single insertion can make the tree rewrite
        const k = (set.size ? last : v4) + 1n + BigInt(r(4096));
        const j = set.size % 100;
        const h = unitHash(k, 0);
        if (h >= j * 0x28f5c28 && h < (j + 1) * 0x28f5c28) set.add((last = k));
        break;
      }
      case 'nodeports':
        set.add(BigInt(r(65536)));
        break;
      default:
        throw new Error(kind);
    }
  }
  return [...set];
}

describe('dispatch trees', () => {
  const spec = addressDispatch('DST', 'IPv4');

  it('is a flat list when the entries fit in the root chain', () => {
    const out = build(spec, keys('random /12', 20, 1).map((k) => entry(k)));
    expect(out.chains.size).toBe(0);
    expect(out.rootRules).toHaveLength(20);
  });

  it('reaches every entry with at most `max` rules per chain and depth within the bound, at 10k random ClusterIPs', () => {
    const ks = keys('random /12', 10_000, 7);
    const out = build(spec, ks.map((k) => entry(k)));
    for (const rules of out.chains.values()) expect(rules.length).toBeLessThanOrEqual(DEFAULT_SHAPE.max);
    expect(out.rootRules.length).toBeLessThanOrEqual(DEFAULT_SHAPE.max);
    expect(out.depth).toBeLessThanOrEqual(depthBound(10_000));
    let maxWalk = 0;
    for (const k of ks.slice(0, 2000)) {
      const { hits, walked } = lookup(out, k, 'IPv4');
      expect(hits).toEqual([`key=${k} port=80 -j X`]);
      maxWalk = Math.max(maxWalk, walked);
    }
    expect(maxWalk).toBeLessThanOrEqual((depthBound(10_000) + 1) * DEFAULT_SHAPE.max);
  });

  it('interior rules match address ranges, and the ranges of one chain do not overlap', () => {
    const out = build(spec, keys('random /12', 3000, 5).map((k) => entry(k)));
    for (const rules of [out.rootRules, ...out.chains.values()]) {
      const ranges = rules
        .map((r) => /--dst-range (\S+)-(\S+) /.exec(r))
        .filter((m) => m !== null)
        .map((m) => [ipToBigInt(m[1]!), ipToBigInt(m[2]!)] as const);
      for (let i = 1; i < ranges.length; i++) expect(ranges[i]![0]).toBeGreaterThan(ranges[i - 1]![1]);
    }
  });

  it('does not depend on history, and one more entry rewrites a few chains', () => {
    const ks = keys('random /12', 3000, 3);
    const a = build(spec, ks.map((k) => entry(k)));
    const b = build(spec, [...ks].reverse().map((k) => entry(k)));
    expect([...b.chains.entries()]).toEqual([...a.chains.entries()]);
    let worst = 0;
    const r = rng(17);
    for (let i = 0; i < 50; i++) {
      const added = build(spec, [...ks, ipToBigInt('198.18.0.0') + BigInt(r(1 << 20))].map((k) => entry(k)));
      const changed = [...added.chains].filter(([k, v]) => JSON.stringify(a.chains.get(k)) !== JSON.stringify(v));
      const removed = [...a.chains.keys()].filter((k) => !added.chains.has(k));
      worst = Math.max(worst, changed.length + removed.length);
    }
    // one leaf, its ancestors, and now and then a split or merge beside them
    expect(worst).toBeLessThanOrEqual(4 * (a.depth + 1));
  });

  it('splits NodePorts on port ranges', () => {
    const entries = Array.from({ length: 300 }, (_, i) => entry(BigInt(30000 + i * 7), 'np'));
    const out = build(portDispatch('NP', 'tcp'), entries);
    for (const e of entries) expect(lookup(out, e.key, 'port').hits).toEqual([e.rule]);
    expect([...out.rootRules, ...[...out.chains.values()].flat()].some((r) => /^-p tcp -m tcp --dport \d+:\d+ -j KPX-NP-/.test(r))).toBe(true);
  });

  it('keeps a service with many ports on one address reachable when its entries span chunks', () => {
    const ip = ipToBigInt('198.18.7.7');
    const entries = [
      ...Array.from({ length: 100 }, (_, p) => entry(ip, String(1000 + p))),
      ...keys('random /12', 500, 9).map((k) => entry(k)),
    ];
    const out = build(spec, entries);
    const { hits } = lookup(out, ip, 'IPv4');
    // the walk goes on after a chunk without a match, so the first entry of the address
    // is reached wherever it sits; the other 99 ports are reached the same way (each rule
    // also matches its port, which this key-only lookup does not model)
    expect(hits).toEqual([`key=${ip} port=1000 -j X`]);
    for (const rules of out.chains.values()) expect(rules.length).toBeLessThanOrEqual(DEFAULT_SHAPE.max);
  });
});

describe('the depth bound holds for any keys (docs/design.md)', () => {
  const sizes = [1000, 10_000, 30_000, 100_000];
  const cases: Array<[string, 'IPv4' | 'IPv6' | 'port', number[]]> = [
    ['sequential', 'IPv4', sizes],
    ['random /12', 'IPv4', sizes],
    ['clustered', 'IPv4', [1000, 3000]],
    ['random v6 /64', 'IPv6', sizes],
    ['random v6 /108', 'IPv6', sizes],
    ['a peak every min keys', 'IPv4', [1000, 10_000]],
    ['hashes rising for 100 keys', 'IPv4', [1000, 3000]],
    ['nodeports', 'port', [2768, 30_000, 65_536]],
  ];
  for (const [kind, family, ns] of cases) {
    it(`${kind}: depth <= depthBound(N), chains <= max rules, every key reached`, () => {
      const figures: string[] = [];
      for (const n of ns) {
        const ks = keys(kind, n, n);
        const s = family === 'port' ? portDispatch('NPT', 'tcp') : addressDispatch('DST', family);
        const out = build(s, ks.map((k) => entry(k)));
        expect(out.depth, `${kind} ${n}`).toBeLessThanOrEqual(depthBound(n));
        for (const rules of [out.rootRules, ...out.chains.values()]) expect(rules.length).toBeLessThanOrEqual(DEFAULT_SHAPE.max);
        let walked = 0;
        let worst = 0;
        const r = rng(n);
        for (let i = 0; i < 500; i++) {
          const k = ks[r(ks.length)]!;
          const l = lookup(out, k, family);
          expect(l.hits, `${kind} ${n} key ${family === 'port' ? k : bigIntToIP(k, family)}`).toEqual([`key=${k} port=80 -j X`]);
          expect(l.levels).toBeLessThanOrEqual(out.depth);
          walked += l.walked;
          worst = Math.max(worst, l.walked);
        }
        figures.push(`${n}: depth ${out.depth} (bound ${depthBound(n)}), rules walked mean ${(walked / 500).toFixed(1)} max ${worst}`);
      }
      console.log(`dispatch ${kind}: ${figures.join('; ')}`);
    }, 120_000);
  }

  it('the formula: depth 5 holds a million entries; the root alone holds 32', () => {
    expect(depthBound(32)).toBe(0);
    expect(depthBound(33)).toBe(1);
    expect(capacityAt(5)).toBe(32 * 8 ** 5);
    expect(depthBound(capacityAt(5))).toBe(5);
    expect(depthBound(capacityAt(5) + 1)).toBe(6);
  });

  it('apiserver-allocated ClusterIPs (random in the CIDR) stay within the bound', () => {
    const alloc = allocator({ serviceCIDR: '198.18.0.0/15', seed: 4 });
    const ks = Array.from({ length: 30_000 }, () => ipToBigInt(alloc.clusterIP()));
    const out = build(spec, ks.map((k) => entry(k)));
    expect(out.depth).toBeLessThanOrEqual(depthBound(30_000));
  });
  const spec = addressDispatch('DST', 'IPv4');
});

describe('incremental dispatch tree updates', () => {
  // a small shape: deep trees from few entries, so splits, merges and level changes are frequent
  const shape = { min: 2, max: 4 };
  const spec = addressDispatch('DST', 'IPv4', shape);

  it('after any sequence of adds and removes, equals a fresh build, and its changes are exact', () => {
    const r = rng(99);
    const tree = new DispatchTree(spec);
    tree.reset([]);
    const present = new Map<string, DispatchEntry>();
    let chains = new Map<string, string>();
    for (let step = 0; step < 3000; step++) {
      const removed: DispatchEntry[] = [];
      const added: DispatchEntry[] = [];
      const touched = new Set<string>();
      for (let k = 0; k < 1 + r(3); k++) {
        // clustered addresses with several ports each (entries sharing a key, and chunks
        // forced to split inside one key); a few far keys that come and go
        const far = ['198.19.9.9', '198.18.0.1', '198.19.64.1', '198.19.3.250'];
        const ip = r(8) === 0 ? far[r(far.length)]! : `198.19.${r(4)}.${r(40)}`;
        const port = 80 + r(6);
        const id = `${ip}:${port}`;
        // one change per entry and step, as the renderer hands them over
        if (touched.has(id)) continue;
        touched.add(id);
        if (present.has(id)) {
          removed.push(present.get(id)!);
          present.delete(id);
        } else if (!present.has(id)) {
          const e = ipEntry(ip, port);
          added.push(e);
          present.set(id, e);
        }
      }
      const changes = tree.update(removed, added);
      for (const [n, b] of changes) {
        if (b === null) chains.delete(n);
        else chains.set(n, b);
      }
      const fresh = new DispatchTree(spec);
      fresh.reset([...present.values()]);
      expect([...tree.rootRules]).toEqual([...fresh.rootRules]);
      expect(tree.depth).toBe(fresh.depth);
      expect(new Map([...tree.ownChains()].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
      expect(new Map([...chains].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
      chains = new Map(tree.ownChains());
    }
  });

  it('a partial update at 30k entries rewrites O(depth) chains', () => {
    const big = new DispatchTree(addressDispatch('DST', 'IPv4'));
    const ks = keys('random /12', 30_000, 21);
    big.reset(ks.map((k) => entry(k)));
    const r = rng(5);
    let worst = 0;
    for (let i = 0; i < 200; i++) {
      const k = ipToBigInt('198.18.0.0') + BigInt(r(1 << 20));
      const e = entry(k, 'new');
      const changes = big.update([], [e]);
      worst = Math.max(worst, changes.size);
      big.update([e], []);
    }
    expect(worst).toBeLessThanOrEqual(4 * (big.depth + 1));
  });
});
