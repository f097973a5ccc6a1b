// Differential testing against upstream kube-proxy: two twin node namespaces with the same
// topology, one running kube-proxy and one kpx (both in the same mode, iptables,
// nftables or, on a kernel with IPVS, ipvs; both started through startKubeProxy with the same KubeProxyConfiguration),
// watching the same apiserver. The same probes run against both and their outcomes are
// compared.
//
// Why both twins are the *same* Node (node-a, the same InternalIP, the same pod CIDR):
// the twins are copies of one node in two isolated network namespaces, so every address in
// them is the same, and both proxies read exactly the same objects: the same Node, the
// same Services, the same EndpointSlices, whose nodeName says for both which endpoints are
// local (node-a: the pods on the twin's bridge) and which remote (node-b: the pods behind
// the external router). Two Node names would need two sets of EndpointSlices (one endpoint
// has one nodeName), and then the proxies would no longer get the same input; the Local
// traffic policies, where the nodeName matters most, would be compared on different data.
// Neither proxy writes to the Node, so sharing it changes nothing for either.
import { execa } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Apiserver } from './apiserver.js';
import { metricValue, startKubeProxy, type KubeProxyHandle, type KubeProxyMode, type StartOptions } from './kube-proxy.js';
import { kpxArgv, NET, REPO, Topology, type PodSpec } from './netns.js';

const PROBE_MATRIX = join(REPO, 'test/substrate/probe-matrix.mjs');

export const TWIN_NODE = 'node-a';
export const REMOTE_NODE = 'node-b';
export type TwinName = 'kube-proxy' | 'kpx';
/** The modes both run in (ipvs only on a kernel with IPVS: in the qemu VM, hack/ipvs-vm). */
export type TwinMode = KubeProxyMode;

export interface Twin {
  readonly name: TwinName;
  readonly t: Topology;
  proxy: KubeProxyHandle | null;
}

/**
 * A script that starts kpx the way startKubeProxy starts kube-proxy (`BIN --config FILE`):
 * kpx reads kube-proxy's configuration file, so both get the very same file.
 */
export async function kpxLauncher(dir: string): Promise<string> {
  const path = join(dir, 'kpx-as-kube-proxy');
  await writeFile(path, `#!/bin/sh\nexec ${[process.execPath, ...kpxArgv()].map((a) => JSON.stringify(a)).join(' ')} "$@"\n`, { mode: 0o755 });
  return path;
}

export interface TwinsOptions {
  kubeProxyBin: string;
  /** both proxies run in it */
  mode: TwinMode;
  apiserver: Apiserver;
  pods: PodSpec[];
  /** labels of the twins' Node (it is created with them) */
  nodeLabels?: Record<string, string>;
  /**
   * dual-stack twins: IPv6 in the topology (pods with an ip6 get it), the Node with an
   * IPv6 InternalIP and pod CIDR, clusterCIDR for both families
   */
  ipv6?: boolean;
  /** the bound on each proxy's first sync is multiplied by it (software emulation: slower) */
  timeScale?: number;
}

/** The IPv6 service range of the test apiserver (its default --service-cluster-ip-range). */
export const APISERVER_SERVICE_CIDR6 = '2001:2:0:ffff::/112';

/** What a restart may change in both proxies' configuration (the same for both twins). */
export type ProxyVariant = Partial<Pick<StartOptions, 'overrides' | 'syncPeriod' | 'minSyncPeriod' | 'nodePortAddresses' | 'commandGate'>>;

export class Twins {
  readonly twins: Twin[] = [];
  private dir = '';

  private constructor(private readonly opts: TwinsOptions) {}

  /** Builds both topologies and starts both proxies (each waits for its first sync). */
  static async start(opts: TwinsOptions): Promise<Twins> {
    const tw = new Twins(opts);
    try {
      tw.dir = await mkdtemp(join(tmpdir(), 'kpx-differential-'));
      for (const name of ['kube-proxy', 'kpx'] as const) {
        const t = await Topology.create({ pods: opts.pods, ipv6: opts.ipv6 });
        tw.twins.push({ name, t, proxy: null });
        // the upstream router sends the apiserver's IPv6 service range to the node too
        if (opts.ipv6) await execa('ip', ['-n', t.ext, '-6', 'route', 'add', APISERVER_SERVICE_CIDR6, 'via', NET.nodeIP6]);
      }
      // one after the other: both write the same Node object first
      for (const twin of tw.twins) await tw.startProxy(twin.name);
    } catch (err) {
      await tw.destroy();
      throw err;
    }
    return tw;
  }

  twin(name: TwinName): Twin {
    return this.twins.find((t) => t.name === name)!;
  }

  async binFor(name: TwinName): Promise<string> {
    return name === 'kpx' ? kpxLauncher(this.dir) : this.opts.kubeProxyBin;
  }

  /**
   * Stops both proxies and starts them again with the same `variant` of the configuration
   * (no argument: the default one), kube-proxy first, as start() does.
   */
  async restart(variant: ProxyVariant = {}): Promise<void> {
    await Promise.all(this.twins.map((twin) => twin.proxy?.stop() ?? Promise.resolve()));
    for (const twin of this.twins) twin.proxy = null;
    for (const twin of this.twins) await this.startProxy(twin.name, twin.name, variant);
  }

  /** Starts a proxy (`which`, by default the twin's own) in a twin's node namespace. */
  async startProxy(name: TwinName, which: TwinName = name, variant: ProxyVariant = {}): Promise<KubeProxyHandle> {
    const twin = this.twin(name);
    const proxy = await startKubeProxy({
      bin: await this.binFor(which),
      netns: twin.t.node,
      apiserver: this.opts.apiserver,
      mode: this.opts.mode,
      node: {
        name: TWIN_NODE,
        internalIP: this.opts.ipv6 ? [NET.nodeIP, NET.nodeIP6] : NET.nodeIP,
        podCIDR: this.opts.ipv6 ? [NET.podCIDR, NET.podCIDR6] : NET.podCIDR,
        labels: this.opts.nodeLabels,
      },
      clusterCIDR: this.opts.ipv6 ? `${NET.podCIDR},${NET.podCIDR6}` : NET.podCIDR,
      minSyncPeriod: '100ms',
      syncPeriod: '30s',
      timeoutMs: 60_000 * (this.opts.timeScale ?? 1),
      ...variant,
    });
    twin.proxy = proxy;
    return proxy;
  }

  async destroy(): Promise<void> {
    for (const tw of this.twins) {
      await tw.proxy?.stop().catch(() => {});
      await tw.t.destroy().catch(() => {});
    }
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

export interface Probe {
  /** unique within a case: "<from> -> <address>:<port>/<proto>" unless given */
  id?: string;
  /** "client" (a pod), "node", "ext" or any pod name */
  from: string;
  proto: 'tcp' | 'udp';
  host: string;
  port: number;
  /** source address to bind (a second external client address) */
  bind?: string;
  count?: number;
}

export interface Outcome {
  outcome: string;
  /** endpoint names that answered, joined; "<n endpoint(s)>" when only the count is compared */
  endpoints: string;
  /** client addresses the endpoints saw, joined */
  clients: string;
}

export const probeId = (p: Probe): string => p.id ?? `${p.from}${p.bind ? `(${p.bind})` : ''} -> ${p.host}:${p.port}/${p.proto}`;

/** Runs the probes in one topology: one probe-matrix process per source namespace, all at once. */
export async function runProbes(t: Topology, probes: Probe[], opts: { countOnly?: boolean } = {}): Promise<Map<string, Outcome>> {
  const bySource = new Map<string, Probe[]>();
  for (const p of probes) bySource.set(p.from, [...(bySource.get(p.from) ?? []), p]);
  const out = new Map<string, Outcome>();
  await Promise.all(
    [...bySource].map(async ([from, ps]) => {
      const spec = ps.map((p) => ({ id: probeId(p), proto: p.proto, host: p.host, port: p.port, bind: p.bind, count: p.count ?? 40 }));
      const r = await t.exec(from, process.execPath, [PROBE_MATRIX, JSON.stringify(spec)]);
      const res = JSON.parse(r.stdout) as Record<string, { outcome: string; endpoints: string[]; clients: string[] }>;
      for (const [id, v] of Object.entries(res)) {
        const endpoints = opts.countOnly && v.endpoints.length ? `<${v.endpoints.length} endpoint${v.endpoints.length === 1 ? '' : 's'}>` : v.endpoints.join(',');
        out.set(id, { outcome: v.outcome, endpoints, clients: v.clients.join(',') });
      }
    }),
  );
  return out;
}

export const showOutcome = (o: Outcome | undefined): string => (o ? `${o.outcome} [${o.endpoints || '-'}] from [${o.clients || '-'}]` : '(not probed)');

export interface Deliberate {
  case: string;
  probe: string;
  kubeProxy: string;
  kpx: string;
  reason: string;
}

export interface Comparison {
  case: string;
  probe: string;
  kubeProxy: Outcome;
  kpx: Outcome;
  verdict: 'equal' | 'deliberate' | 'DIFFERENT';
}

/** Compares both twins' outcomes probe by probe; a difference is deliberate only if DELIBERATE lists it exactly. */
export function compare(caseName: string, kp: Map<string, Outcome>, kpx: Map<string, Outcome>, deliberate: Deliberate[]): Comparison[] {
  const rows: Comparison[] = [];
  for (const [probe, a] of kp) {
    const b = kpx.get(probe)!;
    const same = showOutcome(a) === showOutcome(b);
    const known = deliberate.some((d) => d.case === caseName && d.probe === probe && d.kubeProxy === showOutcome(a) && d.kpx === showOutcome(b));
    rows.push({ case: caseName, probe, kubeProxy: a, kpx: b, verdict: same ? 'equal' : known ? 'deliberate' : 'DIFFERENT' });
  }
  return rows;
}

export const sameOutcomes = (a: Map<string, Outcome>, b: Map<string, Outcome>): boolean =>
  a.size === b.size && [...a].every(([k, v]) => showOutcome(v) === showOutcome(b.get(k)));

/** The proxy's change counters (Service and EndpointSlice events it has taken in). */
export async function changeCount(proxy: KubeProxyHandle): Promise<number> {
  const m = await proxy.metrics();
  return (metricValue(m, 'kubeproxy_sync_proxy_rules_service_changes_total') ?? 0) + (metricValue(m, 'kubeproxy_sync_proxy_rules_endpoint_changes_total') ?? 0);
}

/**
 * Waits (bounded) until the proxy has counted a change since `before` and has taken every
 * counted change into a sync (nothing pending). That sync may still be running: callers
 * poll probes (bounded) after this.
 */
export async function waitForChangeTaken(proxy: KubeProxyHandle, before: number, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const m = await proxy.metrics();
    const counted = (metricValue(m, 'kubeproxy_sync_proxy_rules_service_changes_total') ?? 0) + (metricValue(m, 'kubeproxy_sync_proxy_rules_endpoint_changes_total') ?? 0);
    const pending = (metricValue(m, 'kubeproxy_sync_proxy_rules_service_changes_pending') ?? 0) + (metricValue(m, 'kubeproxy_sync_proxy_rules_endpoint_changes_pending') ?? 0);
    if (counted > before && pending === 0) return;
    if (Date.now() > end) throw new Error(`the proxy in ${proxy.netns} did not take in a change within ${timeoutMs} ms (counted ${counted}, before ${before}, pending ${pending}); its log ends:\n${proxy.logTail()}`);
    await sleep(100);
  }
}

/** Names of the metric families in Prometheus text (from # TYPE lines) with a prefix. */
export function metricFamilies(text: string, prefix: string): Set<string> {
  return new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!).filter((n) => n.startsWith(prefix)));
}

/** The shape of a JSON value: keys and value types, recursively; values themselves dropped. */
export function jsonShape(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(jsonShape);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b)).map(([k, x]) => [k, jsonShape(x)]));
  return v === null ? 'null' : typeof v;
}

/** A plain text table. */
export function table(header: string[], rows: Array<Array<string | number>>): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const w = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(w[i]!)).join(' | ');
  return [line(header), w.map((n) => '-'.repeat(n)).join('-|-'), ...cells.slice(1).map(line)].join('\n');
}

/** Runs a command in a twin's node namespace, e.g. to read its iptables rules. */
export async function nodeExec(t: Topology, cmd: string, args: string[]): Promise<string> {
  return String((await execa('ip', ['netns', 'exec', t.node, cmd, ...args], { reject: false })).stdout);
}
