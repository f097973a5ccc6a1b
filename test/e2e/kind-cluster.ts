// The E2ECluster interface on a real cluster reached through a kubeconfig: a kind cluster
// running kpx as a DaemonSet (hack/kind/e2e.sh with E2E_SUITE=1). UNPROVEN: it has never
// run, because the machines this project runs on have no Docker engine. What it relies on:
//   - pods run node:20-bookworm-slim with the echo server and probe client from a ConfigMap;
//     a preStop hook that sleeps keeps a pod serving through its grace period (as the netns
//     cluster's pods do); PodDeletion.killedAt is the end of the grace period as the client
//     computes it (the kubelet kills no earlier);
//   - probes "from a node" run in a hostNetwork pod pinned to the node; "external" probes run
//     on this machine against the nodes' addresses on the kind Docker network;
//   - the kind node containers are reached with `docker exec` / `docker kill` / `docker start`
//     (iptables-save, node loss); the real node lifecycle controller marks a lost node, which
//     takes about a minute, so node loss runs only with KPX_E2E_NODE_LOSS=1.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { CoreV1Api, KubeConfig, KubernetesObjectApi, PatchStrategy, type KubernetesObject, type V1Pod } from '@kubernetes/client-node';
import { REPO } from '../substrate/cluster/netns-cluster.js';
import { ECHO_PORT, HOLD_PORT, type ClusterNode, type ClusterPod, type E2ECluster, type PodDeletion, type ProbeResult, type Proto, type ServiceInfo, type Stream, type Where } from '../substrate/cluster/types.js';

const IMAGE = 'node:20-bookworm-slim';
const SCRIPTS = 'kpx-e2e-scripts';
const NS = 'default';
const ZONES = ['zone-a', 'zone-b', 'zone-a'];

const ready = (p: V1Pod) => !!p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');

export class KindCluster implements E2ECluster {
  readonly kind = 'kind';
  readonly unsupported = {
    nodeLoss: process.env.KPX_E2E_NODE_LOSS === '1' ? null : 'set KPX_E2E_NODE_LOSS=1: on kind it kills a node container and waits for the node lifecycle controller (about a minute)',
  };
  nodes: ClusterNode[] = [];
  externalClientIP = '';
  private readonly core: CoreV1Api;
  private readonly objects: KubernetesObjectApi;
  private readonly made: Array<{ kind: 'Pod' | 'Service'; name: string }> = [];
  private readonly streams = new Set<ResultPromise>();
  private readonly lost = new Map<string, string[]>();

  private constructor(
    private readonly kubeconfig: string,
    private readonly clusterName: string,
    kc: KubeConfig,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.objects = KubernetesObjectApi.makeApiClient(kc);
  }

  get description(): string {
    return `kind cluster ${this.clusterName}: ${this.nodes.length} nodes (kindnet), kpx from manifests/`;
  }

  static async connect(kubeconfig: string, clusterName: string): Promise<KindCluster> {
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const c = new KindCluster(kubeconfig, clusterName, kc);
    await c.setup();
    return c;
  }

  private kubectl(args: string[], o: { input?: string; reject?: boolean } = {}) {
    return execa('kubectl', ['--kubeconfig', this.kubeconfig, ...args], { input: o.input, reject: o.reject ?? true });
  }

  private async setup(): Promise<void> {
    // workers first: the node lost in the node-loss scenario (the second) must not be the control plane
    const items = (await this.core.listNode()).items.sort((a, b) => Number(!!a.metadata?.labels?.['node-role.kubernetes.io/control-plane']) - Number(!!b.metadata?.labels?.['node-role.kubernetes.io/control-plane']));
    if (items.length < 3) throw new Error(`the kind suite needs 3 nodes, the cluster has ${items.length}`);
    for (const [i, n] of items.slice(0, 3).entries()) {
      await this.kubectl(['label', 'node', n.metadata!.name!, '--overwrite', `topology.kubernetes.io/zone=${ZONES[i]}`]);
      const ip = n.status!.addresses!.find((a) => a.type === 'InternalIP')!.address;
      const gw = n.spec?.podCIDR ? n.spec.podCIDR.replace(/\.0\/\d+$/, '.1') : undefined;
      this.nodes.push({ name: n.metadata!.name!, zone: ZONES[i]!, internalIP: ip, addresses: [ip, ...(gw ? [gw] : [])] });
    }
    this.externalClientIP = (await execa('docker', ['network', 'inspect', 'kind', '-f', '{{range .IPAM.Config}}{{if .Gateway}}{{.Gateway}} {{end}}{{end}}'])).stdout.trim().split(' ')[0]!;
    const data: Record<string, string> = {};
    for (const f of ['echo-server.mjs', 'probe.mjs']) data[f] = await readFile(join(REPO, 'test/substrate', f), 'utf8');
    await this.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: SCRIPTS, namespace: NS }, data });
    // a hostNetwork pod per node: where probes "from the node" run
    await Promise.all(this.nodes.map((n) => this.startPod(`host-${n.name}`, n.name, {}, ['sleep', 'infinity'], true)));
  }

  private async apply(o: object): Promise<KubernetesObject> {
    return this.objects.patch(o, undefined, undefined, 'kpx-e2e', true, PatchStrategy.ServerSideApply);
  }

  private async startPod(name: string, node: string, labels: Record<string, string>, command: string[], hostNetwork = false): Promise<V1Pod> {
    await this.core.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name, labels },
        spec: {
          nodeName: node,
          hostNetwork,
          terminationGracePeriodSeconds: 30,
          tolerations: [{ operator: 'Exists' }],
          volumes: [{ name: 'e2e', configMap: { name: SCRIPTS } }],
          containers: [
            {
              name: 'echo',
              image: IMAGE,
              command,
              volumeMounts: [{ name: 'e2e', mountPath: '/e2e' }],
              ports: hostNetwork
                ? []
                : [
                    { name: 'echo', containerPort: ECHO_PORT, protocol: 'TCP' },
                    { name: 'echo-udp', containerPort: ECHO_PORT, protocol: 'UDP' },
                    { name: 'hold', containerPort: HOLD_PORT, protocol: 'TCP' },
                  ],
              ...(hostNetwork ? {} : { readinessProbe: { tcpSocket: { port: ECHO_PORT }, periodSeconds: 1 }, lifecycle: { preStop: { exec: { command: ['sleep', '3600'] } } } }),
            },
          ],
        },
      },
    });
    this.made.push({ kind: 'Pod', name });
    const end = Date.now() + 180_000;
    for (;;) {
      const p = await this.core.readNamespacedPod({ name, namespace: NS });
      if (ready(p)) return p;
      if (Date.now() > end) throw new Error(`pod ${name} not Ready after 180 s`);
      await sleep(500);
    }
  }

  async addPod(p: { name: string; node: string; labels: Record<string, string>; namespace?: string }): Promise<ClusterPod> {
    const pod = await this.startPod(p.name, p.node, p.labels, ['node', '/e2e/echo-server.mjs', p.name, String(ECHO_PORT), `${HOLD_PORT}/hold`]);
    return { name: p.name, namespace: NS, node: p.node, ip: pod.status!.podIP!, labels: p.labels };
  }

  async deletePod(name: string, o: { gracePeriodSeconds: number }): Promise<PodDeletion> {
    const terminatingAt = Date.now();
    await this.core.deleteNamespacedPod({ name, namespace: NS, gracePeriodSeconds: o.gracePeriodSeconds });
    for (;;) {
      const gone = await this.core.readNamespacedPod({ name, namespace: NS }).then(
        () => false,
        () => true,
      );
      if (gone) break;
      await sleep(200);
    }
    return { terminatingAt, killedAt: terminatingAt + o.gracePeriodSeconds * 1000, goneAt: Date.now() };
  }

  async applyService(obj: object): Promise<ServiceInfo> {
    const res = (await this.apply(obj)) as KubernetesObject & { spec?: { clusterIP?: string; healthCheckNodePort?: number; ports?: Array<{ name?: string; port: number; protocol?: string; nodePort?: number }> } };
    this.made.push({ kind: 'Service', name: res.metadata!.name! });
    return {
      name: res.metadata!.name!,
      namespace: NS,
      clusterIP: res.spec?.clusterIP ?? '',
      ports: (res.spec?.ports ?? []).map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP', ...(p.nodePort ? { nodePort: p.nodePort } : {}) })),
      ...(res.spec?.healthCheckNodePort ? { healthCheckNodePort: res.spec.healthCheckNodePort } : {}),
    };
  }

  async deleteService(name: string): Promise<void> {
    await this.core.deleteNamespacedService({ name, namespace: NS });
  }

  private podOf(where: Exclude<Where, 'external'>): string {
    return 'node' in where ? `host-${where.node}` : where.pod;
  }

  async probe(from: Where, proto: Proto, host: string, port: number, o: { count?: number; timeoutMs?: number; intervalMs?: number } = {}): Promise<ProbeResult> {
    const args = [proto, host, String(port), '--count', String(o.count ?? 1), '--timeout', String(o.timeoutMs ?? 2000), ...(o.intervalMs ? ['--interval', String(o.intervalMs)] : [])];
    const r =
      from === 'external'
        ? await execa(process.execPath, [join(REPO, 'test/substrate/probe.mjs'), ...args])
        : await this.kubectl(['exec', this.podOf(from), '--', 'node', '/e2e/probe.mjs', ...args]);
    return JSON.parse(r.stdout) as ProbeResult;
  }

  async httpGet(from: Where, url: string): Promise<{ status: number; body: string }> {
    const code = `fetch(${JSON.stringify(url)},{signal:AbortSignal.timeout(3000)}).then(async r=>console.log(JSON.stringify({status:r.status,body:await r.text()}))).catch(e=>console.log(JSON.stringify({status:0,body:String(e.cause?.code??e.message)})))`;
    const r = from === 'external' ? await execa(process.execPath, ['-e', code]) : await this.kubectl(['exec', this.podOf(from), '--', 'node', '-e', code]);
    return JSON.parse(r.stdout) as { status: number; body: string };
  }

  private stream(from: Where, args: string[]): Stream {
    const local = from === 'external';
    const proc = local
      ? execa(process.execPath, [join(REPO, 'test/substrate/probe.mjs'), ...args], { reject: false, buffer: false })
      : execa('kubectl', ['--kubeconfig', this.kubeconfig, 'exec', this.podOf(from), '--', 'sh', '-c', 'echo "0 pid $$"; exec timeout 900 node /e2e/probe.mjs "$@"', 'probe', ...args], { reject: false, buffer: false });
    this.streams.add(proc);
    const lines: Array<{ ts: number; what: string }> = [];
    let remotePid = '';
    let buf = '';
    proc.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) {
        const [ts, ...rest] = l.split(' ');
        if (ts === '0' && rest[0] === 'pid') remotePid = rest[1] ?? '';
        else if (ts) lines.push({ ts: Number(ts), what: rest.join(' ') });
      }
    });
    const exited = proc.then(() => void this.streams.delete(proc));
    return {
      lines,
      exited,
      stop: async () => {
        if (!local && remotePid) await this.kubectl(['exec', this.podOf(from), '--', 'kill', remotePid], { reject: false });
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
    return (await execa('docker', ['exec', node, 'iptables-save'])).stdout;
  }

  private async kpxPod(node: string): Promise<V1Pod | undefined> {
    const l = await this.core.listNamespacedPod({ namespace: 'kube-system', labelSelector: 'app.kubernetes.io/name=kpx', fieldSelector: `spec.nodeName=${node}` });
    return l.items.find((p) => !p.metadata?.deletionTimestamp);
  }

  /** Waits for a running kpx pod on the node whose first sync happened after `since`. */
  private async kpxSynced(node: string, since: number): Promise<void> {
    const end = Date.now() + 180_000;
    for (;;) {
      const p = await this.kpxPod(node);
      if (p && p.status?.phase === 'Running') {
        const m = await this.proxyMetrics(node).catch(() => '');
        const last = m.split('\n').find((l) => l.startsWith('kubeproxy_sync_proxy_rules_last_timestamp_seconds'));
        if (last && Number(last.split(' ').at(-1)) * 1000 > since) return;
      }
      if (Date.now() > end) throw new Error(`kpx on ${node} did not sync within 180 s`);
      await sleep(500);
    }
  }

  async restartProxy(node: string): Promise<void> {
    const since = Date.now();
    const p = await this.kpxPod(node);
    if (p) await this.core.deleteNamespacedPod({ name: p.metadata!.name!, namespace: 'kube-system' });
    await this.kpxSynced(node, since);
  }

  async loseNode(node: string): Promise<void> {
    // the node's test pods (its hostNetwork probe pod comes back with the node: the kubelet restarts it)
    const pods = (await this.core.listNamespacedPod({ namespace: NS, fieldSelector: `spec.nodeName=${node}` })).items.map((p) => p.metadata!.name!).filter((n) => !n.startsWith('host-'));
    this.lost.set(node, pods);
    await execa('docker', ['kill', node]);
  }

  async markNodeLost(node: string): Promise<void> {
    // the real node lifecycle controller does it once the node's lease is overdue
    const end = Date.now() + 180_000;
    for (;;) {
      const n = await this.core.readNode({ name: node });
      if (n.status?.conditions?.some((c) => c.type === 'Ready' && c.status !== 'True')) return;
      if (Date.now() > end) throw new Error(`${node} still Ready 180 s after it was killed`);
      await sleep(1000);
    }
  }

  async restoreNode(node: string): Promise<void> {
    const since = Date.now();
    for (const name of this.lost.get(node) ?? []) await this.core.deleteNamespacedPod({ name, namespace: NS, gracePeriodSeconds: 0 }).catch(() => {});
    await execa('docker', ['start', node]);
    await this.kpxSynced(node, since);
  }

  async destroy(): Promise<void> {
    for (const p of this.streams) p.kill('SIGKILL');
    for (const m of this.made.reverse()) {
      if (m.kind === 'Pod') await this.core.deleteNamespacedPod({ name: m.name, namespace: NS, gracePeriodSeconds: 0 }).catch(() => {});
      else await this.core.deleteNamespacedService({ name: m.name, namespace: NS }).catch(() => {});
    }
    await this.core.deleteNamespacedConfigMap({ name: SCRIPTS, namespace: NS }).catch(() => {});
  }
}
