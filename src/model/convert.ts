// Turns validated API objects into model data, or says exactly which field is wrong.
import { FAMILIES, parseCIDR, parseIP, specialIPReason, type IPFamily, type ParsedCIDR } from '../util/ip.js';
import {
  LABEL_HEADLESS,
  LABEL_SERVICE_NAME,
  LABEL_SERVICE_PROXY_NAME,
  LABEL_ZONE,
  TAINT_TO_BE_DELETED,
  dnsLabel,
  type EndpointSliceObject,
  type NodeObject,
  type ServiceObject,
} from './kube.js';
import type { Endpoint, NodeFacts, Protocol, ServicePort, ServiceType } from './types.js';

export const DEFAULT_AFFINITY_SECONDS = 10800;

/** Why an object is not served: ignored on purpose (like kube-proxy), or invalid. */
export interface Refusal {
  readonly ok: false;
  readonly refusal: 'ignored' | 'invalid';
  readonly reason: string;
}

/**
 * A conversion's result, tagged like validateObject()'s. `skipped`: parts of an object kpx
 * serves without (one line per object; each names the field and its value).
 */
export type Conversion<T> = { readonly ok: true; readonly value: T; readonly skipped?: string } | Refusal;

const converted = <T>(value: T, skipped?: string): Conversion<T> => (skipped ? { ok: true, value, skipped } : { ok: true, value });
const ignored = (reason: string): Refusal => ({ ok: false, refusal: 'ignored', reason });
const invalid = (reason: string): Refusal => ({ ok: false, refusal: 'invalid', reason });

type ParsedIP = NonNullable<ReturnType<typeof parseIP>>;

/** An IP the apiserver takes in `field`: valid, and none special (ValidateNonSpecialIP). */
function nonSpecialIP(raw: string, field: string): Conversion<ParsedIP> {
  const ip = parseIP(raw);
  if (!ip) return invalid(`${field}: invalid IP ${JSON.stringify(raw)}`);
  const special = specialIPReason(ip.text);
  return special ? invalid(`${field}: ${raw} ${special}`) : converted(ip);
}

export type ServiceConversion = Conversion<readonly ServicePort[]>;

type ServiceSpec = ServiceObject['spec'];

/** Why kube-proxy would not serve this Service at all (not an error), if it would not. */
function notServed(svc: ServiceObject): Refusal | null {
  const labels = svc.metadata.labels ?? {};
  if (LABEL_SERVICE_PROXY_NAME in labels) return ignored(`labelled ${LABEL_SERVICE_PROXY_NAME}`);
  if (LABEL_HEADLESS in labels) return ignored(`labelled ${LABEL_HEADLESS}`);
  if (svc.spec.type === 'ExternalName') return ignored('type ExternalName');
  const raw = rawClusterIPs(svc.spec);
  if (raw.length === 0 || raw[0] === 'None' || raw[0] === '') return ignored('headless (no cluster IP)');
  return null;
}

function rawClusterIPs(spec: ServiceSpec): readonly string[] {
  return spec.clusterIPs && spec.clusterIPs.length > 0 ? spec.clusterIPs : spec.clusterIP ? [spec.clusterIP] : [];
}

/** The Service's cluster IP of each family. */
function clusterIPs(spec: ServiceSpec): Conversion<Map<IPFamily, string>> {
  if (spec.clusterIP && spec.clusterIPs && spec.clusterIPs.length > 0 && spec.clusterIP !== spec.clusterIPs[0]) {
    return invalid(`spec.clusterIP: ${spec.clusterIP} differs from spec.clusterIPs[0] ${spec.clusterIPs[0]}`);
  }
  const byFamily = new Map<IPFamily, string>();
  for (const [i, raw] of rawClusterIPs(spec).entries()) {
    // the apiserver allocates cluster IPs from its service CIDRs, never a special one; a
    // rule for 127.0.0.1 or 0.0.0.0 would capture the node's own traffic
    const parsed = nonSpecialIP(raw, `spec.clusterIPs[${i}]`);
    if (!parsed.ok) return parsed;
    const ip = parsed.value;
    if (byFamily.has(ip.family)) return invalid(`spec.clusterIPs[${i}]: second ${ip.family} cluster IP`);
    const declared = spec.ipFamilies?.[i];
    if (declared && declared !== ip.family) return invalid(`spec.ipFamilies[${i}]: ${declared} does not match spec.clusterIPs[${i}] ${raw}`);
    byFamily.set(ip.family, ip.text);
  }
  return converted(byFamily);
}

/**
 * LoadBalancer ingress IPs the node must capture (ipMode Proxy excluded). The apiserver
 * takes any IP in the status, but an unspecified, loopback or link-local one would capture
 * the node's own traffic (and an ipset refuses 0.0.0.0): such an IP is skipped, and named,
 * and the Service served without it.
 */
function loadBalancerIPs(svc: ServiceObject): Conversion<string[]> {
  const out: string[] = [];
  const skipped: string[] = [];
  for (const [i, ing] of (svc.status?.loadBalancer?.ingress ?? []).entries()) {
    if (!ing.ip) continue; // hostname-only ingress: nothing to capture
    const ip = parseIP(ing.ip);
    if (!ip) return invalid(`status.loadBalancer.ingress[${i}].ip: invalid IP ${JSON.stringify(ing.ip)}`);
    if (ing.ipMode === 'Proxy') continue; // the LB proxies; traffic arrives for the node, not the VIP
    if (svc.spec.type !== 'LoadBalancer') continue;
    const special = specialIPReason(ip.text);
    if (special) skipped.push(`status.loadBalancer.ingress[${i}].ip: ${ing.ip} ${special}`);
    else out.push(ip.text);
  }
  return converted(out, skipped.join('; '));
}

function sourceRanges(spec: ServiceSpec): Conversion<ParsedCIDR[]> {
  const out: ParsedCIDR[] = [];
  for (const [i, raw] of (spec.loadBalancerSourceRanges ?? []).entries()) {
    const cidr = parseCIDR(raw.trim());
    if (!cidr) return invalid(`spec.loadBalancerSourceRanges[${i}]: invalid CIDR ${JSON.stringify(raw)}`);
    out.push(cidr);
  }
  return converted(out);
}

/** Port names and numbers are unique; NodePorts and health check ports only where they mean something. */
function checkPorts(spec: ServiceSpec): Refusal | null {
  const type = spec.type ?? 'ClusterIP';
  const seenNames = new Set<string>();
  const seenPorts = new Set<string>();
  const ports = spec.ports ?? [];
  for (const [i, p] of ports.entries()) {
    const pname = p.name ?? '';
    if (!pname && ports.length > 1) return invalid(`spec.ports[${i}].name: required when a Service has more than one port`);
    if (seenNames.has(pname)) return invalid(`spec.ports[${i}].name: duplicate port name ${JSON.stringify(pname)}`);
    seenNames.add(pname);
    const pp = `${p.port}/${p.protocol ?? 'TCP'}`;
    if (seenPorts.has(pp)) return invalid(`spec.ports[${i}]: duplicate port ${pp}`);
    seenPorts.add(pp);
    if (p.nodePort && type === 'ClusterIP') return invalid(`spec.ports[${i}].nodePort: may not be set when spec.type is ClusterIP`);
  }
  if (spec.healthCheckNodePort && !(type === 'LoadBalancer' && spec.externalTrafficPolicy === 'Local')) {
    return invalid('spec.healthCheckNodePort: only valid for a LoadBalancer with externalTrafficPolicy Local');
  }
  return null;
}

/** Converts a Service to its service ports in every family it has a cluster IP in. */
export function convertService(svc: ServiceObject): ServiceConversion {
  const refused = notServed(svc) ?? checkPorts(svc.spec);
  if (refused) return refused;
  const spec = svc.spec;
  const ips = clusterIPs(spec);
  if (!ips.ok) return ips;
  const externalIPs = parseIPList(spec.externalIPs ?? [], 'spec.externalIPs');
  if (!externalIPs.ok) return externalIPs;
  const lbIPs = loadBalancerIPs(svc);
  if (!lbIPs.ok) return lbIPs;
  const ranges = sourceRanges(spec);
  if (!ranges.ok) return ranges;
  return converted(servicePorts(svc, ips.value, externalIPs.value, lbIPs.value, ranges.value), lbIPs.skipped);
}

/**
 * A family's loadBalancerSourceRanges; a /0 among them lets everyone in, which is what no
 * ranges mean (IPVS's hash:ip,port,net sets cannot hold a /0, so the modes agree on this).
 */
function rangesOf(ranges: readonly ParsedCIDR[], family: IPFamily): string[] {
  const own = ranges.filter((c) => c.family === family);
  return own.some((c) => c.bits === 0) ? [] : own.map((c) => c.text);
}

/** Traffic policy and affinity, as kube-proxy reads them. */
function policies(spec: ServiceSpec, type: ServiceType, externalIPs: readonly string[]): { externalPolicyLocal: boolean; affinitySeconds: number } {
  const externallyAccessible = type === 'NodePort' || type === 'LoadBalancer' || externalIPs.length > 0;
  return {
    externalPolicyLocal: externallyAccessible && spec.externalTrafficPolicy === 'Local',
    affinitySeconds: spec.sessionAffinity === 'ClientIP' ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? DEFAULT_AFFINITY_SECONDS) : 0,
  };
}

function servicePorts(svc: ServiceObject, clusterIPByFamily: ReadonlyMap<IPFamily, string>, externalIPs: string[], lbIPs: string[], ranges: ParsedCIDR[]): ServicePort[] {
  const spec = svc.spec;
  // (ExternalName Services were refused before)
  const type: ServiceType = !spec.type || spec.type === 'ExternalName' ? 'ClusterIP' : spec.type;
  // joined, not concatenated: model strings are kept, and V8 keeps a concatenation as a
  // tree of pieces (~3x the memory of the flat string)
  const key = [svc.metadata.namespace ?? 'default', svc.metadata.name].join('/');
  const { externalPolicyLocal, affinitySeconds } = policies(spec, type, externalIPs);
  const ofFamily = (ip: string, family: IPFamily) => parseIP(ip)!.family === family;
  const out: ServicePort[] = [];
  for (const family of FAMILIES) {
    const clusterIP = clusterIPByFamily.get(family);
    if (!clusterIP) continue;
    for (const p of spec.ports ?? []) {
      const portName = p.name ?? '';
      out.push({
        name: portName ? [key, portName].join(':') : key,
        serviceKey: key,
        portName,
        protocol: p.protocol ?? 'TCP',
        family,
        type,
        clusterIP,
        port: p.port,
        nodePort: type === 'ClusterIP' ? 0 : (p.nodePort ?? 0),
        externalIPs: externalIPs.filter((ip) => ofFamily(ip, family)),
        loadBalancerVIPs: lbIPs.filter((ip) => ofFamily(ip, family)),
        loadBalancerSourceRanges: type === 'LoadBalancer' ? rangesOf(ranges, family) : [],
        externalPolicyLocal,
        internalPolicyLocal: spec.internalTrafficPolicy === 'Local',
        affinitySeconds,
        healthCheckNodePort: externalPolicyLocal ? (spec.healthCheckNodePort ?? 0) : 0,
      });
    }
  }
  return out;
}

/** External IPs, as the apiserver takes them: valid, and none special (ValidateNonSpecialIP). */
function parseIPList(raw: readonly string[], field: string): Conversion<string[]> {
  const ips: string[] = [];
  for (const [i, r] of raw.entries()) {
    const ip = nonSpecialIP(r, `${field}[${i}]`);
    if (!ip.ok) return ip;
    if (!ips.includes(ip.value.text)) ips.push(ip.value.text);
  }
  return converted(ips);
}

/** An EndpointSlice's endpoints per port ("portName/PROTO"), for one service and family. */
export interface SliceData {
  readonly serviceKey: string;
  readonly family: IPFamily;
  readonly byPort: ReadonlyMap<string, readonly Endpoint[]>;
}

export type SliceConversion = Conversion<SliceData>;

export function slicePortKey(portName: string, protocol: Protocol): string {
  return `${portName}/${protocol}`;
}

type SliceEndpoint = Omit<Endpoint, 'port' | 'addr'>;

/** An endpoint's first address, if the apiserver takes all of them (each an IP of the slice's family, none special). */
function endpointAddress(addresses: readonly string[], i: number, family: IPFamily): Conversion<ParsedIP> {
  let first: ParsedIP | undefined;
  for (const [j, raw] of addresses.entries()) {
    const field = `endpoints[${i}].addresses[${j}]`;
    const ip = parseIP(raw);
    if (!ip) return invalid(`${field}: invalid IP ${JSON.stringify(raw)}`);
    if (ip.family !== family) return invalid(`${field}: ${raw} is not ${family} (addressType)`);
    const special = specialIPReason(ip.text);
    if (special) return invalid(`${field}: ${raw} ${special}`);
    first ??= ip;
  }
  return converted(first!);
}

/** A slice's endpoints (their first address, like kube-proxy), sorted by address. */
function sliceEndpoints(slice: EndpointSliceObject, family: IPFamily, nodeName: string): Conversion<SliceEndpoint[]> {
  const endpoints: SliceEndpoint[] = [];
  for (const [i, ep] of (slice.endpoints ?? []).entries()) {
    const addr = endpointAddress(ep.addresses, i, family);
    if (!addr.ok) return addr;
    const ip = addr.value;
    const c = ep.conditions ?? {};
    const ready = c.ready ?? true;
    endpoints.push({
      ip: ip.text,
      ready,
      serving: c.serving ?? ready,
      terminating: c.terminating ?? false,
      nodeName: ep.nodeName ?? undefined,
      zone: ep.zone ?? undefined,
      zoneHints: ep.hints?.forZones ? ep.hints.forZones.map((z) => z.name) : undefined,
      nodeHints: ep.hints?.forNodes ? ep.hints.forNodes.map((n) => n.name) : undefined,
      isLocal: !!ep.nodeName && ep.nodeName === nodeName,
    });
  }
  // in merge order already, so a service's only slice is used as it is (no copy)
  endpoints.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
  return converted(endpoints);
}

export function convertEndpointSlice(slice: EndpointSliceObject, nodeName: string): SliceConversion {
  const labels = slice.metadata.labels ?? {};
  const svcName = labels[LABEL_SERVICE_NAME];
  if (!svcName) return ignored(`no ${LABEL_SERVICE_NAME} label`);
  if (!dnsLabel.safeParse(svcName).success) return invalid(`metadata.labels[${LABEL_SERVICE_NAME}]: ${JSON.stringify(svcName)} is not a Service name (a DNS-1123 label)`);
  if (LABEL_SERVICE_PROXY_NAME in labels) return ignored(`labelled ${LABEL_SERVICE_PROXY_NAME}`);
  if (slice.addressType === 'FQDN') return ignored('addressType FQDN');
  const family = slice.addressType;
  const parsed = sliceEndpoints(slice, family, nodeName);
  if (!parsed.ok) return parsed;
  const endpoints = parsed.value;
  const byPort = new Map<string, Endpoint[]>();
  for (const [i, p] of (slice.ports ?? []).entries()) {
    if (p.port == null) continue; // a port without a number means "all ports": kube-proxy cannot use it
    const k = slicePortKey(p.name ?? '', (p.protocol ?? 'TCP'));
    if (byPort.has(k)) return invalid(`ports[${i}]: duplicate port ${k}`);
    const portNumber = p.port;
    // an explicit literal (not a spread): every Endpoint gets the same hidden class,
    // which keeps the renderer's property reads monomorphic and fast
    byPort.set(
      k,
      endpoints.map((e) => ({
        ip: e.ip,
        port: portNumber,
        addr: family === 'IPv6' ? ['[', e.ip, ']:', portNumber].join('') : [e.ip, portNumber].join(':'),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
        nodeName: e.nodeName,
        zone: e.zone,
        zoneHints: e.zoneHints,
        nodeHints: e.nodeHints,
        isLocal: e.isLocal,
      })),
    );
  }
  return converted({ serviceKey: [slice.metadata.namespace ?? 'default', svcName].join('/'), family, byPort });
}

const endpointOrder = (a: Endpoint, b: Endpoint): number => (a.ip === b.ip ? a.port - b.port : a.ip < b.ip ? -1 : 1);

function sortedUnique(list: readonly Endpoint[]): boolean {
  for (let i = 1; i < list.length; i++) if (endpointOrder(list[i - 1]!, list[i]!) >= 0) return false;
  return true;
}

/** How good an endpoint's state is, for de-duplication across slices. */
function conditionRank(ep: Endpoint): number {
  return ep.ready ? 2 : ep.serving ? 1 : 0;
}

/**
 * Merges one port's endpoints from several slices (already ordered by slice name):
 * one entry per ip:port, keeping the best-conditioned copy, first slice on ties.
 */
export function mergeEndpoints(lists: readonly (readonly Endpoint[])[]): readonly Endpoint[] {
  // one slice, already in order without duplicates (the common case): no copy
  if (lists.length === 1 && sortedUnique(lists[0]!)) return lists[0]!;
  const byAddr = new Map<string, Endpoint>();
  for (const list of lists) {
    for (const ep of list) {
      const k = `${ep.ip}|${ep.port}`;
      const prev = byAddr.get(k);
      if (!prev || conditionRank(ep) > conditionRank(prev)) byAddr.set(k, ep);
    }
  }
  return [...byAddr.values()].sort(endpointOrder);
}

export type NodeConversion = Conversion<NodeFacts>;

export function convertNode(node: NodeObject): NodeConversion {
  const ips: Record<IPFamily, string[]> = { IPv4: [], IPv6: [] };
  const addresses = node.status?.addresses ?? [];
  // InternalIP first, then ExternalIP, like kube-proxy picks the node IP.
  for (const type of ['InternalIP', 'ExternalIP']) {
    for (const a of addresses) {
      if (a.type !== type) continue;
      const ip = parseIP(a.address);
      if (ip && !ips[ip.family].includes(ip.text)) ips[ip.family].push(ip.text);
    }
  }
  const podCIDRs: ParsedCIDR[] = [];
  const rawCIDRs = node.spec?.podCIDRs?.length ? node.spec.podCIDRs : node.spec?.podCIDR ? [node.spec.podCIDR] : [];
  for (const [i, raw] of rawCIDRs.entries()) {
    const c = parseCIDR(raw);
    if (!c) return invalid(`spec.podCIDRs[${i}]: invalid CIDR ${JSON.stringify(raw)}`);
    podCIDRs.push(c);
  }
  const labels = { ...(node.metadata.labels ?? {}) };
  return converted({
    name: node.metadata.name,
    ips,
    podCIDRs,
    labels,
    zone: labels[LABEL_ZONE],
    deleting: !!node.metadata.deletionTimestamp,
    toBeDeleted: (node.spec?.taints ?? []).some((t) => t.key === TAINT_TO_BE_DELETED),
  });
}
