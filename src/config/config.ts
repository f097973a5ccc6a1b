// kpx's configuration: a KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file,
// validated strictly with zod, with command-line flags (kube-proxy's names) on top.
import { readFileSync } from 'node:fs';
import { parse as parseYAML } from 'yaml';
import { z } from 'zod';
import { parseCIDR, type ParsedCIDR } from '../util/ip.js';
import { describeZodError } from '../model/kube.js';

export class ConfigError extends Error {}

/** Go-style durations ("30s", "1m30s", "250ms", "1h"), in milliseconds. */
export function parseDuration(text: string): number {
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  if (text === '0') return 0;
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let pos = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    total += Number(m[1]) * units[m[2]!]!;
    pos = re.lastIndex;
  }
  if (pos === 0 || pos !== text.length) throw new ConfigError(`invalid duration ${JSON.stringify(text)} (use e.g. 30s, 1m, 500ms)`);
  return total;
}

const duration = z.string().refine(
  (s) => {
    try {
      parseDuration(s);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'invalid duration (use e.g. 30s, 1m, 500ms)' },
);

const cidrList = z.array(z.string().refine((s) => s === 'primary' || parseCIDR(s) !== null, { message: 'invalid CIDR' }));

export const SCHEDULERS = ['rr', 'wrr', 'lc', 'wlc', 'lblc', 'lblcr', 'sh', 'dh', 'sed', 'nq', 'mh'] as const;

/** The subset of KubeProxyConfiguration kpx understands; anything else is an error. */
export const kubeProxyConfigSchema = z.strictObject({
  apiVersion: z.literal('kubeproxy.config.k8s.io/v1alpha1'),
  kind: z.literal('KubeProxyConfiguration'),
  bindAddress: z.string().optional(),
  healthzBindAddress: z.string().optional(),
  metricsBindAddress: z.string().optional(),
  bindAddressHardFail: z.boolean().optional(),
  enableProfiling: z.boolean().optional(),
  clientConnection: z
    .strictObject({
      kubeconfig: z.string().optional(),
      acceptContentTypes: z.string().optional(),
      contentType: z.string().optional(),
      qps: z.number().optional(),
      burst: z.number().int().optional(),
    })
    .optional(),
  clusterCIDR: z.string().optional(),
  configSyncPeriod: duration.optional(),
  conntrack: z
    .strictObject({
      maxPerCore: z.number().int().nullish(),
      min: z.number().int().nullish(),
      tcpEstablishedTimeout: duration.nullish(),
      tcpCloseWaitTimeout: duration.nullish(),
      tcpBeLiberal: z.boolean().optional(),
      udpTimeout: duration.optional(),
      udpStreamTimeout: duration.optional(),
    })
    .optional(),
  detectLocalMode: z.enum(['', 'ClusterCIDR', 'NodeCIDR', 'BridgeInterface', 'InterfaceNamePrefix']).optional(),
  detectLocal: z
    .strictObject({ bridgeInterface: z.string().optional(), interfaceNamePrefix: z.string().optional() })
    .optional(),
  featureGates: z.record(z.string(), z.boolean()).optional(),
  hostnameOverride: z.string().optional(),
  iptables: z
    .strictObject({
      masqueradeAll: z.boolean().optional(),
      masqueradeBit: z.number().int().min(0).max(31).nullish(),
      localhostNodePorts: z.boolean().nullish(),
      syncPeriod: duration.optional(),
      minSyncPeriod: duration.optional(),
    })
    .optional(),
  ipvs: z
    .strictObject({
      syncPeriod: duration.optional(),
      minSyncPeriod: duration.optional(),
      scheduler: z.union([z.literal(''), z.enum(SCHEDULERS)]).optional(),
      excludeCIDRs: cidrList.nullish(),
      strictARP: z.boolean().optional(),
      tcpTimeout: duration.optional(),
      tcpFinTimeout: duration.optional(),
      udpTimeout: duration.optional(),
    })
    .optional(),
  logging: z.looseObject({}).optional(),
  mode: z.enum(['', 'iptables', 'ipvs']).optional(),
  nodePortAddresses: cidrList.nullish(),
  oomScoreAdj: z.number().int().nullish(),
  portRange: z.string().optional(),
  showHiddenMetricsForVersion: z.string().optional(),
});

export type KubeProxyConfigFile = z.infer<typeof kubeProxyConfigSchema>;

export type DetectLocalMode = '' | 'ClusterCIDR' | 'NodeCIDR' | 'BridgeInterface' | 'InterfaceNamePrefix';

/** kpx's resolved configuration. */
export interface KpxConfig {
  mode: 'iptables' | 'ipvs';
  hostname: string;
  bindAddress: string | undefined;
  clusterCIDRs: ParsedCIDR[];
  detectLocalMode: DetectLocalMode;
  bridgeInterface: string | undefined;
  interfaceNamePrefix: string | undefined;
  masqueradeAll: boolean;
  masqueradeBit: number;
  localhostNodePorts: boolean;
  syncPeriodMs: number;
  minSyncPeriodMs: number;
  /** CIDRs and/or "primary"; empty = every local address */
  nodePortAddresses: string[];
  metricsBindAddress: string;
  healthzBindAddress: string;
  bindAddressHardFail: boolean;
  conntrackTCPBeLiberal: boolean;
  ipvs: {
    scheduler: (typeof SCHEDULERS)[number];
    excludeCIDRs: ParsedCIDR[];
    strictARP: boolean;
    tcpTimeoutMs: number;
    tcpFinTimeoutMs: number;
    udpTimeoutMs: number;
    /** a removed TCP real server drains (weight 0) at most this long */
    drainTimeoutMs: number;
  };
  kubeconfig: string | undefined;
  /** apiserver URL overriding the kubeconfig's (kube-proxy's --master) */
  master: string | undefined;
  /** a watch silent for longer than this is restarted (bookmarks arrive about once a minute) */
  apiWatchIdleTimeoutMs: number;
  /** a full relist at this interval, as a safety net (0 = never) */
  apiRelistPeriodMs: number;
  manifests: string | undefined;
  iptablesBackend: 'auto' | 'nft' | 'legacy';
  once: boolean;
  dryRun: boolean;
  /** `kpx render`: the full ruleset as for an empty kernel; the kernel is not read */
  renderOnly: boolean;
}

/** Flags as parsed from the command line; undefined = not given. */
export interface CliFlags {
  config?: string;
  hostnameOverride?: string;
  proxyMode?: string;
  clusterCidr?: string;
  masqueradeAll?: boolean;
  nodeportAddresses?: string;
  metricsBindAddress?: string;
  healthzBindAddress?: string;
  kubeconfig?: string;
  master?: string;
  apiWatchIdleTimeout?: string;
  apiRelistPeriod?: string;
  manifests?: string;
  once?: boolean;
  dryRun?: boolean;
  renderOnly?: boolean;
  bindAddress?: string;
  detectLocalMode?: string;
  podBridgeInterface?: string;
  podInterfaceNamePrefix?: string;
  iptablesMasqueradeBit?: string;
  iptablesLocalhostNodeports?: string;
  iptablesSyncPeriod?: string;
  iptablesMinSyncPeriod?: string;
  ipvsScheduler?: string;
  ipvsSyncPeriod?: string;
  ipvsMinSyncPeriod?: string;
  ipvsStrictArp?: boolean;
  ipvsExcludeCidrs?: string;
  ipvsTcpTimeout?: string;
  ipvsTcpfinTimeout?: string;
  ipvsUdpTimeout?: string;
  ipvsDrainTimeout?: string;
  conntrackTcpBeLiberal?: boolean;
  iptablesBackend?: string;
}

export function loadConfigFile(path: string): KubeProxyConfigFile {
  let raw: unknown;
  try {
    raw = parseYAML(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`${path}: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = kubeProxyConfigSchema.safeParse(raw ?? {});
  if (!parsed.success) throw new ConfigError(`${path}: ${describeZodError(parsed.error)}`);
  return parsed.data;
}

function splitList(s: string | undefined): string[] {
  return (s ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
}

function cidrs(list: string[], field: string): ParsedCIDR[] {
  return list.map((s) => {
    const c = parseCIDR(s);
    if (!c) throw new ConfigError(`${field}: invalid CIDR ${JSON.stringify(s)}`);
    return c;
  });
}

function flagDuration(value: string | undefined, field: string): number | undefined {
  if (value === undefined) return undefined;
  try {
    return parseDuration(value);
  } catch (err) {
    throw new ConfigError(`${field}: ${(err as Error).message}`);
  }
}

function boolFlag(value: string | undefined, field: string): boolean | undefined {
  if (value === undefined) return undefined;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new ConfigError(`${field}: expected true or false, got ${JSON.stringify(value)}`);
}

/** File values first, flags given on the command line override them. */
export function resolveConfig(flags: CliFlags, hostname: string): KpxConfig {
  const file: KubeProxyConfigFile | Record<string, never> = flags.config ? loadConfigFile(flags.config) : {};
  const f = file as Partial<KubeProxyConfigFile>;
  const mode = flags.proxyMode ?? (f.mode || 'iptables');
  if (mode !== 'iptables' && mode !== 'ipvs') {
    throw new ConfigError(`--proxy-mode: ${JSON.stringify(mode)} is not supported (use iptables or ipvs)`);
  }
  const modeCfg = mode === 'ipvs' ? f.ipvs : f.iptables;
  const syncPeriodMs =
    flagDuration(mode === 'ipvs' ? flags.ipvsSyncPeriod : flags.iptablesSyncPeriod, '--sync-period') ??
    (modeCfg?.syncPeriod ? parseDuration(modeCfg.syncPeriod) : 30_000);
  const minSyncPeriodMs =
    flagDuration(mode === 'ipvs' ? flags.ipvsMinSyncPeriod : flags.iptablesMinSyncPeriod, '--min-sync-period') ??
    (modeCfg?.minSyncPeriod ? parseDuration(modeCfg.minSyncPeriod) : 1000);
  if (syncPeriodMs <= 0) throw new ConfigError('syncPeriod: must be greater than 0');
  if (minSyncPeriodMs > syncPeriodMs) throw new ConfigError('minSyncPeriod: must not exceed syncPeriod');

  const masqueradeBit = flags.iptablesMasqueradeBit !== undefined ? Number(flags.iptablesMasqueradeBit) : (f.iptables?.masqueradeBit ?? 14);
  if (!Number.isInteger(masqueradeBit) || masqueradeBit < 0 || masqueradeBit > 31) {
    throw new ConfigError('--iptables-masquerade-bit: must be an integer from 0 to 31');
  }
  const detectLocalMode = (flags.detectLocalMode ?? f.detectLocalMode ?? 'ClusterCIDR') as DetectLocalMode;
  if (!['', 'ClusterCIDR', 'NodeCIDR', 'BridgeInterface', 'InterfaceNamePrefix'].includes(detectLocalMode)) {
    throw new ConfigError(`--detect-local-mode: unknown mode ${JSON.stringify(detectLocalMode)}`);
  }
  const bridgeInterface = flags.podBridgeInterface ?? f.detectLocal?.bridgeInterface;
  const interfaceNamePrefix = flags.podInterfaceNamePrefix ?? f.detectLocal?.interfaceNamePrefix;
  if (detectLocalMode === 'BridgeInterface' && !bridgeInterface) {
    throw new ConfigError('detectLocal.bridgeInterface: required when detectLocalMode is BridgeInterface');
  }
  if (detectLocalMode === 'InterfaceNamePrefix' && !interfaceNamePrefix) {
    throw new ConfigError('detectLocal.interfaceNamePrefix: required when detectLocalMode is InterfaceNamePrefix');
  }
  const nodePortAddresses = flags.nodeportAddresses !== undefined ? splitList(flags.nodeportAddresses) : (f.nodePortAddresses ?? []);
  for (const a of nodePortAddresses) {
    if (a !== 'primary' && !parseCIDR(a)) throw new ConfigError(`--nodeport-addresses: invalid CIDR ${JSON.stringify(a)}`);
  }
  const scheduler = (flags.ipvsScheduler ?? (f.ipvs?.scheduler || 'rr')) as KpxConfig['ipvs']['scheduler'];
  if (!SCHEDULERS.includes(scheduler)) throw new ConfigError(`--ipvs-scheduler: unknown scheduler ${JSON.stringify(scheduler)}`);
  const backend = flags.iptablesBackend ?? 'auto';
  if (backend !== 'auto' && backend !== 'nft' && backend !== 'legacy') {
    throw new ConfigError(`--iptables-backend: ${JSON.stringify(backend)} (use auto, nft or legacy)`);
  }

  return {
    mode,
    hostname: (flags.hostnameOverride ?? f.hostnameOverride ?? hostname).trim().toLowerCase(),
    bindAddress: flags.bindAddress ?? f.bindAddress,
    clusterCIDRs: cidrs(splitList(flags.clusterCidr ?? f.clusterCIDR), '--cluster-cidr'),
    detectLocalMode,
    bridgeInterface,
    interfaceNamePrefix,
    masqueradeAll: flags.masqueradeAll ?? f.iptables?.masqueradeAll ?? false,
    masqueradeBit,
    localhostNodePorts:
      boolFlag(flags.iptablesLocalhostNodeports, '--iptables-localhost-nodeports') ?? f.iptables?.localhostNodePorts ?? true,
    syncPeriodMs,
    minSyncPeriodMs,
    nodePortAddresses,
    metricsBindAddress: withPort(flags.metricsBindAddress ?? f.metricsBindAddress ?? '127.0.0.1:10249', 10249),
    healthzBindAddress: withPort(flags.healthzBindAddress ?? f.healthzBindAddress ?? '0.0.0.0:10256', 10256),
    bindAddressHardFail: f.bindAddressHardFail ?? false,
    conntrackTCPBeLiberal: flags.conntrackTcpBeLiberal ?? f.conntrack?.tcpBeLiberal ?? false,
    ipvs: {
      scheduler,
      excludeCIDRs: cidrs(flags.ipvsExcludeCidrs !== undefined ? splitList(flags.ipvsExcludeCidrs) : (f.ipvs?.excludeCIDRs ?? []), 'ipvs.excludeCIDRs'),
      strictARP: flags.ipvsStrictArp ?? f.ipvs?.strictARP ?? false,
      tcpTimeoutMs: flagDuration(flags.ipvsTcpTimeout, '--ipvs-tcp-timeout') ?? parseDuration(f.ipvs?.tcpTimeout ?? '0'),
      tcpFinTimeoutMs: flagDuration(flags.ipvsTcpfinTimeout, '--ipvs-tcpfin-timeout') ?? parseDuration(f.ipvs?.tcpFinTimeout ?? '0'),
      udpTimeoutMs: flagDuration(flags.ipvsUdpTimeout, '--ipvs-udp-timeout') ?? parseDuration(f.ipvs?.udpTimeout ?? '0'),
      drainTimeoutMs: flagDuration(flags.ipvsDrainTimeout, '--ipvs-drain-timeout') ?? 15 * 60_000,
    },
    kubeconfig: flags.kubeconfig ?? f.clientConnection?.kubeconfig ?? undefined,
    master: flags.master || undefined,
    apiWatchIdleTimeoutMs: flagDuration(flags.apiWatchIdleTimeout, '--api-watch-idle-timeout') ?? 150_000,
    apiRelistPeriodMs: flagDuration(flags.apiRelistPeriod, '--api-relist-period') ?? 30 * 60_000,
    manifests: flags.manifests,
    iptablesBackend: backend,
    once: flags.once ?? false,
    dryRun: flags.dryRun ?? false,
    renderOnly: flags.renderOnly ?? false,
  };
}

/** "0.0.0.0" -> "0.0.0.0:10256"; "" disables the server. */
function withPort(addr: string, port: number): string {
  if (addr === '') return '';
  if (/^\[.*\]:\d+$/.test(addr) || /^[^:]+:\d+$/.test(addr)) return addr;
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}
