// Assembles a family's iptables state: fixed chains, per-service-port chains, and the
// dispatch trees that route packets to them. The renderer is a stateful cache whose output
// is a function of the model and the node config only (the same input gives the same
// rules, whatever the history); it keeps its last result so that a sync after a few
// changes re-renders only the changed services and reports exactly which chains it touched.
import { countNoLocalEndpoints } from '../../model/topology.js';
import type { ModelView } from '../../model/types.js';
import type { IPFamily } from '../../util/ip.js';
import { hostCIDR, isLoopback } from '../../util/ip.js';
import type { IptablesRenderConfig } from './config.js';
import { block, comment, countLines } from '../../iptables/format.js';
import { addressDispatch, DEFAULT_SHAPE, DispatchTree, portDispatch, type DispatchEntry, type DispatchSpec } from './dispatch.js';
import { CHAIN, generationMarker, isFixedChain, type Generation } from './names.js';
import { renderServicePort, type ServiceFragment, type TreeId } from './service.js';

export type TableName = 'filter' | 'nat';
export const TABLES: readonly TableName[] = ['filter', 'nat'];

/** A rule kpx keeps in a built-in chain (PREROUTING, INPUT, ...). */
export interface BuiltinJump {
  readonly table: TableName;
  readonly chain: string;
  readonly rule: string;
}

/** Everything kpx wants in one family's tables. */
export interface IptablesRuleset {
  readonly family: IPFamily;
  /** every chain of a table, in a deterministic order */
  chains(table: TableName): Iterable<readonly [string, string]>;
  /** chains() lists every chain after the chains its rules jump to (saves planFull a scan) */
  readonly leavesFirst?: boolean;
  /** jumps from built-in chains, top of chain, in this order */
  readonly jumps: readonly BuiltinJump[];
  /**
   * Chains whose names stay the same from one full sync to the next, so a full sync must
   * rewrite them in place (all at once, last). Absent: every chain is such a chain.
   */
  readonly inPlace?: (chain: string) => boolean;
  /** the name set of each table's other chains (absent: there are no other chains) */
  readonly generation?: Record<TableName, Generation>;
}

/** Chains to (re)write and chains to delete, per table, relative to the previous render. */
export interface RenderDelta {
  readonly write: Record<TableName, Map<string, string>>;
  readonly remove: Record<TableName, Set<string>>;
}

/**
 * What a render did: everything from scratch (first render, or the node config changed),
 * with the chains the previous render had (null on the first); or a delta from the
 * previous render. Rulesets built outside IptablesRenderer (the IPVS mode's fixed rules)
 * are always `full`.
 */
export type RenderResult =
  | { readonly kind: 'full'; readonly previous: Record<TableName, Set<string>> | null; readonly servicePortsRendered: number }
  | { readonly kind: 'delta'; readonly delta: RenderDelta; readonly servicePortsRendered: number };

const emptyDelta = (): RenderDelta => ({ write: { filter: new Map(), nat: new Map() }, remove: { filter: new Set(), nat: new Set() } });

export function builtinJumps(cfg: IptablesRenderConfig): BuiltinJump[] {
  const c = comment;
  const isNew = '-m conntrack --ctstate NEW';
  const guard = localhostGuard(cfg);
  const fw = `${isNew} ${c('kpx load balancer firewall')} -j ${CHAIN.proxyFirewall}`;
  const svc = `${isNew} ${c('kpx service portals')} -j ${CHAIN.services}`;
  const ext = `${isNew} ${c('kpx externally-visible service portals')} -j ${CHAIN.externalServices}`;
  const localnet = `${c('kpx localhost nodeport guard')} -j ${CHAIN.firewall}`;
  return [
    { table: 'filter', chain: 'INPUT', rule: fw },
    { table: 'filter', chain: 'INPUT', rule: `${c('kpx health check service ports')} -j ${CHAIN.nodePorts}` },
    { table: 'filter', chain: 'INPUT', rule: ext },
    ...(guard ? [{ table: 'filter' as const, chain: 'INPUT', rule: localnet }] : []),
    { table: 'filter', chain: 'FORWARD', rule: fw },
    { table: 'filter', chain: 'FORWARD', rule: `${c('kpx forwarding rules')} -j ${CHAIN.forward}` },
    { table: 'filter', chain: 'FORWARD', rule: svc },
    { table: 'filter', chain: 'FORWARD', rule: ext },
    { table: 'filter', chain: 'OUTPUT', rule: fw },
    { table: 'filter', chain: 'OUTPUT', rule: svc },
    ...(guard ? [{ table: 'filter' as const, chain: 'OUTPUT', rule: localnet }] : []),
    { table: 'nat', chain: 'PREROUTING', rule: `${c('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'OUTPUT', rule: `${c('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'POSTROUTING', rule: `${c('kpx postrouting rules')} -j ${CHAIN.postrouting}` },
  ];
}

/** The martian guard kube-proxy adds when NodePorts answer on 127.0.0.0/8. */
function localhostGuard(cfg: IptablesRenderConfig): string | null {
  if (cfg.family !== 'IPv4' || !cfg.localhostNodePorts) return null;
  return '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP';
}

function nodePortJumps(cfg: IptablesRenderConfig): string[] {
  const text = '-m comment --comment "kpx service nodeports; NOTE: this must be the last rule in this chain"';
  if (cfg.nodePortAddresses === 'all') {
    const exclude = cfg.family === 'IPv6' ? '! -d ::1/128 ' : cfg.localhostNodePorts ? '' : '! -d 127.0.0.0/8 ';
    return [`${exclude}${text} -m addrtype --dst-type LOCAL -j ${CHAIN.nodePorts}`];
  }
  return cfg.nodePortAddresses
    .filter((ip) => !isLoopback(ip) || (cfg.family === 'IPv4' && cfg.localhostNodePorts))
    .map((ip) => `-d ${hostCIDR(ip, cfg.family)} ${text} -j ${CHAIN.nodePorts}`);
}

/** The canary (nothing jumps to it) records which name set its table serves from. */
const canary = (g: Generation): string[] => (g === 0 ? [] : [generationMarker(g)]);

/** Fixed chains whose content depends only on the node config. */
function fixedChains(cfg: IptablesRenderConfig): Record<TableName, Array<[string, string[]]>> {
  const mark = cfg.masqueradeMark;
  const guard = localhostGuard(cfg);
  return {
    nat: [
      [
        CHAIN.postrouting,
        [
          `-m mark ! --mark ${mark}/${mark} -j RETURN`,
          `-j MARK --set-xmark ${mark}/0x0`,
          `-m comment --comment "kpx service traffic requiring SNAT" -j MASQUERADE${cfg.randomFully ? ' --random-fully' : ''}`,
        ],
      ],
      [CHAIN.markMasq, [`-j MARK --set-xmark ${mark}/${mark}`]],
      [CHAIN.canary, canary(gen(cfg, 'nat'))],
    ],
    filter: [
      [
        CHAIN.forward,
        [
          ...(cfg.conntrackTCPLiberal ? [] : ['-m conntrack --ctstate INVALID -j DROP']),
          `-m comment --comment "kpx forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT`,
          '-m comment --comment "kpx forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        ],
      ],
      ...(guard ? [[CHAIN.firewall, [guard]] as [string, string[]]] : []),
      [CHAIN.canary, canary(gen(cfg, 'filter'))],
    ],
  };
}

interface TreeInfo {
  readonly table: TableName;
  readonly spec: (cfg: IptablesRenderConfig) => DispatchSpec;
  /**
   * Chains on the longest path from a built-in chain to the tree's root chain, both
   * included (PREROUTING -> KPX-SERVICES is 2), and below the tree's leaves (a DST leaf
   * entry -> KPX-FW -> KPX-EXT -> KPX-SVC -> KPX-SEP -> KPX-MARK-MASQ is 5). A packet's
   * deepest path through the tree is above + tree depth + below.
   */
  readonly above: number;
  readonly below: number;
}

const gen = (c: IptablesRenderConfig, t: TableName): Generation => c.generation?.[t] ?? 0;
const addr = (tag: string, t: TableName) => (c: IptablesRenderConfig) => addressDispatch(tag, c.family, c.treeShape ?? DEFAULT_SHAPE, gen(c, t));
const port = (tag: string, p: 'tcp' | 'udp' | 'sctp', t: TableName) => (c: IptablesRenderConfig) =>
  portDispatch(tag, p, c.treeShape ?? DEFAULT_SHAPE, gen(c, t));

const TREES: Record<TreeId, TreeInfo> = {
  // nat: PREROUTING/OUTPUT -> KPX-SERVICES [-> KPX-NODEPORTS]; leaves -> [FW ->] EXT -> SVC|SVL -> SEP -> MARK-MASQ
  DST: { table: 'nat', spec: addr('DST', 'nat'), above: 2, below: 5 },
  NPT: { table: 'nat', spec: port('NPT', 'tcp', 'nat'), above: 3, below: 4 },
  NPU: { table: 'nat', spec: port('NPU', 'udp', 'nat'), above: 3, below: 4 },
  NPS: { table: 'nat', spec: port('NPS', 'sctp', 'nat'), above: 3, below: 4 },
  // filter: leaves end in a verdict (REJECT, DROP, ACCEPT)
  SVC: { table: 'filter', spec: addr('SVC', 'filter'), above: 2, below: 0 },
  EXT: { table: 'filter', spec: addr('EXT', 'filter'), above: 2, below: 0 },
  XNPT: { table: 'filter', spec: port('XNPT', 'tcp', 'filter'), above: 3, below: 0 },
  XNPU: { table: 'filter', spec: port('XNPU', 'udp', 'filter'), above: 3, below: 0 },
  XNPS: { table: 'filter', spec: port('XNPS', 'sctp', 'filter'), above: 3, below: 0 },
  FW: { table: 'filter', spec: addr('FW', 'filter'), above: 2, below: 0 },
  HCT: { table: 'filter', spec: port('HCT', 'tcp', 'filter'), above: 2, below: 0 },
};

/**
 * nf_tables refuses a ruleset whose path from a base chain passes 16 chains ("Too many
 * links"). kpx stays 4 below it, for chains of others that jump into kpx's or run before.
 */
export const KERNEL_CHAIN_DEPTH = 16;
export const DEPTH_RESERVE = 4;
export const MAX_CHAIN_DEPTH = KERNEL_CHAIN_DEPTH - DEPTH_RESERVE;

/** Depth of the fixed chains outside the trees (KPX-SERVICES -> KPX-NODEPORTS, SEP -> MARK-MASQ). */
const FIXED_DEPTH = 3;

export class DepthError extends Error {
  constructor(
    readonly family: IPFamily,
    readonly tree: TreeId,
    readonly depth: number,
    readonly entries: number,
  ) {
    super(
      `${family} dispatch tree ${tree} with ${entries} entries would make a path ${depth} chains deep; ` +
        `kpx allows ${MAX_CHAIN_DEPTH} (nf_tables refuses more than ${KERNEL_CHAIN_DEPTH}, and kpx keeps ${DEPTH_RESERVE} for other chains)`,
    );
  }
}

/** Fixed chains that host tree roots, and which trees' roots they hold, in order. */
function rootChains(cfg: IptablesRenderConfig): Array<{ table: TableName; chain: string; trees: TreeId[]; tail: string[] }> {
  // in this order, a chain comes after the root chains it jumps to (NODEPORTS before SERVICES)
  return [
    { table: 'nat', chain: CHAIN.nodePorts, trees: ['NPT', 'NPU', 'NPS'], tail: [] },
    { table: 'nat', chain: CHAIN.services, trees: ['DST'], tail: nodePortJumps(cfg) },
    { table: 'filter', chain: CHAIN.services, trees: ['SVC'], tail: [] },
    { table: 'filter', chain: CHAIN.externalNodePorts, trees: ['XNPT', 'XNPU', 'XNPS'], tail: [] },
    { table: 'filter', chain: CHAIN.externalServices, trees: ['EXT'], tail: [`-m addrtype --dst-type LOCAL -j ${CHAIN.externalNodePorts}`] },
    { table: 'filter', chain: CHAIN.proxyFirewall, trees: ['FW'], tail: [] },
    { table: 'filter', chain: CHAIN.nodePorts, trees: ['HCT'], tail: [] },
  ];
}

const entryKey = (e: DispatchEntry) => `${e.key}|${e.order}|${e.rule}`;

/** Tree entries that went and came in one render, per tree. */
interface EntryChanges {
  readonly removed: Map<TreeId, DispatchEntry[]>;
  readonly added: Map<TreeId, DispatchEntry[]>;
}

function pushEntry(m: Map<TreeId, DispatchEntry[]>, t: TreeId, e: DispatchEntry): void {
  let l = m.get(t);
  if (!l) m.set(t, (l = []));
  l.push(e);
}

export class IptablesRenderer implements IptablesRuleset {
  jumps: BuiltinJump[] = [];
  private cfg: IptablesRenderConfig | null = null;
  private readonly byService = new Map<string, readonly ServiceFragment[]>();
  private trees = new Map<TreeId, DispatchTree>();
  /** fixed chains (a handful per table, jumping to no other chain of kpx's but KPX-MARK-MASQ) */
  private readonly fixed: Record<TableName, Map<string, string>> = { filter: new Map(), nat: new Map() };
  /** the fixed chains rooting the trees, in rootChains() order */
  private readonly roots: Record<TableName, Map<string, string>> = { filter: new Map(), nat: new Map() };
  readonly leavesFirst = true;
  readonly inPlace = isFixedChain;
  private fragmentRules = 0;
  private delta: RenderDelta = emptyDelta();

  get family(): IPFamily {
    return this.cfg?.family ?? 'IPv4';
  }

  get config(): IptablesRenderConfig | null {
    return this.cfg;
  }

  get generation(): Record<TableName, Generation> {
    return { nat: this.cfg?.generation?.nat ?? 0, filter: this.cfg?.generation?.filter ?? 0 };
  }

  /** rules per table (metrics) */
  get ruleCounts(): Record<TableName, number> {
    const out: Record<TableName, number> = { filter: 0, nat: this.fragmentRules };
    for (const t of TABLES) for (const b of [...this.fixed[t].values(), ...this.roots[t].values()]) out[t] += countLines(b);
    for (const [id, tree] of this.trees) out[TREES[id].table] += tree.ruleCount;
    return out;
  }

  /** The longest path of chains from a built-in chain through kpx's rules, base chain included. */
  get chainDepth(): number {
    let d = FIXED_DEPTH;
    for (const [id, tree] of this.trees) d = Math.max(d, TREES[id].above + tree.depth + TREES[id].below);
    return d;
  }

  /** Refuses a ruleset deeper than MAX_CHAIN_DEPTH before the kernel sees it. */
  private checkDepth(): void {
    for (const [id, tree] of this.trees) {
      const d = TREES[id].above + tree.depth + TREES[id].below;
      if (d > MAX_CHAIN_DEPTH) throw new DepthError(this.family, id, d, tree.size);
    }
  }

  get servicePortCount(): number {
    let n = 0;
    for (const l of this.byService.values()) n += l.length;
    return n;
  }

  /** Service ports with a Local policy and endpoints elsewhere but none here (metrics). */
  noLocalEndpoints(): { internal: number; external: number } {
    return countNoLocalEndpoints(this.fragments());
  }

  /** Every service port's fragment. */
  *fragments(): Iterable<ServiceFragment> {
    for (const list of this.byService.values()) yield* list;
  }

  /** The fragments of one service. */
  fragmentsOf(serviceKey: string): readonly ServiceFragment[] {
    return this.byService.get(serviceKey) ?? [];
  }

  /**
   * Every chain of a table, each after the chains it jumps to: fixed chains, service
   * chains (endpoint chains first), tree chains from the leaves up, then the root chains.
   */
  *chains(table: TableName): Iterable<readonly [string, string]> {
    yield* this.fixed[table];
    if (table === 'nat') for (const list of this.byService.values()) for (const f of list) yield* f.natChains();
    for (const [id, tree] of this.trees) if (TREES[id].table === table) yield* tree.chainsLeavesFirst();
    yield* this.roots[table];
  }

  /** A materialized table (tools and tests; a sync never needs it). */
  table(table: TableName): Map<string, string> {
    return new Map(this.chains(table));
  }

  private names(): Record<TableName, Set<string>> {
    const out = { filter: new Set<string>(), nat: new Set<string>() };
    for (const t of TABLES) for (const [n] of this.chains(t)) out[t].add(n);
    return out;
  }

  /**
   * Renders. `changed` lists the services whose objects changed since the last render;
   * 'all' (or a different config) renders everything from scratch.
   */
  render(view: ModelView, cfg: IptablesRenderConfig, changed: Iterable<string> | 'all'): RenderResult {
    if (changed === 'all' || cfg !== this.cfg) return this.renderAll(view, cfg);
    this.delta = emptyDelta();
    let rendered = 0;
    const entries: EntryChanges = { removed: new Map(), added: new Map() };
    for (const key of new Set(changed)) rendered += this.rerender(key, view, cfg, entries);
    this.updateTrees(entries, cfg);
    this.checkDepth();
    return { kind: 'delta', delta: this.delta, servicePortsRendered: rendered };
  }

  /** Renders one service anew: its chains into the delta, its tree entries into `entries`. */
  private rerender(key: string, view: ModelView, cfg: IptablesRenderConfig, entries: EntryChanges): number {
    const old = this.byService.get(key) ?? [];
    const next = view.portsOf(key).map((sp) => renderServicePort(sp, view.endpointsOf(sp), cfg));
    const oldChains = new Map<string, string>();
    for (const f of old) {
      for (const [n, b] of f.natChains()) oldChains.set(n, b);
      this.fragmentRules -= f.natRules;
    }
    for (const f of next) {
      this.fragmentRules += f.natRules;
      for (const [n, b] of f.natChains()) {
        if (oldChains.get(n) !== b) this.delta.write.nat.set(n, b);
        oldChains.delete(n);
      }
    }
    for (const n of oldChains.keys()) this.delta.remove.nat.add(n);
    const oldEntries = new Map<string, [TreeId, DispatchEntry]>();
    for (const f of old) for (const [t, e] of f.entries) oldEntries.set(`${t}|${entryKey(e)}`, [t, e]);
    for (const f of next) {
      for (const [t, e] of f.entries) {
        const k = `${t}|${entryKey(e)}`;
        if (oldEntries.has(k)) oldEntries.delete(k);
        else pushEntry(entries.added, t, e);
      }
    }
    for (const [t, e] of oldEntries.values()) pushEntry(entries.removed, t, e);
    if (next.length) this.byService.set(key, next);
    else this.byService.delete(key);
    return next.length;
  }

  /** Updates the trees whose entries changed, and the root chains whose tree roots moved. */
  private updateTrees(entries: EntryChanges, cfg: IptablesRenderConfig): void {
    const roots = new Set<TreeId>();
    for (const t of new Set([...entries.removed.keys(), ...entries.added.keys()])) {
      const tree = this.trees.get(t)!;
      const before = tree.rootRules.join('\n');
      const table = TREES[t].table;
      for (const [n, b] of tree.update(entries.removed.get(t) ?? [], entries.added.get(t) ?? [])) {
        if (b === null) this.delta.remove[table].add(n);
        else this.delta.write[table].set(n, b);
      }
      if (tree.rootRules.join('\n') !== before) roots.add(t);
    }
    for (const rc of rootChains(cfg)) if (rc.trees.some((t) => roots.has(t))) this.writeRootChain(rc);
  }

  private renderAll(view: ModelView, cfg: IptablesRenderConfig): RenderResult {
    const previous = this.cfg ? this.names() : null;
    this.cfg = cfg;
    this.delta = emptyDelta();
    this.byService.clear();
    this.fragmentRules = 0;
    for (const t of TABLES) {
      this.fixed[t].clear();
      this.roots[t].clear();
    }
    this.trees = new Map((Object.keys(TREES) as TreeId[]).map((t) => [t, new DispatchTree(TREES[t].spec(cfg))]));
    const entries = new Map<TreeId, DispatchEntry[]>();
    let rendered = 0;
    for (const key of view.serviceKeys()) {
      const frags = view.portsOf(key).map((sp) => renderServicePort(sp, view.endpointsOf(sp), cfg));
      if (!frags.length) continue;
      rendered += frags.length;
      this.byService.set(key, frags);
      for (const f of frags) {
        this.fragmentRules += f.natRules;
        for (const [t, e] of f.entries) {
          let l = entries.get(t);
          if (!l) entries.set(t, (l = []));
          l.push(e);
        }
      }
    }
    for (const [t, tree] of this.trees) tree.reset(entries.get(t) ?? []);
    const fixed = fixedChains(cfg);
    for (const t of TABLES) for (const [n, rules] of fixed[t]) this.fixed[t].set(n, block(n, rules));
    for (const rc of rootChains(cfg)) this.writeRootChain(rc);
    this.jumps = builtinJumps(cfg);
    this.delta = emptyDelta();
    this.checkDepth();
    return { kind: 'full', previous, servicePortsRendered: rendered };
  }

  private writeRootChain(rc: { table: TableName; chain: string; trees: TreeId[]; tail: string[] }): void {
    const rules: string[] = [];
    for (const t of rc.trees) rules.push(...this.trees.get(t)!.rootRules);
    rules.push(...rc.tail);
    const b = block(rc.chain, rules);
    if (this.roots[rc.table].get(rc.chain) === b) return;
    this.roots[rc.table].set(rc.chain, b);
    this.delta.write[rc.table].set(rc.chain, b);
  }
}

/** One-shot pure render of everything (tools and tests). */
export function renderIptables(view: ModelView, cfg: IptablesRenderConfig): IptablesRenderer {
  const r = new IptablesRenderer();
  r.render(view, cfg, 'all');
  return r;
}
