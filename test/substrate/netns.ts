// Real-kernel test topology in network namespaces (never the machine's root namespace):
//
//   [ext] 198.18.0.1 ──veth── 198.18.0.10 [node] kpxbr0 198.18.1.1/24 ──veth── [pod-*] 198.18.1.x
//     │ extbr0 198.18.2.1/24                  (kpx runs here)
//     └──veth── [remote pods] 198.18.2.x       (endpoints "on another node")
//
// IPv6 mirrors it in 2001:2::/48. Every namespace is named kpxt-<pid>-<n>-<role> and is
// deleted in destroy() (tests call it in afterAll/finally); global setup removes leftovers
// of dead test processes.
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execRunner, type CommandRunner } from '../../src/apply/exec.js';
import { launcherArgv } from './launcher.js';

export const REPO = resolve(import.meta.dirname, '../..');
export const KPX_BIN = join(REPO, 'bin/kpx.js');

let kpxArgvMemo: readonly string[] | null = null;
/**
 * node's argv for a long-running kpx as its launcher and the image start it: the
 * launcher's flags, then the launcher. Read on first use, not on import: hack/netns-cluster
 * imports this file compiled elsewhere (.cluster-dist), where REPO is not the checkout.
 */
export function kpxArgv(): readonly string[] {
  return (kpxArgvMemo ??= launcherArgv(KPX_BIN));
}
const ECHO = join(REPO, 'test/substrate/echo-server.mjs');
const PROBE = join(REPO, 'test/substrate/probe.mjs');
/** sysctl settings that turn off the per-destination ICMP error rate limit (a namespace's own) */
export const NO_ICMP_RATELIMIT = ['net.ipv4.icmp_ratelimit=0', 'net.ipv6.icmp.ratelimit=0'];

export const NET = {
  extIP: '198.18.0.1',
  /** a second external client address (outside LB source ranges in tests) */
  extIP2: '198.18.0.2',
  nodeIP: '198.18.0.10',
  bridgeIP: '198.18.1.1',
  podCIDR: '198.18.1.0/24',
  remoteBridgeIP: '198.18.2.1',
  remoteCIDR: '198.18.2.0/24',
  serviceCIDR: '198.19.0.0/16',
  serviceCIDR6: '2001:2:0:ff::/64',
  extIP6: '2001:2::1',
  nodeIP6: '2001:2::10',
  bridgeIP6: '2001:2:1::1',
  podCIDR6: '2001:2:1::/64',
  remoteBridgeIP6: '2001:2:2::1',
  remoteCIDR6: '2001:2:2::/64',
} as const;

export interface PodSpec {
  name: string;
  /** IPv4 address in 198.18.1.0/24 (local) or 198.18.2.0/24 (remote) */
  ip: string;
  ip6?: string;
  /** remote pods sit behind the ext router, standing in for pods on other nodes */
  remote?: boolean;
  /** ports for the echo server (TCP and UDP; "PORT/hold": long-lived TCP connections); none = no server */
  ports?: Array<number | `${number}/hold`>;
  /** more IPv4 addresses on the pod's eth0 (e.g. many clients in one namespace) */
  extraIPs?: string[];
}

/** Local pods by name: the `servers` answer on `ports` (echo servers), the `clients` only connect. */
export function localPods(servers: Record<string, string>, clients: Record<string, string>, ports: PodSpec['ports'] = [8080]): PodSpec[] {
  return [...Object.entries(servers).map(([name, ip]) => ({ name, ip, ports })), ...Object.entries(clients).map(([name, ip]) => ({ name, ip }))];
}

export interface ProbeResult {
  ok: number;
  names: Record<string, number>;
  clients: Record<string, number>;
  errors: Record<string, number>;
  sequence?: string[];
  /** with `pairs`: answers by "<endpoint name> <client address it saw>" */
  pairs?: Record<string, number>;
}

export interface Env {
  ok: boolean;
  reason: string;
}

let envCache: Env | null = null;
/**
 * The modes the mode-independent dataplane suites run in (each in its own topology). IPVS
 * needs a kernel with ip_vs: its suites run in the qemu VM (test/ipvs).
 */
export const DATAPLANE_MODES = ['iptables', 'nftables'] as const;
export type DataplaneMode = (typeof DATAPLANE_MODES)[number];

export async function dataplaneEnv(): Promise<Env> {
  if (envCache) return envCache;
  if (process.platform !== 'linux') return (envCache = { ok: false, reason: 'not Linux' });
  if (process.getuid?.() !== 0) return (envCache = { ok: false, reason: 'needs root (network namespaces, iptables)' });
  for (const bin of ['ip', 'iptables-nft-restore', 'iptables-legacy-restore', 'ip6tables-nft-restore', 'conntrack', 'nft']) {
    const r = await execa('sh', ['-c', `command -v ${bin}`], { reject: false });
    if (r.exitCode !== 0) return (envCache = { ok: false, reason: `${bin} not installed (run hack/install-deps.sh)` });
  }
  const probe = `kpxt-${process.pid}-probe`;
  const r = await execa('ip', ['netns', 'add', probe], { reject: false });
  if (r.exitCode !== 0) return (envCache = { ok: false, reason: `cannot create network namespaces: ${r.stderr}` });
  await execa('ip', ['netns', 'del', probe], { reject: false });
  return (envCache = { ok: true, reason: '' });
}

/** Runs every command inside a network namespace (kpx's code in this process, its commands in the node's). */
export function netnsRunner(ns: string): CommandRunner {
  return { run: (command, args, opts) => execRunner.run('ip', ['netns', 'exec', ns, command, ...args], opts) };
}

let counter = 0;

export class Topology {
  readonly prefix: string;
  readonly node: string;
  readonly ext: string;
  readonly pods = new Map<string, PodSpec & { ns: string }>();
  private readonly namespaces: string[] = [];
  private readonly procs: ResultPromise[] = [];
  private readonly tmpDirs: string[] = [];

  private constructor(readonly ipv6: boolean) {
    this.prefix = `kpxt-${process.pid}-${counter++}`;
    this.node = `${this.prefix}-node`;
    this.ext = `${this.prefix}-ext`;
  }

  static async create(opts: { pods: PodSpec[]; ipv6?: boolean }): Promise<Topology> {
    const t = new Topology(opts.ipv6 ?? false);
    try {
      await t.build(opts.pods);
    } catch (err) {
      await t.destroy();
      throw err;
    }
    return t;
  }

  private async ip(...args: string[]): Promise<void> {
    await execa('ip', args);
  }

  private async sysctl(ns: string, kv: string): Promise<void> {
    await execa('ip', ['netns', 'exec', ns, 'sysctl', '-qw', kv]);
  }

  private async addNs(name: string): Promise<void> {
    await this.ip('netns', 'add', name);
    this.namespaces.push(name);
    await this.ip('-n', name, 'link', 'set', 'lo', 'up');
    // The kernel rate-limits ICMP errors per destination (burst 6, then 1/s): probes that
    // hit a REJECT many times in a second would see timeouts instead of "refused" on
    // whichever node answered most. Tests compare outcomes, so every ICMP error is sent.
    await execa('ip', ['netns', 'exec', name, 'sysctl', '-qw', ...NO_ICMP_RATELIMIT]);
  }

  private async build(pods: PodSpec[]): Promise<void> {
    const v6 = this.ipv6;
    await this.addNs(this.node);
    await this.addNs(this.ext);
    // uplink node <-> ext
    await this.ip('-n', this.node, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.ext);
    await this.ip('-n', this.node, 'addr', 'add', `${NET.nodeIP}/24`, 'dev', 'eth0');
    await this.ip('-n', this.ext, 'addr', 'add', `${NET.extIP}/24`, 'dev', 'eth0');
    await this.ip('-n', this.ext, 'addr', 'add', `${NET.extIP2}/24`, 'dev', 'eth0');
    // pod bridge on the node, remote bridge on ext
    await this.ip('-n', this.node, 'link', 'add', 'kpxbr0', 'type', 'bridge');
    await this.ip('-n', this.node, 'addr', 'add', `${NET.bridgeIP}/24`, 'dev', 'kpxbr0');
    await this.ip('-n', this.ext, 'link', 'add', 'extbr0', 'type', 'bridge');
    await this.ip('-n', this.ext, 'addr', 'add', `${NET.remoteBridgeIP}/24`, 'dev', 'extbr0');
    if (v6) {
      await this.ip('-n', this.node, 'addr', 'add', `${NET.nodeIP6}/64`, 'dev', 'eth0', 'nodad');
      await this.ip('-n', this.ext, 'addr', 'add', `${NET.extIP6}/64`, 'dev', 'eth0', 'nodad');
      await this.ip('-n', this.node, 'addr', 'add', `${NET.bridgeIP6}/64`, 'dev', 'kpxbr0', 'nodad');
      await this.ip('-n', this.ext, 'addr', 'add', `${NET.remoteBridgeIP6}/64`, 'dev', 'extbr0', 'nodad');
    }
    for (const [ns, links] of [
      [this.node, ['eth0', 'kpxbr0']],
      [this.ext, ['eth0', 'extbr0']],
    ] as const) {
      for (const l of links) await this.ip('-n', ns, 'link', 'set', l, 'up');
    }
    await this.ip('-n', this.node, 'route', 'add', 'default', 'via', NET.extIP);
    await this.ip('-n', this.ext, 'route', 'add', NET.podCIDR, 'via', NET.nodeIP);
    // the upstream router sends service VIPs (LB IPs, external IPs) to the node, as an LB would
    await this.ip('-n', this.ext, 'route', 'add', NET.serviceCIDR, 'via', NET.nodeIP);
    if (v6) {
      await this.ip('-n', this.node, '-6', 'route', 'add', 'default', 'via', NET.extIP6);
      await this.ip('-n', this.ext, '-6', 'route', 'add', NET.podCIDR6, 'via', NET.nodeIP6);
      await this.ip('-n', this.ext, '-6', 'route', 'add', NET.serviceCIDR6, 'via', NET.nodeIP6);
    }
    await this.sysctl(this.node, 'net.ipv4.ip_forward=1');
    await this.sysctl(this.node, 'net.bridge.bridge-nf-call-iptables=1');
    await this.sysctl(this.node, 'net.bridge.bridge-nf-call-ip6tables=1');
    await this.sysctl(this.ext, 'net.ipv4.ip_forward=1');
    if (v6) {
      await this.sysctl(this.node, 'net.ipv6.conf.all.forwarding=1');
      await this.sysctl(this.ext, 'net.ipv6.conf.all.forwarding=1');
    }
    let i = 0;
    for (const p of pods) await this.addPod(p, i++);
  }

  private async addPod(p: PodSpec, index: number): Promise<void> {
    const ns = `${this.prefix}-p${index}`;
    await this.addNs(ns);
    const host = p.remote ? this.ext : this.node;
    const bridge = p.remote ? 'extbr0' : 'kpxbr0';
    const gw = p.remote ? NET.remoteBridgeIP : NET.bridgeIP;
    const gw6 = p.remote ? NET.remoteBridgeIP6 : NET.bridgeIP6;
    const hv = `vp${index}`;
    await this.ip('-n', host, 'link', 'add', hv, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await this.ip('-n', host, 'link', 'set', hv, 'master', bridge);
    await this.ip('-n', host, 'link', 'set', hv, 'up');
    // hairpin: a pod may reach itself through its Service (CNI bridge's hairpinMode)
    await execa('bridge', ['-n', host, 'link', 'set', 'dev', hv, 'hairpin', 'on']);
    await this.ip('-n', ns, 'addr', 'add', `${p.ip}/24`, 'dev', 'eth0');
    for (const extra of p.extraIPs ?? []) await this.ip('-n', ns, 'addr', 'add', `${extra}/24`, 'dev', 'eth0');
    if (this.ipv6 && p.ip6) await this.ip('-n', ns, 'addr', 'add', `${p.ip6}/64`, 'dev', 'eth0', 'nodad');
    await this.ip('-n', ns, 'link', 'set', 'eth0', 'up');
    await this.ip('-n', ns, 'route', 'add', 'default', 'via', gw);
    if (this.ipv6 && p.ip6) await this.ip('-n', ns, '-6', 'route', 'add', 'default', 'via', gw6);
    this.pods.set(p.name, { ...p, ns });
    if (p.ports?.length) await this.startEcho(p.name, p.ports);
  }

  /** Starts the echo server in a pod (or "node": on the node itself, named "node") and waits until it listens. */
  async startEcho(podName: string, ports: Array<number | `${number}/hold`>): Promise<void> {
    const proc = execa('ip', ['netns', 'exec', this.ns(podName), process.execPath, ECHO, podName, ...ports.map(String)], {
      reject: false,
      buffer: false,
    });
    this.procs.push(proc);
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`echo server in ${podName} did not start`)), 10_000);
      proc.stdout?.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) {
          clearTimeout(timer);
          res();
        }
      });
      proc.stderr?.on('data', (d: Buffer) => process.stderr.write(`[echo ${podName}] ${d}`));
      void proc.then((r) => {
        clearTimeout(timer);
        rej(new Error(`echo server in ${podName} exited: ${r.exitCode}`));
      });
    });
  }

  pod(name: string): PodSpec & { ns: string } {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod ${name}`);
    return p;
  }

  /** Namespace by role: "node", "ext" or a pod name. */
  ns(who: string): string {
    return who === 'node' ? this.node : who === 'ext' ? this.ext : this.pod(who).ns;
  }

  async exec(who: string, cmd: string, args: string[], opts: { input?: string; reject?: boolean } = {}) {
    return execa('ip', ['netns', 'exec', this.ns(who), cmd, ...args], {
      input: opts.input,
      reject: opts.reject ?? true,
    });
  }

  /** Connections (tcp) or datagrams (udp) from a namespace, summarised. */
  async probe(
    from: string,
    proto: 'tcp' | 'udp',
    host: string,
    port: number,
    opts: { count?: number; timeoutMs?: number; bind?: string; intervalMs?: number; samePort?: boolean; sequence?: boolean; pairs?: boolean } = {},
  ): Promise<ProbeResult> {
    const args = [PROBE, proto, host, String(port), '--count', String(opts.count ?? 1), '--timeout', String(opts.timeoutMs ?? 2000)];
    if (opts.bind) args.push('--bind', opts.bind);
    if (opts.intervalMs) args.push('--interval', String(opts.intervalMs));
    if (opts.samePort) args.push('--same-port');
    if (opts.sequence) args.push('--sequence');
    if (opts.pairs) args.push('--pairs');
    const r = await this.exec(from, process.execPath, args);
    return JSON.parse(r.stdout) as ProbeResult;
  }

  /** HTTP GET from a namespace: status, one header and body. */
  async httpGet(from: string, url: string, header = 'x-load-balancing-endpoint-weight'): Promise<{ status: number; header: string | null; body: string }> {
    const code = `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(3000)}).then(async r=>console.log(JSON.stringify({status:r.status,header:r.headers.get(${JSON.stringify(header)}),body:await r.text()}))).catch(e=>console.log(JSON.stringify({status:0,header:null,body:String(e.cause?.code??e.message)})))`;
    const r = await this.exec(from, process.execPath, ['-e', code]);
    return JSON.parse(r.stdout) as { status: number; header: string | null; body: string };
  }

  /** Writes manifests and runs `kpx run --once` with the given flags; throws on failure. */
  async sync(args: string[]): Promise<void> {
    const r = await this.kpx(['run', '--once', ...args], { reject: false });
    if (r.exitCode !== 0) throw new Error(`kpx exited ${r.exitCode}: ${r.stderr}`);
  }

  /** A fresh manifests directory for this topology. */
  async manifestsDir(): Promise<string> {
    const d = await mkdtemp(join(tmpdir(), `${this.prefix}-manifests-`));
    this.tmpDirs.push(d);
    return d;
  }

  async writeManifest(dir: string, file: string, text: string): Promise<void> {
    await writeFile(join(dir, file), text);
  }

  /** Runs the real kpx CLI inside the node namespace. */
  async kpx(args: string[], opts: { reject?: boolean } = {}) {
    return execa('ip', ['netns', 'exec', this.node, process.execPath, ...kpxArgv(), ...args], {
      reject: opts.reject ?? true,
      env: { KPX_LOG_LEVEL: process.env.KPX_TEST_LOG_LEVEL ?? 'warn' },
    });
  }

  /** Starts a long-running process in a namespace ("node", "ext" or a pod); killed by destroy(). */
  spawn(who: string, cmd: string, args: string[]): ResultPromise {
    const p = execa('ip', ['netns', 'exec', this.ns(who), cmd, ...args], { reject: false, buffer: false });
    this.procs.push(p);
    return p;
  }

  /** Starts a long-running kpx in the node namespace; killed by destroy(). */
  spawnKpx(args: string[]): ResultPromise {
    const p = execa('ip', ['netns', 'exec', this.node, process.execPath, ...kpxArgv(), ...args], {
      reject: false,
      buffer: true,
      env: { KPX_LOG_LEVEL: process.env.KPX_TEST_LOG_LEVEL ?? 'info' },
    });
    this.procs.push(p);
    return p;
  }

  async save(family: 'IPv4' | 'IPv6' = 'IPv4', backend: 'nft' | 'legacy' = 'nft'): Promise<string> {
    const bin = `${family === 'IPv4' ? 'iptables' : 'ip6tables'}-${backend}-save`;
    return (await this.exec('node', bin, [])).stdout;
  }

  async destroy(): Promise<void> {
    for (const p of this.procs) p.kill('SIGTERM');
    await Promise.allSettled(this.procs.map((p) => Promise.race([p, new Promise((r) => setTimeout(r, 3000))])));
    for (const p of this.procs) p.kill('SIGKILL');
    for (const ns of this.namespaces.reverse()) await execa('ip', ['netns', 'del', ns], { reject: false });
    for (const d of this.tmpDirs) await rm(d, { recursive: true, force: true });
  }
}

/** Deletes namespaces left by test processes that no longer exist. */
export async function removeStaleNamespaces(): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list'], { reject: false });
  const removed: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = /^kpxt-(\d+)-/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) {
      await execa('ip', ['netns', 'del', name], { reject: false });
      removed.push(name);
    }
  }
  return removed;
}
