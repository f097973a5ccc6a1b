// kube-proxy's command line (v1.29 to v1.36, Linux), as data: each flag's syntax, the
// field it sets, and what it does in kpx. The CLI registers options from this table;
// applyFlags() puts given values on a configuration the way kube-proxy's flag parsing
// does (typed, validated by type at parse time, the sync-period flags applied for the
// mode that is in force).
import { ConfigError } from './errors.js';
import { parseGoDuration } from './duration.js';
import type { Internal } from './internal.js';
import { parseIPSloppy } from './validate.js';

/** What a flag does in kpx. */
export type Effect = 'honoured' | 'no-effect' | 'action';

export type RawValue = string | boolean;

interface Parser<T> {
  /** commander's argument syntax: "<duration>", "[bool]" */
  readonly arg: string;
  /** values of repeated uses are joined with "," (pflag's list and map flags) */
  readonly accumulate?: boolean;
  parse(raw: RawValue, flag: string): T;
}

export interface FlagSpec<N extends string = string> {
  readonly name: N;
  readonly short?: string;
  readonly arg: string;
  readonly accumulate: boolean;
  readonly effect: Effect;
  readonly help: string;
  /** the internal field it sets (messages name the flag for it) */
  readonly field?: string;
  /** kube-proxy applies it even when --config is given */
  readonly withConfig: boolean;
  /** applied after the others, when the mode is known (kube-proxy's processV1Alpha1Flags) */
  readonly late?: (mode: string) => boolean;
  readonly apply?: (c: Internal, raw: RawValue) => void;
}

const bad = (flag: string, raw: RawValue, why: string) => new ConfigError(`--${flag}=${String(raw)}: ${why}`);

const TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);

/** strconv.ParseBool, as pflag's bool flags use it. */
export function parseBool(raw: RawValue, flag: string): boolean {
  if (typeof raw === 'boolean') return raw;
  if (TRUE.has(raw)) return true;
  if (FALSE.has(raw)) return false;
  throw bad(flag, raw, 'invalid boolean (use true or false)');
}

const text = (raw: RawValue) => (typeof raw === 'string' ? raw : '');

function integer(min: number, max: number, arg: string): Parser<number> {
  return {
    arg,
    parse(raw, flag) {
      const s = text(raw);
      const n = Number(s);
      if (!/^[+-]?\d+$/.test(s) || n < min || n > max) throw bad(flag, raw, `invalid integer (${min} to ${max})`);
      return n;
    },
  };
}

export const P = {
  bool: { arg: '[bool]', parse: parseBool } satisfies Parser<boolean>,
  string: { arg: '<string>', parse: (raw) => text(raw) } satisfies Parser<string>,
  int32: integer(-2_147_483_648, 2_147_483_647, '<int32>'),
  level: integer(0, 4_294_967_295, '<level>'),
  float32: {
    arg: '<float32>',
    parse(raw, flag) {
      const n = Number(text(raw));
      if (text(raw).trim() === '' || !Number.isFinite(n)) throw bad(flag, raw, 'invalid number');
      return n;
    },
  } satisfies Parser<number>,
  duration: {
    arg: '<duration>',
    parse(raw, flag) {
      const ns = parseGoDuration(text(raw));
      if (ns === null) throw bad(flag, raw, 'invalid duration (Go syntax, e.g. 30s, 1m30s, 500ms)');
      return ns;
    },
  } satisfies Parser<number>,
  ip: {
    arg: '<ip>',
    parse(raw, flag) {
      const s = text(raw);
      if (s !== '' && !parseIPSloppy(s)) throw bad(flag, raw, 'not a valid IP address');
      return s;
    },
  } satisfies Parser<string>,
  ipport: {
    arg: '<ip:port>',
    parse(raw, flag) {
      const s = text(raw);
      const m = /^(?:\[([^\]]*)\]|([^:]*)):(\d{1,5})$/.exec(s);
      const host = m ? (m[1] ?? m[2] ?? '') : s;
      if (s !== '' && (!parseIPSloppy(host) || (m && Number(m[3]) > 65535))) throw bad(flag, raw, 'not in a valid format (ip or ip:port)');
      return s;
    },
  } satisfies Parser<string>,
  /** pflag StringSlice: comma separated, repeatable */
  strings: { arg: '<list>', accumulate: true, parse: (raw) => (text(raw) === '' ? [] : text(raw).split(',')) } satisfies Parser<string[]>,
  /** cliflag MapStringBool: "A=true,B=false", repeatable */
  gates: {
    arg: '<A=true,B=false>',
    accumulate: true,
    parse(raw, flag) {
      const out: Record<string, boolean> = {};
      for (const item of text(raw).split(',').filter((s) => s.trim() !== '')) {
        const i = item.indexOf('=');
        if (i <= 0) throw bad(flag, raw, `${JSON.stringify(item)} is not key=true|false`);
        out[item.slice(0, i).trim()] = parseBool(item.slice(i + 1).trim(), flag);
      }
      return out;
    },
  } satisfies Parser<Record<string, boolean>>,
  vmodule: {
    arg: '<pattern=N,...>',
    accumulate: true,
    parse(raw, flag) {
      return text(raw)
        .split(',')
        .filter((s) => s !== '')
        .map((item) => {
          const m = /^([^=]+)=(\d+)$/.exec(item);
          if (!m) throw bad(flag, raw, `${JSON.stringify(item)} is not pattern=N`);
          return { filePattern: m[1]!, verbosity: Number(m[2]) };
        });
    },
  } satisfies Parser<Array<{ filePattern: string; verbosity: number }>>,
  quantity: {
    arg: '<quantity>',
    parse(raw, flag) {
      const s = text(raw);
      if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$/.test(s)) throw bad(flag, raw, 'invalid quantity (e.g. 512, 1Ki, 3M)');
      return s;
    },
  } satisfies Parser<string>,
};

interface Opts {
  field?: string;
  withConfig?: boolean;
  short?: string;
  late?: (mode: string) => boolean;
}

function flag<N extends string, T>(name: N, p: Parser<T>, effect: Effect, help: string, set?: (c: Internal, v: T) => void, o: Opts = {}): FlagSpec<N> {
  return {
    name,
    short: o.short,
    arg: p.arg,
    accumulate: p.accumulate ?? false,
    effect,
    help,
    field: o.field,
    withConfig: o.withConfig ?? false,
    late: o.late,
    apply: set ? (c, raw) => set(c, p.parse(raw, name)) : undefined,
  };
}

const notIPVS = (mode: string) => mode !== 'ipvs';
const isIPVS = (mode: string) => mode === 'ipvs';
const always = () => true;
const CT = 'kpx does not write conntrack sysctls';

/** Every flag of kube-proxy v1.29-v1.36 on Linux, with its kpx effect. --help and --version are commander's. */
export const KUBE_PROXY_FLAGS = [
  flag('config', P.string, 'honoured', 'KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); kube-proxy defaults fill empty fields; flags given here apply on top', undefined, { withConfig: true }),
  flag('write-config-to', P.string, 'action', 'write the effective configuration to this file (KubeProxyConfiguration YAML) and exit', undefined, { withConfig: true }),
  flag('cleanup', P.bool, 'action', "remove kpx's rules and IPVS state and exit (as `kpx cleanup`)", undefined, { withConfig: true }),
  flag('init-only', P.bool, 'action', 'check the configuration and exit 0: kpx has no separate privileged init step', undefined, { withConfig: true }),
  flag('hostname-override', P.string, 'honoured', "this node's name (default: the hostname, lowercased)", undefined, { withConfig: true }),
  flag('master', P.string, 'honoured', 'apiserver URL, overriding the kubeconfig (default: none)', undefined, { withConfig: true }),
  flag('kubeconfig', P.string, 'honoured', 'kubeconfig for the API (clientConnection.kubeconfig; default: in-cluster)', (c, v) => void (c.clientConnection.kubeconfig = v), { field: 'clientConnection.kubeconfig' }),
  flag('proxy-mode', P.string, 'honoured', 'iptables, ipvs or nftables (mode; default: iptables)', (c, v) => void (c.mode = v), { field: 'mode' }),
  flag('bind-address', P.ip, 'honoured', "this node's IP when the Node object has none (bindAddress; default: 0.0.0.0 = none)", (c, v) => void (v !== '' && (c.bindAddress = v)), { field: 'bindAddress' }),
  flag('bind-address-hard-fail', P.bool, 'honoured', 'exit when the metrics or healthz port cannot be bound (default: false)', (c, v) => void (c.bindAddressHardFail = v), { field: 'bindAddressHardFail' }),
  flag('healthz-bind-address', P.ipport, 'honoured', 'health server ip:port, "" switches it off (default: 0.0.0.0:10256)', (c, v) => void (c.healthzBindAddress = v), { field: 'healthzBindAddress' }),
  flag('metrics-bind-address', P.ipport, 'honoured', 'metrics server ip:port, "" switches it off (default: 127.0.0.1:10249)', (c, v) => void (c.metricsBindAddress = v), { field: 'metricsBindAddress' }),
  flag('healthz-port', P.int32, 'honoured', 'deprecated: port of the health server, 0 switches it off (default: 10256)', undefined, { field: 'healthzBindAddress' }),
  flag('metrics-port', P.int32, 'honoured', 'deprecated: port of the metrics server, 0 switches it off (default: 10249)', undefined, { field: 'metricsBindAddress' }),
  flag('cluster-cidr', P.string, 'honoured', 'pod CIDRs, comma separated, one per family (clusterCIDR; default: none)', (c, v) => void (c.detectLocal.clusterCIDRs = v.split(',')), { field: 'detectLocal.clusterCIDRs', late: always }),
  flag('detect-local-mode', P.string, 'honoured', 'ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix (default: ClusterCIDR)', (c, v) => void (c.detectLocalMode = v), { field: 'detectLocalMode' }),
  flag('pod-bridge-interface', P.string, 'honoured', 'bridge of local pods, for --detect-local-mode BridgeInterface', (c, v) => void (c.detectLocal.bridgeInterface = v), { field: 'detectLocal.bridgeInterface' }),
  flag('pod-interface-name-prefix', P.string, 'honoured', 'interface prefix of local pods, for InterfaceNamePrefix', (c, v) => void (c.detectLocal.interfaceNamePrefix = v), { field: 'detectLocal.interfaceNamePrefix' }),
  flag('masquerade-all', P.bool, 'honoured', 'masquerade all traffic sent to a ClusterIP (default: false)', (c, v) => void (c.linux.masqueradeAll = v), { field: 'linux.masqueradeAll' }),
  flag('nodeport-addresses', P.strings, 'honoured', 'CIDRs of node addresses NodePorts answer on, or "primary" (default: all local addresses)', (c, v) => void (c.nodePortAddresses = v), { field: 'nodePortAddresses' }),
  flag('iptables-masquerade-bit', P.int32, 'honoured', 'fwmark bit for masquerade, 0-31 (default: 14)', (c, v) => void (c.iptables.masqueradeBit = v), { field: 'iptables.masqueradeBit' }),
  flag('iptables-localhost-nodeports', P.bool, 'honoured', 'iptables mode: NodePorts answer on 127.0.0.1 (default: true)', (c, v) => void (c.iptables.localhostNodePorts = v), { field: 'iptables.localhostNodePorts' }),
  flag('iptables-sync-period', P.duration, 'honoured', 'iptables mode: longest time between syncs (default: 30s)', (c, v) => void (c.syncPeriod = v), { field: 'syncPeriod', late: notIPVS }),
  flag('iptables-min-sync-period', P.duration, 'honoured', 'iptables mode: shortest time between syncs (default: 1s)', (c, v) => void (c.minSyncPeriod = v), { field: 'minSyncPeriod', late: notIPVS }),
  flag('ipvs-sync-period', P.duration, 'honoured', 'ipvs mode: longest time between syncs (default: 30s)', (c, v) => void (c.syncPeriod = v), { field: 'syncPeriod', late: isIPVS }),
  flag('ipvs-min-sync-period', P.duration, 'honoured', 'ipvs mode: shortest time between syncs (default: 1s)', (c, v) => void (c.minSyncPeriod = v), { field: 'minSyncPeriod', late: isIPVS }),
  flag('ipvs-scheduler', P.string, 'honoured', 'ipvs mode: IPVS scheduler (default: rr)', (c, v) => void (c.ipvs.scheduler = v), { field: 'ipvs.scheduler' }),
  flag('ipvs-exclude-cidrs', P.strings, 'honoured', 'ipvs mode: virtual servers in these CIDRs are not kpx\'s to touch (default: none)', (c, v) => void (c.ipvs.excludeCIDRs = v), { field: 'ipvs.excludeCIDRs' }),
  flag('ipvs-strict-arp', P.bool, 'honoured', 'ipvs mode: arp_ignore=1, arp_announce=2 (default: false)', (c, v) => void (c.ipvs.strictARP = v), { field: 'ipvs.strictARP' }),
  flag('ipvs-tcp-timeout', P.duration, 'honoured', 'ipvs mode: IPVS TCP session timeout, 0 = leave (default: 0)', (c, v) => void (c.ipvs.tcpTimeout = v), { field: 'ipvs.tcpTimeout' }),
  flag('ipvs-tcpfin-timeout', P.duration, 'honoured', 'ipvs mode: IPVS TCP FIN_WAIT timeout, 0 = leave (default: 0)', (c, v) => void (c.ipvs.tcpFinTimeout = v), { field: 'ipvs.tcpFinTimeout' }),
  flag('ipvs-udp-timeout', P.duration, 'honoured', 'ipvs mode: IPVS UDP timeout, 0 = leave (default: 0)', (c, v) => void (c.ipvs.udpTimeout = v), { field: 'ipvs.udpTimeout' }),
  flag('conntrack-tcp-be-liberal', P.bool, 'honoured', 'set nf_conntrack_tcp_be_liberal and skip the INVALID drop rule (default: false)', (c, v) => void (c.linux.conntrack.tcpBeLiberal = v), { field: 'linux.conntrack.tcpBeLiberal' }),
  flag('v', P.level, 'honoured', 'log verbosity (logging.verbosity): 4 or more logs at debug level (default: 0)', (c, v) => void (c.logging.verbosity = v), { field: 'logging.verbosity', withConfig: true, short: 'v' }),
  flag('logging-format', P.string, 'honoured', 'text or json; kpx always writes JSON lines (default: text)', (c, v) => void (c.logging.format = v), { field: 'logging.format', withConfig: true }),
  // accepted, no effect in kpx (a warning names each one set to a non-default value)
  flag('conntrack-max-per-core', P.int32, 'no-effect', `${CT} (default: 32768)`, (c, v) => void (c.linux.conntrack.maxPerCore = v), { field: 'linux.conntrack.maxPerCore' }),
  flag('conntrack-min', P.int32, 'no-effect', `${CT} (default: 131072)`, (c, v) => void (c.linux.conntrack.min = v), { field: 'linux.conntrack.min' }),
  flag('conntrack-tcp-timeout-established', P.duration, 'no-effect', `${CT} (default: 24h0m0s)`, (c, v) => void (c.linux.conntrack.tcpEstablishedTimeout = v), { field: 'linux.conntrack.tcpEstablishedTimeout' }),
  flag('conntrack-tcp-timeout-close-wait', P.duration, 'no-effect', `${CT} (default: 1h0m0s)`, (c, v) => void (c.linux.conntrack.tcpCloseWaitTimeout = v), { field: 'linux.conntrack.tcpCloseWaitTimeout' }),
  flag('conntrack-udp-timeout', P.duration, 'no-effect', `${CT} (default: 0s)`, (c, v) => void (c.linux.conntrack.udpTimeout = v), { field: 'linux.conntrack.udpTimeout' }),
  flag('conntrack-udp-timeout-stream', P.duration, 'no-effect', `${CT} (default: 0s)`, (c, v) => void (c.linux.conntrack.udpStreamTimeout = v), { field: 'linux.conntrack.udpStreamTimeout' }),
  flag('config-sync-period', P.duration, 'no-effect', 'kpx relists every --api-relist-period instead (default: 15m0s)', (c, v) => void (c.configSyncPeriod = v), { field: 'configSyncPeriod' }),
  flag('kube-api-burst', P.int32, 'no-effect', 'kpx has no client-side rate limit (default: 10)', (c, v) => void (c.clientConnection.burst = v), { field: 'clientConnection.burst' }),
  flag('kube-api-qps', P.float32, 'no-effect', 'kpx has no client-side rate limit (default: 5)', (c, v) => void (c.clientConnection.qps = v), { field: 'clientConnection.qps' }),
  flag('kube-api-content-type', P.string, 'no-effect', 'kpx talks JSON to the apiserver (default: application/vnd.kubernetes.protobuf)', (c, v) => void (c.clientConnection.contentType = v), { field: 'clientConnection.contentType' }),
  flag('oom-score-adj', P.int32, 'no-effect', 'kpx leaves its OOM score to the kubelet (default: -999)', (c, v) => void (c.linux.oomScoreAdj = v), { field: 'linux.oomScoreAdj' }),
  flag('profiling', P.bool, 'no-effect', 'kpx serves no /debug/pprof (default: false)', (c, v) => void (c.enableProfiling = v), { field: 'enableProfiling' }),
  flag('show-hidden-metrics-for-version', P.string, 'no-effect', 'kpx has no hidden metrics', (c, v) => void (c.showHiddenMetricsForVersion = v), { field: 'showHiddenMetricsForVersion' }),
  flag('feature-gates', P.gates, 'no-effect', 'kpx has no feature gates', (c, v) => void Object.assign(c.featureGates, v), { field: 'featureGates' }),
  flag('vmodule', P.vmodule, 'no-effect', 'kpx has no per-file verbosity', (c, v) => void (c.logging.vmodule = [...v, ...c.logging.vmodule]), { field: 'logging.vmodule', withConfig: true }),
  flag('log-flush-frequency', P.duration, 'no-effect', 'kpx writes each log line at once (default: 5s)', (c, v) => void (c.logging.flushFrequency = { ns: v, asString: true }), { field: 'logging.flushFrequency', withConfig: true }),
  flag('log-text-split-stream', P.bool, 'no-effect', 'kpx logs to stderr only', (c, v) => void (c.logging.options.text.splitStream = v), { field: 'logging.options.text.splitStream', withConfig: true }),
  flag('log-text-info-buffer-size', P.quantity, 'no-effect', 'kpx does not buffer its log', (c, v) => void (c.logging.options.text.infoBufferSize = v), { field: 'logging.options.text.infoBufferSize', withConfig: true }),
  flag('log-json-split-stream', P.bool, 'no-effect', 'kpx logs to stderr only', (c, v) => void (c.logging.options.json.splitStream = v), { field: 'logging.options.json.splitStream', withConfig: true }),
  flag('log-json-info-buffer-size', P.quantity, 'no-effect', 'kpx does not buffer its log', (c, v) => void (c.logging.options.json.infoBufferSize = v), { field: 'logging.options.json.infoBufferSize', withConfig: true }),
  flag('boot-id-file', P.string, 'no-effect', 'kpx does not read the boot id', undefined, { withConfig: true }),
  flag('machine-id-file', P.string, 'no-effect', 'kpx does not read the machine id', undefined, { withConfig: true }),
  flag('proxy-port-range', P.string, 'no-effect', 'unused (kube-proxy v1.29-v1.30 ignored it too; removed in v1.31)', undefined, { withConfig: true }),
] as const;

/** kpx's own flags (no kube-proxy equivalent). */
export const KPX_FLAGS = [
  flag('manifests', P.string, 'honoured', 'read Services, EndpointSlices and Nodes from YAML/JSON files in this directory (instead of the API)'),
  flag('once', P.bool, 'honoured', 'wait for the initial state, sync once, exit 0 on success and 1 on failure (default: false)'),
  flag('dry-run', P.bool, 'honoured', 'print what would be applied to stdout and change nothing (default: false)'),
  flag('api-watch-idle-timeout', P.duration, 'honoured', 'restart a watch that has been silent this long (default: 150s)'),
  flag('api-relist-period', P.duration, 'honoured', 'relist everything this often as a safety net; 0 = never (default: 30m)'),
  flag('ipvs-drain-timeout', P.duration, 'honoured', 'ipvs mode: a removed TCP endpoint keeps weight 0 until its connections end, at most this long (default: 15m)'),
  flag('iptables-backend', P.string, 'honoured', 'iptables backend: auto, nft or legacy (default: auto)'),
  flag('log-level', P.string, 'honoured', 'log level: debug, info, warn, error or silent (default: info; --v=4 or more: debug)'),
] as const;

type Camel<S extends string> = S extends `${infer H}-${infer T}` ? `${H}${Capitalize<Camel<T>>}` : S;
export type FlagName = (typeof KUBE_PROXY_FLAGS)[number]['name'] | (typeof KPX_FLAGS)[number]['name'];

/** Flags as commander parses them (camelCase keys); undefined = not given. */
export type CliFlags = { [K in Camel<FlagName>]?: RawValue };

/** commander's key for a flag name: "ipvs-tcpfin-timeout" -> "ipvsTcpfinTimeout". */
export function flagKey(name: string): string {
  return name.replace(/-([a-z])/g, (_, ch: string) => ch.toUpperCase());
}

export function given(flags: CliFlags, name: string): RawValue | undefined {
  return (flags as Record<string, RawValue | undefined>)[flagKey(name)];
}

export const FLAG_BY_NAME: ReadonlyMap<string, FlagSpec> = new Map([...KUBE_PROXY_FLAGS, ...KPX_FLAGS].map((f) => [f.name, f]));

export interface AppliedFlags {
  /** internal field -> the flag that set it */
  setBy: Map<string, string>;
  /** kube-proxy flags given, in table order */
  names: string[];
}

/** Puts the given kube-proxy flags on `c` (mutated): first the plain ones, then those that depend on the mode. */
export function applyFlags(c: Internal, flags: CliFlags): AppliedFlags {
  const setBy = new Map<string, string>();
  const names: string[] = [];
  const pass = (late: boolean) => {
    for (const spec of KUBE_PROXY_FLAGS as readonly FlagSpec[]) {
      const raw = given(flags, spec.name);
      if (raw === undefined || !spec.apply || !!spec.late !== late) continue;
      if (spec.late && !spec.late(c.mode)) continue;
      spec.apply(c, raw);
      if (spec.field) setBy.set(spec.field, spec.name);
    }
  };
  for (const spec of KUBE_PROXY_FLAGS as readonly FlagSpec[]) if (given(flags, spec.name) !== undefined) names.push(spec.name);
  pass(false);
  pass(true);
  return { setBy, names };
}
