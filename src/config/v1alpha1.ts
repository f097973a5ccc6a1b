// KubeProxyConfiguration, kubeproxy.config.k8s.io/v1alpha1: every field kube-proxy v1.29
// to v1.36 accepts (the field set is the same across those versions, except
// windowsRunAsService, added in v1.31), decoded strictly. `null` means "not set", as in
// Go's JSON decoding; what is not set takes Go's zero value, or stays null where the Go
// field is a pointer (kube-proxy's defaulting tells the two apart).
import { z } from 'zod';
import { formatGoDuration, parseGoDuration } from './duration.js';

export const API_VERSION = 'kubeproxy.config.k8s.io/v1alpha1';
export const KIND = 'KubeProxyConfiguration';

const INT32 = { min: -2_147_483_648, max: 2_147_483_647 };

const duration = z.string().transform((s, ctx) => {
  const ns = parseGoDuration(s);
  if (ns === null) {
    ctx.addIssue({ code: 'custom', message: 'invalid duration (Go syntax, e.g. 30s, 1m30s, 500ms)' });
    return z.NEVER;
  }
  return ns;
});
const int32 = z.number().int().min(INT32.min).max(INT32.max);
const uint32 = z.number().int().min(0).max(4_294_967_295);
/** resource.Quantity: 512, "1Ki", "3M", "0" */
const quantity = z.union([
  z.number().transform((n) => String(n)),
  z.string().regex(/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$/, 'invalid quantity (e.g. 512, 1Ki, 3M)'),
]);
const opt = <T extends z.ZodType>(t: T) => t.nullish();

const outputRouting = z.strictObject({ splitStream: opt(z.boolean()), infoBufferSize: opt(quantity) });

const loggingSchema = z.strictObject({
  format: opt(z.string()),
  // a Go duration string, or a number of nanoseconds
  flushFrequency: opt(z.union([duration.transform((ns) => ({ ns, asString: true })), z.number().int().transform((ns) => ({ ns, asString: false }))])),
  verbosity: opt(uint32),
  vmodule: opt(z.array(z.strictObject({ filePattern: opt(z.string()), verbosity: opt(uint32) }))),
  options: opt(z.strictObject({ text: opt(outputRouting), json: opt(outputRouting) })),
});

const syncPeriods = { syncPeriod: opt(duration), minSyncPeriod: opt(duration) };

export const v1alpha1Schema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal(KIND),
  featureGates: opt(z.record(z.string(), z.boolean())),
  clientConnection: opt(
    z.strictObject({
      kubeconfig: opt(z.string()),
      acceptContentTypes: opt(z.string()),
      contentType: opt(z.string()),
      qps: opt(z.number()),
      burst: opt(int32),
    }),
  ),
  logging: opt(loggingSchema),
  hostnameOverride: opt(z.string()),
  bindAddress: opt(z.string()),
  healthzBindAddress: opt(z.string()),
  metricsBindAddress: opt(z.string()),
  bindAddressHardFail: opt(z.boolean()),
  enableProfiling: opt(z.boolean()),
  showHiddenMetricsForVersion: opt(z.string()),
  mode: opt(z.string()),
  iptables: opt(
    z.strictObject({ masqueradeBit: opt(int32), masqueradeAll: opt(z.boolean()), localhostNodePorts: opt(z.boolean()), ...syncPeriods }),
  ),
  ipvs: opt(
    z.strictObject({
      ...syncPeriods,
      scheduler: opt(z.string()),
      excludeCIDRs: opt(z.array(z.string())),
      strictARP: opt(z.boolean()),
      tcpTimeout: opt(duration),
      tcpFinTimeout: opt(duration),
      udpTimeout: opt(duration),
    }),
  ),
  nftables: opt(z.strictObject({ masqueradeBit: opt(int32), masqueradeAll: opt(z.boolean()), ...syncPeriods })),
  winkernel: opt(
    z.strictObject({
      networkName: opt(z.string()),
      sourceVip: opt(z.string()),
      enableDSR: opt(z.boolean()),
      rootHnsEndpointName: opt(z.string()),
      forwardHealthCheckVip: opt(z.boolean()),
    }),
  ),
  detectLocalMode: opt(z.string()),
  detectLocal: opt(z.strictObject({ bridgeInterface: opt(z.string()), interfaceNamePrefix: opt(z.string()) })),
  clusterCIDR: opt(z.string()),
  nodePortAddresses: opt(z.array(z.string())),
  oomScoreAdj: opt(int32),
  conntrack: opt(
    z.strictObject({
      maxPerCore: opt(int32),
      min: opt(int32),
      tcpEstablishedTimeout: opt(duration),
      tcpCloseWaitTimeout: opt(duration),
      tcpBeLiberal: opt(z.boolean()),
      udpTimeout: opt(duration),
      udpStreamTimeout: opt(duration),
    }),
  ),
  configSyncPeriod: opt(duration),
  portRange: opt(z.string()),
  windowsRunAsService: opt(z.boolean()),
});

type Parsed = z.infer<typeof v1alpha1Schema>;

/** Durations are nanoseconds. */
export interface OutputRouting {
  splitStream: boolean;
  /** a resource.Quantity; "" = not set */
  infoBufferSize: string;
}
export interface LoggingConfig {
  format: string;
  /** asString: printed as a Go duration (else as nanoseconds), as component-base does */
  flushFrequency: { ns: number; asString: boolean };
  verbosity: number;
  vmodule: Array<{ filePattern: string; verbosity: number }>;
  options: { text: OutputRouting; json: OutputRouting };
}
export interface ConntrackConfig {
  maxPerCore: number | null;
  min: number | null;
  tcpEstablishedTimeout: number | null;
  tcpCloseWaitTimeout: number | null;
  tcpBeLiberal: boolean;
  udpTimeout: number;
  udpStreamTimeout: number;
}
export interface ClientConnection {
  kubeconfig: string;
  acceptContentTypes: string;
  contentType: string;
  qps: number;
  burst: number;
}
export interface WinkernelConfig {
  networkName: string;
  sourceVip: string;
  enableDSR: boolean;
  rootHnsEndpointName: string;
  forwardHealthCheckVip: boolean;
}

/** A decoded v1alpha1 KubeProxyConfiguration: every field present, Go zero values for what was not set. */
export interface V1Alpha1 {
  featureGates: Record<string, boolean>;
  clientConnection: ClientConnection;
  logging: LoggingConfig;
  hostnameOverride: string;
  bindAddress: string;
  healthzBindAddress: string;
  metricsBindAddress: string;
  bindAddressHardFail: boolean;
  enableProfiling: boolean;
  showHiddenMetricsForVersion: string;
  mode: string;
  iptables: { masqueradeBit: number | null; masqueradeAll: boolean; localhostNodePorts: boolean | null; syncPeriod: number; minSyncPeriod: number };
  ipvs: {
    syncPeriod: number;
    minSyncPeriod: number;
    scheduler: string;
    excludeCIDRs: string[] | null;
    strictARP: boolean;
    tcpTimeout: number;
    tcpFinTimeout: number;
    udpTimeout: number;
  };
  nftables: { masqueradeBit: number | null; masqueradeAll: boolean; syncPeriod: number; minSyncPeriod: number };
  winkernel: WinkernelConfig;
  detectLocalMode: string;
  detectLocal: { bridgeInterface: string; interfaceNamePrefix: string };
  clusterCIDR: string;
  nodePortAddresses: string[] | null;
  oomScoreAdj: number | null;
  conntrack: ConntrackConfig;
  configSyncPeriod: number;
  portRange: string;
  windowsRunAsService: boolean;
}

const v = <T>(x: T | null | undefined, zero: T): T => (x === null || x === undefined ? zero : x);
const p = <T>(x: T | null | undefined): T | null => (x === undefined ? null : x);

function routing(r: { splitStream?: boolean | null; infoBufferSize?: string | null } | null | undefined): OutputRouting {
  return { splitStream: v(r?.splitStream, false), infoBufferSize: v(r?.infoBufferSize, '') };
}

function logging(l: Parsed['logging']): LoggingConfig {
  return {
    format: v(l?.format, ''),
    flushFrequency: v(l?.flushFrequency, { ns: 0, asString: false }),
    verbosity: v(l?.verbosity, 0),
    vmodule: (l?.vmodule ?? []).map((m) => ({ filePattern: v(m.filePattern, ''), verbosity: v(m.verbosity, 0) })),
    options: { text: routing(l?.options?.text), json: routing(l?.options?.json) },
  };
}

function conntrack(c: Parsed['conntrack']): ConntrackConfig {
  return {
    maxPerCore: p(c?.maxPerCore),
    min: p(c?.min),
    tcpEstablishedTimeout: p(c?.tcpEstablishedTimeout),
    tcpCloseWaitTimeout: p(c?.tcpCloseWaitTimeout),
    tcpBeLiberal: v(c?.tcpBeLiberal, false),
    udpTimeout: v(c?.udpTimeout, 0),
    udpStreamTimeout: v(c?.udpStreamTimeout, 0),
  };
}

function iptablesSection(t: Parsed['iptables']): V1Alpha1['iptables'] {
  return {
    masqueradeBit: p(t?.masqueradeBit),
    masqueradeAll: v(t?.masqueradeAll, false),
    localhostNodePorts: p(t?.localhostNodePorts),
    syncPeriod: v(t?.syncPeriod, 0),
    minSyncPeriod: v(t?.minSyncPeriod, 0),
  };
}

function ipvsSection(s: Parsed['ipvs']): V1Alpha1['ipvs'] {
  return {
    syncPeriod: v(s?.syncPeriod, 0),
    minSyncPeriod: v(s?.minSyncPeriod, 0),
    scheduler: v(s?.scheduler, ''),
    excludeCIDRs: p(s?.excludeCIDRs),
    strictARP: v(s?.strictARP, false),
    tcpTimeout: v(s?.tcpTimeout, 0),
    tcpFinTimeout: v(s?.tcpFinTimeout, 0),
    udpTimeout: v(s?.udpTimeout, 0),
  };
}

function nftablesSection(n: Parsed['nftables']): V1Alpha1['nftables'] {
  return { masqueradeBit: p(n?.masqueradeBit), masqueradeAll: v(n?.masqueradeAll, false), syncPeriod: v(n?.syncPeriod, 0), minSyncPeriod: v(n?.minSyncPeriod, 0) };
}

function topLevel(f: Parsed): Omit<V1Alpha1, 'iptables' | 'ipvs' | 'nftables' | 'logging' | 'conntrack' | 'clientConnection' | 'winkernel'> {
  return {
    featureGates: v(f.featureGates, {}),
    hostnameOverride: v(f.hostnameOverride, ''),
    bindAddress: v(f.bindAddress, ''),
    healthzBindAddress: v(f.healthzBindAddress, ''),
    metricsBindAddress: v(f.metricsBindAddress, ''),
    bindAddressHardFail: v(f.bindAddressHardFail, false),
    enableProfiling: v(f.enableProfiling, false),
    showHiddenMetricsForVersion: v(f.showHiddenMetricsForVersion, ''),
    mode: v(f.mode, ''),
    detectLocalMode: v(f.detectLocalMode, ''),
    detectLocal: { bridgeInterface: v(f.detectLocal?.bridgeInterface, ''), interfaceNamePrefix: v(f.detectLocal?.interfaceNamePrefix, '') },
    clusterCIDR: v(f.clusterCIDR, ''),
    nodePortAddresses: p(f.nodePortAddresses),
    oomScoreAdj: p(f.oomScoreAdj),
    configSyncPeriod: v(f.configSyncPeriod, 0),
    portRange: v(f.portRange, ''),
    windowsRunAsService: v(f.windowsRunAsService, false),
  };
}

/** The decoded file with Go's zero values filled in (no kube-proxy defaulting yet). */
export function fromParsed(f: Parsed): V1Alpha1 {
  const cc = f.clientConnection;
  const w = f.winkernel;
  return {
    ...topLevel(f),
    iptables: iptablesSection(f.iptables),
    ipvs: ipvsSection(f.ipvs),
    nftables: nftablesSection(f.nftables),
    clientConnection: {
      kubeconfig: v(cc?.kubeconfig, ''),
      acceptContentTypes: v(cc?.acceptContentTypes, ''),
      contentType: v(cc?.contentType, ''),
      qps: v(cc?.qps, 0),
      burst: v(cc?.burst, 0),
    },
    logging: logging(f.logging),
    conntrack: conntrack(f.conntrack),
    winkernel: {
      networkName: v(w?.networkName, ''),
      sourceVip: v(w?.sourceVip, ''),
      enableDSR: v(w?.enableDSR, false),
      rootHnsEndpointName: v(w?.rootHnsEndpointName, ''),
      forwardHealthCheckVip: v(w?.forwardHealthCheckVip, false),
    },
  };
}

/** An empty KubeProxyConfiguration (what kube-proxy starts from without --config). */
export function emptyV1Alpha1(): V1Alpha1 {
  return fromParsed({ apiVersion: API_VERSION, kind: KIND });
}

const d = formatGoDuration;
const dp = (ns: number | null) => (ns === null ? null : d(ns));

function encodeLogging(l: LoggingConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (l.format) out.format = l.format;
  out.flushFrequency = l.flushFrequency.asString ? d(l.flushFrequency.ns) : l.flushFrequency.ns;
  out.verbosity = l.verbosity;
  if (l.vmodule.length) out.vmodule = l.vmodule.map((m) => ({ filePattern: m.filePattern, verbosity: m.verbosity }));
  const routingOut = (r: OutputRouting) => ({ ...(r.splitStream ? { splitStream: true } : {}), infoBufferSize: r.infoBufferSize || '0' });
  out.options = { json: routingOut(l.options.json), text: routingOut(l.options.text) };
  return out;
}

/**
 * The YAML object kube-proxy's encoder writes for this configuration (--write-config-to):
 * every field, durations as Go prints them, empty featureGates and vmodule left out.
 */
export function encodeV1Alpha1(c: V1Alpha1): Record<string, unknown> {
  const out: Record<string, unknown> = { apiVersion: API_VERSION, kind: KIND };
  if (Object.keys(c.featureGates).length) out.featureGates = { ...c.featureGates };
  Object.assign(out, {
    bindAddress: c.bindAddress,
    bindAddressHardFail: c.bindAddressHardFail,
    clientConnection: { ...c.clientConnection },
    clusterCIDR: c.clusterCIDR,
    configSyncPeriod: d(c.configSyncPeriod),
    conntrack: {
      ...c.conntrack,
      tcpEstablishedTimeout: dp(c.conntrack.tcpEstablishedTimeout),
      tcpCloseWaitTimeout: dp(c.conntrack.tcpCloseWaitTimeout),
      udpTimeout: d(c.conntrack.udpTimeout),
      udpStreamTimeout: d(c.conntrack.udpStreamTimeout),
    },
    detectLocal: { ...c.detectLocal },
    detectLocalMode: c.detectLocalMode,
    enableProfiling: c.enableProfiling,
    healthzBindAddress: c.healthzBindAddress,
    hostnameOverride: c.hostnameOverride,
    iptables: { ...c.iptables, syncPeriod: d(c.iptables.syncPeriod), minSyncPeriod: d(c.iptables.minSyncPeriod) },
    ipvs: {
      ...c.ipvs,
      excludeCIDRs: c.ipvs.excludeCIDRs ? [...c.ipvs.excludeCIDRs] : null,
      syncPeriod: d(c.ipvs.syncPeriod),
      minSyncPeriod: d(c.ipvs.minSyncPeriod),
      tcpTimeout: d(c.ipvs.tcpTimeout),
      tcpFinTimeout: d(c.ipvs.tcpFinTimeout),
      udpTimeout: d(c.ipvs.udpTimeout),
    },
    logging: encodeLogging(c.logging),
    metricsBindAddress: c.metricsBindAddress,
    mode: c.mode,
    nftables: { ...c.nftables, syncPeriod: d(c.nftables.syncPeriod), minSyncPeriod: d(c.nftables.minSyncPeriod) },
    nodePortAddresses: c.nodePortAddresses ? [...c.nodePortAddresses] : null,
    oomScoreAdj: c.oomScoreAdj,
    portRange: c.portRange,
    showHiddenMetricsForVersion: c.showHiddenMetricsForVersion,
    winkernel: { ...c.winkernel },
  });
  if (c.windowsRunAsService) out.windowsRunAsService = true;
  return out;
}
