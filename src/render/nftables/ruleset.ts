// Assembles a family's nftables state: kpx's own table (`ip kpx` / `ip6 kpx`) with base
// chains at the hooks and priorities kube-proxy's nftables mode uses, fixed chains that
// dispatch through verdict maps, and per-service-port chains, sets and map elements.
// Pure: a function of the model and the node config. The renderer keeps its last result
// per service, so a render after a few changes re-renders only those services and returns
// the exact delta: chains to write and delete, sets to add and delete, and map and set
// ELEMENTS to add and delete (a map is never rewritten).
//
// Layout (priorities as numbers; dstnat = -100, srcnat = 100):
//   filter-prerouting        filter prerouting -110   ct state new jump firewall-check
//   filter-input             filter input      -110   ct state new jump nodeport-endpoints-check
//                                                     ct state new jump service-endpoints-check
//   filter-forward           filter forward    -110   ct state new jump service-endpoints-check
//                                                     ct state new jump cluster-ips-check
//   filter-output            filter output     -110   ct state new jump firewall-check
//   filter-output-post-dnat  filter output      -90   ct state new jump service-endpoints-check
//                                                     ct state new jump cluster-ips-check
//   nat-prerouting           nat prerouting    -100   jump services
//   nat-output               nat output        -100   jump services
//   nat-postrouting          nat postrouting    100   jump masquerading
//   services: daddr . l4proto . dport vmap @service-ips; NodePorts (fib daddr type local,
//     or daddr @nodeport-ips) l4proto . dport vmap @service-nodeports
//   service-endpoints-check / nodeport-endpoints-check: vmap @no-endpoint-services /
//     @no-endpoint-nodeports -> goto reject-chain (no endpoints) or drop (no local ones)
//   firewall-check: vmap @firewall-ips -> goto firewall-<svc> (loadBalancerSourceRanges)
//   cluster-ips-check: daddr @cluster-ips reject (a cluster IP's undefined ports); other
//     addresses in the ServiceCIDRs drop (no Service holds them)
//   masquerading: traffic marked by mark-for-masquerade is masqueraded (fully-random), and
//     so is a DNATed connection in hairpin-connections (a local endpoint reaching itself)
import { countNoLocalEndpoints } from '../../model/topology.js';
import type { IPFamily } from '../../util/ip.js';
import { isLoopback } from '../../util/ip.js';
import type { BaseChainSpec, SetSpec } from '../../nftables/format.js';
import type { ModelView } from '../../model/types.js';
import type { NftablesRenderConfig } from './config.js';
import { CHAIN, chainRank, SET } from './names.js';
import { addrType, ipOf, renderServicePort, type NftChain, type NftServiceFragment, type OwnedElement } from './service.js';

export type { ModelView };

export interface NftChainDef extends NftChain {
  readonly base?: BaseChainSpec;
}

/** What changed since the previous render (partial renders only). */
export interface NftDelta {
  /** chains to create or rewrite, with their whole new content */
  readonly writeChains: Map<string, NftChainDef>;
  readonly removeChains: Set<string>;
  readonly addSets: Map<string, SetSpec>;
  readonly removeSets: Set<string>;
  /** set -> key -> value (undefined in a set) */
  readonly addElements: Map<string, Map<string, string | undefined>>;
  /** set -> keys (an element whose value changes is removed and added) */
  readonly removeElements: Map<string, Set<string>>;
}

/**
 * What a render did: everything from scratch (first render, 'all', or a new config), or
 * a delta from the previous render (as the iptables renderer's RenderResult).
 */
export type NftRenderResult =
  | { readonly kind: 'full'; readonly servicePortsRendered: number }
  | { readonly kind: 'delta'; readonly delta: NftDelta; readonly servicePortsRendered: number };

export const emptyDelta = (): NftDelta => ({
  writeChains: new Map(),
  removeChains: new Set(),
  addSets: new Map(),
  removeSets: new Set(),
  addElements: new Map(),
  removeElements: new Map(),
});

export const deltaIsEmpty = (d: NftDelta): boolean =>
  d.writeChains.size === 0 && d.removeChains.size === 0 && d.addSets.size === 0 && d.removeSets.size === 0 && d.addElements.size === 0 && d.removeElements.size === 0;

const BASE_CHAINS: ReadonlyArray<readonly [string, BaseChainSpec, ReadonlyArray<readonly [string, string]>]> = [
  // filtering sees pre-DNAT destinations: it runs before DNAT (-100)
  [CHAIN.filterPrerouting, { type: 'filter', hook: 'prerouting', priority: -110 }, [['ct state new', CHAIN.firewallCheck]]],
  [
    CHAIN.filterInput,
    { type: 'filter', hook: 'input', priority: -110 },
    [
      ['ct state new', CHAIN.nodePortEndpointsCheck],
      ['ct state new', CHAIN.serviceEndpointsCheck],
    ],
  ],
  [
    CHAIN.filterForward,
    { type: 'filter', hook: 'forward', priority: -110 },
    [
      ['ct state new', CHAIN.serviceEndpointsCheck],
      ['ct state new', CHAIN.clusterIPsCheck],
    ],
  ],
  [CHAIN.filterOutput, { type: 'filter', hook: 'output', priority: -110 }, [['ct state new', CHAIN.firewallCheck]]],
  // After DNAT, as kube-proxy's filter-output: the node's own traffic to an LB IP or
  // externalIP under Local policy without local endpoints is short-circuited to an
  // endpoint by the DNAT, so the drop in no-endpoint-services must not see it first.
  // Whatever still goes to a cluster IP matched no service port.
  [
    CHAIN.filterOutputPostDNAT,
    { type: 'filter', hook: 'output', priority: -90 },
    [
      ['ct state new', CHAIN.serviceEndpointsCheck],
      ['ct state new', CHAIN.clusterIPsCheck],
    ],
  ],
  [CHAIN.natPrerouting, { type: 'nat', hook: 'prerouting', priority: -100 }, [['', CHAIN.services]]],
  [CHAIN.natOutput, { type: 'nat', hook: 'output', priority: -100 }, [['', CHAIN.services]]],
  [CHAIN.natPostrouting, { type: 'nat', hook: 'postrouting', priority: 100 }, [['', CHAIN.masquerading]]],
];

/** The maps and sets every table has. */
export function fixedSets(cfg: NftablesRenderConfig): SetSpec[] {
  const addr = addrType(cfg);
  const dispatch = `${addr} . inet_proto . inet_service`;
  const port = 'inet_proto . inet_service';
  return [
    { kind: 'set', name: SET.clusterIPs, type: addr, comment: 'active cluster IPs' },
    { kind: 'set', name: SET.nodePortIPs, type: addr, comment: 'IPs that accept NodePort traffic' },
    { kind: 'map', name: SET.serviceIPs, type: dispatch, data: 'verdict', comment: 'ClusterIP, ExternalIP and LoadBalancer IP traffic' },
    { kind: 'map', name: SET.serviceNodePorts, type: port, data: 'verdict', comment: 'NodePort traffic' },
    { kind: 'map', name: SET.noEndpointServices, type: dispatch, data: 'verdict', comment: 'service IPs without (local) endpoints' },
    { kind: 'map', name: SET.noEndpointNodePorts, type: port, data: 'verdict', comment: 'NodePorts without (local) endpoints' },
    { kind: 'map', name: SET.firewallIPs, type: dispatch, data: 'verdict', comment: 'destinations subject to loadBalancerSourceRanges' },
    { kind: 'set', name: SET.hairpin, type: `${addr} . ${addr} . inet_proto . inet_service`, comment: 'local endpoints reached by themselves through a service' },
  ];
}

/** The addresses in nodeport-ips (loopback never: kube-proxy's nftables mode has no localhost NodePorts). */
export function nodePortIPs(cfg: NftablesRenderConfig): string[] {
  return cfg.nodePortAddresses === 'all' ? [] : cfg.nodePortAddresses.filter((a) => !isLoopback(a));
}

/** Fixed chains (base chains included), lowest rank first. */
export function fixedChains(cfg: NftablesRenderConfig): NftChainDef[] {
  const ip = ipOf(cfg);
  const mark = cfg.masqueradeMark;
  const noLocalhost = cfg.family === 'IPv4' ? `${ip} daddr != 127.0.0.0/8` : `${ip} daddr != ::1`;
  const all = cfg.nodePortAddresses === 'all';
  const nodePortMatch = all ? noLocalhost : `${ip} daddr @${SET.nodePortIPs}`;
  const dispatchKey = `${ip} daddr . meta l4proto . th dport`;
  const out: NftChainDef[] = [
    { name: CHAIN.markMasq, rules: [`mark set mark or ${mark}`] },
    { name: CHAIN.reject, rules: ['reject'] },
    {
      name: CHAIN.masquerading,
      rules: [
        `ct status dnat ${ip} saddr . ${ip} daddr . meta l4proto . th dport @${SET.hairpin} mark set mark or ${mark}`,
        `mark and ${mark} == 0 return`,
        `mark set mark xor ${mark}`,
        cfg.randomFully ? 'masquerade fully-random' : 'masquerade',
      ],
    },
    {
      name: CHAIN.services,
      rules: [
        `${dispatchKey} vmap @${SET.serviceIPs}`,
        `${all ? 'fib daddr type local ' : ''}${nodePortMatch} meta l4proto . th dport vmap @${SET.serviceNodePorts}`,
      ],
    },
    { name: CHAIN.serviceEndpointsCheck, rules: [`${dispatchKey} vmap @${SET.noEndpointServices}`] },
    { name: CHAIN.nodePortEndpointsCheck, rules: [`${nodePortMatch} meta l4proto . th dport vmap @${SET.noEndpointNodePorts}`] },
    { name: CHAIN.firewallCheck, rules: [`${dispatchKey} vmap @${SET.firewallIPs}`] },
    { name: CHAIN.clusterIPsCheck, rules: clusterIPsCheckRules(cfg) },
  ];
  for (const [name, base, jumps] of BASE_CHAINS) {
    out.push({ name, base, rules: jumps.map(([m, to]) => `${m ? `${m} ` : ''}jump ${to}`) });
  }
  return out.sort((a, b) => chainRank(a.name) - chainRank(b.name));
}

/**
 * A cluster IP's undefined ports are rejected; with ServiceCIDRs known, an address in them
 * that no Service holds is dropped (kube-proxy's nftables mode), rather than routed out
 * (and, to the default gateway, perhaps back again).
 */
function clusterIPsCheckRules(cfg: NftablesRenderConfig): string[] {
  const ip = ipOf(cfg);
  const rules = [`${ip} daddr @${SET.clusterIPs} reject comment "undefined port of a cluster IP"`];
  const cidrs = cfg.serviceCIDRs ?? [];
  if (cidrs.length) rules.push(`${ip} daddr ${cidrs.length === 1 ? cidrs[0] : `{ ${cidrs.join(', ')} }`} drop comment "unallocated cluster IP"`);
  return rules;
}

const NODE_OWNER = '';

/**
 * Elements by set and key, with every owner that wants each one (two services may claim
 * the same external IP and port). The element holds the value of the first owner in sort
 * order, so the result does not depend on the order changes arrived in.
 */
class ElementRegistry {
  private readonly sets = new Map<string, Map<string, Array<readonly [string, string | undefined]>>>();
  /** set\0key -> effective value before the current render (null: absent) */
  private touched = new Map<string, { set: string; key: string; before: string | undefined | null }>();

  clear(): void {
    this.sets.clear();
    this.touched.clear();
  }

  private effective(set: string, key: string): string | undefined | null {
    const owners = this.sets.get(set)?.get(key);
    return owners && owners.length ? owners[0]![1] : null;
  }

  private touch(set: string, key: string): void {
    const id = `${set}\0${key}`;
    if (!this.touched.has(id)) this.touched.set(id, { set, key, before: this.effective(set, key) });
  }

  add(owner: string, e: OwnedElement): void {
    this.touch(e.set, e.key);
    let keys = this.sets.get(e.set);
    if (!keys) this.sets.set(e.set, (keys = new Map<string, Array<readonly [string, string | undefined]>>()));
    const owners = keys.get(e.key);
    if (!owners) {
      keys.set(e.key, [[owner, e.value]]);
      return;
    }
    let i = 0;
    while (i < owners.length && owners[i]![0] <= owner) i++;
    owners.splice(i, 0, [owner, e.value]);
  }

  remove(owner: string, e: OwnedElement): void {
    this.touch(e.set, e.key);
    const keys = this.sets.get(e.set);
    const owners = keys?.get(e.key);
    if (!owners) return;
    const i = owners.findIndex(([o, v]) => o === owner && v === e.value);
    if (i >= 0) owners.splice(i, 1);
    if (owners.length === 0) keys!.delete(e.key);
  }

  /** The changes since the last call, into the delta. */
  flushInto(delta: NftDelta): void {
    for (const { set, key, before } of this.touched.values()) {
      const after = this.effective(set, key);
      if (before === after) continue;
      if (before !== null) {
        let s = delta.removeElements.get(set);
        if (!s) delta.removeElements.set(set, (s = new Set()));
        s.add(key);
      }
      if (after !== null) {
        let m = delta.addElements.get(set);
        if (!m) delta.addElements.set(set, (m = new Map<string, string | undefined>()));
        m.set(key, after);
      }
    }
    this.touched.clear();
  }

  resetTracking(): void {
    this.touched.clear();
  }

  *entries(): Iterable<readonly [string, string, string | undefined]> {
    for (const [set, keys] of this.sets) for (const [key, owners] of keys) yield [set, key, owners[0]![1]];
  }

  count(): number {
    let n = 0;
    for (const keys of this.sets.values()) n += keys.size;
    return n;
  }
}

const ownerOf = (f: NftServiceFragment): string => `${f.servicePort.name}/${f.servicePort.protocol}`;

export class NftablesRenderer {
  private cfg: NftablesRenderConfig | null = null;
  private readonly byService = new Map<string, readonly NftServiceFragment[]>();
  private fixed: NftChainDef[] = [];
  private fixedSetSpecs: SetSpec[] = [];
  private readonly registry = new ElementRegistry();

  get family(): IPFamily {
    return this.cfg?.family ?? 'IPv4';
  }

  get config(): NftablesRenderConfig | null {
    return this.cfg;
  }

  get servicePortCount(): number {
    let n = 0;
    for (const l of this.byService.values()) n += l.length;
    return n;
  }

  get elementCount(): number {
    return this.registry.count();
  }

  *fragments(): Iterable<NftServiceFragment> {
    for (const l of this.byService.values()) yield* l;
  }

  fragmentsOf(serviceKey: string): readonly NftServiceFragment[] {
    return this.byService.get(serviceKey) ?? [];
  }

  noLocalEndpoints(): { internal: number; external: number } {
    return countNoLocalEndpoints(this.fragments());
  }

  /** Every chain, each after the chains its rules refer to (mark-for-masquerade first, base chains last). */
  *chains(): Iterable<NftChainDef> {
    let i = 0;
    const fixed = this.fixed;
    while (i < fixed.length && chainRank(fixed[i]!.name) === 0) yield fixed[i++]!;
    for (const f of this.fragments()) yield* f.chains;
    while (i < fixed.length) yield fixed[i++]!;
  }

  *sets(): Iterable<SetSpec> {
    yield* this.fixedSetSpecs;
    for (const f of this.fragments()) yield* f.sets;
  }

  /** The declaration of a fixed map or set (for adding elements to it). */
  setSpec(name: string): SetSpec | undefined {
    return this.fixedSetSpecs.find((s) => s.name === name);
  }

  /** Every element: [set, key, value (undefined in a set)]. */
  elements(): Iterable<readonly [string, string, string | undefined]> {
    return this.registry.entries();
  }

  /**
   * Renders. `changed` lists the services whose objects changed since the last render;
   * 'all' (or a config other than the last one, by identity) renders everything anew.
   */
  render(view: ModelView, cfg: NftablesRenderConfig, changed: Iterable<string> | 'all'): NftRenderResult {
    if (changed === 'all' || cfg !== this.cfg) return this.renderAll(view, cfg);
    const delta = emptyDelta();
    let rendered = 0;
    this.registry.resetTracking();
    for (const key of new Set(changed)) {
      const old = this.byService.get(key) ?? [];
      const next = view.portsOf(key).map((sp) => renderServicePort(sp, view.endpointsOf(sp), cfg));
      rendered += next.length;
      const oldChains = new Map<string, readonly string[]>();
      const oldSets = new Set<string>();
      for (const f of old) {
        for (const c of f.chains) oldChains.set(c.name, c.rules);
        for (const s of f.sets) oldSets.add(s.name);
        for (const e of f.elements) this.registry.remove(ownerOf(f), e);
      }
      for (const f of next) {
        for (const c of f.chains) {
          const before = oldChains.get(c.name);
          if (!before || !sameRules(before, c.rules)) delta.writeChains.set(c.name, c);
          oldChains.delete(c.name);
          delta.removeChains.delete(c.name);
        }
        for (const s of f.sets) {
          if (!oldSets.delete(s.name)) delta.addSets.set(s.name, s);
          delta.removeSets.delete(s.name);
        }
        for (const e of f.elements) this.registry.add(ownerOf(f), e);
      }
      for (const n of oldChains.keys()) {
        delta.removeChains.add(n);
        delta.writeChains.delete(n);
      }
      for (const n of oldSets) {
        delta.removeSets.add(n);
        delta.addSets.delete(n);
      }
      if (next.length) this.byService.set(key, next);
      else this.byService.delete(key);
    }
    this.registry.flushInto(delta);
    return { kind: 'delta', delta, servicePortsRendered: rendered };
  }

  private renderAll(view: ModelView, cfg: NftablesRenderConfig): NftRenderResult {
    this.cfg = cfg;
    this.byService.clear();
    this.registry.clear();
    this.fixed = fixedChains(cfg);
    this.fixedSetSpecs = fixedSets(cfg);
    for (const ip of nodePortIPs(cfg)) this.registry.add(NODE_OWNER, { set: SET.nodePortIPs, key: ip });
    let rendered = 0;
    for (const key of view.serviceKeys()) {
      const frags = view.portsOf(key).map((sp) => renderServicePort(sp, view.endpointsOf(sp), cfg));
      if (!frags.length) continue;
      rendered += frags.length;
      this.byService.set(key, frags);
      for (const f of frags) for (const e of f.elements) this.registry.add(ownerOf(f), e);
    }
    this.registry.resetTracking();
    return { kind: 'full', servicePortsRendered: rendered };
  }
}

function sameRules(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** One-shot pure render of everything (tools and tests). */
export function renderNftables(view: ModelView, cfg: NftablesRenderConfig): NftablesRenderer {
  const r = new NftablesRenderer();
  r.render(view, cfg, 'all');
  return r;
}
