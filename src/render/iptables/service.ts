// Rules for one service port: its own chains (SVC, SVL, EXT, FW, SEP) and the entries it
// contributes to the shared dispatch trees. Follows kube-proxy's iptables layout; see
// docs/design.md for where kpx differs (the dispatch trees).
import { categorizeEndpoints, externallyAccessible, type CategorizedEndpoints } from '../../model/topology.js';
import { endpointAddress, type Endpoint, type Protocol, type ServicePort } from '../../model/types.js';
import { cidrContains, hostCIDR, ipToBigInt, parseCIDR } from '../../util/ip.js';
import { baseMatch, type IptablesRenderConfig } from './config.js';
import type { DispatchEntry } from './dispatch.js';
import { CHAIN, endpointChain, servicePortChains } from './names.js';

export type ProtoName = 'tcp' | 'udp' | 'sctp';
export const protoName = (p: Protocol): ProtoName => p.toLowerCase() as ProtoName;

export interface PortEntry {
  readonly protocol: ProtoName;
  readonly entry: DispatchEntry;
}

/** Everything one service port renders. Immutable; cached while its inputs are unchanged. */
export interface ServiceFragment {
  readonly servicePort: ServicePort;
  readonly endpoints: readonly Endpoint[];
  readonly categorized: CategorizedEndpoints;
  /** the port's own nat chains, in order */
  readonly natChains: ReadonlyArray<readonly [string, readonly string[]]>;
  /** nat KPX-SERVICES tree: cluster IP, external IP and LB IP captures */
  readonly natDestinations: readonly DispatchEntry[];
  /** nat KPX-NODEPORTS trees */
  readonly natNodePorts: readonly PortEntry[];
  /** filter KPX-SERVICES tree: cluster IPs that cannot be served */
  readonly filterClusterIPs: readonly DispatchEntry[];
  /** filter KPX-EXTERNAL-SERVICES tree: external and LB IPs that cannot be served */
  readonly filterExternalIPs: readonly DispatchEntry[];
  /** filter KPX-EXTERNAL-NODEPORTS trees: NodePorts that cannot be served */
  readonly filterNodePorts: readonly PortEntry[];
  /** filter KPX-PROXY-FIREWALL tree: LB IPs whose source ranges did not let the packet in */
  readonly filterFirewall: readonly DispatchEntry[];
  /** filter KPX-NODEPORTS: the health check node port */
  readonly filterHealthCheck: readonly PortEntry[];
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
  const chains = servicePortChains(name, proto);
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

  const natChains: Array<[string, string[]]> = [];
  const natDestinations: DispatchEntry[] = [];
  const natNodePorts: PortEntry[] = [];
  const filterClusterIPs: DispatchEntry[] = [];
  const filterExternalIPs: DispatchEntry[] = [];
  const filterNodePorts: PortEntry[] = [];
  const filterFirewall: DispatchEntry[] = [];
  const filterHealthCheck: PortEntry[] = [];

  const dst = (ip: string) => `-d ${hostCIDR(ip, family)}`;
  const addrEntry = (ip: string, rule: string): DispatchEntry => ({ key: ipToBigInt(ip), order: `${sp.port}/${proto}/${name}`, rule });
  const portEntry = (port: number, rule: string): PortEntry => ({
    protocol: proto,
    entry: { key: BigInt(port), order: name, rule },
  });

  // Cluster IP.
  const clusterText = `${name} cluster IP`;
  if (hasInternalEndpoints) {
    natDestinations.push(addrEntry(sp.clusterIP, `${portMatch(dst(sp.clusterIP), proto, clusterText, sp.port)} -j ${internalChain}`));
  } else {
    const u = unservable(sp.internalPolicyLocal);
    filterClusterIPs.push(addrEntry(sp.clusterIP, `${portMatch(dst(sp.clusterIP), proto, u.text, sp.port)} -j ${u.target}`));
  }

  // External IPs and LoadBalancer IPs.
  const extUnservable = unservable(sp.externalPolicyLocal);
  for (const ip of sp.externalIPs) {
    if (hasAny) {
      natDestinations.push(addrEntry(ip, `${portMatch(dst(ip), proto, `${name} external IP`, sp.port)} -j ${chains.ext}`));
    }
    if (!hasExternalEndpoints) {
      filterExternalIPs.push(addrEntry(ip, `${portMatch(dst(ip), proto, extUnservable.text, sp.port)} -j ${extUnservable.target}`));
    }
  }
  for (const ip of sp.loadBalancerVIPs) {
    if (hasAny) {
      natDestinations.push(addrEntry(ip, `${portMatch(dst(ip), proto, `${name} loadbalancer IP`, sp.port)} -j ${lbChain}`));
    }
    if (usesFwChain) {
      filterFirewall.push(
        addrEntry(ip, `${portMatch(dst(ip), proto, `${name} traffic not accepted by ${chains.fw}`, sp.port)} -j DROP`),
      );
    }
    if (!hasExternalEndpoints) {
      filterExternalIPs.push(addrEntry(ip, `${portMatch(dst(ip), proto, extUnservable.text, sp.port)} -j ${extUnservable.target}`));
    }
  }

  // NodePort.
  if (sp.nodePort) {
    if (hasAny) natNodePorts.push(portEntry(sp.nodePort, `${portMatch('', proto, name, sp.nodePort)} -j ${chains.ext}`));
    if (!hasExternalEndpoints) {
      filterNodePorts.push(
        portEntry(sp.nodePort, `${portMatch('', proto, extUnservable.text, sp.nodePort)} -j ${extUnservable.target}`),
      );
    }
  }
  if (sp.healthCheckNodePort) {
    filterHealthCheck.push({
      protocol: 'tcp',
      entry: {
        key: BigInt(sp.healthCheckNodePort),
        order: name,
        rule: `${portMatch('', 'tcp', `${name} health check node port`, sp.healthCheckNodePort)} -j ACCEPT`,
      },
    });
  }

  // The masquerade rule for cluster IP traffic heads the internal chain.
  const clusterDst = hostCIDR(sp.clusterIP, family);
  const masqClusterIP = cfg.masqueradeAll
    ? `${portMatch(dst(sp.clusterIP), proto, clusterText, sp.port)} -j ${CHAIN.markMasq}`
    : cfg.localDetector
      ? `${portMatch(baseMatch({ dst: clusterDst, local: cfg.localDetector, negate: true }), proto, clusterText, sp.port)} -j ${CHAIN.markMasq}`
      : null;

  // Endpoint chain names, hashed once per endpoint.
  const sepOf = new Map<Endpoint, string>();
  for (const ep of cat.allReachable) sepOf.set(ep, endpointChain(name, proto, endpointAddress(ep)));

  if (usesClusterChain) {
    const head = !sp.internalPolicyLocal && hasInternalEndpoints && masqClusterIP ? [masqClusterIP] : [];
    natChains.push([chains.svc, [...head, ...endpointRules(sp, cluster, sepOf)]]);
  }
  if (usesLocalChain) {
    const head = sp.internalPolicyLocal && hasInternalEndpoints && masqClusterIP ? [masqClusterIP] : [];
    natChains.push([chains.svl, [...head, ...endpointRules(sp, local, sepOf)]]);
  }

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
    natChains.push([chains.ext, ext]);
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
    natChains.push([chains.fw, fw]);
  }

  // One SEP chain per endpoint any chain above jumps to.
  for (const ep of cat.allReachable) {
    const sep = sepOf.get(ep)!;
    const recent = sp.affinitySeconds > 0 ? ` -m recent --set --name ${sep} --mask ${recentMask(family)} --rsource` : '';
    natChains.push([
      sep,
      [
        `-s ${hostCIDR(ep.ip, family)} ${comment(name)} -j ${CHAIN.markMasq}`,
        `-p ${proto} ${comment(name)}${recent} -m ${proto} -j DNAT --to-destination ${endpointAddress(ep)}`,
      ],
    ]);
  }

  return {
    servicePort: sp,
    endpoints,
    categorized: cat,
    natChains,
    natDestinations,
    natNodePorts,
    filterClusterIPs,
    filterExternalIPs,
    filterNodePorts,
    filterFirewall,
    filterHealthCheck,
    noLocalEndpoints: {
      internal: sp.internalPolicyLocal && hasAny && !usesLocalChain,
      external: sp.externalPolicyLocal && external && hasAny && !usesLocalChain,
    },
  };
}

/** Affinity checks, then random selection: endpoint i of n with probability 1/(n-i). */
function endpointRules(sp: ServicePort, eps: readonly Endpoint[], sepOf: ReadonlyMap<Endpoint, string>): string[] {
  const out: string[] = [];
  const n = eps.length;
  if (sp.affinitySeconds > 0) {
    for (const ep of eps) {
      const sep = sepOf.get(ep)!;
      out.push(
        `${comment(`${sp.name} -> ${endpointAddress(ep)}`)} -m recent --rcheck --seconds ${sp.affinitySeconds} --reap --name ${sep} --mask ${recentMask(sp.family)} --rsource -j ${sep}`,
      );
    }
  }
  eps.forEach((ep, i) => {
    const stat = i < n - 1 ? ` -m statistic --mode random --probability ${probability(n - i)}` : '';
    out.push(`${comment(`${sp.name} -> ${endpointAddress(ep)}`)}${stat} -j ${sepOf.get(ep)!}`);
  });
  return out;
}

const recentMask = (family: string): string =>
  family === 'IPv4' ? '255.255.255.255' : 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';

const probabilities: string[] = [];
export function probability(remaining: number): string {
  return (probabilities[remaining] ??= (1 / remaining).toFixed(10));
}
