// What kpx does with each KubeProxyConfiguration field it accepts but does not act on,
// and the warnings it gives: one per field, only for a value other than kube-proxy's
// default, naming the flag or the field (with the file) that set it.
import { formatGoDuration } from './duration.js';
import { FLAG_BY_NAME, given, type AppliedFlags, type CliFlags } from './flags.js';
import { syncSection, type Internal } from './internal.js';
import type { KpxMode } from './modes.js';
import type { V1Alpha1 } from './v1alpha1.js';

interface NoEffect {
  /** internal field path */
  readonly path: string;
  readonly get: (c: Internal) => string;
  readonly note: string;
  /** kpx honours it in these modes (none: never) */
  readonly honouredIn?: readonly KpxMode[];
}

const s = (v: unknown) => JSON.stringify(v);
const d = (ns: number | null) => (ns === null ? 'null' : s(formatGoDuration(ns)));
const CT = 'kpx does not write conntrack sysctls';
const WIN = "Windows only: kube-proxy's winkernel mode";
const LOG = 'kpx writes JSON lines to stderr, unbuffered';

const ct = (k: keyof Internal['linux']['conntrack'], get: (c: Internal) => string): NoEffect => ({ path: `linux.conntrack.${k}`, get, note: CT });
const win = (k: keyof Internal['winkernel']): NoEffect => ({ path: `winkernel.${k}`, get: (c) => s(c.winkernel[k]), note: WIN });
const ipvs = (k: keyof Internal['ipvs'], get: (c: Internal) => string): NoEffect => ({ path: `ipvs.${k}`, get, note: 'ipvs mode only', honouredIn: ['ipvs'] });

export const NO_EFFECT: readonly NoEffect[] = [
  { path: 'clientConnection.acceptContentTypes', get: (c) => s(c.clientConnection.acceptContentTypes), note: 'kpx asks for JSON' },
  { path: 'clientConnection.contentType', get: (c) => s(c.clientConnection.contentType), note: 'kpx talks JSON to the apiserver' },
  { path: 'clientConnection.qps', get: (c) => s(c.clientConnection.qps), note: 'kpx has no client-side rate limit' },
  { path: 'clientConnection.burst', get: (c) => s(c.clientConnection.burst), note: 'kpx has no client-side rate limit' },
  { path: 'configSyncPeriod', get: (c) => d(c.configSyncPeriod), note: 'kpx relists every --api-relist-period (default 30m) instead' },
  ct('maxPerCore', (c) => s(c.linux.conntrack.maxPerCore)),
  ct('min', (c) => s(c.linux.conntrack.min)),
  ct('tcpEstablishedTimeout', (c) => d(c.linux.conntrack.tcpEstablishedTimeout)),
  ct('tcpCloseWaitTimeout', (c) => d(c.linux.conntrack.tcpCloseWaitTimeout)),
  ct('udpTimeout', (c) => d(c.linux.conntrack.udpTimeout)),
  ct('udpStreamTimeout', (c) => d(c.linux.conntrack.udpStreamTimeout)),
  { path: 'enableProfiling', get: (c) => s(c.enableProfiling), note: 'kpx serves no /debug/pprof' },
  { path: 'featureGates', get: (c) => s(Object.fromEntries(Object.entries(c.featureGates).sort())), note: 'kpx has no feature gates' },
  { path: 'logging.flushFrequency', get: (c) => d(c.logging.flushFrequency.ns), note: LOG },
  { path: 'logging.vmodule', get: (c) => s(c.logging.vmodule.map((m) => `${m.filePattern}=${m.verbosity}`).join(',')), note: 'kpx has no per-file verbosity' },
  { path: 'logging.options.text.splitStream', get: (c) => s(c.logging.options.text.splitStream), note: LOG },
  { path: 'logging.options.text.infoBufferSize', get: (c) => s(c.logging.options.text.infoBufferSize), note: LOG },
  { path: 'logging.options.json.splitStream', get: (c) => s(c.logging.options.json.splitStream), note: LOG },
  { path: 'logging.options.json.infoBufferSize', get: (c) => s(c.logging.options.json.infoBufferSize), note: LOG },
  { path: 'linux.oomScoreAdj', get: (c) => s(c.linux.oomScoreAdj), note: 'kpx leaves its OOM score to the kubelet' },
  { path: 'showHiddenMetricsForVersion', get: (c) => s(c.showHiddenMetricsForVersion), note: 'kpx has no hidden metrics' },
  win('networkName'),
  win('sourceVip'),
  win('enableDSR'),
  win('rootHnsEndpointName'),
  win('forwardHealthCheckVip'),
  { path: 'windows.runAsService', get: (c) => s(c.windows.runAsService), note: WIN },
  { path: 'nftables.masqueradeBit', get: (c) => s(c.nftables.masqueradeBit), note: 'nftables mode only', honouredIn: ['nftables'] },
  { path: 'iptables.masqueradeBit', get: (c) => s(c.iptables.masqueradeBit), note: 'the nftables mode reads nftables.masqueradeBit', honouredIn: ['iptables', 'ipvs'] },
  { path: 'iptables.localhostNodePorts', get: (c) => s(c.iptables.localhostNodePorts), note: 'iptables mode only', honouredIn: ['iptables'] },
  ipvs('scheduler', (c) => s(c.ipvs.scheduler)),
  ipvs('excludeCIDRs', (c) => s(c.ipvs.excludeCIDRs ?? [])),
  ipvs('strictARP', (c) => s(c.ipvs.strictARP)),
  ipvs('tcpTimeout', (c) => d(c.ipvs.tcpTimeout)),
  ipvs('tcpFinTimeout', (c) => d(c.ipvs.tcpFinTimeout)),
  ipvs('udpTimeout', (c) => d(c.ipvs.udpTimeout)),
];

export interface WarningInput {
  internal: Internal;
  /** the same with no file and no flags */
  defaults: Internal;
  /** the defaulted file, when there is one */
  file: { path: string; v1: V1Alpha1; defaults: V1Alpha1 } | null;
  flags: CliFlags;
  applied: AppliedFlags;
  locate: (internalPath: string) => string;
}

function noEffectWarnings(w: WarningInput, out: Map<string, string>): void {
  const mode = w.internal.mode as KpxMode;
  for (const f of NO_EFFECT) {
    if (f.honouredIn?.includes(mode)) continue;
    const value = f.get(w.internal);
    if (value === f.get(w.defaults)) continue;
    const why = f.honouredIn ? `no effect in ${mode} mode (${f.note})` : `accepted, no effect in kpx (${f.note})`;
    out.set(f.path, `${w.locate(f.path)}: ${value}: ${why}`);
  }
}

/** Fields of a mode's section that the selected mode does not read (kube-proxy drops them too). */
function inactiveSectionWarnings(w: WarningInput, out: Map<string, string>): void {
  if (!w.file) return;
  const { v1, defaults, path } = w.file;
  const mode = w.internal.mode;
  const active = syncSection(mode);
  for (const section of ['iptables', 'ipvs', 'nftables'] as const) {
    if (section === active) continue;
    for (const k of ['syncPeriod', 'minSyncPeriod'] as const) {
      if (v1[section][k] !== defaults[section][k]) {
        out.set(`${section}.${k}`, `${path}: ${section}.${k}: ${d(v1[section][k])}: no effect in ${mode} mode (${active}.${k} applies)`);
      }
    }
  }
  const masq = mode === 'nftables' ? 'iptables' : 'nftables';
  if (v1[masq].masqueradeAll) out.set(`${masq}.masqueradeAll`, `${path}: ${masq}.masqueradeAll: true: no effect in ${mode} mode`);
  if (v1.portRange !== '') out.set('portRange', `${path}: portRange: ${s(v1.portRange)}: accepted, no effect (kube-proxy ignores it too)`);
}

function flagWarnings(w: WarningInput, out: Map<string, string>): void {
  for (const name of w.applied.names) {
    const spec = FLAG_BY_NAME.get(name)!;
    if (spec.late && !spec.late(w.internal.mode)) {
      out.set(`--${name}`, `--${name}: no effect in ${w.internal.mode} mode`);
    } else if (!spec.apply && spec.effect === 'no-effect') {
      out.set(`--${name}`, `--${name}=${String(given(w.flags, name))}: accepted, no effect in kpx (${spec.help})`);
    }
    if (w.file && !spec.withConfig) {
      out.set(`--${name} with --config`, `--${name}: kube-proxy ignores this flag when --config is given; kpx applies it on top of ${w.file.path}`);
    }
  }
}

/** Every warning for this configuration, one per field or flag. */
export function configWarnings(w: WarningInput): string[] {
  const out = new Map<string, string>();
  noEffectWarnings(w, out);
  inactiveSectionWarnings(w, out);
  flagWarnings(w, out);
  return [...out.values()];
}
