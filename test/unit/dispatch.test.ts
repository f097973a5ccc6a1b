import { describe, expect, it } from 'vitest';
import { addressDispatch, buildDispatch, DispatchTree, portDispatch, type DispatchEntry } from '../../src/render/iptables/dispatch.js';
import { ipToBigInt } from '../../src/util/ip.js';

/** Follows a tree's jumps for one key; returns the leaf rules walked and the rule count. */
function lookup(out: ReturnType<typeof buildDispatch>, key: bigint, bits: number): { hits: string[]; walked: number } {
  const hits: string[] = [];
  let walked = 0;
  const visit = (rules: readonly string[]) => {
    for (const r of rules) {
      walked++;
      const m = /^-d (\S+)\/(\d+) -j (\S+)$/.exec(r) ?? /--dport (\d+)(?::(\d+))? -j (KPX-\S+)$/.exec(r);
      if (m && out.chains.has(m[3]!)) {
        let inside: boolean;
        if (r.startsWith('-d ')) {
          const len = Number(m[2]);
          const mask = len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << BigInt(bits - len);
          inside = (key & mask) === ipToBigInt(m[1]!);
        } else {
          const lo = BigInt(m[1]!);
          const hi = m[2] ? BigInt(m[2]) : lo;
          inside = key >= lo && key <= hi;
        }
        if (inside) visit(out.chains.get(m[3]!)!);
      } else hits.push(r);
    }
  };
  visit(out.rootRules);
  return { hits, walked };
}

const ipEntry = (ip: string, port = 80): DispatchEntry => ({ key: ipToBigInt(ip), order: String(port), rule: `-d ${ip}/32 --dport ${port} -j X` });

function randomIPs(n: number, seed: number): string[] {
  const set = new Set<string>();
  let x = seed;
  while (set.size < n) {
    x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff;
    set.add(`198.19.${(x >> 8) & 255}.${x & 255}`);
  }
  return [...set];
}

describe('dispatch trees', () => {
  const spec = addressDispatch('DST', 'IPv4', 8);

  it('is a flat list when the entries fit in one leaf', () => {
    const out = buildDispatch(spec, randomIPs(5, 1).map((ip) => ipEntry(ip)));
    expect(out.chains.size).toBe(0);
    expect(out.rootRules).toHaveLength(5);
  });

  it('reaches every entry, with bounded chains and a short walk, at 10k entries', () => {
    const ips = randomIPs(10_000, 7);
    const out = buildDispatch(spec, ips.map((ip) => ipEntry(ip)));
    for (const rules of out.chains.values()) expect(rules.length).toBeLessThanOrEqual(8);
    expect(out.rootRules.length).toBeLessThanOrEqual(2);
    let maxWalk = 0;
    for (const ip of ips.slice(0, 2000)) {
      const { hits, walked } = lookup(out, ipToBigInt(ip), 32);
      // the matching entry is among the leaf rules the packet sees
      expect(hits).toContain(`-d ${ip}/32 --dport 80 -j X`);
      maxWalk = Math.max(maxWalk, walked);
    }
    expect(maxWalk).toBeLessThan(64);
  });

  it('does not depend on history and changes one root-to-leaf path per entry', () => {
    const ips = randomIPs(3000, 3);
    const a = buildDispatch(spec, ips.map((ip) => ipEntry(ip)));
    const b = buildDispatch(spec, [...ips].reverse().map((ip) => ipEntry(ip)));
    expect([...b.chains.entries()]).toEqual([...a.chains.entries()]);
    const added = buildDispatch(spec, [...ips, '198.19.77.77'].map((ip) => ipEntry(ip)));
    const changed = [...added.chains].filter(([k, v]) => JSON.stringify(a.chains.get(k)) !== JSON.stringify(v));
    const removed = [...a.chains.keys()].filter((k) => !added.chains.has(k));
    expect(changed.length + removed.length).toBeLessThanOrEqual(32);
  });

  it('splits NodePorts on port ranges', () => {
    const entries = Array.from({ length: 100 }, (_, i) => ({ key: BigInt(30000 + i * 7), order: '', rule: `--dport ${30000 + i * 7} -j Y` }));
    const out = buildDispatch(portDispatch('NP', 'tcp', 8), entries);
    for (const e of entries) expect(lookup(out, e.key, 16).hits).toContain(e.rule);
    expect([...out.chains.values()].flat().some((r) => /--dport \d+:\d+ -j KPX-NP-/.test(r))).toBe(true);
  });
});

describe('incremental dispatch tree updates', () => {
  it('keeps the old tree when a far key moves the root up, and when it leaves again', () => {
    const spec = addressDispatch('DST', 'IPv4', 4);
    const base = Array.from({ length: 200 }, (_, i) => ipEntry(`198.19.${i >> 6}.${(i & 63) + 1}`));
    const tree = new DispatchTree(spec);
    tree.reset(base);
    const far = ipEntry('198.19.9.9');
    for (const [removed, added, present] of [
      [[], [far], [...base, far]],
      [[far], [], base],
    ] as const) {
      const before = new Map(tree.ownChains());
      const changes = tree.update(removed, added);
      for (const [n, b] of changes) {
        if (b === null) before.delete(n);
        else before.set(n, b);
      }
      const fresh = new DispatchTree(spec);
      fresh.reset(present);
      expect(new Map([...before].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
      expect(new Map([...tree.ownChains()].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
    }
  });

  it('after any sequence of adds and removes, equals a fresh build, and its changes are exact', () => {
    const spec = addressDispatch('DST', 'IPv4', 4);
    let seed = 99;
    const rnd = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
      return seed % n;
    };
    const tree = new DispatchTree(spec);
    tree.reset([]);
    const present = new Map<string, DispatchEntry>();
    let chains = new Map<string, string>();
    for (let step = 0; step < 3000; step++) {
      const removed: DispatchEntry[] = [];
      const added: DispatchEntry[] = [];
      for (let k = 0; k < 1 + rnd(3); k++) {
        // clustered addresses make splits and collapses frequent; a few far-away keys that
        // come and go move the root up and down
        const far = ['198.19.9.9', '198.18.0.1', '198.19.64.1', '198.19.3.250'];
        const ip = rnd(8) === 0 ? far[rnd(far.length)]! : `198.19.${rnd(4)}.${rnd(64)}`;
        const port = 80 + rnd(2);
        const id = `${ip}:${port}`;
        if (present.has(id) && !removed.includes(present.get(id)!)) {
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
      expect(new Map([...tree.ownChains()].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
      expect(new Map([...chains].sort())).toEqual(new Map([...fresh.ownChains()].sort()));
      chains = new Map(tree.ownChains());
    }
  });
});
