// Dispatch trees: how kpx avoids kube-proxy's one-rule-per-service KUBE-SERVICES chain
// while keeping every path from a built-in chain within a hard depth bound.
//
// Entries (one rule each, e.g. "-d 198.19.3.7/32 -p tcp --dport 80 -j KPX-SVC-...") are
// keyed by a number (destination address, or NodePort) and kept sorted. The sorted list is
// cut into chunks of consecutive entries; each chunk is a leaf chain holding its entries'
// rules. The chunks are cut again into groups, each an interior chain with one rule per
// child ("-m iprange --dst-range lo-hi -j child", or "--dport lo:hi"), and so on up, until
// a level has few enough chains to be the rules of the fixed chain that roots the tree.
//
// Where chunks end is decided by a hash of each unit's key (a unit is a distinct key at the
// lowest level, a child chain above): a unit ends a chunk when its hash is the largest
// within `min - 1` units on either side (a local maximum), and it is at least `min` units
// from either end of the level. Two such units are more than `min - 1` apart, so every
// chunk has at least `min` units, and each level divides the count by `min` or more: the
// depth is at most log_min(N / max) levels, whatever the keys (depthBound() below). A
// chunk of more than `max` rules is split evenly into parts of at most `max` (and at least
// max / 2 >= min), so no chain has more than `max` rules, a bound on what a packet walks.
// Hashes, not key bits, decide, so clustered, sequential and random addresses all give
// the same shape statistically; and the shape is a pure function of the entry set: the
// same model renders the same text whether it was built at once or by updates. Whether a
// unit ends a chunk depends only on its neighbours within `min - 1`, so a changed entry
// rewrites the chains on its root-to-leaf path and, now and then, a neighbour.
// See docs/design.md ("Dispatch trees") for the bound and the measurements behind it.
import type { IPFamily } from '../../util/ip.js';
import { bigIntToIP } from '../../util/ip.js';
import { block } from '../../iptables/format.js';
import { dispatchChain, type Generation } from './names.js';

export interface DispatchEntry {
  /** destination address (as integer) or port number */
  readonly key: bigint;
  /** tie-break between entries with the same key, for a deterministic order */
  readonly order: string;
  /** the rule's arguments (without "-A CHAIN") */
  readonly rule: string;
}

/** How chunks are cut; see the file comment. max >= 2 * min. */
export interface TreeShape {
  readonly min: number;
  readonly max: number;
}

/**
 * About 15 rules a chain (2 * min - 1 for random hashes), at least 8 and never more than
 * 32: depth <= 5 up to 1M entries.
 */
export const DEFAULT_SHAPE: TreeShape = { min: 8, max: 32 };

export interface DispatchSpec {
  /** distinguishes trees in chain names, e.g. "DST", "NPT" */
  readonly tag: string;
  readonly keyBits: number;
  /** the match for "key within [lo, hi]" */
  rangeMatch(lo: bigint, hi: bigint): string;
  readonly shape: TreeShape;
  /** the name set of the tree's chains */
  readonly generation?: Generation;
}

/**
 * The most chain levels below the root chain a tree of `entries` entries can have with
 * this shape, for any keys: each level has at most ceil(count / min) chains.
 */
export function depthBound(entries: number, shape: TreeShape = DEFAULT_SHAPE): number {
  let count = entries;
  let depth = 0;
  while (count > shape.max) {
    count = Math.ceil(count / shape.min);
    depth++;
  }
  return depth;
}

/** Entries a tree can hold within `depth` levels below its root chain, for any keys. */
export function capacityAt(depth: number, shape: TreeShape = DEFAULT_SHAPE): number {
  return shape.max * shape.min ** depth;
}

function compare(a: DispatchEntry, b: DispatchEntry): number {
  if (a.key !== b.key) return a.key < b.key ? -1 : 1;
  if (a.order !== b.order) return a.order < b.order ? -1 : 1;
  return a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0;
}

/** murmur3's 32-bit finalizer: a fixed, well-mixed hash (the same on every machine). */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function keyHash(key: bigint): number {
  let h = 0x9747b28c;
  let k = key;
  do {
    h = mix32(h ^ Number(k & 0xffffffffn));
    k >>= 32n;
  } while (k > 0n);
  return h;
}

/** The hash that decides whether a unit with this (last) key ends a chunk at `level` (tests build worst cases with it). */
export function unitHash(key: bigint, level: number): number {
  return levelHash(keyHash(key), level);
}

/** Level 0 uses the key's hash as it is; each level above re-mixes it with its own salt. */
function levelHash(h: number, level: number): number {
  return level === 0 ? h : mix32(h ^ Math.imul(level, 0x9e3779b9));
}

/** One chain of the tree: a run of units of the level below (entries at level 0). */
interface Chunk {
  readonly name: string;
  /** [lo, hi) indices into the level below */
  readonly lo: number;
  readonly hi: number;
  /** the smallest and largest key under it (the parent's rule matches [low, high]) */
  readonly low: bigint;
  readonly high: bigint;
  /** identity of the first unit: the entry (level 0) or the child chain's name */
  readonly first: DispatchEntry | string;
  /** index (in entries) of the last entry under it */
  readonly end: number;
}

/** What an update did to the tree's own chains (name -> block, or null when deleted). */
export type ChainChanges = Map<string, string | null>;

export class DispatchTree {
  /** entries, sorted by key then order */
  private entries: DispatchEntry[] = [];
  /** keyHash of each entry's key, parallel to entries */
  private hashes: number[] = [];
  /** chunk levels, leaves (level 0) first; the last level's chunks are the root's targets */
  private levels: Chunk[][] = [];
  private readonly chains = new Map<string, string>();
  private root: string[] = [];
  /** chain names by (boundary entry, level): hashing names is most of a rebuild's cost */
  private names = new WeakMap<DispatchEntry, string[]>();
  /** rules in the tree's own chains (metrics) */
  ruleCount = 0;
  private readonly shape: TreeShape;

  constructor(readonly spec: DispatchSpec) {
    this.shape = spec.shape;
  }

  /** Rules for the fixed chain that roots the tree (e.g. KPX-SERVICES). */
  get rootRules(): readonly string[] {
    return this.root;
  }

  get size(): number {
    return this.entries.length;
  }

  /** Chain levels below the root chain on the longest path (0: the entries are root rules). */
  get depth(): number {
    return this.levels.length;
  }

  /** The tree's chains (name -> block). */
  ownChains(): ReadonlyMap<string, string> {
    return this.chains;
  }

  /** The tree's chains, each after the chains it jumps to (leaves, then each level up). */
  *chainsLeavesFirst(): Generator<readonly [string, string]> {
    for (const level of this.levels) for (const c of level) yield [c.name, this.chains.get(c.name)!];
  }

  /** Replaces all entries and rebuilds every chain. */
  reset(input: readonly DispatchEntry[]): ChainChanges {
    const before = new Map(this.chains);
    this.entries = [...input].sort(compare);
    this.hashes = this.entries.map((e) => keyHash(e.key));
    this.names = new WeakMap();
    this.rebuild(null, null);
    const changes: ChainChanges = new Map();
    for (const [n, b] of this.chains) if (before.get(n) !== b) changes.set(n, b);
    for (const n of before.keys()) if (!this.chains.has(n)) changes.set(n, null);
    return changes;
  }

  /** Removes and adds entries; rewrites only the chains whose rules changed. */
  update(removed: readonly DispatchEntry[], added: readonly DispatchEntry[]): ChainChanges {
    const keys = new Set<bigint>();
    for (const e of removed) {
      keys.add(e.key);
      const i = this.lowerBound(e);
      if (i < this.entries.length && compare(this.entries[i]!, e) === 0) {
        this.entries.splice(i, 1);
        this.hashes.splice(i, 1);
      }
    }
    for (const e of added) {
      keys.add(e.key);
      const i = this.lowerBound(e);
      this.entries.splice(i, 0, e);
      this.hashes.splice(i, 0, keyHash(e.key));
    }
    const changes: ChainChanges = new Map();
    if (keys.size) this.rebuild([...keys].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), changes);
    return changes;
  }

  /**
   * Cuts every level anew (integer work, O(N)) and writes the text of the chains that may
   * have changed: new chains, and chains whose units may differ from last time. With
   * `changedKeys` null, everything is written.
   */
  private rebuild(changedKeys: readonly bigint[] | null, changes: ChainChanges | null): void {
    const old = new Map<string, Chunk>();
    for (const level of this.levels) for (const c of level) old.set(c.name, c);
    const levels: Chunk[][] = [];
    const { max } = this.shape;
    let units = this.entries.length;
    let prev: Chunk[] | null = null;
    while (units > max) {
      const level = levels.length;
      const cut: Chunk[] = prev ? this.cutChunks(prev, level) : this.cutEntries();
      levels.push(cut);
      prev = cut;
      units = cut.length;
    }
    // which chunks need their text written, level by level
    const boundsMoved = new Set<string>();
    levels.forEach((level, l) => {
      for (const c of level) {
        const was = old.get(c.name);
        const dirty =
          !changedKeys ||
          !was ||
          was.first !== c.first ||
          was.hi - was.lo !== c.hi - c.lo ||
          anyKeyIn(changedKeys, c.low, c.high) ||
          (l > 0 && this.childMoved(levels[l - 1]!, c, old, boundsMoved));
        if (was && (was.low !== c.low || was.high !== c.high)) boundsMoved.add(c.name);
        if (!dirty) continue;
        const text = block(c.name, l === 0 ? this.leafRules(c) : this.interiorRules(levels[l - 1]!, c));
        if (this.chains.get(c.name) !== text) {
          this.chains.set(c.name, text);
          changes?.set(c.name, text);
        }
      }
    });
    const kept = new Set<string>();
    for (const level of levels) for (const c of level) kept.add(c.name);
    for (const n of old.keys()) {
      if (kept.has(n)) continue;
      this.chains.delete(n);
      changes?.set(n, null);
    }
    this.levels = levels;
    const top = levels.at(-1);
    this.root = top ? this.interiorRules(top, { lo: 0, hi: top.length }) : this.entries.map((e) => e.rule);
    // leaves hold every entry; an interior chain holds a rule per child
    let rules = levels.length ? this.entries.length : 0;
    for (let l = 0; l + 1 < levels.length; l++) rules += levels[l]!.length;
    this.ruleCount = rules;
  }

  private childMoved(below: readonly Chunk[], c: Chunk, old: ReadonlyMap<string, Chunk>, moved: ReadonlySet<string>): boolean {
    for (let i = c.lo; i < c.hi; i++) {
      const child = below[i]!;
      if (!old.has(child.name) || moved.has(child.name)) return true;
    }
    return false;
  }

  private leafRules(c: Pick<Chunk, 'lo' | 'hi'>): string[] {
    const out = new Array<string>(c.hi - c.lo);
    for (let i = c.lo; i < c.hi; i++) out[i - c.lo] = this.entries[i]!.rule;
    return out;
  }

  private interiorRules(below: readonly Chunk[], c: Pick<Chunk, 'lo' | 'hi'>): string[] {
    const out = new Array<string>(c.hi - c.lo);
    for (let i = c.lo; i < c.hi; i++) {
      const child = below[i]!;
      out[i - c.lo] = `${this.spec.rangeMatch(child.low, child.high)} -j ${child.name}`;
    }
    return out;
  }

  /** Level 0: units are the distinct keys (all entries of a key stay together unless a chunk is split). */
  private cutEntries(): Chunk[] {
    const e = this.entries;
    // the first entry index of each distinct key, and that key's hash
    const starts: number[] = [];
    const hashes: number[] = [];
    for (let i = 0; i < e.length; i++) {
      if (i === 0 || e[i]!.key !== e[i - 1]!.key) {
        starts.push(i);
        hashes.push(this.hashes[i]!);
      }
    }
    starts.push(e.length);
    const out: Chunk[] = [];
    for (const [a, b] of this.runs(hashes)) {
      this.split(starts[a]!, starts[b]!, (lo, hi) =>
        out.push({ name: this.nameOf(e[hi - 1]!, 0, hi - 1), lo, hi, low: e[lo]!.key, high: e[hi - 1]!.key, first: e[lo]!, end: hi - 1 }),
      );
    }
    return out;
  }

  /** Level >= 1: units are the chains of the level below, hashed by their last key and the level. */
  private cutChunks(below: readonly Chunk[], level: number): Chunk[] {
    const hashes = below.map((c) => levelHash(this.hashes[c.end]!, level));
    const out: Chunk[] = [];
    for (const [a, b] of this.runs(hashes)) {
      this.split(a, b, (lo, hi) => {
        const first = below[lo]!;
        const last = below[hi - 1]!;
        out.push({ name: this.nameOf(this.entries[last.end]!, level, last.end), lo, hi, low: first.low, high: last.high, first: first.name, end: last.end });
      });
    }
    return out;
  }

  /**
   * Natural chunks of a level: [start, end) unit ranges ending at local maxima of the
   * hashes (ties go to the leftmost), each at least `min` units from either end.
   */
  private *runs(h: readonly number[]): Generator<readonly [number, number]> {
    const w = this.shape.min - 1;
    const n = h.length;
    let start = 0;
    for (let i = w; i <= n - 1 - this.shape.min; i++) {
      const v = h[i]!;
      let peak = true;
      for (let j = i - w; j <= i + w && peak; j++) {
        if (j === i) continue;
        const u = h[j]!;
        if (u > v || (u === v && j < i)) peak = false;
      }
      if (peak) {
        yield [start, i + 1];
        start = i + 1;
      }
    }
    yield [start, n];
  }

  /** Calls `emit` for [lo, hi) itself or, above `max` units, for ceil(n / max) even parts of it. */
  private split(lo: number, hi: number, emit: (lo: number, hi: number) => void): void {
    const n = hi - lo;
    const parts = Math.ceil(n / this.shape.max);
    for (let k = 0; k < parts; k++) emit(lo + Math.floor((k * n) / parts), lo + Math.floor(((k + 1) * n) / parts));
  }

  /** A chain's name: the tree, its level and the entry it ends with (and that entry's copy count). */
  private nameOf(entry: DispatchEntry, level: number, index: number): string {
    // identical entries (the same rule twice) get distinct names by their position among copies
    let copy = 0;
    for (let j = index - 1; j >= 0 && compare(this.entries[j]!, entry) === 0; j--) copy++;
    if (copy === 0) {
      let list = this.names.get(entry);
      if (!list) this.names.set(entry, (list = []));
      return (list[level] ??= dispatchChain(this.spec.tag, `${level}|${entry.key}|${entry.order}|${entry.rule}`, this.spec.generation));
    }
    return dispatchChain(this.spec.tag, `${level}|${entry.key}|${entry.order}|${entry.rule}|${copy}`, this.spec.generation);
  }

  private lowerBound(e: DispatchEntry): number {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compare(this.entries[mid]!, e) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

/** Is any of the sorted keys within [lo, hi]? */
function anyKeyIn(sorted: readonly bigint[], lo: bigint, hi: bigint): boolean {
  let a = 0;
  let b = sorted.length;
  while (a < b) {
    const mid = (a + b) >> 1;
    if (sorted[mid]! < lo) a = mid + 1;
    else b = mid;
  }
  return a < sorted.length && sorted[a]! <= hi;
}

export function addressDispatch(tag: string, family: IPFamily, shape: TreeShape = DEFAULT_SHAPE, generation: Generation = 0): DispatchSpec {
  const bits = family === 'IPv4' ? 32 : 128;
  return {
    tag,
    keyBits: bits,
    shape,
    generation,
    rangeMatch: (lo, hi) =>
      lo === hi ? `-d ${bigIntToIP(lo, family)}/${bits}` : `-m iprange --dst-range ${bigIntToIP(lo, family)}-${bigIntToIP(hi, family)}`,
  };
}

export function portDispatch(tag: string, protocol: 'tcp' | 'udp' | 'sctp', shape: TreeShape = DEFAULT_SHAPE, generation: Generation = 0): DispatchSpec {
  return {
    tag,
    keyBits: 16,
    shape,
    generation,
    rangeMatch: (lo, hi) => `-p ${protocol} -m ${protocol} --dport ${lo === hi ? lo : `${lo}:${hi}`}`,
  };
}
