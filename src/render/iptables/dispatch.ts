// Dispatch trees: how kpx avoids kube-proxy's one-rule-per-service KUBE-SERVICES chain.
//
// Entries (one rule each, e.g. "-d 198.19.3.7/32 -p tcp --dport 80 -j KPX-SVC-...") are
// keyed by a number (destination address, or NodePort). The tree is a binary trie over
// the key bits with path compression: a node whose entries fit in a leaf (<= leafSize)
// is a leaf chain holding those rules; otherwise it is an interior chain with at most
// two rules, one per non-empty half, each matching the half's prefix ("-d a.b.c.d/len"
// or "--dport lo:hi"). An interior node is named after the longest common prefix of
// its entries, so chains of one child are skipped.
//
// The shape is a pure function of the entry set (never of history), so the same input
// renders the same text, and one added or removed entry changes only the chains on one
// root-to-leaf path. A packet walks O(log N) short chains instead of N rules.
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

export interface DispatchOutput {
  /** rules for the chain that roots the tree (a fixed chain such as KPX-SERVICES) */
  readonly rootRules: string[];
  /** the tree's own chains */
  readonly chains: Map<string, string[]>;
}

export const DEFAULT_LEAF_SIZE = 8;

export function buildDispatch(spec: DispatchSpec, input: readonly DispatchEntry[]): DispatchOutput {
  const entries = [...input].sort((a, b) =>
    a.key === b.key ? (a.order < b.order ? -1 : a.order > b.order ? 1 : 0) : a.key < b.key ? -1 : 1,
  );
  const chains = new Map<string, string[]>();
  const bits = BigInt(spec.keyBits);

  const bitAt = (key: bigint, pos: number): bigint => (key >> (bits - 1n - BigInt(pos))) & 1n;
  const maskOf = (len: number): bigint => (len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << (bits - BigInt(len)));
  const commonLen = (a: bigint, b: bigint): number => {
    const x = a ^ b;
    return x === 0n ? spec.keyBits : spec.keyBits - x.toString(2).length;
  };

  /** Rules of the node holding entries[lo, hi), whose entries share `len` leading bits. */
  const nodeRules = (lo: number, hi: number, len: number): string[] => {
    if (hi - lo <= spec.leafSize || len >= spec.keyBits) return entries.slice(lo, hi).map((e) => e.rule);
    // Split on bit `len`; both halves are non-empty because `len` is the common prefix length.
    let mid = lo;
    while (mid < hi && bitAt(entries[mid]!.key, len) === 0n) mid++;
    const rules: string[] = [];
    for (const [a, b] of [
      [lo, mid],
      [mid, hi],
    ] as const) {
      if (a === b) continue;
      const childLen = b - a <= spec.leafSize ? len + 1 : commonLen(entries[a]!.key, entries[b - 1]!.key);
      const prefix = entries[a]!.key & maskOf(childLen);
      const name = dispatchChain(spec.tag, `${prefix}/${childLen}`);
      chains.set(name, nodeRules(a, b, childLen));
      rules.push(`${spec.prefixMatch(prefix, childLen)} -j ${name}`);
    }
    return rules;
  };

  if (entries.length === 0) return { rootRules: [], chains };
  const rootLen = commonLen(entries[0]!.key, entries[entries.length - 1]!.key);
  return { rootRules: nodeRules(0, entries.length, rootLen), chains };
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
