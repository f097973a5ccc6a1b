// The proxies a scale run compares: one row each, saying how to start it in a node
// namespace (reading the API, not files), how to read its metrics, and how to count what
// it programmed. A new proxy or mode (kpx-nftables, say) is one more row.
import { execa, type ResultPromise } from 'execa';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import { kpxServiceAccountToken, type Apiserver } from '../../test/substrate/apiserver.js';
import { FaultProxy } from '../../test/substrate/fault-proxy.js';
import { startKubeProxy, type KubeProxyMode } from '../../test/substrate/kube-proxy.js';
import { kpxArgv, NET, REPO, type Topology } from '../../test/substrate/netns.js';
import { NODE_NAME } from './cluster.js';

export const METRICS_URL = 'http://127.0.0.1:10249/metrics';

export interface ProxyContext {
  api: Apiserver;
  topo: Topology;
  /** a fresh directory for this run's config, kubeconfig and log */
  dir: string;
  kubeProxyBin?: string;
  /** the same for every proxy: kube-proxy's syncPeriod / minSyncPeriod */
  syncPeriod: string;
  minSyncPeriod: string;
}

export interface RunningProxy {
  pid: number;
  /** epoch ms just before the proxy process was spawned */
  startedAt: number;
  logFile: string;
  metrics(): Promise<string>;
  /** resolves when the process ends */
  exited: Promise<unknown>;
  logTail(): string;
  stop(): Promise<void>;
}

export type Counts = Record<string, number>;

export interface ProxyDef {
  name: string;
  impl: 'kpx' | 'kube-proxy';
  mode: 'iptables' | 'ipvs' | 'nftables';
  /** what it needs from the machine: an IPVS kernel, the kube-proxy binary */
  needs: Array<'ipvs' | 'kube-proxy-binary'>;
  start(ctx: ProxyContext): Promise<RunningProxy>;
  /** rules, virtual servers, set elements in the node namespace */
  counts(topo: Topology): Promise<Counts>;
}

/** GET inside a namespace (the metrics listen on its loopback). */
export async function nsGet(netns: string, url: string, timeoutS = 10): Promise<{ status: number; body: string }> {
  const r = await execa('ip', ['netns', 'exec', netns, 'curl', '-sS', '--max-time', String(timeoutS), '-o', '-', '-w', '\n%{http_code}', url], { reject: false });
  const out = String(r.stdout);
  const i = out.lastIndexOf('\n');
  return { status: r.exitCode === 0 ? Number(out.slice(i + 1)) : 0, body: i < 0 ? '' : out.slice(0, i) };
}

// ---- counting what a proxy programmed ----

async function run(topo: Topology, cmd: string, args: string[]): Promise<string> {
  const r = await topo.exec('node', cmd, args, { reject: false });
  return r.exitCode === 0 ? String(r.stdout) : '';
}

/** iptables rules (IPv4, nat + filter + mangle + raw, both backends) in the node namespace. */
export function countIptablesRules(save: string): number {
  return save.split('\n').filter((l) => l.startsWith('-A ')).length;
}

async function iptablesCounts(topo: Topology): Promise<Counts> {
  const nft = await run(topo, 'iptables-nft-save', []);
  const legacy = await run(topo, 'iptables-legacy-save', []);
  return { iptablesRules: countIptablesRules(nft) + countIptablesRules(legacy) };
}

/** `ipvsadm -Sn`: virtual servers (-A) and real servers (-a). */
export function countIpvs(save: string): { ipvsVirtualServers: number; ipvsRealServers: number } {
  const lines = save.split('\n');
  return { ipvsVirtualServers: lines.filter((l) => l.startsWith('-A ')).length, ipvsRealServers: lines.filter((l) => l.startsWith('-a ')).length };
}

/** `ipset list -t`: the sum of "Number of entries". */
export function countIpsetEntries(list: string): number {
  let n = 0;
  for (const m of list.matchAll(/^Number of entries:\s*(\d+)/gm)) n += Number(m[1]);
  return n;
}

async function ipvsCounts(topo: Topology): Promise<Counts> {
  return {
    ...countIpvs(await run(topo, 'ipvsadm', ['-Sn'])),
    ipsetEntries: countIpsetEntries(await run(topo, 'ipset', ['list', '-t'])),
    ...(await iptablesCounts(topo)),
  };
}

/**
 * Rules and set/map elements in `nft -j list table` output, fed in pieces: at 30k services
 * kpx's table prints as several hundred MB of JSON, more than one string (or execa's
 * buffer) holds, so each object of the top-level array is parsed on its own as it ends.
 */
export class NftCounter {
  private depth = 0;
  private inString = false;
  private escaped = false;
  private piece: string[] = [];
  private start = -1;
  rules = 0;
  setElements = 0;

  push(chunk: string): void {
    this.start = this.depth >= 3 ? 0 : -1;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === '{' || c === '[') {
        if (++this.depth === 3) this.start = i;
      } else if (c === '}' || c === ']') {
        if (this.depth-- === 3) {
          this.piece.push(chunk.slice(this.start, i + 1));
          this.count(this.piece.join(''));
          this.piece = [];
          this.start = -1;
        }
      }
    }
    if (this.start >= 0) this.piece.push(chunk.slice(this.start));
  }

  private count(object: string): void {
    const o = JSON.parse(object) as Record<string, { elem?: unknown[] }>;
    if (o.rule) this.rules++;
    const s = o.set ?? o.map;
    if (s?.elem) this.setElements += s.elem.length;
  }
}

/** `nft -j list table|ruleset` printed whole: rules and set/map elements. */
export function countNft(json: string): { nftRules: number; nftSetElements: number } {
  const c = new NftCounter();
  c.push(json);
  return { nftRules: c.rules, nftSetElements: c.setElements };
}

async function nftCounts(topo: Topology, table = 'kube-proxy'): Promise<Counts> {
  // the proxy's own tables only (iptables-nft's own tables are counted as iptables rules)
  const out: Counts = { nftRules: 0, nftSetElements: 0 };
  for (const family of ['ip', 'ip6']) {
    const c = new NftCounter();
    const p = execa('ip', ['netns', 'exec', topo.node, 'nft', '-j', 'list', 'table', family, table], { reject: false, buffer: { stdout: false, stderr: true }, encoding: 'utf8' });
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (d: string) => c.push(d));
    const r = await p;
    if (r.exitCode !== 0) {
      if (/No such file or directory/.test(String(r.stderr))) continue; // no table of that family
      throw new Error(`nft -j list table ${family} ${table} failed (exit ${r.exitCode}): ${String(r.stderr).trim()}`);
    }
    out.nftRules! += c.rules;
    out.nftSetElements! += c.setElements;
  }
  return out;
}

/** What a proxy programmed, as the tools print it, one file per tool (for comparing layouts). */
export async function saveRules(topo: Topology, mode: ProxyDef['mode'], dir: string): Promise<void> {
  const dumps: Array<[string, string, string[]]> = [
    ['ruleset.nft', 'nft', ['list', 'ruleset']],
    ['iptables-legacy.save', 'iptables-legacy-save', []],
  ];
  if (mode === 'ipvs') dumps.push(['ipvsadm.save', 'ipvsadm', ['-Sn']], ['ipset.save', 'ipset', ['save']]);
  await mkdir(dir, { recursive: true });
  for (const [file, cmd, args] of dumps) await writeFile(join(dir, file), await run(topo, cmd, args));
}

// ---- kpx ----

let kpxTokenCache: { admin: KubeConfig; token: string } | null = null;

/** A token of kpx's ServiceAccount, bound by the RBAC in manifests/ (as the API tests do). */
export async function kpxToken(admin: KubeConfig): Promise<string> {
  if (kpxTokenCache?.admin !== admin) kpxTokenCache = { admin, token: await kpxServiceAccountToken(admin, REPO, 86400) };
  return kpxTokenCache.token;
}

const KPX_BRIDGE_PORT = 16443;

async function startKpx(ctx: ProxyContext, mode: 'iptables' | 'ipvs' | 'nftables'): Promise<RunningProxy> {
  const procs: ResultPromise[] = [];
  const forwarder = new FaultProxy(join(ctx.dir, 'apiserver.sock'), ctx.api.target());
  await forwarder.start();
  const bridge = execa('ip', ['netns', 'exec', ctx.topo.node, process.execPath, join(REPO, 'test/substrate/unix-bridge.mjs'), '127.0.0.1', String(KPX_BRIDGE_PORT), forwarder.socketPath], {
    reject: false,
    buffer: false,
    stdin: 'ignore',
  });
  procs.push(bridge);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the apiserver bridge did not start in 10 s')), 10_000);
    bridge.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('READY')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const kubeconfig = join(ctx.dir, 'kpx.kubeconfig');
  await writeFile(
    kubeconfig,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'test', cluster: { server: `https://127.0.0.1:${KPX_BRIDGE_PORT}`, 'certificate-authority-data': Buffer.from(await ctx.api.caPem()).toString('base64') } }],
      users: [{ name: 'kpx', user: { token: await kpxToken(ctx.api.admin) } }],
      contexts: [{ name: 'kpx', context: { cluster: 'test', user: 'kpx' } }],
      'current-context': 'kpx',
    }),
    { mode: 0o600 },
  );
  const sync = mode === 'ipvs' ? ['--ipvs-sync-period', ctx.syncPeriod, '--ipvs-min-sync-period', ctx.minSyncPeriod] : ['--iptables-sync-period', ctx.syncPeriod, '--iptables-min-sync-period', ctx.minSyncPeriod];
  const logFile = join(ctx.dir, 'kpx.log');
  const log = createWriteStream(logFile);
  let tail = '';
  const startedAt = Date.now();
  const proc = execa(
    'ip',
    [
      'netns', 'exec', ctx.topo.node, process.execPath, ...kpxArgv(), 'run',
      '--proxy-mode', mode, '--kubeconfig', kubeconfig, '--hostname-override', NODE_NAME, '--cluster-cidr', NET.podCIDR,
      '--nodeport-addresses', 'primary', '--metrics-bind-address', '127.0.0.1:10249', '--healthz-bind-address', '127.0.0.1:10256', ...sync,
    ],
    { reject: false, buffer: false, stdin: 'ignore', stdout: 'ignore', env: { KPX_LOG_LEVEL: 'info' } },
  );
  procs.unshift(proc);
  proc.stderr.on('data', (d: Buffer) => {
    log.write(d);
    tail = (tail + d.toString()).slice(-6000);
  });
  const exited = proc.then((r) => ({ exitCode: r.exitCode, signal: r.signal }));
  return {
    pid: proc.pid!,
    startedAt,
    logFile,
    exited,
    logTail: () => tail,
    metrics: async () => {
      const r = await nsGet(ctx.topo.node, METRICS_URL);
      if (r.status !== 200) throw new Error(`GET ${METRICS_URL}: status ${r.status}`);
      return r.body;
    },
    stop: async () => {
      for (const p of procs) p.kill('SIGTERM');
      await Promise.allSettled(procs.map((p) => Promise.race([p, sleep(5000)])));
      for (const p of procs) p.kill('SIGKILL');
      await forwarder.stop();
      await new Promise<void>((r) => log.end(r));
    },
  };
}

// ---- upstream kube-proxy ----

async function startUpstream(ctx: ProxyContext, mode: KubeProxyMode): Promise<RunningProxy> {
  if (!ctx.kubeProxyBin) throw new Error('no kube-proxy binary');
  const kp = await startKubeProxy({
    bin: ctx.kubeProxyBin,
    netns: ctx.topo.node,
    apiserver: ctx.api,
    mode,
    node: { name: NODE_NAME, internalIP: NET.nodeIP, podCIDR: NET.podCIDR },
    clusterCIDR: NET.podCIDR,
    syncPeriod: ctx.syncPeriod,
    minSyncPeriod: ctx.minSyncPeriod,
    verbosity: 1,
    dir: ctx.dir,
    waitForSync: false,
  });
  return { pid: kp.pid, startedAt: kp.startedAt, logFile: kp.logFile, exited: kp.exited, logTail: () => kp.logTail(), metrics: () => kp.metrics(), stop: () => kp.stop() };
}

// ---- the table ----

export const PROXIES: ProxyDef[] = [
  { name: 'kpx-iptables', impl: 'kpx', mode: 'iptables', needs: [], start: (c) => startKpx(c, 'iptables'), counts: iptablesCounts },
  { name: 'kpx-nftables', impl: 'kpx', mode: 'nftables', needs: [], start: (c) => startKpx(c, 'nftables'), counts: (t) => nftCounts(t, 'kpx') },
  { name: 'kpx-ipvs', impl: 'kpx', mode: 'ipvs', needs: ['ipvs'], start: (c) => startKpx(c, 'ipvs'), counts: ipvsCounts },
  { name: 'kube-proxy-iptables', impl: 'kube-proxy', mode: 'iptables', needs: ['kube-proxy-binary'], start: (c) => startUpstream(c, 'iptables'), counts: iptablesCounts },
  { name: 'kube-proxy-nftables', impl: 'kube-proxy', mode: 'nftables', needs: ['kube-proxy-binary'], start: (c) => startUpstream(c, 'nftables'), counts: nftCounts },
  { name: 'kube-proxy-ipvs', impl: 'kube-proxy', mode: 'ipvs', needs: ['ipvs', 'kube-proxy-binary'], start: (c) => startUpstream(c, 'ipvs'), counts: ipvsCounts },
];

export function proxyByName(name: string): ProxyDef {
  const p = PROXIES.find((x) => x.name === name);
  if (!p) throw new Error(`unknown proxy "${name}" (known: ${PROXIES.map((x) => x.name).join(', ')})`);
  return p;
}
