// Turns kpx's config plus this node's facts into the per-family input of the renderers.
// Pure; the proxier memoizes the result so unchanged facts keep the same object (and a
// changed one forces a full sync).
import type { KpxConfig } from '../config/config.js';
import type { NodeFacts } from '../model/types.js';
import type { HostFacts } from '../apply/host.js';
import { cidrContains, isLoopback, parseCIDR, type IPFamily } from '../util/ip.js';
import { masqueradeMark, type IptablesRenderConfig, type LocalDetector } from '../render/iptables/config.js';
import type { IpvsRenderConfig } from '../render/ipvs/ipvs.js';

export interface Capabilities {
  readonly randomFully: boolean;
  readonly conntrackTCPLiberal: boolean;
}

export function nodeIPs(cfg: KpxConfig, family: IPFamily, node: NodeFacts | null): string[] {
  const fromNode = node?.ips[family] ?? [];
  if (fromNode.length) return [...fromNode];
  const bind = cfg.bindAddress ? parseCIDR(`${cfg.bindAddress}/${family === 'IPv4' ? 32 : 128}`) : null;
  if (bind && bind.family === family && bind.address !== '0.0.0.0' && bind.address !== '::') return [bind.address];
  return [];
}

export function localDetector(cfg: KpxConfig, family: IPFamily, node: NodeFacts | null): LocalDetector {
  switch (cfg.detectLocalMode) {
    case 'ClusterCIDR': {
      const c = cfg.clusterCIDRs.find((x) => x.family === family);
      return c ? { source: c.text } : null;
    }
    case 'NodeCIDR': {
      const c = node?.podCIDRs.find((x) => x.family === family);
      return c ? { source: c.text } : null;
    }
    case 'BridgeInterface':
      return cfg.bridgeInterface ? { inInterface: cfg.bridgeInterface } : null;
    case 'InterfaceNamePrefix':
      return cfg.interfaceNamePrefix ? { inInterface: `${cfg.interfaceNamePrefix}+` } : null;
    default:
      return null;
  }
}

/** Addresses NodePorts answer on: 'all', or the node's addresses inside the configured CIDRs. */
export function nodePortAddresses(cfg: KpxConfig, family: IPFamily, node: NodeFacts | null, host: HostFacts): 'all' | string[] {
  if (cfg.nodePortAddresses.length === 0) return 'all';
  const out = new Set<string>();
  for (const entry of cfg.nodePortAddresses) {
    if (entry === 'primary') {
      for (const ip of nodeIPs(cfg, family, node)) out.add(ip);
      continue;
    }
    const c = parseCIDR(entry);
    if (!c || c.family !== family) continue;
    if (c.bits === 0) return 'all';
    for (const ip of host.addresses[family]) if (cidrContains(c, ip)) out.add(ip);
  }
  return [...out].sort();
}

export function buildIptablesConfig(
  cfg: KpxConfig,
  family: IPFamily,
  node: NodeFacts | null,
  host: HostFacts,
  caps: Capabilities,
): IptablesRenderConfig {
  const npa = nodePortAddresses(cfg, family, node, host);
  const localhost =
    family === 'IPv4' && cfg.localhostNodePorts && (npa === 'all' || npa.some((ip) => isLoopback(ip)));
  return {
    family,
    nodeName: cfg.hostname,
    zone: node?.zone,
    nodeIPs: nodeIPs(cfg, family, node),
    localDetector: localDetector(cfg, family, node),
    masqueradeAll: cfg.masqueradeAll,
    masqueradeMark: masqueradeMark(cfg.masqueradeBit),
    nodePortAddresses: npa,
    localhostNodePorts: localhost,
    randomFully: caps.randomFully,
    conntrackTCPLiberal: caps.conntrackTCPLiberal,
  };
}

/**
 * The IPVS renderer's input. NodePorts get virtual servers on the NodePort addresses
 * (loopback excluded: IPVS cannot serve 127/8); `extraAddresses` count as the node's own
 * (a trace rendering for another node from its Node object).
 */
export function buildIpvsConfig(cfg: KpxConfig, family: IPFamily, node: NodeFacts | null, host: HostFacts, caps: Capabilities, extraAddresses: readonly string[] = []): IpvsRenderConfig {
  const npa = nodePortAddresses(cfg, family, node, host);
  const candidates = npa === 'all' ? [...new Set([...host.addresses[family], ...extraAddresses])] : npa;
  return {
    family,
    nodeName: cfg.hostname,
    zone: node?.zone,
    scheduler: cfg.ipvs.scheduler,
    nodePortIPs: candidates.filter((ip) => !isLoopback(ip)),
    localDetector: localDetector(cfg, family, node),
    masqueradeAll: cfg.masqueradeAll,
    masqueradeMark: masqueradeMark(cfg.masqueradeBit),
    randomFully: caps.randomFully,
    conntrackTCPLiberal: caps.conntrackTCPLiberal,
    excludeCIDRs: cfg.ipvs.excludeCIDRs.filter((c) => c.family === family),
  };
}

/** Returns `prev` when `next` says the same thing, so identity means "unchanged". */
export function keepIfSame<T>(prev: T | undefined, next: T): T {
  return prev !== undefined && JSON.stringify(prev) === JSON.stringify(next) ? prev : next;
}
