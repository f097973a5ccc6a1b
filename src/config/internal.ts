// kube-proxy's way from a v1alpha1 file to the configuration it runs with (v1.36.3):
// v1alpha1 defaulting (SetDefaults_KubeProxyConfiguration), conversion to the internal
// form (sync periods and masqueradeAll taken from the section of the selected mode,
// clusterCIDR split into a list), and the Linux platform defaults applied after flags
// (mode "" -> iptables, detectLocalMode "" -> ClusterCIDR, nftables -> NodePorts on the
// primary IPs). And back: the v1alpha1 object --write-config-to prints.
import { joinHostPort } from '../util/ip.js';
import type { ClientConnection, ConntrackConfig, LoggingConfig, V1Alpha1, WinkernelConfig } from './v1alpha1.js';

const SECOND = 1e9;

/** kube-proxy's internal KubeProxyConfiguration (pkg/proxy/apis/config), durations in ns. */
export interface Internal {
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
  iptables: { masqueradeBit: number | null; localhostNodePorts: boolean | null };
  ipvs: { scheduler: string; excludeCIDRs: string[] | null; strictARP: boolean; tcpTimeout: number; tcpFinTimeout: number; udpTimeout: number };
  nftables: { masqueradeBit: number | null };
  winkernel: WinkernelConfig;
  detectLocalMode: string;
  detectLocal: { bridgeInterface: string; interfaceNamePrefix: string; clusterCIDRs: string[] };
  nodePortAddresses: string[] | null;
  syncPeriod: number;
  minSyncPeriod: number;
  configSyncPeriod: number;
  linux: { conntrack: ConntrackConfig; masqueradeAll: boolean; oomScoreAdj: number | null };
  windows: { runAsService: boolean };
}

/** "0.0.0.0" -> "0.0.0.0:10256", "::" -> "[::]:10256"; ip:port and anything else unchanged (proxyutil.AppendPortIfNeeded). */
export function appendPortIfNeeded(addr: string, port: number): string {
  if (/^\[.*\]:\d+$/.test(addr) || /^[^:]+:\d+$/.test(addr)) return addr;
  const ipv4 = /^[0-9.]+$/.test(addr);
  const ipv6 = /^[0-9a-fA-F:.]+$/.test(addr) && addr.includes(':');
  return ipv4 || ipv6 ? joinHostPort(addr, port) : addr;
}

const isIPv4Text = (s: string) => /^\d{1,3}(\.\d{1,3}){3}$/.test(s);

function defaultLogging(l: LoggingConfig): LoggingConfig {
  const buf = (s: string) => s || '0';
  return {
    ...l,
    format: l.format || 'text',
    flushFrequency: l.flushFrequency.ns === 0 ? { ns: 5 * SECOND, asString: true } : l.flushFrequency,
    options: {
      text: { ...l.options.text, infoBufferSize: buf(l.options.text.infoBufferSize) },
      json: { ...l.options.json, infoBufferSize: buf(l.options.json.infoBufferSize) },
    },
  };
}

const or = (x: number, dflt: number) => (x === 0 ? dflt : x);

function defaultSections(c: V1Alpha1): Pick<V1Alpha1, 'iptables' | 'ipvs' | 'nftables' | 'conntrack'> {
  return {
    iptables: {
      ...c.iptables,
      syncPeriod: or(c.iptables.syncPeriod, 30 * SECOND),
      minSyncPeriod: or(c.iptables.minSyncPeriod, SECOND),
      localhostNodePorts: c.iptables.localhostNodePorts ?? true,
      masqueradeBit: c.iptables.masqueradeBit ?? 14,
    },
    // ipvs.minSyncPeriod has no default: 0 stays 0 (every change syncs at once)
    ipvs: { ...c.ipvs, syncPeriod: or(c.ipvs.syncPeriod, 30 * SECOND) },
    nftables: {
      ...c.nftables,
      syncPeriod: or(c.nftables.syncPeriod, 30 * SECOND),
      minSyncPeriod: or(c.nftables.minSyncPeriod, SECOND),
      masqueradeBit: c.nftables.masqueradeBit ?? 14,
    },
    conntrack: {
      ...c.conntrack,
      maxPerCore: c.conntrack.maxPerCore ?? 32 * 1024,
      min: c.conntrack.min ?? 128 * 1024,
      tcpEstablishedTimeout: c.conntrack.tcpEstablishedTimeout ?? 24 * 3600 * SECOND,
      tcpCloseWaitTimeout: c.conntrack.tcpCloseWaitTimeout ?? 3600 * SECOND,
    },
  };
}

/** SetDefaults_KubeProxyConfiguration: empty and zero fields get kube-proxy's defaults. */
export function setDefaults(c: V1Alpha1): V1Alpha1 {
  const bindAddress = c.bindAddress || '0.0.0.0';
  const [healthzHost, metricsHost] = isIPv4Text(bindAddress) ? ['0.0.0.0', '127.0.0.1'] : ['::', '::1'];
  const cc = c.clientConnection;
  return {
    ...c,
    ...defaultSections(c),
    bindAddress,
    healthzBindAddress: c.healthzBindAddress ? appendPortIfNeeded(c.healthzBindAddress, 10256) : joinHostPort(healthzHost, 10256),
    metricsBindAddress: c.metricsBindAddress ? appendPortIfNeeded(c.metricsBindAddress, 10249) : joinHostPort(metricsHost, 10249),
    oomScoreAdj: c.oomScoreAdj ?? -999,
    configSyncPeriod: or(c.configSyncPeriod, 15 * 60 * SECOND),
    clientConnection: { ...cc, contentType: cc.contentType || 'application/vnd.kubernetes.protobuf', qps: cc.qps || 5, burst: cc.burst || 10 },
    logging: defaultLogging(c.logging),
  };
}

type SectionName = 'iptables' | 'ipvs' | 'nftables';

/** The section whose syncPeriod/minSyncPeriod (and masqueradeAll) a mode uses. */
export function syncSection(mode: string): SectionName {
  return mode === 'ipvs' || mode === 'nftables' ? mode : 'iptables';
}
const masqueradeSection = (mode: string): 'iptables' | 'nftables' => (mode === 'nftables' ? 'nftables' : 'iptables');

/** v1alpha1 -> internal (Convert_v1alpha1_KubeProxyConfiguration_To_config_...). */
export function toInternal(c: V1Alpha1): Internal {
  const sync = c[syncSection(c.mode)];
  return {
    featureGates: { ...c.featureGates },
    clientConnection: { ...c.clientConnection },
    logging: c.logging,
    hostnameOverride: c.hostnameOverride,
    bindAddress: c.bindAddress,
    healthzBindAddress: c.healthzBindAddress,
    metricsBindAddress: c.metricsBindAddress,
    bindAddressHardFail: c.bindAddressHardFail,
    enableProfiling: c.enableProfiling,
    showHiddenMetricsForVersion: c.showHiddenMetricsForVersion,
    mode: c.mode,
    iptables: { masqueradeBit: c.iptables.masqueradeBit, localhostNodePorts: c.iptables.localhostNodePorts },
    ipvs: { scheduler: c.ipvs.scheduler, excludeCIDRs: c.ipvs.excludeCIDRs, strictARP: c.ipvs.strictARP, tcpTimeout: c.ipvs.tcpTimeout, tcpFinTimeout: c.ipvs.tcpFinTimeout, udpTimeout: c.ipvs.udpTimeout },
    nftables: { masqueradeBit: c.nftables.masqueradeBit },
    winkernel: { ...c.winkernel },
    detectLocalMode: c.detectLocalMode,
    detectLocal: { ...c.detectLocal, clusterCIDRs: c.clusterCIDR ? c.clusterCIDR.split(',') : [] },
    nodePortAddresses: c.nodePortAddresses,
    syncPeriod: sync.syncPeriod,
    minSyncPeriod: sync.minSyncPeriod,
    configSyncPeriod: c.configSyncPeriod,
    linux: { conntrack: { ...c.conntrack }, masqueradeAll: c[masqueradeSection(c.mode)].masqueradeAll, oomScoreAdj: c.oomScoreAdj },
    windows: { runAsService: c.windowsRunAsService },
  };
}

/** platformApplyDefaults (Linux), after flags. */
export function applyPlatformDefaults(c: Internal): Internal {
  const mode = c.mode || 'iptables';
  return {
    ...c,
    mode,
    nodePortAddresses: mode === 'nftables' && !c.nodePortAddresses?.length ? ['primary'] : c.nodePortAddresses,
    detectLocalMode: c.detectLocalMode || 'ClusterCIDR',
  };
}

function sectionsOut(c: Internal): Pick<V1Alpha1, 'iptables' | 'ipvs' | 'nftables'> {
  const s = syncSection(c.mode);
  const m = masqueradeSection(c.mode);
  const periods = (name: SectionName) => (s === name ? { syncPeriod: c.syncPeriod, minSyncPeriod: c.minSyncPeriod } : { syncPeriod: 0, minSyncPeriod: 0 });
  return {
    iptables: { ...c.iptables, masqueradeAll: m === 'iptables' && c.linux.masqueradeAll, ...periods('iptables') },
    ipvs: { ...c.ipvs, ...periods('ipvs') },
    nftables: { ...c.nftables, masqueradeAll: m === 'nftables' && c.linux.masqueradeAll, ...periods('nftables') },
  };
}

/** internal -> v1alpha1 (what --write-config-to encodes). portRange has no internal field: it comes back "". */
export function toV1Alpha1(c: Internal): V1Alpha1 {
  return {
    featureGates: { ...c.featureGates },
    clientConnection: { ...c.clientConnection },
    logging: c.logging,
    hostnameOverride: c.hostnameOverride,
    bindAddress: c.bindAddress,
    healthzBindAddress: c.healthzBindAddress,
    metricsBindAddress: c.metricsBindAddress,
    bindAddressHardFail: c.bindAddressHardFail,
    enableProfiling: c.enableProfiling,
    showHiddenMetricsForVersion: c.showHiddenMetricsForVersion,
    mode: c.mode,
    ...sectionsOut(c),
    winkernel: { ...c.winkernel },
    detectLocalMode: c.detectLocalMode,
    detectLocal: { bridgeInterface: c.detectLocal.bridgeInterface, interfaceNamePrefix: c.detectLocal.interfaceNamePrefix },
    clusterCIDR: c.detectLocal.clusterCIDRs.join(','),
    nodePortAddresses: c.nodePortAddresses,
    oomScoreAdj: c.linux.oomScoreAdj,
    conntrack: { ...c.linux.conntrack },
    configSyncPeriod: c.configSyncPeriod,
    portRange: '',
    windowsRunAsService: c.windows.runAsService,
  };
}
