// What a scale run builds: the node topology of the dataplane tests (test/substrate/netns.ts)
// with endpoint pods that own many addresses, a client pod running the probe agent, and the
// population of Services and EndpointSlices in the apiserver.
//
// Endpoints: kube-proxy and kpx program one chain (or real server) per endpoint of each
// service port, whatever the address, so services may share endpoint addresses. The pool
// is a few thousand addresses: two local pods with addresses in the pod CIDR (on-link,
// like pods on this node), and remote pods ("on other nodes", behind the ext router) that
// each own a routed /22 of /32 addresses (ext routes the block to the pod, so ext's ARP
// table holds one entry per pod, not per address). One echo server per pod listens on
// every address, so any endpoint answers and says which address it was reached at.
import { execa, type ResultPromise } from 'execa';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { NET, REPO, Topology } from '../../test/substrate/netns.js';
import { Http2Api, pool } from './api.js';

export const K8S_NAMESPACE = 'kpx-scale';
export const NODE_NAME = 'node-a';
export const CLIENT_IP = '198.18.1.2';
export const SERVICE_PORT = 80;
export const TARGET_PORT = 8080;
const AGENT = join(REPO, 'bench/scale/probe-agent.mjs');

export interface PoolEndpoint {
  ip: string;
  node: string;
}

export interface PoolShape {
  /** addresses per remote pod (a routed block; at most 1022) */
  remoteIPsPerPod: number;
  remotePods: number;
}

/** 198.18.(16 + 4i).0/22 for remote pod i: inside 198.18.0.0/15, clear of the test subnets. */
const remoteBlock = (i: number) => `198.18.${16 + 4 * i}.0/22`;
const remoteAddr = (i: number, k: number) => {
  const n = k + 1; // skip .0 of the block
  return `198.18.${16 + 4 * i + Math.floor(n / 256)}.${n % 256}`;
};
const LOCAL = [
  { name: 'l0', ip: '198.18.1.20', extra: Array.from({ length: 29 }, (_, i) => `198.18.1.${21 + i}`) },
  { name: 'l1', ip: '198.18.1.50', extra: Array.from({ length: 29 }, (_, i) => `198.18.1.${51 + i}`) },
];

/** Every endpoint address of the pool (the same for every topology of one shape). */
export function endpointPool(shape: PoolShape): PoolEndpoint[] {
  const out: PoolEndpoint[] = [];
  for (const l of LOCAL) for (const ip of [l.ip, ...l.extra]) out.push({ ip, node: NODE_NAME });
  for (let i = 0; i < shape.remotePods; i++) for (let k = 0; k < shape.remoteIPsPerPod; k++) out.push({ ip: remoteAddr(i, k), node: 'node-b' });
  return out;
}

export class ScaleTopology {
  private agent: ResultPromise | null = null;
  private nextId = 1;
  private readonly waiting = new Map<number, (v: Record<string, unknown>) => void>();

  private constructor(readonly topo: Topology) {}

  /** Namespaces of this topology (for killing what runs in them). */
  namespaces(): string[] {
    return [this.topo.node, this.topo.ext, ...[...this.topo.pods.values()].map((p) => p.ns)];
  }

  static async create(shape: PoolShape): Promise<ScaleTopology> {
    if (shape.remoteIPsPerPod > 1022) throw new Error('at most 1022 addresses per remote pod');
    const topo = await Topology.create({
      pods: [
        ...LOCAL.map((l) => ({ name: l.name, ip: l.ip, extraIPs: l.extra, ports: [TARGET_PORT] })),
        ...Array.from({ length: shape.remotePods }, (_, i) => ({ name: `r${i}`, ip: `198.18.2.${20 + i}`, remote: true, ports: [TARGET_PORT] })),
        { name: 'client', ip: CLIENT_IP },
      ],
    });
    const t = new ScaleTopology(topo);
    try {
      for (let i = 0; i < shape.remotePods; i++) {
        const pod = topo.pod(`r${i}`);
        const lines: string[] = [];
        for (let k = 0; k < shape.remoteIPsPerPod; k++) {
          const ip = remoteAddr(i, k);
          lines.push(`address add ${ip}/32 dev eth0`);
        }
        await execa('ip', ['-n', pod.ns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
        await execa('ip', ['-n', topo.ext, 'route', 'add', remoteBlock(i), 'via', pod.ip]);
      }
      await t.startAgent();
    } catch (err) {
      await t.destroy();
      throw err;
    }
    return t;
  }

  private async startAgent(): Promise<void> {
    const p = execa('ip', ['netns', 'exec', this.topo.pod('client').ns, process.execPath, AGENT], { reject: false, buffer: false, stdin: 'pipe' });
    this.agent = p;
    const rl = createInterface({ input: p.stdout });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('probe agent did not start in 10 s')), 10_000);
      rl.on('line', (line) => {
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (msg.ready) {
          clearTimeout(timer);
          resolve();
          return;
        }
        const w = this.waiting.get(msg.id as number);
        if (w) {
          this.waiting.delete(msg.id as number);
          w(msg);
        }
      });
      p.stderr?.on('data', (d: Buffer) => process.stderr.write(`[probe-agent] ${d}`));
      void p.then(() => {
        clearTimeout(timer);
        reject(new Error('probe agent exited'));
        for (const w of this.waiting.values()) w({ ok: false, error: 'agent exited' });
        this.waiting.clear();
      });
    });
  }

  private ask<T>(req: Record<string, unknown>): { id: number; done: Promise<T> } {
    const id = this.nextId++;
    const done = new Promise<T>((resolve) => this.waiting.set(id, resolve as (v: Record<string, unknown>) => void));
    this.agent!.stdin!.write(`${JSON.stringify({ ...req, id })}\n`);
    return { id, done };
  }

  /** Connects until an address in expect (any, when absent) answers; see probe-agent.mjs. */
  until(o: { host: string; port: number; expect?: string[]; burst?: number; intervalMs?: number; connectTimeoutMs?: number; deadlineMs: number; signal?: AbortSignal }) {
    const { signal, ...req } = o;
    const r = this.ask<{ ok: boolean; startedAt?: number; answeredAt?: number; rounds: number; error?: string }>({ op: 'until', ...req });
    if (signal) {
      const onAbort = () => this.cancel(r.id);
      signal.addEventListener('abort', onAbort, { once: true });
      void r.done.then(() => signal.removeEventListener('abort', onAbort));
    }
    return r;
  }

  cancel(id: number): void {
    this.agent?.stdin?.write(`${JSON.stringify({ op: 'cancel', target: id })}\n`);
  }

  /** connect() times (ms) to each target, one after the other. */
  connect(targets: Array<[string, number]>, timeoutMs = 2000) {
    return this.ask<{ ms: number[]; errors: Record<string, number> }>({ op: 'connect', targets, timeoutMs }).done;
  }

  /** Kills every process in this topology's namespaces (the proxy's children too), then removes them. */
  async destroy(): Promise<void> {
    this.agent?.kill('SIGKILL');
    await killNamespaceProcesses(this.namespaces());
    await this.topo.destroy();
  }
}

/** SIGKILLs every process that lives in these network namespaces (ours: we created them). */
export async function killNamespaceProcesses(namespaces: string[]): Promise<number> {
  let killed = 0;
  for (const ns of namespaces) {
    const r = await execa('ip', ['netns', 'pids', ns], { reject: false });
    for (const pid of String(r.stdout).split(/\s+/).filter(Boolean).map(Number)) {
      if (pid === process.pid) continue;
      try {
        process.kill(pid, 'SIGKILL');
        killed++;
      } catch {
        /* gone */
      }
    }
  }
  return killed;
}

// ---- the population in the apiserver ----

export interface PopService {
  name: string;
  clusterIP: string;
  nodePort?: number;
  endpoints: PoolEndpoint[];
}

/** xorshift32: reproducible choices for a given seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

export function sliceBody(svc: string, endpoints: PoolEndpoint[], triggerTime?: Date): object {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: `${svc}-s`,
      namespace: K8S_NAMESPACE,
      labels: { 'kubernetes.io/service-name': svc, 'endpointslice.kubernetes.io/managed-by': 'kpx-scale' },
      ...(triggerTime ? { annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': triggerTime.toISOString() } } : {}),
    },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: TARGET_PORT, protocol: 'TCP' }],
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: true, serving: true, terminating: false }, nodeName: e.node })),
  };
}

export function serviceBody(name: string, nodePort: boolean): object {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name, namespace: K8S_NAMESPACE },
    spec: { type: nodePort ? 'NodePort' : 'ClusterIP', ports: [{ name: 'http', port: SERVICE_PORT, targetPort: TARGET_PORT, protocol: 'TCP' }] },
  };
}

const SVC_PATH = `/api/v1/namespaces/${K8S_NAMESPACE}/services`;
const SLICE_PATH = `/apis/discovery.k8s.io/v1/namespaces/${K8S_NAMESPACE}/endpointslices`;

export class Population {
  readonly services: PopService[] = [];
  private readonly random: () => number;
  private nodePorts = 0;
  private created = 0;

  constructor(
    private readonly api: Http2Api,
    private readonly pool: PoolEndpoint[],
    private readonly endpointsPerService: number,
    seed = 42,
    /** NodePorts: every tenth service, at most this many (the range has 2,768) */
    private readonly maxNodePorts = 2500,
  ) {
    this.random = rng(seed);
  }

  pick(exclude: Set<string>): PoolEndpoint {
    for (;;) {
      const e = this.pool[Math.floor(this.random() * this.pool.length)]!;
      if (!exclude.has(e.ip)) return e;
    }
  }

  pickEndpoints(n: number): PoolEndpoint[] {
    const out: PoolEndpoint[] = [];
    const seen = new Set<string>();
    while (out.length < n) {
      const e = this.pick(seen);
      seen.add(e.ip);
      out.push(e);
    }
    return out;
  }

  randomIndex(n = this.services.length): number {
    return Math.floor(this.random() * n);
  }

  static async ensureNamespace(api: Http2Api): Promise<void> {
    await api.request('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: K8S_NAMESPACE } }, [409]);
  }

  /** Creates one Service (ClusterIP, or NodePort) and its EndpointSlice; the apiserver allocates the addresses. */
  async createService(
    name: string,
    opts: { nodePort: boolean; endpoints?: PoolEndpoint[]; triggerTime?: Date; onAllocated?: (s: PopService) => void },
  ): Promise<PopService> {
    const r = await this.api.request<{ spec: { clusterIP: string; ports: Array<{ nodePort?: number }> } }>('POST', SVC_PATH, serviceBody(name, opts.nodePort));
    const endpoints = opts.endpoints ?? this.pickEndpoints(this.endpointsPerService);
    const s: PopService = { name, clusterIP: r.body.spec.clusterIP, nodePort: r.body.spec.ports[0]?.nodePort, endpoints };
    opts.onAllocated?.(s);
    await this.api.request('POST', SLICE_PATH, sliceBody(name, endpoints, opts.triggerTime));
    return s;
  }

  /** Grows the population to n services, `concurrency` creations in flight. */
  async growTo(n: number, concurrency: number, onProgress?: (done: number) => void, signal?: AbortSignal): Promise<void> {
    const start = this.services.length;
    const todo = Array.from({ length: Math.max(0, n - start) }, (_, k) => start + k);
    const made: PopService[] = new Array<PopService>(todo.length);
    await pool(
      todo,
      concurrency,
      async (i, k) => {
        const nodePort = i % 10 === 0 && this.nodePorts < this.maxNodePorts;
        if (nodePort) this.nodePorts++;
        made[k] = await this.createService(`svc-${String(i).padStart(5, '0')}`, { nodePort });
        this.created++;
        onProgress?.(this.created);
      },
      signal,
    );
    this.services.push(...made);
  }

  /** Replaces one endpoint of service i with a pool address it does not have; returns the new one. */
  async changeOneEndpoint(i: number, triggerTime = new Date()): Promise<{ added: PoolEndpoint; removed: PoolEndpoint }> {
    const s = this.services[i]!;
    const k = Math.floor(this.random() * s.endpoints.length);
    const added = this.pick(new Set(s.endpoints.map((e) => e.ip)));
    const endpoints = [...s.endpoints];
    const removed = endpoints[k]!;
    endpoints[k] = added;
    await this.api.request('PUT', `${SLICE_PATH}/${s.name}-s`, sliceBody(s.name, endpoints, triggerTime));
    s.endpoints = endpoints;
    return { added, removed };
  }

  async deleteService(name: string): Promise<void> {
    await this.api.request('DELETE', `${SVC_PATH}/${name}`, undefined, [404]);
    await this.api.request('DELETE', `${SLICE_PATH}/${name}-s`, undefined, [404]);
  }
}

export { NET };
