// kpx's configuration, resolved the way kube-proxy resolves its own: a
// KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1, decoded strictly),
// kube-proxy's defaults for every empty or zero field, command-line flags (kube-proxy's
// names and syntax) on top, the platform defaults, kube-proxy's validation. The result
// is kube-proxy's effective configuration (what `--write-config-to` prints) and kpx's
// own KpxConfig derived from it, plus the warnings for what kpx accepts but does not do.
import { readFileSync } from 'node:fs';
import { parse as parseYAML, stringify as stringifyYAML } from 'yaml';
import type { z } from 'zod';
import type { ParsedCIDR } from '../util/ip.js';
import { ConfigError } from './errors.js';
import { formatGoDuration, parseGoDuration } from './duration.js';
import { applyFlags, given, parseBool, type AppliedFlags, type CliFlags, type RawValue } from './flags.js';
import { appendPortIfNeeded, applyPlatformDefaults, setDefaults, toInternal, toV1Alpha1, type Internal } from './internal.js';
import { checkMode, type KpxMode } from './modes.js';
import { configWarnings } from './effects.js';
import { LOCAL_MODES, parseCIDRSloppy, v1PathOf, validateInternal } from './validate.js';
import { emptyV1Alpha1, encodeV1Alpha1, fromParsed, v1alpha1Schema, type V1Alpha1 } from './v1alpha1.js';

export { ConfigError } from './errors.js';
export type { CliFlags } from './flags.js';

/** Go-style durations ("30s", "1m30s", "250ms", "1h"), in milliseconds. */
export function parseDuration(text: string): number {
  const ns = parseGoDuration(text);
  if (ns === null) throw new ConfigError(`invalid duration ${JSON.stringify(text)} (use e.g. 30s, 1m, 500ms)`);
  return ns / 1e6;
}

export const SCHEDULERS = ['rr', 'wrr', 'lc', 'wlc', 'lblc', 'lblcr', 'sh', 'dh', 'sed', 'nq', 'mh'] as const;

export type DetectLocalMode = '' | (typeof LOCAL_MODES)[number];

/** kpx's resolved configuration. */
export interface KpxConfig {
  mode: KpxMode;
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
  /** "" = no server */
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
  /** --log-level, else "debug" for logging.verbosity (--v) 4 and up; undefined = the default */
  logLevel: string | undefined;
  once: boolean;
  dryRun: boolean;
  /** `kpx render`: the full ruleset as for an empty kernel; the kernel is not read */
  renderOnly: boolean;
}

export interface LoadedConfig {
  /** kube-proxy's effective configuration (what --write-config-to writes) */
  effective: V1Alpha1;
  /** null when kpx cannot run this configuration (see unsupported) */
  kpx: KpxConfig | null;
  /** one line per field or flag kpx accepts without acting on it */
  warnings: string[];
  /** why kpx cannot run it (a mode kpx has not got), naming the field and the value */
  unsupported: string | null;
}

// ---- the file

type Issue = z.core.$ZodIssue;

function pathText(path: ReadonlyArray<PropertyKey>): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
}

function valueAt(raw: unknown, path: ReadonlyArray<PropertyKey>): unknown {
  let v = raw;
  for (const p of path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
}

const EXPECTED: Record<string, string> = { int: 'an integer', number: 'a number', string: 'a string', boolean: 'true or false', array: 'a list', object: 'a mapping', record: 'a mapping' };

function issueText(issue: Issue, raw: unknown): string[] {
  const at = pathText(issue.path);
  const value = valueAt(raw, issue.path);
  const shown = JSON.stringify(value);
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((k) => `${pathText([...issue.path, k])}: unknown field (not in KubeProxyConfiguration v1alpha1)`);
    case 'invalid_type':
      if (value === undefined) return [`${at}: required`];
      return [`${at || 'the document'}: ${shown}: must be ${EXPECTED[issue.expected] ?? issue.expected}`];
    case 'invalid_value':
      return [`${at}: ${shown}: must be ${issue.values.map((v) => JSON.stringify(v)).join(' or ')}`];
    case 'too_small':
    case 'too_big':
      return [`${at}: ${shown}: out of range (${issue.message.replace(/^Too (small|big): /, '')})`];
    default:
      return [`${at}: ${shown}: ${issue.message}`];
  }
}

/** Reads and decodes a KubeProxyConfiguration file; errors name the file and each field's full path. */
export function loadConfigFile(path: string): V1Alpha1 {
  let raw: unknown;
  try {
    raw = parseYAML(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`${path}: ${(err as Error).message.split('\n')[0]}`);
  }
  const parsed = v1alpha1Schema.safeParse(raw ?? {});
  if (!parsed.success) throw new ConfigError(`${path}: ${parsed.error.issues.flatMap((i) => issueText(i, raw)).join(`; ${path}: `)}`);
  return fromParsed(parsed.data);
}

// ---- flags kube-proxy handles outside the configuration object

/** --healthz-port/--metrics-port (deprecated): without --config kube-proxy always combines them with the addresses; port 0 = off. */
function deprecatedPorts(c: Internal, flags: CliFlags, hasFile: boolean, applied: AppliedFlags): void {
  const pairs = [
    ['healthz', 'healthzBindAddress', 10256],
    ['metrics', 'metricsBindAddress', 10249],
  ] as const;
  for (const [name, field, dflt] of pairs) {
    const portFlag = given(flags, `${name}-port`);
    if (hasFile && portFlag === undefined && given(flags, `${name}-bind-address`) === undefined) continue;
    const port = portFlag === undefined ? dflt : Number(portFlag);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError(`--${name}-port=${String(portFlag)}: invalid port`);
    if (portFlag !== undefined) applied.setBy.set(field, `${name}-port`);
    c[field] = port === 0 || c[field] === '' ? '' : appendPortIfNeeded(c[field], port);
  }
}

/** --hostname-override: trimmed and lowercased; given but blank is an error. */
function hostnameFlag(c: Internal, flags: CliFlags): void {
  const raw = given(flags, 'hostname-override');
  if (typeof raw !== 'string' || raw === '') return;
  const name = raw.trim();
  if (name === '') throw new ConfigError('--hostname-override: empty hostname-override is invalid');
  c.hostnameOverride = name.toLowerCase();
}

/** kube-proxy's node name: hostnameOverride, else the machine's hostname; trimmed, lowercased. */
function nodeName(override: string, machine: string, where: string): string {
  const name = (override || machine).trim();
  if (name === '') throw new ConfigError(`${where}: empty hostname is invalid`);
  return name.toLowerCase();
}

// ---- kpx's view

function kpxString(flags: CliFlags, name: string): string | undefined {
  const v = given(flags, name);
  return typeof v === 'string' ? v : undefined;
}

/** A kpx-only duration flag, in milliseconds (`dfltMs` when not given). */
function kpxDuration(flags: CliFlags, name: string, dfltMs: number): number {
  const v = kpxString(flags, name);
  if (v === undefined) return dfltMs;
  const ns = parseGoDuration(v);
  if (ns === null || ns < 0) throw new ConfigError(`--${name}=${v}: invalid duration (use e.g. 30s, 1m, 500ms)`);
  return ns / 1e6;
}

function kpxBool(flags: CliFlags, name: string): boolean {
  const v: RawValue | undefined = given(flags, name);
  return v === undefined ? false : parseBool(v, name);
}

function backend(flags: CliFlags): KpxConfig['iptablesBackend'] {
  const b = kpxString(flags, 'iptables-backend') ?? 'auto';
  if (b !== 'auto' && b !== 'nft' && b !== 'legacy') throw new ConfigError(`--iptables-backend=${b}: use auto, nft or legacy`);
  return b;
}

function scheduler(c: Internal, mode: KpxMode, where: string): KpxConfig['ipvs']['scheduler'] {
  const s = c.ipvs.scheduler || 'rr';
  const known = (SCHEDULERS as readonly string[]).includes(s);
  if (!known && mode === 'ipvs') throw new ConfigError(`${where}: ${JSON.stringify(s)}: not an IPVS scheduler (${SCHEDULERS.join(', ')})`);
  return known ? (s as KpxConfig['ipvs']['scheduler']) : 'rr';
}

const cidrs = (list: readonly string[]) => list.map((s) => parseCIDRSloppy(s)).filter((x): x is ParsedCIDR => x !== null);
const ms = (ns: number) => ns / 1e6;

function ipvsConfig(c: Internal, mode: KpxMode, flags: CliFlags, locate: (p: string) => string): KpxConfig['ipvs'] {
  return {
    scheduler: scheduler(c, mode, locate('ipvs.scheduler')),
    excludeCIDRs: cidrs(c.ipvs.excludeCIDRs ?? []),
    strictARP: c.ipvs.strictARP,
    tcpTimeoutMs: ms(c.ipvs.tcpTimeout),
    tcpFinTimeoutMs: ms(c.ipvs.tcpFinTimeout),
    udpTimeoutMs: ms(c.ipvs.udpTimeout),
    drainTimeoutMs: kpxDuration(flags, 'ipvs-drain-timeout', 15 * 60_000),
  };
}

const LOG_LEVELS = ['debug', 'info', 'warn', 'error', 'silent'];

function logLevel(c: Internal, flags: CliFlags): string | undefined {
  const level = kpxString(flags, 'log-level');
  if (level !== undefined && !LOG_LEVELS.includes(level)) throw new ConfigError(`--log-level=${level}: use ${LOG_LEVELS.join(', ')}`);
  return level ?? (c.logging.verbosity >= 4 ? 'debug' : undefined);
}

function toKpxConfig(c: Internal, mode: KpxMode, flags: CliFlags, machineHostname: string, locate: (p: string) => string): KpxConfig {
  return {
    mode,
    hostname: nodeName(c.hostnameOverride, machineHostname, locate('hostnameOverride')),
    bindAddress: c.bindAddress,
    clusterCIDRs: cidrs(c.detectLocal.clusterCIDRs),
    detectLocalMode: c.detectLocalMode as DetectLocalMode,
    bridgeInterface: c.detectLocal.bridgeInterface || undefined,
    interfaceNamePrefix: c.detectLocal.interfaceNamePrefix || undefined,
    masqueradeAll: c.linux.masqueradeAll,
    // kube-proxy's nftables mode marks with nftables.masqueradeBit, the others with iptables'
    masqueradeBit: (mode === 'nftables' ? c.nftables.masqueradeBit : c.iptables.masqueradeBit) ?? 14,
    localhostNodePorts: c.iptables.localhostNodePorts ?? true,
    syncPeriodMs: ms(c.syncPeriod),
    minSyncPeriodMs: ms(c.minSyncPeriod),
    nodePortAddresses: [...(c.nodePortAddresses ?? [])],
    metricsBindAddress: c.metricsBindAddress,
    healthzBindAddress: c.healthzBindAddress,
    bindAddressHardFail: c.bindAddressHardFail,
    conntrackTCPBeLiberal: c.linux.conntrack.tcpBeLiberal,
    ipvs: ipvsConfig(c, mode, flags, locate),
    kubeconfig: c.clientConnection.kubeconfig || undefined,
    master: kpxString(flags, 'master') || undefined,
    apiWatchIdleTimeoutMs: kpxDuration(flags, 'api-watch-idle-timeout', 150_000),
    apiRelistPeriodMs: kpxDuration(flags, 'api-relist-period', 30 * 60_000),
    manifests: kpxString(flags, 'manifests'),
    iptablesBackend: backend(flags),
    logLevel: logLevel(c, flags),
    once: kpxBool(flags, 'once'),
    dryRun: kpxBool(flags, 'dry-run'),
    renderOnly: false,
  };
}

// ---- putting it together

const DEFAULTS: Internal = applyPlatformDefaults(toInternal(setDefaults(emptyV1Alpha1())));

function locator(file: string | undefined, applied: AppliedFlags, mode: () => string): (p: string) => string {
  return (p) => {
    const flag = applied.setBy.get(p);
    if (flag) return `--${flag}`;
    const field = v1PathOf(p, mode());
    return file ? `${file}: ${field}` : field;
  };
}

function readFile(flags: CliFlags): { path: string; v1: V1Alpha1 } | null {
  const path = given(flags, 'config');
  if (path === undefined || path === '' || typeof path !== 'string') return null;
  return { path, v1: setDefaults(loadConfigFile(path)) };
}

/** Everything about a configuration: kube-proxy's effective view, kpx's, the warnings, and what kpx cannot do. */
export function loadConfig(flags: CliFlags, machineHostname: string): LoadedConfig {
  const file = readFile(flags);
  let internal = toInternal(file?.v1 ?? setDefaults(emptyV1Alpha1()));
  const applied = applyFlags(internal, flags);
  deprecatedPorts(internal, flags, file !== null, applied);
  internal = applyPlatformDefaults(internal);
  hostnameFlag(internal, flags);
  const locate = locator(file?.path, applied, () => internal.mode);

  const errors = validateInternal(internal, locate);
  const mode = checkMode(internal.mode);
  const modeLine = mode.ok ? '' : `${locate('mode')}: ${JSON.stringify(internal.mode)}: ${mode.message}`;
  if (!mode.ok && mode.kind === 'invalid') errors.unshift(modeLine);
  if (errors.length) throw new ConfigError(errors.join('; '));

  const warnings = configWarnings({
    internal,
    defaults: DEFAULTS,
    file: file && { path: file.path, v1: file.v1, defaults: setDefaults(emptyV1Alpha1()) },
    flags,
    applied,
    locate,
  });
  return {
    effective: toV1Alpha1(internal),
    kpx: mode.ok ? toKpxConfig(internal, mode.mode, flags, machineHostname, locate) : null,
    warnings,
    unsupported: mode.ok ? null : modeLine,
  };
}

/** kpx's configuration; a configuration kpx cannot run is a ConfigError. */
export function resolveConfig(flags: CliFlags, machineHostname: string): KpxConfig {
  const r = loadConfig(flags, machineHostname);
  if (!r.kpx) throw new ConfigError(r.unsupported ?? 'unsupported configuration');
  return r.kpx;
}

/** The effective configuration as YAML, field for field what kube-proxy's --write-config-to writes. */
export function effectiveYAML(c: V1Alpha1): string {
  return stringifyYAML(encodeV1Alpha1(c), { sortMapEntries: true, indentSeq: false, lineWidth: 0 });
}

export { formatGoDuration, parseGoDuration };
