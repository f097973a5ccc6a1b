// kube-proxy's validation of the resolved configuration (pkg/proxy/apis/config/validation,
// v1.36.3), with messages that name the field as the user wrote it: the v1alpha1 path in
// the file, or the flag that set it. Mode support (what kpx can run) is checked
// elsewhere (modes.ts); this says only what kube-proxy itself would refuse.
import { parseCIDR, parseIP, type ParsedCIDR } from '../util/ip.js';
import { syncSection, type Internal } from './internal.js';
import { formatGoDuration } from './duration.js';

/** Internal field path -> where the user set it ("--iptables-sync-period", "FILE: iptables.syncPeriod"). */
export type Locate = (internalPath: string) => string;

/** The v1alpha1 path of an internal field (the file's spelling). */
export function v1PathOf(internalPath: string, mode: string): string {
  const fixed: Record<string, string> = {
    syncPeriod: `${syncSection(mode)}.syncPeriod`,
    minSyncPeriod: `${syncSection(mode)}.minSyncPeriod`,
    'linux.masqueradeAll': `${mode === 'nftables' ? 'nftables' : 'iptables'}.masqueradeAll`,
    'linux.oomScoreAdj': 'oomScoreAdj',
    'detectLocal.clusterCIDRs': 'clusterCIDR',
    'windows.runAsService': 'windowsRunAsService',
  };
  return fixed[internalPath] ?? internalPath.replace(/^linux\.conntrack\./, 'conntrack.');
}

const MAX_INT32 = 2_147_483_647;
const show = (v: unknown) => JSON.stringify(v);
const dur = (ns: number) => show(formatGoDuration(ns));

/** ParseIPSloppy: IPv4 octets may have leading zeros. */
export function parseIPSloppy(s: string): ReturnType<typeof parseIP> {
  return parseIP(/^[0-9.]+$/.test(s) ? s.replace(/(^|\.)0+(\d)/g, '$1$2') : s);
}
export function parseCIDRSloppy(s: string): ParsedCIDR | null {
  const i = s.indexOf('/');
  if (i < 0) return null;
  const ip = parseIPSloppy(s.slice(0, i));
  return ip ? parseCIDR(`${ip.text}${s.slice(i)}`) : null;
}

class Errors {
  readonly list: string[] = [];
  constructor(private readonly loc: Locate) {}
  add(path: string, value: string, msg: string): void {
    this.list.push(`${this.loc(path)}: ${value}: ${msg}`);
  }
  check(ok: boolean, path: string, value: string, msg: string): void {
    if (!ok) this.add(path, value, msg);
  }
}

function hostPort(e: Errors, path: string, addr: string): void {
  const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d+)$/.exec(addr);
  if (!m) return e.add(path, show(addr), 'must be IP:port');
  const host = m[1] ?? m[2] ?? '';
  e.check(parseIPSloppy(host) !== null, path, show(addr), `${show(host)} must be a valid IP`);
  const port = Number(m[3]);
  e.check(port >= 1 && port <= 65535, path, show(addr), 'must be a valid port (1-65535)');
}

function periods(e: Errors, c: Internal): void {
  e.check(c.configSyncPeriod > 0, 'configSyncPeriod', dur(c.configSyncPeriod), 'must be greater than 0');
  e.check(c.syncPeriod > 0, 'syncPeriod', dur(c.syncPeriod), 'must be greater than 0');
  e.check(c.minSyncPeriod >= 0, 'minSyncPeriod', dur(c.minSyncPeriod), 'must be greater than or equal to 0');
  if (c.syncPeriod > 0) {
    e.check(c.minSyncPeriod <= c.syncPeriod, 'minSyncPeriod', dur(c.minSyncPeriod), `must not be greater than syncPeriod (${formatGoDuration(c.syncPeriod)})`);
  }
}

function bit(e: Errors, path: string, b: number | null): void {
  if (b !== null) e.check(b >= 0 && b <= 31, path, String(b), 'must be within the range [0, 31]');
}

function nonNegative(e: Errors, path: string, value: number | null, text: string): void {
  if (value !== null) e.check(value >= 0, path, text, 'must be greater than or equal to 0');
}

function linux(e: Errors, c: Internal): void {
  const ct = c.linux.conntrack;
  nonNegative(e, 'linux.conntrack.maxPerCore', ct.maxPerCore, String(ct.maxPerCore));
  nonNegative(e, 'linux.conntrack.min', ct.min, String(ct.min));
  for (const k of ['tcpEstablishedTimeout', 'tcpCloseWaitTimeout', 'udpTimeout', 'udpStreamTimeout'] as const) {
    const v = ct[k];
    if (v !== null) nonNegative(e, `linux.conntrack.${k}`, v, dur(v));
  }
  const oom = c.linux.oomScoreAdj;
  if (oom !== null) e.check(oom >= -1000 && oom <= 1000, 'linux.oomScoreAdj', String(oom), 'must be within the range [-1000, 1000]');
}

function ipvs(e: Errors, c: Internal): void {
  for (const k of ['tcpTimeout', 'tcpFinTimeout', 'udpTimeout'] as const) nonNegative(e, `ipvs.${k}`, c.ipvs[k], dur(c.ipvs[k]));
  (c.ipvs.excludeCIDRs ?? []).forEach((s, i) => e.check(parseCIDRSloppy(s) !== null, `ipvs.excludeCIDRs[${i}]`, show(s), 'must be a valid CIDR'));
}

function addresses(e: Errors, c: Internal): void {
  e.check(parseIPSloppy(c.bindAddress) !== null, 'bindAddress', show(c.bindAddress), 'must be an IP address');
  if (c.healthzBindAddress !== '') hostPort(e, 'healthzBindAddress', c.healthzBindAddress);
  // kpx: an empty metrics address (only a flag can give one) switches the server off
  if (c.metricsBindAddress !== '') hostPort(e, 'metricsBindAddress', c.metricsBindAddress);
  const npa = c.nodePortAddresses ?? [];
  npa.forEach((s, i) => {
    if (s === 'primary') e.check(npa.length === 1, `nodePortAddresses[${i}]`, show(s), "can't use both 'primary' and CIDRs");
    else e.check(parseCIDRSloppy(s) !== null, `nodePortAddresses[${i}]`, show(s), "must be a valid CIDR or 'primary'");
  });
}

export const LOCAL_MODES = ['ClusterCIDR', 'NodeCIDR', 'BridgeInterface', 'InterfaceNamePrefix'] as const;

function clusterCIDRs(e: Errors, cidrs: string[]): void {
  const path = 'detectLocal.clusterCIDRs';
  const parsed = cidrs.map((s) => parseCIDRSloppy(s));
  parsed.forEach((p, i) => e.check(p !== null, path, show(cidrs[i]), 'must be a valid CIDR (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)'));
  if (parsed.includes(null)) return;
  const dualStack = cidrs.length === 2 && parsed[0]!.family !== parsed[1]!.family;
  e.check(cidrs.length === 1 || dualStack, path, show(cidrs.join(',')), 'must be a single CIDR or a dual-stack pair of CIDRs');
}

function detectLocal(e: Errors, c: Internal): void {
  const m = c.detectLocalMode;
  if (m !== '' && !(LOCAL_MODES as readonly string[]).includes(m)) {
    return e.add('detectLocalMode', show(m), `must be one of ${LOCAL_MODES.join(', ')} (or empty: ClusterCIDR)`);
  }
  if (m === 'BridgeInterface') e.check(c.detectLocal.bridgeInterface !== '', 'detectLocal.bridgeInterface', '""', 'must not be empty with detectLocalMode BridgeInterface');
  if (m === 'InterfaceNamePrefix') e.check(c.detectLocal.interfaceNamePrefix !== '', 'detectLocal.interfaceNamePrefix', '""', 'must not be empty with detectLocalMode InterfaceNamePrefix');
  if (m === 'ClusterCIDR' && c.detectLocal.clusterCIDRs.length > 0) clusterCIDRs(e, c.detectLocal.clusterCIDRs);
}

function logging(e: Errors, c: Internal): void {
  const l = c.logging;
  const ff = l.flushFrequency.ns;
  e.check(ff > 0, 'logging.flushFrequency', dur(ff), 'must be greater than 0');
  e.check(l.format === 'text' || l.format === 'json', 'logging.format', show(l.format), 'unsupported log format (text or json)');
  e.check(l.verbosity <= MAX_INT32, 'logging.verbosity', String(l.verbosity), `must be <= ${MAX_INT32}`);
  if (l.vmodule.length && l.format !== 'text') e.add('logging.vmodule', show(l.format), 'only supported with the text log format');
  l.vmodule.forEach((m, i) => {
    e.check(m.filePattern !== '' && !/[=,]/.test(m.filePattern), `logging.vmodule[${i}].filePattern`, show(m.filePattern), 'must be non-empty, without "=" or ","');
    e.check(m.verbosity <= MAX_INT32, `logging.vmodule[${i}].verbosity`, String(m.verbosity), `must be <= ${MAX_INT32}`);
  });
}

/** Everything kube-proxy v1.36 would refuse in this configuration, one message each. */
export function validateInternal(c: Internal, loc: Locate): string[] {
  const e = new Errors(loc);
  bit(e, 'iptables.masqueradeBit', c.iptables.masqueradeBit);
  if (c.mode === 'ipvs') ipvs(e, c);
  if (c.mode === 'nftables') bit(e, 'nftables.masqueradeBit', c.nftables.masqueradeBit);
  linux(e, c);
  e.check(c.clientConnection.burst >= 0, 'clientConnection.burst', String(c.clientConnection.burst), 'must be greater than or equal to 0');
  periods(e, c);
  addresses(e, c);
  const hidden = c.showHiddenMetricsForVersion;
  if (hidden !== '') e.check(/^\d+\.\d+$/.test(hidden), 'showHiddenMetricsForVersion', show(hidden), 'must be <major>.<minor>, e.g. 1.35');
  detectLocal(e, c);
  logging(e, c);
  return e.list;
}
