// What one service port contributes to kpx's nftables table: its own chains (service /
// local policy, external, firewall; endpoint chains only with ClientIP affinity), its
// affinity sets, and its elements in the shared maps and sets. Follows the semantics and
// the layout of kube-proxy's (v1.36) nftables mode: without affinity the policy chain DNATs
// straight to the endpoint it picks, and a local endpoint that reaches itself through the
// service is masqueraded through hairpin-connections (in the masquerading chain). Fewer
// chains are what makes a full sync cheap: nft's and the kernel's cost per chain and per
// rule dominates (11 chains and ~32 rules per 10-endpoint service before, 1-2 chains and
// ~12 rules now; 1,000 services: `nft -f` 0.9-1.1 s -> 0.35 s on this machine).
import { categorizeEndpoints, externallyAccessible, type CategorizedEndpoints } from '../../model/topology.js';
import type { Endpoint, ServicePort } from '../../model/types.js';
import { joinHostPort, parseCIDR, cidrContains } from '../../util/ip.js';
import { quoted, type SetSpec } from '../../nftables/format.js';
import type { LocalDetector } from '../iptables/config.js';
import { affinitySetName, CHAIN, endpointChainName, SET, servicePortNames, type ServicePortNames } from './names.js';
import type { NftablesRenderConfig } from './config.js';

export interface NftChain {
  readonly name: string;
  readonly rules: readonly string[];
}

/** An element a service port puts in a shared map or set. */
export interface OwnedElement {
  readonly set: string;
  readonly key: string;
  /** undefined in a set */
  readonly value?: string;
}

export interface NftServiceFragment {
  readonly servicePort: ServicePort;
  readonly endpoints: readonly Endpoint[];
  readonly categorized: CategorizedEndpoints;
  /**
   * The port's chains, each after the chains it refers to. Written anew at each read, not
   * kept: at 10,000 services their text held ~30 MiB for the whole life of the process,
   * while only a full sync (once) and a partial sync of this port (its old and new chains)
   * read them. Read once per use.
   */
  readonly chains: readonly NftChain[];
  /** affinity sets (one per endpoint with ClientIP affinity) */
  readonly sets: readonly SetSpec[];
  readonly elements: readonly OwnedElement[];
  /** Local policy without local endpoints while endpoints exist elsewhere */
  readonly noLocalEndpoints: { readonly internal: boolean; readonly external: boolean };
}

export const ipOf = (cfg: Pick<NftablesRenderConfig, 'family'>): 'ip' | 'ip6' => (cfg.family === 'IPv4' ? 'ip' : 'ip6');
export const addrType = (cfg: Pick<NftablesRenderConfig, 'family'>): string => (cfg.family === 'IPv4' ? 'ipv4_addr' : 'ipv6_addr');

/** nft matches for "from a local pod" and "not from a local pod" (null: not detectable). */
export function localMatch(ip: 'ip' | 'ip6', d: LocalDetector, negate: boolean): string | null {
  if (!d) return null;
  const op = negate ? '!= ' : '';
  if ('source' in d) return `${ip} saddr ${op}${d.source}`;
  // iptables' "eth+" is nft's "eth*"
  const iface = d.inInterface.endsWith('+') ? `${d.inInterface.slice(0, -1)}*` : d.inInterface;
  return `iifname ${op}"${iface}"`;
}

/** What the helpers below need to know about one service port. */
interface PortContext {
  readonly sp: ServicePort;
  readonly cfg: NftablesRenderConfig;
  readonly ip: 'ip' | 'ip6';
  readonly proto: string;
  readonly names: ServicePortNames;
  readonly hasAny: boolean;
  readonly hasInternalEndpoints: boolean;
  readonly hasExternalEndpoints: boolean;
  readonly usesFirewallChain: boolean;
  /** reachable endpoints on this node (hairpin-connections) */
  readonly localReachable: readonly Endpoint[];
}

/** The endpoint chains of one service port, with the affinity set of each endpoint. */
interface EndpointChains {
  readonly chains: NftChain[];
  readonly sets: SetSpec[];
  readonly chainOf: ReadonlyMap<Endpoint, string>;
  /** empty without ClientIP affinity */
  readonly setOf: ReadonlyMap<Endpoint, string>;
}

export function renderServicePort(sp: ServicePort, endpoints: readonly Endpoint[], cfg: NftablesRenderConfig): NftServiceFragment {
  const proto = sp.protocol.toLowerCase();
  const cat = categorizeEndpoints(sp, endpoints, { nodeName: cfg.nodeName, zone: cfg.zone });
  const { hasAny } = cat;
  const usesLocalChain = cat.local.length > 0;
  const external = externallyAccessible(sp);
  const ctx: PortContext = {
    sp,
    cfg,
    ip: ipOf(cfg),
    proto,
    names: servicePortNames(sp.serviceKey, proto, sp.portName),
    hasAny,
    hasInternalEndpoints: sp.internalPolicyLocal ? usesLocalChain : hasAny,
    hasExternalEndpoints: sp.externalPolicyLocal ? usesLocalChain : hasAny,
    usesFirewallChain: sp.loadBalancerVIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0,
    localReachable: cat.allReachable.filter((ep) => ep.isLocal),
  };

  return {
    servicePort: sp,
    endpoints,
    categorized: cat,
    get chains(): NftChain[] {
      const eps = endpointChains(ctx, cat.allReachable);
      const chains: NftChain[] = [...eps.chains, ...policyChains(ctx, cat, eps)];
      if (hasAny && external) chains.push(externalChain(ctx));
      if (ctx.usesFirewallChain) chains.push(firewallChain(ctx));
      return chains;
    },
    sets: sp.affinitySeconds > 0 ? endpointChains(ctx, cat.allReachable).sets : [],
    elements: serviceElements(ctx),
    noLocalEndpoints: {
      internal: sp.internalPolicyLocal && hasAny && !usesLocalChain,
      external: sp.externalPolicyLocal && external && hasAny && !usesLocalChain,
    },
  };
}

/** The port's elements in the shared maps and sets: where its addresses and NodePort go. */
function serviceElements(ctx: PortContext): OwnedElement[] {
  const { sp, proto, names, hasAny, hasExternalEndpoints } = ctx;
  const internalChain = sp.internalPolicyLocal ? names.local : names.cluster;
  // no endpoints anywhere: reject; endpoints elsewhere but none here under Local policy: drop
  const internalVerdict = hasAny ? 'drop' : `goto ${CHAIN.reject}`;
  const externalVerdict = internalVerdict;

  const elements: OwnedElement[] = [];
  const key = (addr: string, port: number) => `${addr} . ${proto} . ${port}`;
  elements.push({ set: SET.clusterIPs, key: sp.clusterIP });
  // a local pod reaching itself through the service is masqueraded (nat-postrouting)
  for (const ep of ctx.localReachable) elements.push({ set: SET.hairpin, key: `${ep.ip} . ${ep.ip} . ${proto} . ${ep.port}` });
  if (ctx.hasInternalEndpoints) elements.push({ set: SET.serviceIPs, key: key(sp.clusterIP, sp.port), value: `goto ${internalChain}` });
  else elements.push({ set: SET.noEndpointServices, key: key(sp.clusterIP, sp.port), value: internalVerdict });
  for (const x of sp.externalIPs) {
    if (hasAny) elements.push({ set: SET.serviceIPs, key: key(x, sp.port), value: `goto ${names.external}` });
    if (!hasExternalEndpoints) elements.push({ set: SET.noEndpointServices, key: key(x, sp.port), value: externalVerdict });
  }
  for (const vip of sp.loadBalancerVIPs) {
    if (hasAny) elements.push({ set: SET.serviceIPs, key: key(vip, sp.port), value: `goto ${names.external}` });
    if (ctx.usesFirewallChain) elements.push({ set: SET.firewallIPs, key: key(vip, sp.port), value: `goto ${names.firewall}` });
    if (!hasExternalEndpoints) elements.push({ set: SET.noEndpointServices, key: key(vip, sp.port), value: externalVerdict });
  }
  if (sp.nodePort) {
    // NodePorts are not subject to loadBalancerSourceRanges (as in kube-proxy)
    if (hasAny) elements.push({ set: SET.serviceNodePorts, key: `${proto} . ${sp.nodePort}`, value: `goto ${names.external}` });
    if (!hasExternalEndpoints) elements.push({ set: SET.noEndpointNodePorts, key: `${proto} . ${sp.nodePort}`, value: externalVerdict });
  }
  return elements;
}

/**
 * With ClientIP affinity, one chain per reachable endpoint (masquerade hairpin traffic,
 * record affinity, DNAT). Without affinity there are no endpoint chains at all (as in
 * kube-proxy's nftables mode): the policy chain DNATs directly, and hairpin traffic is
 * masqueraded through the hairpin-connections set.
 */
function endpointChains(ctx: PortContext, reachable: readonly Endpoint[]): EndpointChains {
  const { sp, cfg, ip, proto, names } = ctx;
  const chains: NftChain[] = [];
  const sets: SetSpec[] = [];
  const chainOf = new Map<Endpoint, string>();
  const setOf = new Map<Endpoint, string>();
  if (sp.affinitySeconds <= 0) return { chains, sets, chainOf, setOf };
  for (const ep of reachable) {
    const chain = endpointChainName(names.base, ep.ip, ep.port);
    chainOf.set(ep, chain);
    const set = affinitySetName(names.base, ep.ip, ep.port, sp.affinitySeconds);
    setOf.set(ep, set);
    sets.push({ kind: 'set', name: set, type: addrType(cfg), flags: ['dynamic', 'timeout'], timeout: sp.affinitySeconds });
    chains.push({
      name: chain,
      rules: [`${ip} saddr ${ep.ip} jump ${CHAIN.markMasq}`, `update @${set} { ${ip} saddr }`, `meta l4proto ${proto} dnat to ${joinHostPort(ep.ip, ep.port)}`],
    });
  }
  return { chains, sets, chainOf, setOf };
}

/** Off-cluster traffic to the cluster IP is masqueraded (it may leave the node again). */
function clusterIPMasqueradeRules(ctx: PortContext): string[] {
  const { sp, cfg, ip, proto } = ctx;
  if (!ctx.hasInternalEndpoints) return [];
  const head = `${ip} daddr ${sp.clusterIP} ${proto} dport ${sp.port}`;
  if (cfg.masqueradeAll) return [`${head} jump ${CHAIN.markMasq}`];
  const notLocal = localMatch(ip, cfg.localDetector, true);
  return notLocal ? [`${head} ${notLocal} jump ${CHAIN.markMasq}`] : [];
}

/** The Cluster-policy chain (all endpoints) and the Local-policy chain (this node's), when they have endpoints. */
function policyChains(ctx: PortContext, cat: CategorizedEndpoints, eps: EndpointChains): NftChain[] {
  const { sp, cfg, ip, names } = ctx;
  const masq = clusterIPMasqueradeRules(ctx);
  const mode = cfg.endpointSelection ?? 'rules';
  const pick = (picked: readonly Endpoint[]): string[] => {
    if (sp.affinitySeconds <= 0) return dnatEndpoint(ip, ctx.proto, picked, mode);
    const out: string[] = [];
    for (const ep of picked) out.push(`${ip} saddr @${eps.setOf.get(ep)!} goto ${eps.chainOf.get(ep)!}`);
    out.push(...selectEndpoint(picked.map((ep) => eps.chainOf.get(ep)!), mode));
    return out;
  };
  const chains: NftChain[] = [];
  if (cat.cluster.length > 0) chains.push({ name: names.cluster, rules: [...(sp.internalPolicyLocal ? [] : masq), ...pick(cat.cluster)] });
  if (cat.local.length > 0) chains.push({ name: names.local, rules: [...(sp.internalPolicyLocal ? masq : []), ...pick(cat.local)] });
  return chains;
}

/** NodePort, externalIP and LoadBalancer IP traffic, under the external traffic policy. */
function externalChain(ctx: PortContext): NftChain {
  const { sp, cfg, ip, names } = ctx;
  const rules: string[] = [];
  if (!sp.externalPolicyLocal) {
    // the endpoint may be on another node: masquerade so that replies come back here
    rules.push(`jump ${CHAIN.markMasq}`);
  } else {
    // Pods and the node itself reach any endpoint, as if they went out to the load
    // balancer and came back; only traffic from outside is held to local endpoints.
    const fromPod = localMatch(ip, cfg.localDetector, false);
    if (fromPod) rules.push(`${fromPod} goto ${names.cluster} comment "short-circuit pod traffic"`);
    rules.push(`fib saddr type local jump ${CHAIN.markMasq} comment "masquerade local traffic"`);
    rules.push(`fib saddr type local goto ${names.cluster} comment "short-circuit local traffic"`);
  }
  if (ctx.hasExternalEndpoints) rules.push(`goto ${sp.externalPolicyLocal ? names.local : names.cluster}`);
  return { name: names.external, rules };
}

/** loadBalancerSourceRanges for the LoadBalancer IPs. */
function firewallChain(ctx: PortContext): NftChain {
  const { sp, cfg, ip, names } = ctx;
  // Allowed sources return to the hook chain (and go on to the DNAT); the rest is dropped.
  // One rule per range rather than an anonymous set: each anonymous set makes the kernel
  // walk the whole transaction once (see docs in src/apply/nftables.ts).
  const rules = sp.loadBalancerSourceRanges.map((r) => `${ip} saddr ${r} return`);
  // A node reaching its own LB IP may do so with the VIP as source; allowed when the
  // node's address is.
  const ranges = sp.loadBalancerSourceRanges.map((r) => parseCIDR(r)!);
  if (cfg.nodeIPs.some((n) => ranges.some((r) => cidrContains(r, n)))) {
    for (const vip of sp.loadBalancerVIPs) rules.push(`${ip} saddr ${vip} return`);
  }
  rules.push(`drop comment ${quoted(`${sp.name} loadBalancerSourceRanges`)}`);
  return { name: names.firewall, rules };
}

/**
 * With affinity: picks one of the endpoint chains at random, each with probability 1/n.
 * - 'rules' (default): rule i draws `numgen random mod (n-i)` and goes to endpoint i on 0,
 *   the last rule goes to the last endpoint: no set at all.
 * - 'vmap': kube-proxy's single `numgen random mod n vmap { 0 : goto ep0, ... }`. Each such
 *   rule is an anonymous set, and for every anonymous set the kernel walks the whole
 *   transaction so far (__nft_set_trans_bind), so a full sync in one transaction grows
 *   with the square of the service count: measured here, 5,000 services x 10 endpoints take
 *   61 s this way and 5.5 s with 'rules' (src/apply/nftables.ts has the figures).
 */
export function selectEndpoint(chains: readonly string[], mode: 'rules' | 'vmap'): string[] {
  const n = chains.length;
  if (n === 0) return [];
  if (n === 1) return [`goto ${chains[0]!}`];
  if (mode === 'vmap') return [`numgen random mod ${n} vmap { ${chains.map((c, i) => `${i} : goto ${c}`).join(', ')} }`];
  return chains.map((c, i) => (i < n - 1 ? `numgen random mod ${n - i} 0 goto ${c}` : `goto ${c}`));
}

/**
 * Without affinity: DNATs to one of the endpoints at random, each with probability 1/n,
 * straight from the policy chain (no endpoint chains).
 * - 'rules' (default): rule i draws `numgen random mod (n-i)` and DNATs to endpoint i on 0,
 *   the last rule DNATs to the last endpoint: no set at all.
 * - 'vmap': kube-proxy's `dnat ip addr . port to numgen random mod n map { ... }`, one
 *   anonymous map per chain (quadratic in a full sync, see selectEndpoint).
 */
export function dnatEndpoint(ip: 'ip' | 'ip6', proto: string, eps: readonly Endpoint[], mode: 'rules' | 'vmap'): string[] {
  const n = eps.length;
  const dnat = (ep: Endpoint) => `meta l4proto ${proto} dnat to ${joinHostPort(ep.ip, ep.port)}`;
  if (n === 0) return [];
  if (n === 1) return [dnat(eps[0]!)];
  if (mode === 'vmap') return [`meta l4proto ${proto} dnat ${ip} addr . port to numgen random mod ${n} map { ${eps.map((ep, i) => `${i} : ${ep.ip} . ${ep.port}`).join(', ')} }`];
  return eps.map((ep, i) => (i < n - 1 ? `numgen random mod ${n - i} 0 ${dnat(ep)}` : dnat(ep)));
}
