// Rules for one service port: its own chains (SVC, SVL, EXT, FW, SEP) and the entries it
// contributes to the shared dispatch trees. Follows kube-proxy's iptables layout; see
// docs/design.md for where kpx differs (the dispatch trees).
import { categorizeEndpoints, externallyAccessible, type CategorizedEndpoints } from '../../model/topology.js';
import type { Endpoint, Protocol, ServicePort } from '../../model/types.js';
import { cidrContains, hostCIDR, ipToBigInt, parseCIDR } from '../../util/ip.js';
import { baseMatch, type IptablesRenderConfig } from './config.js';
import { block } from '../../iptables/format.js';
import type { DispatchEntry } from './dispatch.js';
import { CHAIN, endpointChain, servicePortChains, type Generation } from './names.js';

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

const comment = (text: string): string => `-m comment --comment "${text}"`;

/** "[base] -p P <comment> -m P --dport N" in iptables-save's canonical order. */
function portMatch(base: string, proto: ProtoName, text: string, port: number): string {
  return `${base}${base ? ' ' : ''}-p ${proto} ${comment(text)} -m ${proto} --dport ${port}`;
}

export function renderServicePort(
  sp: ServicePort,
  endpoints: readonly Endpoint[],
  cfg: IptablesRenderConfig,
): ServiceFragment {
  const family = cfg.family;
  const proto = protoName(sp.protocol);
  const name = sp.name;
  const chains = servicePortChains(name, proto, cfg.generation?.nat ?? 0);
  const cat = categorizeEndpoints(sp, endpoints, cfg.nodeName, cfg.zone);
  const { cluster, local, hasAny } = cat;

  const usesClusterChain = cluster.length > 0;
  const usesLocalChain = local.length > 0;
  const internalChain = sp.internalPolicyLocal ? chains.svl : chains.svc;
  const hasInternalEndpoints = sp.internalPolicyLocal ? usesLocalChain : hasAny;
  const hasExternalEndpoints = sp.externalPolicyLocal ? usesLocalChain : hasAny;
  const external = externallyAccessible(sp);
  const usesExtChain = hasAny && external;
  const usesFwChain = hasAny && sp.loadBalancerVIPs.length > 0 && sp.loadBalancerSourceRanges.length > 0;
  const lbChain = usesFwChain ? chains.fw : chains.ext;

  const unservable = (localPolicy: boolean) =>
    hasAny && localPolicy
      ? { target: 'DROP', text: `${name} has no local endpoints` }
      : {
          target: `REJECT --reject-with ${family === 'IPv4' ? 'icmp-port-unreachable' : 'icmp6-port-unreachable'}`,
          text: `${name} has no endpoints`,
        };

  // the EXT and FW chains, kept as text (natChains() lists them after SEP, SVC and SVL)
  const ownChains: Array<[string, string]> = [];
  let natRules = 0;
  const chain = (n: string, rules: string[]) => {
    natRules += rules.length;
    ownChains.push([n, block(n, rules)]);
  };
  const entries: Array<[TreeId, DispatchEntry]> = [];
  const letter = protoLetter(proto);

  const dst = (ip: string) => `-d ${hostCIDR(ip, family)}`;
  const addr = (tree: TreeId, ip: string, rule: string) =>
    entries.push([tree, { key: ipToBigInt(ip), order: `${sp.port}/${proto}/${name}`, rule }]);
  const port = (tree: TreeId, p: number, rule: string) => entries.push([tree, { key: BigInt(p), order: name, rule }]);

  // Cluster IP.
  const clusterText = `${name} cluster IP`;
  if (hasInternalEndpoints) {
    addr('DST', sp.clusterIP, `${portMatch(dst(sp.clusterIP), proto, clusterText, sp.port)} -j ${internalChain}`);
  } else {
    const u = unservable(sp.internalPolicyLocal);
    addr('SVC', sp.clusterIP, `${portMatch(dst(sp.clusterIP), proto, u.text, sp.port)} -j ${u.target}`);
  }

  // External IPs and LoadBalancer IPs.
  const extUnservable = unservable(sp.externalPolicyLocal);
  for (const ip of sp.externalIPs) {
    if (hasAny) addr('DST', ip, `${portMatch(dst(ip), proto, `${name} external IP`, sp.port)} -j ${chains.ext}`);
    if (!hasExternalEndpoints) {
      addr('EXT', ip, `${portMatch(dst(ip), proto, extUnservable.text, sp.port)} -j ${extUnservable.target}`);
    }
  }
  for (const ip of sp.loadBalancerVIPs) {
    if (hasAny) addr('DST', ip, `${portMatch(dst(ip), proto, `${name} loadbalancer IP`, sp.port)} -j ${lbChain}`);
    if (usesFwChain) {
      addr('FW', ip, `${portMatch(dst(ip), proto, `${name} traffic not accepted by ${chains.fw}`, sp.port)} -j DROP`);
    }
    if (!hasExternalEndpoints) {
      addr('EXT', ip, `${portMatch(dst(ip), proto, extUnservable.text, sp.port)} -j ${extUnservable.target}`);
    }
  }

  // NodePort.
  if (sp.nodePort) {
    if (hasAny) port(`NP${letter}`, sp.nodePort, `${portMatch('', proto, name, sp.nodePort)} -j ${chains.ext}`);
    if (!hasExternalEndpoints) {
      port(`XNP${letter}`, sp.nodePort, `${portMatch('', proto, extUnservable.text, sp.nodePort)} -j ${extUnservable.target}`);
    }
  }
  if (sp.healthCheckNodePort) {
    port('HCT', sp.healthCheckNodePort, `${portMatch('', 'tcp', `${name} health check node port`, sp.healthCheckNodePort)} -j ACCEPT`);
  }

  // The endpoint chains and the SVC/SVL chains that pick among them are nine in ten of
  // all chains: natChains() writes them out when asked (a full sync streams them), and
  // only their rule count is known here.
  // (masqueradeRule() has a rule exactly when one of these is set; no need to build it here)
  const masqHead = hasInternalEndpoints && (cfg.masqueradeAll || !!cfg.localDetector);
  const affinityRules = sp.affinitySeconds > 0 ? 1 : 0;
  if (usesClusterChain) natRules += (!sp.internalPolicyLocal && masqHead ? 1 : 0) + cluster.length * (1 + affinityRules);
  if (usesLocalChain) natRules += (sp.internalPolicyLocal && masqHead ? 1 : 0) + local.length * (1 + affinityRules);
  natRules += 2 * cat.allReachable.length;

  if (usesExtChain) {
    const ext: string[] = [];
    if (!sp.externalPolicyLocal) {
      ext.push(`${comment(`masquerade traffic for ${name} external destinations`)} -j ${CHAIN.markMasq}`);
      ext.push(`-j ${chains.svc}`);
    } else {
      // Pods and the node itself reach any endpoint (as if they went out to the LB and
      // came back); only traffic from outside is held to local endpoints.
      if (cfg.localDetector) {
        ext.push(`${baseMatch({ local: cfg.localDetector })} ${comment(`pod traffic for ${name} external destinations`)} -j ${chains.svc}`);
      }
      ext.push(
        `${comment(`masquerade LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j ${CHAIN.markMasq}`,
      );
      ext.push(`${comment(`route LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j ${chains.svc}`);
      if (usesLocalChain) ext.push(`-j ${chains.svl}`);
    }
    chain(chains.ext, ext);
  }

  if (usesFwChain) {
    const fw: string[] = [];
    const lbText = comment(`${name} loadbalancer IP`);
    for (const range of sp.loadBalancerSourceRanges) fw.push(`-s ${range} ${lbText} -j ${chains.ext}`);
    // Node -> its own LB IP may arrive with the VIP as source; let it in when the
    // node's address is allowed.
    const ranges = sp.loadBalancerSourceRanges.map((r) => parseCIDR(r)!);
    const allowFromNode = cfg.nodeIPs.some((ip) => ranges.some((r) => cidrContains(r, ip)));
    if (allowFromNode) for (const ip of sp.loadBalancerVIPs) fw.push(`-s ${hostCIDR(ip, family)} ${lbText} -j ${chains.ext}`);
    fw.push(comment(`other traffic to ${name} will be dropped by ${CHAIN.proxyFirewall}`));
    chain(chains.fw, fw);
  }

  return new PortFragment(sp, endpoints, cat, chains, cfg, masqHead, ownChains, natRules, entries, {
    internal: sp.internalPolicyLocal && hasAny && !usesLocalChain,
    external: sp.externalPolicyLocal && external && hasAny && !usesLocalChain,
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
    private readonly names: ReturnType<typeof servicePortChains>,
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
      const sep = endpointChain(sp.name, proto, ep.addr, generation);
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
  return generation === 0 ? sep : endpointChain(sp.name, proto, ep.addr, 0);
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
