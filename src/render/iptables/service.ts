// Rules for one service port: its own chains (SVC, SVL, EXT, FW, SEP) and the entries it
// contributes to the shared dispatch trees. Follows kube-proxy's iptables layout; see
// docs/design.md for where kpx differs (the dispatch trees).
import { categorizeEndpoints, externallyAccessible, type CategorizedEndpoints } from '../../model/topology.js';
import type { Endpoint, Protocol, ServicePort } from '../../model/types.js';
import { cidrContains, hostCIDR, ipToBigInt, parseCIDR } from '../../util/ip.js';
import { baseMatch, type IptablesRenderConfig } from './config.js';
import { block, comment } from '../../iptables/format.js';
import type { DispatchEntry } from './dispatch.js';
import { CHAIN, endpointChain, servicePortChains, servicePortId, type Generation, type ServicePortChains } from './names.js';

export type ProtoName = 'tcp' | 'udp' | 'sctp';
export const protoName = (p: Protocol): ProtoName => p.toLowerCase() as ProtoName;

/**
 * The dispatch trees a service port contributes entries to:
 * - nat "DST": cluster IP, external IP and LB IP captures (root: nat KPX-SERVICES);
 * - nat "NP<proto>": NodePorts (root: nat KPX-NODEPORTS);
 * - filter "SVC": cluster IPs that cannot be served (root: filter KPX-SERVICES);
 * - filter "EXT": external and LB IPs that cannot be served (root: KPX-EXTERNAL-SERVICES);
 * - filter "XNP<proto>": NodePorts that cannot be served (root: KPX-EXTERNAL-NODEPORTS);
 * - filter "FW": LB IPs whose source ranges did not let the packet in (root: KPX-PROXY-FIREWALL);
 * - filter "HCT": health check node ports (root: filter KPX-NODEPORTS).
 */
export type TreeId = 'DST' | `NP${'T' | 'U' | 'S'}` | 'SVC' | 'EXT' | `XNP${'T' | 'U' | 'S'}` | 'FW' | 'HCT';

export const protoLetter = (p: ProtoName): 'T' | 'U' | 'S' => (p === 'tcp' ? 'T' : p === 'udp' ? 'U' : 'S');

/** Everything one service port renders. Immutable. */
export interface ServiceFragment {
  readonly servicePort: ServicePort;
  readonly endpoints: readonly Endpoint[];
  readonly categorized: CategorizedEndpoints;
  /**
   * The port's own nat chains, leaves first (SEP, SVC, SVL, EXT, FW): [name, block].
   * SEP, SVC and SVL chains (nine in ten of all chains) are written out on each call
   * rather than kept: a full sync generates them while it streams them.
   */
  natChains(): Iterable<readonly [string, string]>;
  /** rules in natChains (metrics) */
  readonly natRules: number;
  /** entries for the dispatch trees */
  readonly entries: ReadonlyArray<readonly [TreeId, DispatchEntry]>;
  /** Local policy without local endpoints while endpoints exist elsewhere */
  readonly noLocalEndpoints: { readonly internal: boolean; readonly external: boolean };
}

/** "[base] -p P <comment> -m P --dport N" in iptables-save's canonical order. */
function portMatch(base: string, proto: ProtoName, text: string, port: number): string {
  return `${base}${base ? ' ' : ''}-p ${proto} ${comment(text)} -m ${proto} --dport ${port}`;
}

/** What decides a service port's rules: its endpoints as categorized, and which chains it uses. */
interface PortFacts {
  readonly sp: ServicePort;
  readonly cfg: IptablesRenderConfig;
  readonly proto: ProtoName;
  readonly chains: ServicePortChains;
  readonly cat: CategorizedEndpoints;
  /** it has endpoints for its internal traffic policy */
  readonly internalServed: boolean;
  /** it has endpoints for its external traffic policy */
  readonly externalServed: boolean;
  readonly usesLocalChain: boolean;
  readonly usesFwChain: boolean;
}

function portFacts(sp: ServicePort, endpoints: readonly Endpoint[], cfg: IptablesRenderConfig): PortFacts {
  const proto = protoName(sp.protocol);
  const cat = categorizeEndpoints(sp, endpoints, cfg);
  const usesLocalChain = cat.local.length > 0;
  return {
    sp,
    cfg,
    proto,
    chains: servicePortChains(servicePortId(sp), proto, cfg.generation?.nat ?? 0),
    cat,
    internalServed: sp.internalPolicyLocal ? usesLocalChain : cat.hasAny,
    externalServed: sp.externalPolicyLocal ? usesLocalChain : cat.hasAny,
    usesLocalChain,
    usesFwChain: cat.hasAny && sp.loadBalancerVIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0,
  };
}

/** The verdict for traffic a service port cannot serve: DROP with a Local policy and endpoints elsewhere, else REJECT. */
function unservable(f: PortFacts, localPolicy: boolean): { target: string; text: string } {
  if (f.cat.hasAny && localPolicy) return { target: 'DROP', text: `${f.sp.name} has no local endpoints` };
  const icmp = f.cfg.family === 'IPv4' ? 'icmp-port-unreachable' : 'icmp6-port-unreachable';
  return { target: `REJECT --reject-with ${icmp}`, text: `${f.sp.name} has no endpoints` };
}

/** The entries a service port puts in the dispatch trees (see TreeId). */
function treeEntries(f: PortFacts): Array<[TreeId, DispatchEntry]> {
  const { sp, proto, chains, cfg } = f;
  const name = sp.name;
  const out: Array<[TreeId, DispatchEntry]> = [];
  const rule = (ip: string, text: string, target: string) => `${portMatch(`-d ${hostCIDR(ip, cfg.family)}`, proto, text, sp.port)} -j ${target}`;
  const addr = (tree: TreeId, ip: string, r: string) => out.push([tree, { key: ipToBigInt(ip), order: `${sp.port}/${proto}/${name}`, rule: r }]);
  const port = (tree: TreeId, p: number, r: string) => out.push([tree, { key: BigInt(p), order: name, rule: r }]);
  const hasAny = f.cat.hasAny;
  const ext = unservable(f, sp.externalPolicyLocal);

  if (f.internalServed) addr('DST', sp.clusterIP, rule(sp.clusterIP, `${name} cluster IP`, sp.internalPolicyLocal ? chains.svl : chains.svc));
  else {
    const u = unservable(f, sp.internalPolicyLocal);
    addr('SVC', sp.clusterIP, rule(sp.clusterIP, u.text, u.target));
  }
  for (const ip of sp.externalIPs) {
    if (hasAny) addr('DST', ip, rule(ip, `${name} external IP`, chains.ext));
    if (!f.externalServed) addr('EXT', ip, rule(ip, ext.text, ext.target));
  }
  for (const ip of sp.loadBalancerVIPs) {
    if (hasAny) addr('DST', ip, rule(ip, `${name} loadbalancer IP`, f.usesFwChain ? chains.fw : chains.ext));
    if (f.usesFwChain) addr('FW', ip, rule(ip, `${name} traffic not accepted by ${chains.fw}`, 'DROP'));
    if (!f.externalServed) addr('EXT', ip, rule(ip, ext.text, ext.target));
  }
  const letter = protoLetter(proto);
  if (sp.nodePort && hasAny) port(`NP${letter}`, sp.nodePort, `${portMatch('', proto, name, sp.nodePort)} -j ${chains.ext}`);
  if (sp.nodePort && !f.externalServed) port(`XNP${letter}`, sp.nodePort, `${portMatch('', proto, ext.text, sp.nodePort)} -j ${ext.target}`);
  if (sp.healthCheckNodePort) {
    port('HCT', sp.healthCheckNodePort, `${portMatch('', 'tcp', `${name} health check node port`, sp.healthCheckNodePort)} -j ACCEPT`);
  }
  return out;
}

/** The EXT chain: where NodePort, external IP and LB IP traffic goes, by external traffic policy. */
function extRules(f: PortFacts): string[] {
  const { sp, chains, cfg } = f;
  const name = sp.name;
  if (!sp.externalPolicyLocal) {
    return [`${comment(`masquerade traffic for ${name} external destinations`)} -j ${CHAIN.markMasq}`, `-j ${chains.svc}`];
  }
  // Pods and the node itself reach any endpoint (as if they went out to the LB and came
  // back); only traffic from outside is held to local endpoints.
  const out: string[] = [];
  if (cfg.localDetector) out.push(`${baseMatch({ local: cfg.localDetector })} ${comment(`pod traffic for ${name} external destinations`)} -j ${chains.svc}`);
  out.push(`${comment(`masquerade LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j ${CHAIN.markMasq}`);
  out.push(`${comment(`route LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j ${chains.svc}`);
  if (f.usesLocalChain) out.push(`-j ${chains.svl}`);
  return out;
}

/** The FW chain: LB IP traffic from the allowed source ranges goes on to EXT, the rest is dropped. */
function fwRules(f: PortFacts): string[] {
  const { sp, chains, cfg } = f;
  const lbText = comment(`${sp.name} loadbalancer IP`);
  const out = sp.loadBalancerSourceRanges.map((range) => `-s ${range} ${lbText} -j ${chains.ext}`);
  // Node -> its own LB IP may arrive with the VIP as source; let it in when the node's
  // address is allowed.
  const ranges = sp.loadBalancerSourceRanges.map((r) => parseCIDR(r)!);
  if (cfg.nodeIPs.some((ip) => ranges.some((r) => cidrContains(r, ip)))) {
    for (const ip of sp.loadBalancerVIPs) out.push(`-s ${hostCIDR(ip, cfg.family)} ${lbText} -j ${chains.ext}`);
  }
  out.push(comment(`other traffic to ${sp.name} will be dropped by ${CHAIN.proxyFirewall}`));
  return out;
}

/**
 * Rules in the SEP, SVC and SVL chains, which are nine in ten of all chains: natChains()
 * writes them out when asked (a full sync streams them), so only their count is kept.
 */
function endpointChainRules(f: PortFacts, masqHead: boolean): number {
  const { sp, cat } = f;
  const affinity = sp.affinitySeconds > 0 ? 1 : 0;
  let n = 2 * cat.allReachable.length;
  if (cat.cluster.length) n += (!sp.internalPolicyLocal && masqHead ? 1 : 0) + cat.cluster.length * (1 + affinity);
  if (cat.local.length) n += (sp.internalPolicyLocal && masqHead ? 1 : 0) + cat.local.length * (1 + affinity);
  return n;
}

export function renderServicePort(sp: ServicePort, endpoints: readonly Endpoint[], cfg: IptablesRenderConfig): ServiceFragment {
  const f = portFacts(sp, endpoints, cfg);
  // the EXT and FW chains, kept as text (natChains() lists them after SEP, SVC and SVL)
  const own: Array<[string, string]> = [];
  let ownRules = 0;
  const chain = (n: string, rules: string[]) => {
    ownRules += rules.length;
    own.push([n, block(n, rules)]);
  };
  const external = externallyAccessible(sp);
  if (f.cat.hasAny && external) chain(f.chains.ext, extRules(f));
  if (f.usesFwChain) chain(f.chains.fw, fwRules(f));
  // (masqueradeRule() has a rule exactly when one of these is set; no need to build it here)
  const masqHead = f.internalServed && (cfg.masqueradeAll || !!cfg.localDetector);
  return new PortFragment(sp, endpoints, f.cat, f.chains, cfg, masqHead, own, ownRules + endpointChainRules(f, masqHead), treeEntries(f), {
    internal: sp.internalPolicyLocal && f.cat.hasAny && !f.usesLocalChain,
    external: sp.externalPolicyLocal && external && f.cat.hasAny && !f.usesLocalChain,
  });
}

/** The masquerade rule that heads the internal chain, for cluster IP traffic from outside the cluster. */
function masqueradeRule(sp: ServicePort, cfg: IptablesRenderConfig): string | null {
  const proto = protoName(sp.protocol);
  const text = `${sp.name} cluster IP`;
  const clusterDst = hostCIDR(sp.clusterIP, cfg.family);
  if (cfg.masqueradeAll) return `${portMatch(`-d ${clusterDst}`, proto, text, sp.port)} -j ${CHAIN.markMasq}`;
  if (cfg.localDetector) {
    return `${portMatch(baseMatch({ dst: clusterDst, local: cfg.localDetector, negate: true }), proto, text, sp.port)} -j ${CHAIN.markMasq}`;
  }
  return null;
}

class PortFragment implements ServiceFragment {
  constructor(
    readonly servicePort: ServicePort,
    readonly endpoints: readonly Endpoint[],
    readonly categorized: CategorizedEndpoints,
    private readonly names: ServicePortChains,
    private readonly cfg: IptablesRenderConfig,
    /** the internal chain starts with the masquerade rule */
    private readonly masqHead: boolean,
    /** EXT and FW as rendered */
    private readonly own: ReadonlyArray<readonly [string, string]>,
    readonly natRules: number,
    readonly entries: ReadonlyArray<readonly [TreeId, DispatchEntry]>,
    readonly noLocalEndpoints: { readonly internal: boolean; readonly external: boolean },
  ) {}

  *natChains(): Generator<readonly [string, string]> {
    const sp = this.servicePort;
    const { family, reducedComments } = this.cfg;
    const proto = protoName(sp.protocol);
    const { cluster, local, allReachable } = this.categorized;
    // In large clusters the per-endpoint comments go, as in kube-proxy: they are most of
    // the payload and nobody reads 100k of them.
    const note = reducedComments ? '' : ` ${comment(sp.name)}`;
    const sepOf = new Map<Endpoint, string>();
    const generation = this.cfg.generation?.nat ?? 0;
    const affinity = sp.affinitySeconds > 0;
    for (const ep of allReachable) {
      const sep = endpointChain(servicePortId(sp), proto, ep.addr, generation);
      sepOf.set(ep, sep);
      // the affinity list keeps its name across generations, so clients stick through a full sync
      const recent = affinity ? ` -m recent --set --name ${recentList(sp, proto, ep, sep, generation)} --mask ${recentMask(family)} --rsource` : '';
      yield [
        sep,
        `-A ${sep} -s ${hostCIDR(ep.ip, family)}${note} -j ${CHAIN.markMasq}\n-A ${sep} -p ${proto}${note}${recent} -m ${proto} -j DNAT --to-destination ${ep.addr}`,
      ];
    }
    const head = this.masqHead ? [masqueradeRule(sp, this.cfg)!] : [];
    if (cluster.length) {
      const rules = [...(sp.internalPolicyLocal ? [] : head), ...endpointRules(sp, cluster, sepOf, !!reducedComments, generation)];
      yield [this.names.svc, block(this.names.svc, rules)];
    }
    if (local.length) {
      const rules = [...(sp.internalPolicyLocal ? head : []), ...endpointRules(sp, local, sepOf, !!reducedComments, generation)];
      yield [this.names.svl, block(this.names.svl, rules)];
    }
    yield* this.own;
  }
}

/** Affinity checks, then random selection: endpoint i of n with probability 1/(n-i). */
/** The xt_recent list of an endpoint: its generation-0 endpoint chain's name. */
function recentList(sp: ServicePort, proto: ProtoName, ep: Endpoint, sep: string, generation: Generation): string {
  return generation === 0 ? sep : endpointChain(servicePortId(sp), proto, ep.addr, 0);
}

function endpointRules(
  sp: ServicePort,
  eps: readonly Endpoint[],
  sepOf: ReadonlyMap<Endpoint, string>,
  reduced: boolean,
  generation: Generation,
): string[] {
  const out: string[] = [];
  const n = eps.length;
  const note = (ep: Endpoint) => (reduced ? '' : `${comment(`${sp.name} -> ${ep.addr}`)} `);
  if (sp.affinitySeconds > 0) {
    for (const ep of eps) {
      const sep = sepOf.get(ep)!;
      out.push(
        `${note(ep)}-m recent --rcheck --seconds ${sp.affinitySeconds} --reap --name ${recentList(sp, protoName(sp.protocol), ep, sep, generation)} --mask ${recentMask(sp.family)} --rsource -j ${sep}`,
      );
    }
  }
  eps.forEach((ep, i) => {
    const stat = i < n - 1 ? `-m statistic --mode random --probability ${probability(n - i)} ` : '';
    out.push(`${note(ep)}${stat}-j ${sepOf.get(ep)!}`);
  });
  return out;
}

const recentMask = (family: string): string =>
  family === 'IPv4' ? '255.255.255.255' : 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';

const probabilities: string[] = [];
export function probability(remaining: number): string {
  return (probabilities[remaining] ??= (1 / remaining).toFixed(10));
}
