// Dispatch trees: how kpx avoids kube-proxy's one-rule-per-service KUBE-SERVICES chain.
//
// Entries (one rule each, e.g. "-d 198.19.3.7/32 -p tcp --dport 80 -j KPX-SVC-...") are
// keyed by a number (destination address, or NodePort). The tree is a binary trie over
// the key bits with path compression: a node whose entries fit in a leaf (<= leafSize)
// is a leaf chain holding those rules; otherwise it is an interior chain with at most
// two rules, one per non-empty half, each matching the half's prefix ("-d a.b.c.d/len"
// or "--dport lo:hi"). An interior node is named after the longest common prefix of
// its entries, so chains with a single child do not exist.
//
// The shape is a pure function of the entry set (never of history), so the same input
// renders the same text. A changed entry affects only the nodes whose prefix contains its
// key, one root-to-leaf path, and update() recomputes only that path: O(depth * log N).
// A packet walks O(log N) short chains instead of N rules. See docs/design.md.
import type { IPFamily } from '../../util/ip.js';
import { bigIntToIP } from '../../util/ip.js';
import { dispatchChain } from './names.js';

export interface DispatchEntry {
  /** destination address (as integer) or port number */
  readonly key: bigint;
  /** tie-break between entries with the same key, for a deterministic order */
  readonly order: string;
  /** the rule's arguments (without "-A CHAIN") */
  readonly rule: string;
}

export interface DispatchSpec {
  /** distinguishes trees in chain names, e.g. "DST", "NPT" */
  readonly tag: string;
  readonly keyBits: number;
  /** the match for "key within prefix/len" */
  prefixMatch(prefix: bigint, len: number): string;
  readonly leafSize: number;
}

export const DEFAULT_LEAF_SIZE = 8;

/** A chain's rules as one restore-format block: "-A NAME rule" lines joined by "\n". */
export function block(name: string, rules: readonly string[]): string {
  if (rules.length === 0) return '';
  // one join: a flat string (a template around the join would keep a tree of pieces)
  const parts = rules.slice();
  parts[0] = `-A ${name} ${parts[0]}`;
  return parts.join(`\n-A ${name} `);
}

/** Lines in a block (0 for an empty chain). */
export function countLines(b: string | undefined): number {
  if (!b) return 0;
  let n = 1;
  for (let i = b.indexOf('\n'); i !== -1; i = b.indexOf('\n', i + 1)) n++;
  return n;
}

/** The rules of a block (inverse of block()). */
export function rulesOf(name: string, text: string | undefined): string[] {
  if (!text) return [];
  const prefix = `-A ${name} `;
  return text.split('\n').map((l) => (l.startsWith(prefix) ? l.slice(prefix.length) : l));
}

function compare(a: DispatchEntry, b: DispatchEntry): number {
  if (a.key !== b.key) return a.key < b.key ? -1 : 1;
  if (a.order !== b.order) return a.order < b.order ? -1 : 1;
  return a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0;
}

interface NodeRef {
  lo: number;
  hi: number;
  len: number;
}

/** What an update did to the tree's own chains (name -> block, or null when deleted). */
export type ChainChanges = Map<string, string | null>;

export class DispatchTree {
  /** entries, sorted by key then order */
  private entries: DispatchEntry[] = [];
  private readonly chains = new Map<string, string>();
  private root: string[] = [];
  /** rules in the tree's own chains (metrics) */
  ruleCount = 0;
  private readonly bits: bigint;

  constructor(readonly spec: DispatchSpec) {
    this.bits = BigInt(spec.keyBits);
  }

  /** Rules for the fixed chain that roots the tree (e.g. KPX-SERVICES). */
  get rootRules(): readonly string[] {
    return this.root;
  }

  get size(): number {
    return this.entries.length;
  }

  /** The tree's chains (name -> block). */
  ownChains(): ReadonlyMap<string, string> {
    return this.chains;
  }

  /** The tree's chains, each after the chains it jumps to (a walk from the root). */
  *chainsLeavesFirst(): Generator<readonly [string, string]> {
    if (!this.entries.length) return;
    const root = this.rootRef();
    if (this.isLeaf(root)) return;
    // iterative post-order: [node, its children, next child index]
    const stack: Array<{ children: Array<{ name: string; ref: NodeRef }>; i: number }> = [{ children: this.children(root), i: 0 }];
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      if (top.i > 0) {
        const done = top.children[top.i - 1]!;
        yield [done.name, this.chains.get(done.name)!];
      }
      if (top.i === top.children.length) {
        stack.pop();
        continue;
      }
      const next = top.children[top.i++]!;
      stack.push({ children: this.isLeaf(next.ref) ? [] : this.children(next.ref), i: 0 });
    }
  }

  /** Replaces all entries and rebuilds every chain. */
  reset(input: readonly DispatchEntry[]): ChainChanges {
    const before = new Map(this.chains);
    this.entries = [...input].sort(compare);
    this.chains.clear();
    this.root = this.entries.length ? this.renderNode(this.rootRef(), this.chains) : [];
    const changes: ChainChanges = new Map();
    for (const [n, b] of this.chains) if (before.get(n) !== b) changes.set(n, b);
    for (const n of before.keys()) if (!this.chains.has(n)) changes.set(n, null);
    this.recount();
    return changes;
  }

  private recount(): void {
    let n = 0;
    for (const b of this.chains.values()) n += countLines(b);
    this.ruleCount = n;
  }

  /** Removes and adds entries, recomputing only the paths of the keys involved. */
  update(removed: readonly DispatchEntry[], added: readonly DispatchEntry[]): ChainChanges {
    const changes: ChainChanges = new Map();
    const keys = new Set<bigint>();
    for (const e of removed) keys.add(e.key);
    for (const e of added) keys.add(e.key);
    // Everything that can change hangs off the old and new paths of the changed keys.
    const candidates = new Set<string>(this.targets(this.root));
    for (const k of keys) {
      for (const n of this.pathNames(k)) {
        candidates.add(n);
        for (const c of this.targets(this.chains.get(n))) candidates.add(c);
      }
    }
    for (const e of removed) {
      const i = this.lowerBound(e);
      if (i < this.entries.length && compare(this.entries[i]!, e) === 0) this.entries.splice(i, 1);
    }
    for (const e of added) this.entries.splice(this.lowerBound(e), 0, e);

    const kept = new Set<string>();
    const set = (name: string, rules: string[]) => {
      const b = block(name, rules);
      kept.add(name);
      if (this.chains.get(name) !== b) {
        this.chains.set(name, b);
        changes.set(name, b);
      }
    };
    // Children referenced by re-rendered nodes; new ones (from a split) are built whole.
    const referenced: Array<{ name: string; ref: NodeRef }> = [];
    this.root = [];
    if (this.entries.length) {
      const rootRef = this.rootRef();
      this.root = this.renderNode(rootRef);
      if (!this.isLeaf(rootRef)) referenced.push(...this.children(rootRef));
      for (const k of keys) {
        for (const [name, ref] of this.path(k)) {
          set(name, this.renderNode(ref));
          if (!this.isLeaf(ref)) referenced.push(...this.children(ref));
        }
      }
    }
    for (const c of referenced) {
      kept.add(c.name);
      if (!this.chains.has(c.name)) this.buildSubtree(c.name, c.ref, kept, changes);
    }
    for (const n of candidates) if (!kept.has(n)) this.dropSubtree(n, kept, changes);
    if (changes.size) this.recount();
    return changes;
  }

  /** Tree chains a block (or root rules) jumps to. */
  private targets(text: string | readonly string[] | undefined): string[] {
    if (!text) return [];
    const src = typeof text === 'string' ? text : text.join('\n');
    const prefix = `KPX-${this.spec.tag}-`;
    const out: string[] = [];
    for (const m of src.matchAll(/ -j (KPX-\S+)/g)) if (m[1]!.startsWith(prefix)) out.push(m[1]!);
    return out;
  }

  /** Builds a node and everything below it (a new child after a split, or a root moved down). */
  private buildSubtree(name: string, ref: NodeRef, kept: Set<string>, changes: ChainChanges): void {
    const built = new Map<string, string>([[name, '']]);
    built.set(name, block(name, this.renderNode(ref, built)));
    for (const [n, b] of built) {
      kept.add(n);
      if (this.chains.get(n) !== b) {
        this.chains.set(n, b);
        changes.set(n, b);
      }
    }
  }

  private dropSubtree(name: string, kept: ReadonlySet<string>, changes: ChainChanges): void {
    const b = this.chains.get(name);
    if (b === undefined) return;
    this.chains.delete(name);
    changes.set(name, null);
    for (const c of this.targets(b)) if (!kept.has(c)) this.dropSubtree(c, kept, changes);
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

  private bitAt(key: bigint, pos: number): bigint {
    return (key >> (this.bits - 1n - BigInt(pos))) & 1n;
  }

  private maskOf(len: number): bigint {
    return len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << (this.bits - BigInt(len));
  }

  private commonLen(a: bigint, b: bigint): number {
    const x = a ^ b;
    return x === 0n ? this.spec.keyBits : this.spec.keyBits - x.toString(2).length;
  }

  private rootRef(): NodeRef {
    const e = this.entries;
    return { lo: 0, hi: e.length, len: this.commonLen(e[0]!.key, e[e.length - 1]!.key) };
  }

  private isLeaf(ref: NodeRef): boolean {
    return ref.hi - ref.lo <= this.spec.leafSize || ref.len >= this.spec.keyBits;
  }

  /** First index in [lo, hi) whose key has bit `len` set. */
  private split(ref: NodeRef): number {
    let lo = ref.lo;
    let hi = ref.hi;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.bitAt(this.entries[mid]!.key, ref.len) === 0n) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private children(ref: NodeRef): Array<{ name: string; prefix: bigint; ref: NodeRef }> {
    const mid = this.split(ref);
    const out: Array<{ name: string; prefix: bigint; ref: NodeRef }> = [];
    for (const [a, b] of [
      [ref.lo, mid],
      [mid, ref.hi],
    ] as const) {
      if (a === b) continue;
      const len = b - a <= this.spec.leafSize ? ref.len + 1 : this.commonLen(this.entries[a]!.key, this.entries[b - 1]!.key);
      const prefix = this.entries[a]!.key & this.maskOf(len);
      out.push({ name: dispatchChain(this.spec.tag, `${prefix}/${len}`), prefix, ref: { lo: a, hi: b, len } });
    }
    return out;
  }

  /** A node's rules; with a `sink`, also builds every chain below it into the sink. */
  private renderNode(ref: NodeRef, sink?: Map<string, string>): string[] {
    if (this.isLeaf(ref)) {
      const out: string[] = new Array(ref.hi - ref.lo);
      for (let i = ref.lo; i < ref.hi; i++) out[i - ref.lo] = this.entries[i]!.rule;
      return out;
    }
    return this.children(ref).map((c) => {
      if (sink) sink.set(c.name, block(c.name, this.renderNode(c.ref, sink)));
      return `${this.spec.prefixMatch(c.prefix, c.ref.len)} -j ${c.name}`;
    });
  }

  /** The chains (below the root) whose prefix contains `key`, root first. */
  private path(key: bigint): Array<[string, NodeRef]> {
    const out: Array<[string, NodeRef]> = [];
    if (!this.entries.length) return out;
    let ref = this.rootRef();
    while (!this.isLeaf(ref)) {
      const next = this.children(ref).find((c) => (key & this.maskOf(c.ref.len)) === c.prefix);
      if (!next) break;
      out.push([next.name, next.ref]);
      ref = next.ref;
    }
    return out;
  }

  private pathNames(key: bigint): string[] {
    return this.path(key).map(([n]) => n);
  }
}

export function addressDispatch(tag: string, family: IPFamily, leafSize = DEFAULT_LEAF_SIZE): DispatchSpec {
  const keyBits = family === 'IPv4' ? 32 : 128;
  return {
    tag,
    keyBits,
    leafSize,
    prefixMatch: (prefix, len) => `-d ${bigIntToIP(prefix, family)}/${len}`,
  };
}

export function portDispatch(tag: string, protocol: 'tcp' | 'udp' | 'sctp', leafSize = DEFAULT_LEAF_SIZE): DispatchSpec {
  return {
    tag,
    keyBits: 16,
    leafSize,
    prefixMatch: (prefix, len) => {
      const lo = Number(prefix);
      const hi = lo + 2 ** (16 - len) - 1;
      return `-p ${protocol} -m ${protocol} --dport ${lo === hi ? lo : `${lo}:${hi}`}`;
    },
  };
}

/** One-shot build (tests, tools): root rules plus the tree's chains as rule lists. */
export function buildDispatch(spec: DispatchSpec, entries: readonly DispatchEntry[]): { rootRules: string[]; chains: Map<string, string[]> } {
  const t = new DispatchTree(spec);
  t.reset(entries);
  return {
    rootRules: [...t.rootRules],
    chains: new Map([...t.ownChains()].map(([n, b]) => [n, rulesOf(n, b)])),
  };
}
