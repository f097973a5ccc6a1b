// A Kubernetes cluster made of network namespaces, for kpx's end-to-end tests and for
// playing with kpx by hand (hack/netns-cluster). Never touches the machine's root network
// namespace:
//
//   [kpxc-<name>-underlay]  ul0 bridge, 198.19.0.1 = the control plane: a relay to the
//        │                  test apiserver (root namespace, 127.0.0.1) through a Unix socket
//        ├── [kpxc-<name>-ext]     the external client, 198.19.0.100 (and .101)
//        ├── [kpxc-<name>-node-1]  eth0 198.19.0.11, cni0 198.18.1.1/24, flannel.1 (vxlan)
//        │      ├── [kpxc-<name>-pod-<pod>]  eth0 198.18.1.x on a veth in cni0 (hairpin on)
//        │      └── kpx, run as its DaemonSet would run it
//        ├── [kpxc-<name>-node-2]  ...
//
// vxlan: a flannel.1-style VXLAN device per node (VNI 1, UDP 4789, no learning), with the
// FDB and neighbour entries for the other nodes' VTEPs written statically, and routes to
// their pod CIDRs via flannel.1 onlink; pod MTU 1450. routed: host-gw style routes to the
// other nodes' pod CIDRs via their underlay address; pod MTU 1500.
//
// The harness plays what the cluster has no process for: the kubelet (pods are namespaces
// running test/substrate/echo-server.mjs; Pod objects with status), the EndpointSlice
// controller (endpointslices.ts), the node lifecycle controller (markNodeLost) and the
// DaemonSet controller (one kpx per node from manifests/daemonset.yaml, with its
// ServiceAccount token, its ConfigMaps and its volumes).
//
// Everything is recorded in one directory (state.json: namespaces, processes by pid and
// start time), so `down` removes it all, also after a crash.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { parseAllDocuments, parseDocument } from 'yaml';
import { CoreV1Api, DiscoveryV1Api, KubeConfig, KubernetesObjectApi, PatchStrategy, type KubernetesObject } from '@kubernetes/client-node';
import { TEST_APISERVER_BIN, readTestApiserverReady, testApiserverArgs } from '../apiserver.js';
import { NO_ICMP_RATELIMIT } from '../netns.js';
import { launcherArgv } from '../launcher.js';
import { alive, logSize, procRecordOf, spawnDetached, stopProc, waitForLog, type ProcRecord } from './procs.js';
import { hasSelector, LABEL_ZONE, reconcileService, type ReconcileResult } from './endpointslices.js';
import * as plan from './plan.js';
import { ECHO_PORT, HOLD_PORT, type ClusterNode, type ClusterPod, type E2ECluster, type PodDeletion, type ProbeResult, type Proto, type ServiceInfo, type Stream, type Where } from './types.js';

/** The repository (found upwards from here, so compiled copies of this file find it too). */
function findRepo(from: string): string {
  for (let d = from; d !== dirname(d); d = dirname(d)) {
    if (existsSync(join(d, 'package.json')) && existsSync(join(d, 'manifests/daemonset.yaml'))) return d;
  }
  throw new Error(`cannot find the kpx repository above ${from}`);
}
export const REPO = process.env.KPX_REPO ?? findRepo(import.meta.dirname);
const KPX_BIN = join(REPO, 'bin/kpx.js');
const ECHO = join(REPO, 'test/substrate/echo-server.mjs');
const PROBE = join(REPO, 'test/substrate/probe.mjs');
const BRIDGE = join(REPO, 'test/substrate/unix-bridge.mjs');
const CONTAINER_SH = join(REPO, 'test/substrate/cluster/kpx-container.sh');
const MANIFESTS = join(REPO, 'manifests');

export const DEFAULT_BASE_DIR = process.env.KPX_NETNS_CLUSTER_DIR ?? '/run/kpx-netns-cluster';
const NS_PREFIX = 'kpxc-';
const TOKEN_SECONDS = 2 * 24 * 3600;
const FIELD_MANAGER = 'netns-cluster';
/** the first sync of a kpx that just started, in its log */
const FIRST_SYNC = /"ok":true[^\n]*"msg":"sync"/;
/** how long a kpx may take to start and sync: 60 s, 4 times that in the IPVS VM (hack/ipvs-vm sets
 *  KPX_IN_VM), whose software-emulated CPUs made a first sync take 7 s to over 50 s on a busy 2-core host */
const FIRST_SYNC_MS = process.env.KPX_IN_VM === '1' ? 240_000 : 60_000;

export interface UpOptions {
  name?: string;
  baseDir?: string;
  nodes?: number;
  network?: plan.Network;
  proxyMode?: plan.ProxyMode;
  /** echo pods started on every node (labels app=echo) plus a NodePort Service "echo" selecting them */
  podsPerNode?: number;
  zones?: string[];
  /** the cluster belongs to this process: test setup removes clusters whose owner died */
  owner?: number;
  /** progress lines */
  log?: (line: string) => void;
}

interface NodeRec {
  name: string;
  index: number;
  zone: string;
  internalIP: string;
  podCIDR: string;
  lost: boolean;
  /** host-local IPAM: the next address to try (round robin, as host-local does) */
  nextHost: number;
}

interface PodRec {
  name: string;
  namespace: string;
  node: string;
  ip: string;
  netns: string;
  veth: string;
  labels: Record<string, string>;
  lost: boolean;
}

interface State {
  version: 1;
  name: string;
  prefix: string;
  network: plan.Network;
  proxyMode: plan.ProxyMode;
  createdAt: string;
  phase: 'creating' | 'up';
  owner?: number;
  upSeconds?: number;
  apiserver?: { dataDir: string; port: number; kubeconfig: string; caFile: string };
  namespaces: string[];
  procs: ProcRecord[];
  nodes: NodeRec[];
  pods: PodRec[];
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

async function ip(...args: string[]): Promise<void> {
  await execa('ip', args);
}
/** One `ip -batch` in a namespace (one process for many commands). */
async function ipBatch(ns: string, lines: string[]): Promise<void> {
  if (lines.length) await execa('ip', ['-n', ns, '-batch', '-'], { input: lines.join('\n') + '\n' });
}
async function bridgeBatch(ns: string, lines: string[]): Promise<void> {
  if (lines.length) await execa('bridge', ['-n', ns, '-batch', '-'], { input: lines.join('\n') + '\n' });
}
async function listNetns(): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list'], { reject: false });
  return r.stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}
const isNotFound = (err: unknown) => (err as { code?: number }).code === 404;
const ignoreConflict = (err: unknown) => {
  if ((err as { code?: number }).code !== 409) throw err;
};

interface ContainerSpec {
  args?: string[];
  command?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  envFrom?: Array<{ configMapRef?: { name: string } }>;
  volumeMounts?: Array<{ name: string; mountPath: string }>;
}
interface DaemonSetSpec {
  namespace: string;
  serviceAccountName: string;
  hostNetwork: boolean;
  container: ContainerSpec;
  volumes: Array<{ name: string; configMap?: { name: string }; hostPath?: { path: string } }>;
}

export class NetnsCluster implements E2ECluster {
  readonly kind = 'netns';
  readonly externalClientIP = plan.EXTERNAL_IP;
  readonly unsupported = { nodeLoss: null };
  private kc: KubeConfig | null = null;
  private chain: Promise<unknown> = Promise.resolve();
  private apiChain: Promise<unknown> = Promise.resolve();
  private readonly streams = new Set<{ proc: ResultPromise }>();
  private log: (line: string) => void = () => {};

  private constructor(
    readonly dir: string,
    private s: State,
  ) {}

  // ---- lifecycle ------------------------------------------------------------------

  static async up(o: UpOptions = {}): Promise<NetnsCluster> {
    const name = o.name ?? 'kpx';
    if (!NAME_RE.test(name)) throw new Error(`cluster name "${name}": lowercase letters, digits and dashes, at most 20`);
    const nodes = o.nodes ?? 3;
    if (!Number.isInteger(nodes) || nodes < 1 || nodes > plan.MAX_NODES) throw new Error(`--nodes ${nodes}: 1 to ${plan.MAX_NODES}`);
    const network = o.network ?? 'vxlan';
    if (network !== 'vxlan' && network !== 'routed') throw new Error(`--network ${String(network)}: vxlan or routed`);
    const proxyMode = o.proxyMode ?? 'iptables';
    if (proxyMode !== 'iptables' && proxyMode !== 'ipvs') throw new Error(`--proxy-mode ${String(proxyMode)}: iptables or ipvs`);
    if (process.getuid?.() !== 0) throw new Error('the netns cluster needs root (network namespaces, iptables)');
    if (!existsSync(TEST_APISERVER_BIN)) throw new Error(`no test apiserver at ${TEST_APISERVER_BIN}: build it with hack/test-apiserver/build.sh`);
    if (!existsSync(join(REPO, 'dist/cli/main.js'))) throw new Error('dist/ is missing: run `npm run build` (or `npm ci`) first');
    const dir = join(o.baseDir ?? DEFAULT_BASE_DIR, name);
    const prefix = `${NS_PREFIX}${name}`;
    if (existsSync(join(dir, 'state.json'))) throw new Error(`cluster "${name}" exists (${dir}); remove it with \`hack/netns-cluster down${name === 'kpx' ? '' : ` --name ${name}`}\``);
    const left = (await listNetns()).filter((n) => n.startsWith(`${prefix}-`));
    if (left.length) throw new Error(`namespaces of an earlier cluster "${name}" exist (${left.join(', ')}); run down first`);
    await mkdir(join(dir, 'nodes'), { recursive: true });
    await mkdir(join(dir, 'pods'), { recursive: true });
    const zones = o.zones?.length ? o.zones : plan.DEFAULT_ZONES;
    const state: State = {
      version: 1,
      name,
      prefix,
      network,
      proxyMode,
      createdAt: new Date().toISOString(),
      phase: 'creating',
      ...(o.owner ? { owner: o.owner } : {}),
      namespaces: [],
      procs: [],
      nodes: Array.from({ length: nodes }, (_, k) => {
        const i = k + 1;
        return { name: plan.nodeName(i), index: i, zone: zones[k % zones.length]!, internalIP: plan.nodeIP(i), podCIDR: plan.podCIDR(i), lost: false, nextHost: plan.FIRST_POD_HOST };
      }),
      pods: [],
    };
    const c = new NetnsCluster(dir, state);
    c.log = o.log ?? (() => {});
    await c.save();
    try {
      await c.create(o.podsPerNode ?? 0);
    } catch (err) {
      c.log(`up failed: ${(err as Error).message}; removing what was made`);
      await c.down();
      throw err;
    }
    return c;
  }

  /** The cluster recorded in a state directory. */
  static async open(dir: string, log?: (line: string) => void): Promise<NetnsCluster> {
    const text = await readFile(join(dir, 'state.json'), 'utf8').catch(() => null);
    if (text === null) throw new Error(`no netns cluster in ${dir}`);
    const c = new NetnsCluster(dir, JSON.parse(text) as State);
    if (log) c.log = log;
    return c;
  }

  /** Removes everything a cluster directory records (and namespaces with its prefix), whatever state it is in. */
  static async downDir(dir: string): Promise<string[]> {
    const text = await readFile(join(dir, 'state.json'), 'utf8').catch(() => null);
    const s: State | null = text ? (JSON.parse(text) as State) : null;
    const prefix = s?.prefix ?? `${NS_PREFIX}${basename(dir)}`;
    const done: string[] = [];
    // processes, newest first: pods and kpx before the relays and the apiserver
    for (const p of [...(s?.procs ?? [])].reverse()) {
      if (!alive(p)) continue;
      await stopProc(p, { graceMs: p.role === 'apiserver' ? 15_000 : 3000 });
      done.push(`stopped ${p.role} (pid ${p.pid})`);
    }
    // an apiserver started just before a crash, not yet recorded: its pid file, if the process runs on our data dir
    const pidFile = await readFile(join(dir, 'apiserver', 'test-apiserver.pid'), 'utf8').catch(() => '');
    const apiPid = Number(pidFile.trim());
    if (apiPid && !(s?.procs ?? []).some((p) => p.pid === apiPid)) {
      const cmd = await readFile(`/proc/${apiPid}/cmdline`, 'utf8').catch(() => '');
      if (cmd.includes(join(dir, 'apiserver'))) {
        process.kill(apiPid, 'SIGTERM');
        for (let i = 0; i < 300 && existsSync(`/proc/${apiPid}`); i++) await sleep(50);
        done.push(`stopped the unrecorded apiserver (pid ${apiPid})`);
      }
    }
    const names = new Set([...(s?.namespaces ?? []), ...(await listNetns()).filter((n) => n.startsWith(`${prefix}-`))]);
    for (const ns of [...names].reverse()) {
      // anything else still running inside our namespaces (e.g. an `ip netns exec` shell)
      const pids = (await execa('ip', ['netns', 'pids', ns], { reject: false })).stdout.split('\n').filter(Boolean).map(Number);
      const killed: ProcRecord[] = [];
      for (const pid of pids) {
        const rec = procRecordOf(pid, `pid ${pid} in ${ns}`);
        try {
          process.kill(pid, 'SIGKILL');
          done.push(`killed pid ${pid} in ${ns}`);
          if (rec) killed.push(rec);
        } catch {
          /* gone */
        }
      }
      // SIGKILL is delivered, not yet done: return once they are gone
      for (let i = 0; i < 250 && killed.some((p) => alive(p)); i++) await sleep(20);
      const r = await execa('ip', ['netns', 'del', ns], { reject: false });
      if (r.exitCode === 0) done.push(`deleted netns ${ns}`);
    }
    await rm(dir, { recursive: true, force: true });
    return done;
  }

  async down(): Promise<string[]> {
    for (const st of this.streams) st.proc.kill('SIGKILL');
    this.streams.clear();
    return NetnsCluster.downDir(this.dir);
  }

  destroy(): Promise<void> {
    return this.down().then(() => undefined);
  }

  private saving: Promise<void> = Promise.resolve();

  /** Writes the state as it is now (writes are queued, each one complete). */
  private save(): Promise<void> {
    const write = async () => {
      const tmp = join(this.dir, `state.json.${process.pid}.tmp`);
      await writeFile(tmp, JSON.stringify(this.s, null, 2));
      await rename(tmp, join(this.dir, 'state.json'));
    };
    this.saving = this.saving.then(write, write);
    return this.saving;
  }

  /** Runs state mutations one at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.chain.then(fn, fn);
    this.chain = next.catch(() => {});
    return next;
  }

  private async create(podsPerNode: number): Promise<void> {
    const t0 = Date.now();
    const api = this.startApiserver();
    api.catch(() => {}); // awaited below; the network is built meanwhile
    await this.buildUnderlay();
    await this.buildExternal();
    await Promise.all(this.s.nodes.map((n) => this.buildNode(n)));
    await Promise.all(this.s.nodes.map((n) => this.wireNode(n)));
    this.log(`network: ${this.s.network}, ${this.s.nodes.length} nodes (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    await api;
    await this.startRelays();
    await this.setupApi();
    this.log(`apiserver ready, RBAC, ConfigMaps and Nodes created (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    await Promise.all(this.s.nodes.map((n) => this.startProxy(n.name)));
    this.log(`kpx runs on every node, first syncs done (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    if (podsPerNode > 0) {
      const jobs: Array<Promise<ClusterPod>> = [];
      for (const n of this.s.nodes) for (let k = 1; k <= podsPerNode; k++) jobs.push(this.addPod({ name: `echo-${n.index}-${k}`, node: n.name, labels: { app: 'echo' } }));
      await Promise.all(jobs);
      await this.applyService({
        apiVersion: 'v1',
        kind: 'Service',
        metadata: { name: 'echo', namespace: 'default' },
        spec: {
          type: 'NodePort',
          selector: { app: 'echo' },
          ports: [
            { name: 'tcp', port: 80, targetPort: ECHO_PORT, protocol: 'TCP' },
            { name: 'udp', port: 80, targetPort: ECHO_PORT, protocol: 'UDP' },
            { name: 'hold', port: HOLD_PORT, targetPort: HOLD_PORT, protocol: 'TCP' },
          ],
        },
      });
      this.log(`${jobs.length} echo pods and Service default/echo (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    }
    this.s.phase = 'up';
    this.s.upSeconds = Math.round((Date.now() - t0) / 100) / 10;
    await this.save();
  }

  // ---- network -----------------------------------------------------------------------

  private nsName(role: string): string {
    return `${this.s.prefix}-${role}`;
  }
  get underlayNs(): string {
    return this.nsName('underlay');
  }
  get externalNs(): string {
    return this.nsName('ext');
  }
  nodeNs(node: string): string {
    return this.nsName(node);
  }

  private async addNs(name: string): Promise<void> {
    this.s.namespaces.push(name);
    await this.save();
    await ip('netns', 'add', name);
    await ip('-n', name, 'link', 'set', 'lo', 'up');
  }

  private async removeNs(name: string): Promise<void> {
    await execa('ip', ['netns', 'del', name], { reject: false });
    this.s.namespaces = this.s.namespaces.filter((n) => n !== name);
  }

  private async buildUnderlay(): Promise<void> {
    const ul = this.underlayNs;
    await this.addNs(ul);
    // the underlay switch; its own address is the control plane's
    await ipBatch(ul, [`link add ul0 mtu ${plan.UNDERLAY_MTU} type bridge`, `addr add ${plan.CONTROL_PLANE_IP}/${plan.UNDERLAY_PREFIX} dev ul0`, 'link set ul0 up']);
  }

  private async buildExternal(): Promise<void> {
    const ext = this.externalNs;
    await this.addNs(ext);
    await ip('-n', this.underlayNs, 'link', 'add', 'ext', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ext);
    await ipBatch(this.underlayNs, ['link set ext master ul0', 'link set ext up']);
    await ipBatch(ext, [`addr add ${plan.EXTERNAL_IP}/${plan.UNDERLAY_PREFIX} dev eth0`, `addr add ${plan.EXTERNAL_IP2}/${plan.UNDERLAY_PREFIX} dev eth0`, 'link set eth0 up']);
  }

  private async buildNode(n: NodeRec): Promise<void> {
    const ns = this.nodeNs(n.name);
    const mtu = plan.podMTU(this.s.network);
    await this.addNs(ns);
    const port = `n${n.index}`;
    await ip('-n', this.underlayNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    await ipBatch(this.underlayNs, [`link set ${port} master ul0`, `link set ${port} up`, `route replace ${n.podCIDR} via ${n.internalIP}`]);
    const lines = [
      `addr add ${n.internalIP}/${plan.UNDERLAY_PREFIX} dev eth0`,
      'link set eth0 up',
      `route add default via ${plan.CONTROL_PLANE_IP}`,
      `link add cni0 mtu ${mtu} type bridge`,
      `addr add ${plan.bridgeIP(n.index)}/24 dev cni0`,
      'link set cni0 up',
    ];
    if (this.s.network === 'vxlan') {
      lines.push(
        `link add flannel.1 address ${plan.vtepMAC(n.index)} mtu ${plan.VXLAN_MTU} type vxlan id ${plan.VNI} local ${n.internalIP} dev eth0 dstport ${plan.VXLAN_PORT} nolearning`,
        `addr add ${plan.vtepIP(n.index)}/32 dev flannel.1`,
        'link set flannel.1 up',
      );
    }
    await ipBatch(ns, lines);
    await execa('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.bridge.bridge-nf-call-iptables=1', 'net.bridge.bridge-nf-call-ip6tables=1', ...NO_ICMP_RATELIMIT]);
  }

  /** This node's routes (and VXLAN forwarding entries) to every other node's pods. */
  private async wireNode(n: NodeRec): Promise<void> {
    const ns = this.nodeNs(n.name);
    const lines: string[] = [];
    const fdb: string[] = [];
    for (const o of this.s.nodes) {
      if (o.name === n.name) continue;
      if (this.s.network === 'vxlan') {
        lines.push(`route replace ${o.podCIDR} via ${plan.vtepIP(o.index)} dev flannel.1 onlink`, `neigh replace ${plan.vtepIP(o.index)} lladdr ${plan.vtepMAC(o.index)} dev flannel.1 nud permanent`);
        fdb.push(`fdb replace ${plan.vtepMAC(o.index)} dev flannel.1 dst ${o.internalIP} self permanent`);
      } else {
        lines.push(`route replace ${o.podCIDR} via ${o.internalIP} dev eth0`);
      }
    }
    await ipBatch(ns, lines);
    await bridgeBatch(ns, fdb);
  }

  private async addPodNetwork(p: PodRec, n: NodeRec): Promise<void> {
    const node = this.nodeNs(n.name);
    const mtu = String(plan.podMTU(this.s.network));
    await this.addNs(p.netns);
    await ip('-n', node, 'link', 'add', p.veth, 'mtu', mtu, 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', mtu, 'netns', p.netns);
    await ipBatch(node, [`link set ${p.veth} master cni0`, `link set ${p.veth} up`]);
    // a pod may reach itself through its Service (the CNI bridge plugin's hairpinMode)
    await bridgeBatch(node, [`link set dev ${p.veth} hairpin on`]);
    await ipBatch(p.netns, [`addr add ${p.ip}/24 dev eth0`, 'link set eth0 up', `route add default via ${plan.bridgeIP(n.index)}`]);
  }

  // ---- control plane -------------------------------------------------------------------

  private async startApiserver(): Promise<void> {
    const dataDir = join(this.dir, 'apiserver');
    const rec = spawnDetached('apiserver', TEST_APISERVER_BIN, testApiserverArgs(dataDir, { serviceCIDR: plan.SERVICE_RANGE, advertiseAddress: plan.CONTROL_PLANE_IP }), {
      log: join(this.dir, 'apiserver.log'),
    });
    this.s.procs.push(rec);
    await this.save();
    await waitForLog(rec, /^READY /m, 120_000);
    const ready = await readTestApiserverReady(dataDir);
    this.s.apiserver = { dataDir, port: ready.apiserverPort, kubeconfig: ready.kubeconfig, caFile: ready.caFile };
    await this.save();
  }

  private async startRelays(): Promise<void> {
    const a = this.s.apiserver!;
    const sock = join(this.dir, 'apiserver.sock');
    const root = spawnDetached('relay-root', process.execPath, [BRIDGE, '--serve-unix', sock, '127.0.0.1', String(a.port)], { log: join(this.dir, 'relay-root.log') });
    this.s.procs.push(root);
    await this.save();
    await waitForLog(root, /^READY$/m, 10_000);
    const ul = spawnDetached('relay-underlay', 'ip', ['netns', 'exec', this.underlayNs, process.execPath, BRIDGE, plan.CONTROL_PLANE_IP, String(a.port), sock], {
      log: join(this.dir, 'relay-underlay.log'),
    });
    this.s.procs.push(ul);
    await this.save();
    await waitForLog(ul, /^READY$/m, 10_000);
  }

  get kubeconfigPath(): string {
    return this.s.apiserver?.kubeconfig ?? '';
  }

  /** The admin's view of the API (from the root namespace). */
  get admin(): KubeConfig {
    if (!this.kc) {
      this.kc = new KubeConfig();
      this.kc.loadFromFile(this.kubeconfigPath);
    }
    return this.kc;
  }
  private get core(): CoreV1Api {
    return this.admin.makeApiClient(CoreV1Api);
  }
  private get disc(): DiscoveryV1Api {
    return this.admin.makeApiClient(DiscoveryV1Api);
  }
  private get objects(): KubernetesObjectApi {
    return KubernetesObjectApi.makeApiClient(this.admin);
  }

  /** What `kubectl apply -k manifests/` creates, but the DaemonSet (the harness runs it), with the two values an operator sets. */
  private async manifestObjects(): Promise<KubernetesObject[]> {
    const out: KubernetesObject[] = [];
    for (const f of (await readdir(MANIFESTS)).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml').sort()) {
      for (const doc of parseAllDocuments(await readFile(join(MANIFESTS, f), 'utf8'))) {
        const o = doc.toJS() as (KubernetesObject & { data?: Record<string, string> }) | null;
        if (!o?.kind || o.kind === 'DaemonSet') continue;
        if (!['ClusterRole', 'ClusterRoleBinding', 'Namespace'].includes(o.kind)) o.metadata!.namespace ??= 'kube-system';
        if (o.kind === 'ConfigMap' && o.data?.KUBERNETES_SERVICE_HOST !== undefined) {
          // the apiserver's real address: the control plane on the underlay, not the ClusterIP kpx programs
          o.data.KUBERNETES_SERVICE_HOST = plan.CONTROL_PLANE_IP;
          o.data.KUBERNETES_SERVICE_PORT = String(this.s.apiserver!.port);
        }
        if (o.kind === 'ConfigMap' && o.data?.['config.yaml'] !== undefined) {
          const cfg = parseDocument(o.data['config.yaml']);
          cfg.set('clusterCIDR', plan.POD_RANGE);
          cfg.set('mode', this.s.proxyMode);
          o.data['config.yaml'] = cfg.toString();
        }
        out.push(o);
      }
    }
    return out;
  }

  private async setupApi(): Promise<void> {
    const objects = this.objects;
    for (const o of await this.manifestObjects()) await objects.create(o).catch(ignoreConflict);
    // what the service-account controller would create: pods need their namespace's default account
    await this.core.createNamespacedServiceAccount({ namespace: 'default', body: { metadata: { name: 'default' } } }).catch(ignoreConflict);
    for (const n of this.s.nodes) await this.registerNode(n);
  }

  /** What a kubelet registers: the Node with its pod CIDR (from the node IPAM), addresses, zone and Ready. */
  private async registerNode(n: NodeRec): Promise<void> {
    const annotations: Record<string, string> =
      this.s.network === 'vxlan'
        ? {
            // what flannel's vxlan backend publishes, and what the harness writes each node's FDB from
            'flannel.alpha.coreos.com/backend-type': 'vxlan',
            'flannel.alpha.coreos.com/backend-data': JSON.stringify({ VNI: plan.VNI, VtepMAC: plan.vtepMAC(n.index) }),
            'flannel.alpha.coreos.com/public-ip': n.internalIP,
          }
        : {};
    await this.core
      .createNode({
        body: {
          metadata: {
            name: n.name,
            labels: { 'kubernetes.io/hostname': n.name, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': process.arch === 'x64' ? 'amd64' : process.arch, [LABEL_ZONE]: n.zone },
            annotations,
          },
          spec: { podCIDR: n.podCIDR, podCIDRs: [n.podCIDR] },
        },
      })
      .catch(ignoreConflict);
    await this.setNodeReady(n.name, true);
  }

  private async setNodeReady(name: string, ready: boolean): Promise<void> {
    const n = this.s.nodes.find((x) => x.name === name)!;
    const now = new Date();
    const node = await this.core.readNode({ name });
    node.spec ??= {};
    const unreachable = ['NoSchedule', 'NoExecute'].map((effect) => ({ key: 'node.kubernetes.io/unreachable', effect, timeAdded: now }));
    const others = (node.spec.taints ?? []).filter((t) => t.key !== 'node.kubernetes.io/unreachable');
    node.spec.taints = ready ? (others.length ? others : undefined) : [...others, ...unreachable];
    await this.core.replaceNode({ name, body: node });
    const fresh = await this.core.readNode({ name });
    fresh.status = {
      ...fresh.status,
      addresses: [
        { type: 'InternalIP', address: n.internalIP },
        { type: 'Hostname', address: n.name },
      ],
      conditions: [
        ready
          ? { type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'netns-cluster node is posting ready status', lastHeartbeatTime: now, lastTransitionTime: now }
          : { type: 'Ready', status: 'Unknown', reason: 'NodeStatusUnknown', message: 'Kubelet stopped posting node status.', lastHeartbeatTime: now, lastTransitionTime: now },
      ],
    };
    await this.core.replaceNodeStatus({ name, body: fresh });
  }

  // ---- kpx, as its DaemonSet runs it ------------------------------------------------------

  private async daemonSet(): Promise<DaemonSetSpec> {
    for (const doc of parseAllDocuments(await readFile(join(MANIFESTS, 'daemonset.yaml'), 'utf8'))) {
      const o = doc.toJS() as { kind?: string; metadata?: { namespace?: string }; spec?: { template?: { spec?: Record<string, unknown> } } } | null;
      if (o?.kind !== 'DaemonSet') continue;
      const pod = o.spec!.template!.spec! as { serviceAccountName?: string; hostNetwork?: boolean; containers: ContainerSpec[]; volumes?: DaemonSetSpec['volumes'] };
      return {
        namespace: o.metadata?.namespace ?? 'kube-system',
        serviceAccountName: pod.serviceAccountName ?? 'default',
        hostNetwork: !!pod.hostNetwork,
        container: pod.containers[0]!,
        volumes: pod.volumes ?? [],
      };
    }
    throw new Error('manifests/daemonset.yaml has no DaemonSet');
  }

  private proc(role: string): ProcRecord | undefined {
    return this.s.procs.find((p) => p.role === role);
  }

  /** Starts kpx in the node's namespace with what its DaemonSet pod would get; resolves after its first sync. */
  async startProxy(node: string): Promise<void> {
    const n = this.nodeRec(node);
    const ds = await this.daemonSet();
    if (!ds.hostNetwork) throw new Error('the DaemonSet is not hostNetwork: the netns cluster runs kpx in the node namespace');
    const c = ds.container;
    const env: Record<string, string> = {};
    for (const ef of c.envFrom ?? []) {
      if (!ef.configMapRef) throw new Error(`DaemonSet envFrom ${JSON.stringify(ef)}: only configMapRef is supported here`);
      const cm = await this.core.readNamespacedConfigMap({ name: ef.configMapRef.name, namespace: ds.namespace });
      Object.assign(env, cm.data ?? {});
    }
    for (const e of c.env ?? []) {
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName') env[e.name] = n.name;
      else throw new Error(`DaemonSet env ${e.name}: only values and fieldRef spec.nodeName are supported here`);
    }
    // kubelet expands $(VAR) in args from the container's environment
    const args = (c.args ?? []).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string) => env[v] ?? m));
    if (c.command?.length) throw new Error('DaemonSet container has a command: the netns cluster runs the image entrypoint (node, the launcher flags, bin/kpx.js)');

    const stage = join(this.dir, 'nodes', n.name, 'container');
    await rm(stage, { recursive: true, force: true });
    const binds: string[] = [];
    for (const m of c.volumeMounts ?? []) {
      const v = ds.volumes.find((x) => x.name === m.name);
      if (v?.configMap) {
        if (!m.mountPath.startsWith('/etc/')) throw new Error(`volume ${m.name}: ConfigMap mounts are supported under /etc here, not ${m.mountPath}`);
        const cm = await this.core.readNamespacedConfigMap({ name: v.configMap.name, namespace: ds.namespace });
        await mkdir(join(stage, 'root', m.mountPath), { recursive: true });
        for (const [k, text] of Object.entries(cm.data ?? {})) await writeFile(join(stage, 'root', m.mountPath, k), text);
      } else if (v?.hostPath && v.hostPath.path === m.mountPath) {
        // the host's own path: visible as it is, except under /run, which is the pod's own
        if (m.mountPath.startsWith('/run/')) binds.push('--bind-host', m.mountPath);
      } else {
        throw new Error(`volume ${m.name} at ${m.mountPath}: not supported by the netns cluster`);
      }
    }
    await mkdir(join(stage, 'root', 'etc'), { recursive: true });
    // the projected service-account token, as the kubelet writes it
    const sa = join(stage, 'root', 'run', 'secrets', 'kubernetes.io', 'serviceaccount');
    await mkdir(sa, { recursive: true });
    const tr = await this.core.createNamespacedServiceAccountToken({
      name: ds.serviceAccountName,
      namespace: ds.namespace,
      body: { spec: { audiences: [], expirationSeconds: TOKEN_SECONDS } },
    });
    await writeFile(join(sa, 'token'), tr.status!.token);
    await writeFile(join(sa, 'ca.crt'), await readFile(this.s.apiserver!.caFile, 'utf8'));
    await writeFile(join(sa, 'namespace'), ds.namespace);

    const log = join(this.dir, 'nodes', n.name, 'kpx.log');
    const offset = logSize(log);
    const rec = spawnDetached(
      `kpx/${n.name}`,
      'ip',
      ['netns', 'exec', this.nodeNs(n.name), 'unshare', '--mount', '--propagation', 'private', '--', 'sh', CONTAINER_SH, stage, ...binds, '--', process.execPath, ...launcherArgv(KPX_BIN), ...args],
      { log, env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env }, cwd: '/' },
    );
    await this.serial(async () => {
      this.s.procs = this.s.procs.filter((p) => p.role !== rec.role);
      this.s.procs.push(rec);
      await this.save();
    });
    await waitForLog(rec, FIRST_SYNC, FIRST_SYNC_MS, offset);
  }

  async stopProxy(node: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc(`kpx/${node}`);
    if (p) await stopProc(p, { signal, graceMs: 10_000 });
  }

  async restartProxy(node: string): Promise<void> {
    await this.stopProxy(node);
    await this.startProxy(node);
  }

  // ---- pods: the kubelet's part -----------------------------------------------------------

  private nodeRec(name: string): NodeRec {
    const n = this.s.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name} (nodes: ${this.s.nodes.map((x) => x.name).join(', ')})`);
    return n;
  }

  private podRec(name: string, namespace = 'default'): PodRec {
    const p = this.s.pods.find((x) => x.name === name && x.namespace === namespace);
    if (!p) throw new Error(`no pod ${namespace}/${name}`);
    return p;
  }

  private async ensureNamespace(namespace: string): Promise<void> {
    if (namespace === 'default') return;
    await this.core.createNamespace({ body: { metadata: { name: namespace } } }).catch(ignoreConflict);
    await this.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'default' } } }).catch(ignoreConflict);
  }

  async addPod(spec: { name: string; node: string; labels: Record<string, string>; namespace?: string }): Promise<ClusterPod> {
    const namespace = spec.namespace ?? 'default';
    if (!DNS_LABEL.test(spec.name)) throw new Error(`pod name "${spec.name}" is not a DNS label`);
    const n = this.nodeRec(spec.node);
    if (n.lost) throw new Error(`node ${n.name} is lost`);
    const rec = await this.serial(async () => {
      if (this.s.pods.some((p) => p.name === spec.name && p.namespace === namespace)) throw new Error(`pod ${namespace}/${spec.name} exists`);
      const used = new Set(this.s.pods.filter((p) => p.node === n.name).map((p) => p.ip));
      const span = plan.LAST_POD_HOST - plan.FIRST_POD_HOST + 1;
      let host = -1;
      for (let k = 0; k < span; k++) {
        const h = plan.FIRST_POD_HOST + ((n.nextHost - plan.FIRST_POD_HOST + k) % span);
        if (!used.has(plan.podIP(n.index, h))) {
          host = h;
          break;
        }
      }
      if (host === -1) throw new Error(`node ${n.name} has no free pod address`);
      n.nextHost = host + 1 > plan.LAST_POD_HOST ? plan.FIRST_POD_HOST : host + 1;
      const key = namespace === 'default' ? spec.name : `${spec.name}.${namespace}`;
      const p: PodRec = {
        name: spec.name,
        namespace,
        node: n.name,
        ip: plan.podIP(n.index, host),
        netns: this.nsName(`pod-${key}`),
        veth: `veth${createHash('sha1').update(`${namespace}/${spec.name}`).digest('hex').slice(0, 8)}`,
        labels: spec.labels,
        lost: false,
      };
      this.s.pods.push(p);
      await this.save();
      return p;
    });
    await this.addPodNetwork(rec, n);
    const key = `${rec.namespace}/${rec.name}`;
    const proc = spawnDetached(`pod/${key}`, 'ip', ['netns', 'exec', rec.netns, process.execPath, ECHO, rec.name, String(ECHO_PORT), `${HOLD_PORT}/hold`], {
      log: join(this.dir, 'pods', `${rec.namespace}.${rec.name}.log`),
    });
    this.s.procs.push(proc);
    await this.save();
    await waitForLog(proc, /^ready$/m, 20_000);
    await this.ensureNamespace(namespace);
    await this.core.createNamespacedPod({
      namespace,
      body: {
        metadata: { name: rec.name, namespace, labels: rec.labels, annotations: { 'netns-cluster.kpx/netns': rec.netns } },
        spec: {
          nodeName: n.name,
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          terminationGracePeriodSeconds: 30,
          containers: [
            {
              name: 'echo',
              image: 'kpx.invalid/echo-server',
              ports: [
                { name: 'echo', containerPort: ECHO_PORT, protocol: 'TCP' },
                { name: 'echo-udp', containerPort: ECHO_PORT, protocol: 'UDP' },
                { name: 'hold', containerPort: HOLD_PORT, protocol: 'TCP' },
              ],
            },
          ],
        },
      },
    });
    const readyAt = await this.setPodStatus(rec, true);
    await this.reconcileNamespace(namespace, readyAt);
    return this.podInfo(rec);
  }

  private podInfo(p: PodRec): ClusterPod {
    return { name: p.name, namespace: p.namespace, node: p.node, ip: p.ip, labels: p.labels };
  }

  /** What the kubelet reports: Running with its IP, Ready or not. */
  private async setPodStatus(p: PodRec, ready: boolean): Promise<Date> {
    const n = this.nodeRec(p.node);
    const pod = await this.core.readNamespacedPodStatus({ name: p.name, namespace: p.namespace });
    const now = new Date();
    const cond = (type: string, status: boolean) => ({ type, status: status ? 'True' : 'False', lastTransitionTime: now });
    pod.status = {
      phase: 'Running',
      hostIP: n.internalIP,
      hostIPs: [{ ip: n.internalIP }],
      podIP: p.ip,
      podIPs: [{ ip: p.ip }],
      startTime: pod.status?.startTime ?? now,
      conditions: [cond('PodScheduled', true), cond('Initialized', true), cond('ContainersReady', ready), cond('Ready', ready)],
      containerStatuses: [{ name: 'echo', image: 'kpx.invalid/echo-server', imageID: '', ready, restartCount: 0, started: ready, state: { running: { startedAt: pod.status?.startTime ?? now } } }],
    };
    await this.core.replaceNamespacedPodStatus({ name: p.name, namespace: p.namespace, body: pod });
    return now;
  }

  async deletePod(name: string, o: { gracePeriodSeconds: number; namespace?: string }): Promise<PodDeletion> {
    const p = this.podRec(name, o.namespace);
    const grace = Math.max(0, Math.floor(o.gracePeriodSeconds));
    const terminatingAt = Date.now();
    if (grace > 0) {
      // deletionTimestamp set; the endpoint turns terminating (still serving)
      await this.core.deleteNamespacedPod({ name: p.name, namespace: p.namespace, gracePeriodSeconds: grace }).catch((err) => {
        if (!isNotFound(err)) throw err;
      });
      await this.reconcileNamespace(p.namespace, new Date(terminatingAt));
      // the pod keeps serving through its grace period, as with a preStop hook that sleeps it out
      if (!p.lost) await sleep(grace * 1000);
    }
    const killedAt = Date.now();
    await this.killPod(p);
    // the kubelet's final delete once the containers are gone
    await this.core.deleteNamespacedPod({ name: p.name, namespace: p.namespace, gracePeriodSeconds: 0 }).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
    await this.serial(async () => {
      this.s.pods = this.s.pods.filter((x) => x !== p);
      await this.save();
    });
    await this.reconcileNamespace(p.namespace, new Date(killedAt));
    return { terminatingAt, killedAt, goneAt: Date.now() };
  }

  private async killPod(p: PodRec, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const proc = this.proc(`pod/${p.namespace}/${p.name}`);
    if (proc) await stopProc(proc, { signal, graceMs: 2000 });
    await this.serial(async () => {
      this.s.procs = this.s.procs.filter((x) => x !== proc);
      await this.removeNs(p.netns);
      await this.save();
    });
  }

  // ---- services and the EndpointSlice controller ---------------------------------------------

  private reconcileQueue<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.apiChain.then(fn, fn);
    this.apiChain = next.catch(() => {});
    return next;
  }

  /** Re-runs the EndpointSlice controller for every Service with a selector in a namespace. */
  async reconcileNamespace(namespace: string, trigger: Date): Promise<ReconcileResult> {
    return this.reconcileQueue(async () => {
      const total: ReconcileResult = { created: 0, updated: 0, deleted: 0 };
      for (const svc of (await this.core.listNamespacedService({ namespace })).items) {
        if (!hasSelector(svc)) continue;
        const r = await reconcileService({ core: this.core, disc: this.disc }, namespace, svc.metadata!.name!, trigger);
        total.created += r.created;
        total.updated += r.updated;
        total.deleted += r.deleted;
      }
      return total;
    });
  }

  /** Creates or updates a Service (server-side apply, as `kubectl apply --server-side`) and its EndpointSlices. */
  async applyService(obj: object): Promise<ServiceInfo> {
    const o = structuredClone(obj) as KubernetesObject & { spec?: Record<string, unknown> };
    if (o.kind !== 'Service' || o.apiVersion !== 'v1') throw new Error(`expected a v1 Service, got ${o.apiVersion}/${o.kind}`);
    o.metadata ??= {};
    o.metadata.namespace ??= 'default';
    await this.ensureNamespace(o.metadata.namespace);
    const res = await this.objects.patch(o, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
    await this.reconcileQueue(() => reconcileService({ core: this.core, disc: this.disc }, o.metadata!.namespace!, o.metadata!.name!, new Date()));
    return serviceInfo(res);
  }

  async deleteService(name: string, namespace = 'default'): Promise<void> {
    await this.core.deleteNamespacedService({ name, namespace });
    // no garbage collector runs here: the controller removes the slices it owned
    await this.reconcileQueue(() => reconcileService({ core: this.core, disc: this.disc }, namespace, name, new Date()));
  }

  // ---- node loss ----------------------------------------------------------------------------

  async loseNode(node: string): Promise<void> {
    const n = this.nodeRec(node);
    if (n.lost) throw new Error(`node ${node} is already lost`);
    const kpx = this.proc(`kpx/${node}`);
    if (kpx) await stopProc(kpx, { signal: 'SIGKILL' });
    await Promise.all(
      this.s.pods
        .filter((p) => p.node === node && !p.lost)
        .map(async (p) => {
          await this.killPod(p, 'SIGKILL');
          p.lost = true;
        }),
    );
    await this.serial(async () => {
      await this.removeNs(this.nodeNs(node));
      n.lost = true;
      await this.save();
    });
  }

  /** The node lifecycle controller, once a node's heartbeat is overdue: Node Ready Unknown with the unreachable taints, its pods not Ready. */
  async markNodeLost(node: string): Promise<void> {
    await this.setNodeReady(node, false);
    const now = new Date();
    const namespaces = new Set<string>();
    for (const pod of (await this.core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` })).items) {
      pod.status ??= {};
      pod.status.conditions = (pod.status.conditions ?? []).map((c) => (c.type === 'Ready' ? { ...c, status: 'False', reason: 'NodeNotReady', lastTransitionTime: now } : c));
      await this.core.replaceNamespacedPodStatus({ name: pod.metadata!.name!, namespace: pod.metadata!.namespace!, body: pod });
      namespaces.add(pod.metadata!.namespace!);
    }
    for (const ns of namespaces) await this.reconcileNamespace(ns, now);
  }

  /** The node comes back empty: its network, Node Ready, its lost pods deleted (pod GC), kpx started. */
  async restoreNode(node: string): Promise<void> {
    const n = this.nodeRec(node);
    if (!n.lost) throw new Error(`node ${node} is not lost`);
    await this.buildNode(n);
    await this.wireNode(n);
    await this.setNodeReady(node, true);
    const lost = this.s.pods.filter((p) => p.node === node && p.lost);
    for (const p of lost) {
      await this.core.deleteNamespacedPod({ name: p.name, namespace: p.namespace, gracePeriodSeconds: 0 }).catch((err) => {
        if (!isNotFound(err)) throw err;
      });
    }
    await this.serial(async () => {
      this.s.pods = this.s.pods.filter((p) => !lost.includes(p));
      n.lost = false;
      await this.save();
    });
    for (const ns of new Set(lost.map((p) => p.namespace))) await this.reconcileNamespace(ns, new Date());
    await this.startProxy(node);
  }

  // ---- probes ---------------------------------------------------------------------------------

  get nodes(): ClusterNode[] {
    return this.s.nodes.map((n) => ({
      name: n.name,
      zone: n.zone,
      internalIP: n.internalIP,
      addresses: [n.internalIP, plan.bridgeIP(n.index), ...(this.s.network === 'vxlan' ? [plan.vtepIP(n.index)] : [])],
    }));
  }

  get pods(): ClusterPod[] {
    return this.s.pods.filter((p) => !p.lost).map((p) => this.podInfo(p));
  }

  get network(): plan.Network {
    return this.s.network;
  }

  get description(): string {
    return `netns cluster: ${this.s.nodes.length} nodes, ${this.s.network} network, kpx ${this.s.proxyMode} mode`;
  }

  /** The network namespace a probe runs in. */
  nsOf(where: Where): string {
    if (where === 'external') return this.externalNs;
    if ('node' in where) {
      const n = this.nodeRec(where.node);
      if (n.lost) throw new Error(`node ${n.name} is lost`);
      return this.nodeNs(n.name);
    }
    return this.podRec(where.pod, where.namespace).netns;
  }

  async probe(from: Where, proto: Proto, host: string, port: number, o: { count?: number; timeoutMs?: number; intervalMs?: number } = {}): Promise<ProbeResult> {
    const args = [PROBE, proto, host, String(port), '--count', String(o.count ?? 1), '--timeout', String(o.timeoutMs ?? 2000)];
    if (o.intervalMs) args.push('--interval', String(o.intervalMs));
    const r = await execa('ip', ['netns', 'exec', this.nsOf(from), process.execPath, ...args]);
    return JSON.parse(r.stdout) as ProbeResult;
  }

  async httpGet(from: Where, url: string): Promise<{ status: number; body: string }> {
    const r = await execa('ip', ['netns', 'exec', this.nsOf(from), 'curl', '-sS', '--max-time', '3', '-o', '-', '-w', '\n%{http_code}', url], { reject: false });
    const i = r.stdout.lastIndexOf('\n');
    const status = Number(r.stdout.slice(i + 1)) || 0;
    return { status, body: status ? r.stdout.slice(0, i) : r.stderr.trim() };
  }

  private stream(from: Where, args: string[]): Stream {
    const proc = execa('ip', ['netns', 'exec', this.nsOf(from), process.execPath, PROBE, ...args], { reject: false, buffer: false });
    const entry = { proc };
    this.streams.add(entry);
    const lines: Array<{ ts: number; what: string }> = [];
    let buf = '';
    proc.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) {
        const sp = l.indexOf(' ');
        if (sp > 0) lines.push({ ts: Number(l.slice(0, sp)), what: l.slice(sp + 1) });
      }
    });
    const exited = proc.then(() => {
      this.streams.delete(entry);
    });
    return {
      lines,
      exited,
      stop: async () => {
        proc.kill('SIGTERM');
        await exited;
      },
    };
  }

  follow(from: Where, host: string, port: number, o: { intervalMs: number; timeoutMs: number }): Stream {
    return this.stream(from, ['tcp', host, String(port), '--follow', '--interval', String(o.intervalMs), '--timeout', String(o.timeoutMs)]);
  }

  hold(from: Where, host: string, port: number, o: { intervalMs: number; timeoutMs: number }): Stream {
    return this.stream(from, ['tcp', host, String(port), '--hold', '--interval', String(o.intervalMs), '--timeout', String(o.timeoutMs)]);
  }

  async proxyMetrics(node: string): Promise<string> {
    const r = await this.httpGet({ node }, 'http://127.0.0.1:10249/metrics');
    if (r.status !== 200) throw new Error(`kpx metrics on ${node}: ${r.status} ${r.body}`);
    return r.body;
  }

  async iptablesSave(node: string): Promise<string> {
    // kpx picks nft in a fresh namespace (no legacy rules); its log says which backend it detected
    return (await execa('ip', ['netns', 'exec', this.nsOf({ node }), 'iptables-nft-save'])).stdout;
  }

  // ---- status -----------------------------------------------------------------------------------

  /** What runs, for `status` and `up`'s summary. */
  summary(): {
    name: string;
    network: plan.Network;
    proxyMode: plan.ProxyMode;
    phase: string;
    upSeconds?: number;
    kubeconfig: string;
    dir: string;
    namespaces: { underlay: string; external: string };
    apiserver: { alive: boolean; server: string };
    nodes: Array<ClusterNode & { netns: string; podCIDR: string; lost: boolean; kpx: boolean; kpxLog: string }>;
    pods: Array<ClusterPod & { netns: string; running: boolean }>;
  } {
    const a = this.proc('apiserver');
    return {
      name: this.s.name,
      network: this.s.network,
      proxyMode: this.s.proxyMode,
      phase: this.s.phase,
      upSeconds: this.s.upSeconds,
      kubeconfig: this.kubeconfigPath,
      dir: this.dir,
      namespaces: { underlay: this.underlayNs, external: this.externalNs },
      apiserver: { alive: !!a && alive(a), server: this.s.apiserver ? `https://127.0.0.1:${this.s.apiserver.port} (nodes: https://${plan.CONTROL_PLANE_IP}:${this.s.apiserver.port})` : '-' },
      nodes: this.s.nodes.map((n, k) => {
        const p = this.proc(`kpx/${n.name}`);
        return { ...this.nodes[k]!, netns: this.nodeNs(n.name), podCIDR: n.podCIDR, lost: n.lost, kpx: !!p && alive(p), kpxLog: join(this.dir, 'nodes', n.name, 'kpx.log') };
      }),
      pods: this.s.pods.map((p) => {
        const proc = this.proc(`pod/${p.namespace}/${p.name}`);
        return { ...this.podInfo(p), netns: p.netns, running: !!proc && alive(proc) };
      }),
    };
  }
}

function serviceInfo(o: KubernetesObject & { spec?: Record<string, unknown> }): ServiceInfo {
  const spec = (o.spec ?? {}) as { clusterIP?: string; healthCheckNodePort?: number; ports?: Array<{ name?: string; port: number; protocol?: string; nodePort?: number }> };
  return {
    name: o.metadata!.name!,
    namespace: o.metadata!.namespace ?? 'default',
    clusterIP: spec.clusterIP ?? '',
    ports: (spec.ports ?? []).map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP', ...(p.nodePort ? { nodePort: p.nodePort } : {}) })),
    ...(spec.healthCheckNodePort ? { healthCheckNodePort: spec.healthCheckNodePort } : {}),
  };
}

/** Cluster directories under a base directory. */
export async function clusterDirs(baseDir = DEFAULT_BASE_DIR): Promise<string[]> {
  const names = await readdir(baseDir).catch(() => [] as string[]);
  return names.map((n) => join(baseDir, n)).filter((d) => existsSync(join(d, 'state.json')));
}

/** Removes clusters whose owning process (a test run) is gone. CLI clusters have no owner and stay. */
export async function removeOrphanClusters(baseDir = DEFAULT_BASE_DIR): Promise<string[]> {
  const removed: string[] = [];
  for (const d of await clusterDirs(baseDir)) {
    const text = await readFile(join(d, 'state.json'), 'utf8').catch(() => null);
    if (!text) continue;
    const owner = (JSON.parse(text) as State).owner;
    if (!owner) continue;
    try {
      process.kill(owner, 0);
      continue;
    } catch {
      /* the owner is gone */
    }
    await NetnsCluster.downDir(resolve(d));
    removed.push(basename(d));
  }
  return removed;
}
