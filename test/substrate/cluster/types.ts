// What an end-to-end test needs from a cluster, whichever cluster it is: the netns cluster
// (hack/netns-cluster, test/substrate/cluster/netns-cluster.ts) or a real one reached
// through a kubeconfig (test/e2e/kind-cluster.ts). Tests only use this interface.
import type { ProbeResult } from '../netns.js';

export type { ProbeResult };
export type Proto = 'tcp' | 'udp';

/** Every pod runs the echo server on these ports (test/substrate/echo-server.mjs). */
export const ECHO_PORT = 8080; // TCP and UDP: one JSON answer naming the pod and the client address it saw
export const HOLD_PORT = 9000; // TCP: long-lived, one answer per line the client sends

/** Where a probe runs: in a pod, on a node (its network namespace / host network), or on the external client. */
export type Where = { pod: string; namespace?: string } | { node: string } | 'external';

export interface ClusterNode {
  name: string;
  zone: string;
  internalIP: string;
  /** every address of the node that can be a masquerade source towards other nodes' pods */
  addresses: string[];
}

export interface ClusterPod {
  name: string;
  namespace: string;
  node: string;
  ip: string;
  labels: Record<string, string>;
}

export interface ServiceInfo {
  name: string;
  namespace: string;
  clusterIP: string;
  ports: Array<{ name: string; port: number; protocol: string; nodePort?: number }>;
  healthCheckNodePort?: number;
}

export interface PodDeletion {
  /** the API delete (deletionTimestamp set: the endpoint turns terminating) */
  terminatingAt: number;
  /** the grace period is over: the pod's processes are killed */
  killedAt: number;
  /** the Pod object is gone */
  goneAt: number;
}

/** Output of a long-running probe: "<epoch ms> <pod name>" or "<epoch ms> !<error>" per line. */
export interface Stream {
  readonly lines: Array<{ ts: number; what: string }>;
  /** resolves when the probe process ends by itself */
  readonly exited: Promise<void>;
  stop(): Promise<void>;
}

export interface E2ECluster {
  readonly kind: 'netns' | 'kind';
  /** one line for reports: network, proxy mode, node count */
  readonly description: string;
  readonly nodes: readonly ClusterNode[];
  /** the address the external client's packets carry */
  readonly externalClientIP: string;
  /** why a capability is missing (null: available) */
  readonly unsupported: { nodeLoss: string | null };

  applyService(obj: object): Promise<ServiceInfo>;
  deleteService(name: string, namespace?: string): Promise<void>;
  /** resolves once the pod runs, is Ready and the EndpointSlice controller has seen it */
  addPod(p: { name: string; node: string; labels: Record<string, string>; namespace?: string }): Promise<ClusterPod>;
  /** graceful deletion: terminating for the grace period (still serving), then killed, then gone */
  deletePod(name: string, o: { gracePeriodSeconds: number; namespace?: string }): Promise<PodDeletion>;

  probe(from: Where, proto: Proto, host: string, port: number, o?: { count?: number; timeoutMs?: number; intervalMs?: number }): Promise<ProbeResult>;
  httpGet(from: Where, url: string): Promise<{ status: number; body: string }>;
  /** a new TCP connection every intervalMs until stopped */
  follow(from: Where, host: string, port: number, o: { intervalMs: number; timeoutMs: number }): Stream;
  /** one long-lived TCP connection to HOLD_PORT semantics, a round trip every intervalMs */
  hold(from: Where, host: string, port: number, o: { intervalMs: number; timeoutMs: number }): Stream;

  /** kpx's /metrics on a node */
  proxyMetrics(node: string): Promise<string>;
  /** iptables-save of the node (the backend kpx uses) */
  iptablesSave(node: string): Promise<string>;
  /** stops kpx on the node the way a DaemonSet rollout does (SIGTERM) and starts it again; resolves after its first sync */
  restartProxy(node: string): Promise<void>;
  /** the node and its pods vanish at once (no API change) */
  loseNode(node: string): Promise<void>;
  /** what the node lifecycle controller does for a node that stopped reporting: Node not Ready, its pods not Ready */
  markNodeLost(node: string): Promise<void>;
  /** the node comes back empty: network, Node Ready, lost pods deleted, kpx started (resolves after its first sync) */
  restoreNode(node: string): Promise<void>;

  destroy(): Promise<void>;
}
