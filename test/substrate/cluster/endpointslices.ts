// The EndpointSlice controller's part, played by the netns cluster (it has no
// kube-controller-manager): for a Service with a selector, the slices a real controller
// writes from the Pods the harness started. What it writes follows the controller of
// Kubernetes 1.36:
//   - one endpoint per pod that has an IP and has not finished (terminating pods stay, so
//     proxies can drain them): conditions ready = serving && !terminating (or
//     publishNotReadyAddresses), serving = the pod's Ready condition, terminating = the
//     pod has a deletionTimestamp; nodeName, the node's topology.kubernetes.io/zone and a
//     targetRef to the pod;
//   - ports resolved per pod (a named targetPort is looked up in the pod's container
//     ports; pods that resolve differently land in different slices), at most 100
//     endpoints per slice;
//   - labels kubernetes.io/service-name, endpointslice.kubernetes.io/managed-by (plus the
//     Service's own labels, and service.kubernetes.io/headless for headless Services), an
//     ownerReference to the Service, the endpoints.kubernetes.io/last-change-trigger-time
//     annotation (when the change that caused the write happened);
//   - hints from spec.trafficDistribution: PreferClose / PreferSameZone give each ready
//     endpoint hints.forZones = its own zone; PreferSameNode also hints.forNodes = its own node.
//     (The topology-aware-hints annotation's CPU-proportional allocation is not played.)
// Slices are updated in place and only written when what they hold changes.
import type { CoreV1Api, DiscoveryV1Api } from '@kubernetes/client-node';

export const LABEL_SERVICE_NAME = 'kubernetes.io/service-name';
export const LABEL_MANAGED_BY = 'endpointslice.kubernetes.io/managed-by';
export const MANAGED_BY = 'endpointslice-controller.k8s.io';
export const LABEL_HEADLESS = 'service.kubernetes.io/headless';
export const ANNOTATION_TRIGGER_TIME = 'endpoints.kubernetes.io/last-change-trigger-time';
export const LABEL_ZONE = 'topology.kubernetes.io/zone';
const MAX_ENDPOINTS_PER_SLICE = 100;

interface Meta {
  name?: string;
  namespace?: string;
  uid?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: Date | string;
  resourceVersion?: string;
  ownerReferences?: unknown[];
}

export interface PodLike {
  metadata?: Meta;
  spec?: { nodeName?: string; hostname?: string; containers?: Array<{ ports?: Array<{ name?: string; containerPort: number; protocol?: string }> }> };
  status?: { phase?: string; podIP?: string; conditions?: Array<{ type: string; status: string }> };
}

export interface ServiceLike {
  metadata?: Meta;
  spec?: {
    selector?: Record<string, string>;
    clusterIP?: string;
    publishNotReadyAddresses?: boolean;
    trafficDistribution?: string;
    ports?: Array<{ name?: string; port: number; protocol?: string; targetPort?: number | string; appProtocol?: string }>;
  };
}

export interface SliceEndpoint {
  addresses: string[];
  conditions: { ready: boolean; serving: boolean; terminating: boolean };
  nodeName?: string;
  zone?: string;
  hints?: { forZones?: Array<{ name: string }>; forNodes?: Array<{ name: string }> };
  targetRef: { kind: 'Pod'; namespace: string; name: string; uid: string };
}

export interface SlicePort {
  name: string;
  port: number;
  protocol: string;
  appProtocol?: string;
}

export interface DesiredSlice {
  ports: SlicePort[];
  endpoints: SliceEndpoint[];
}

const podReady = (p: PodLike): boolean => !!p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');

/** The endpoint ports of a pod (a service port whose named targetPort the pod lacks is left out). */
function podPorts(svc: ServiceLike, pod: PodLike): SlicePort[] {
  const out: SlicePort[] = [];
  for (const sp of svc.spec?.ports ?? []) {
    const protocol = sp.protocol ?? 'TCP';
    const target = sp.targetPort ?? sp.port;
    let port: number | undefined;
    if (typeof target === 'number') port = target;
    else if (/^\d+$/.test(target)) port = Number(target);
    else {
      for (const c of pod.spec?.containers ?? []) {
        const hit = (c.ports ?? []).find((cp) => cp.name === target && (cp.protocol ?? 'TCP') === protocol);
        if (hit) port = hit.containerPort;
      }
    }
    if (port === undefined) continue; // the controller skips a port the pod does not name
    out.push({ name: sp.name ?? '', port, protocol, ...(sp.appProtocol ? { appProtocol: sp.appProtocol } : {}) });
  }
  return out;
}

export function podToEndpoint(svc: ServiceLike, pod: PodLike, zoneOf: (node: string) => string | undefined): SliceEndpoint {
  const serving = podReady(pod);
  const terminating = !!pod.metadata?.deletionTimestamp;
  const ready = !!svc.spec?.publishNotReadyAddresses || (serving && !terminating);
  const nodeName = pod.spec?.nodeName;
  const zone = nodeName ? zoneOf(nodeName) : undefined;
  const ep: SliceEndpoint = {
    addresses: [pod.status!.podIP!],
    conditions: { ready, serving, terminating },
    ...(nodeName ? { nodeName } : {}),
    ...(zone ? { zone } : {}),
    targetRef: { kind: 'Pod', namespace: pod.metadata!.namespace!, name: pod.metadata!.name!, uid: pod.metadata!.uid ?? '' },
  };
  // hints go on ready endpoints only (the controller's trafficdist heuristic)
  const td = svc.spec?.trafficDistribution;
  if (ready && (td === 'PreferClose' || td === 'PreferSameZone') && zone) ep.hints = { forZones: [{ name: zone }] };
  if (ready && td === 'PreferSameNode' && nodeName) ep.hints = { ...(zone ? { forZones: [{ name: zone }] } : {}), forNodes: [{ name: nodeName }] };
  return ep;
}

/** Pods the controller puts into slices: an IP, not finished. */
export function endpointPods(pods: PodLike[]): PodLike[] {
  return pods.filter((p) => !!p.status?.podIP && p.status.phase !== 'Succeeded' && p.status.phase !== 'Failed');
}

/** The slices a Service should have (pure): grouped by resolved ports, at most 100 endpoints each. */
export function desiredSlices(svc: ServiceLike, pods: PodLike[], zoneOf: (node: string) => string | undefined): DesiredSlice[] {
  const groups = new Map<string, DesiredSlice>();
  const sorted = endpointPods(pods).sort((a, b) => (a.status!.podIP! < b.status!.podIP! ? -1 : a.status!.podIP! > b.status!.podIP! ? 1 : 0));
  for (const pod of sorted) {
    const ports = podPorts(svc, pod);
    const key = JSON.stringify(ports);
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { ports, endpoints: [] }));
    g.endpoints.push(podToEndpoint(svc, pod, zoneOf));
  }
  const out: DesiredSlice[] = [];
  for (const g of groups.values()) {
    for (let i = 0; i < g.endpoints.length; i += MAX_ENDPOINTS_PER_SLICE) {
      out.push({ ports: g.ports, endpoints: g.endpoints.slice(i, i + MAX_ENDPOINTS_PER_SLICE) });
    }
  }
  return out;
}

export const hasSelector = (svc: ServiceLike): boolean => Object.keys(svc.spec?.selector ?? {}).length > 0;

export const selectorString = (sel: Record<string, string>): string =>
  Object.entries(sel)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');

interface ExistingSlice {
  metadata?: Meta;
  ports?: Array<{ name?: string; port?: number; protocol?: string; appProtocol?: string }>;
  endpoints?: unknown[];
}

/** What a slice holds, in a form that compares equal when nothing the controller writes differs. */
function content(ports: unknown, endpoints: unknown, labels: Record<string, string> | undefined): string {
  const norm = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(norm);
    if (v && typeof v === 'object') {
      const o: Record<string, unknown> = {};
      for (const k of Object.keys(v).sort()) {
        const x = (v as Record<string, unknown>)[k];
        if (x !== undefined && x !== null) o[k] = norm(x);
      }
      return o;
    }
    return v;
  };
  return JSON.stringify(norm({ ports, endpoints, labels }));
}

export interface ReconcileResult {
  created: number;
  updated: number;
  deleted: number;
}

/** Brings the managed slices of one Service in line with its Pods. */
export async function reconcileService(
  api: { core: CoreV1Api; disc: DiscoveryV1Api },
  namespace: string,
  name: string,
  triggerTime: Date,
): Promise<ReconcileResult> {
  const result: ReconcileResult = { created: 0, updated: 0, deleted: 0 };
  let svc: ServiceLike | null = null;
  try {
    svc = (await api.core.readNamespacedService({ name, namespace }));
  } catch (err) {
    if ((err as { code?: number }).code !== 404) throw err;
  }
  const existing = ((await api.disc.listNamespacedEndpointSlice({ namespace, labelSelector: `${LABEL_SERVICE_NAME}=${name},${LABEL_MANAGED_BY}=${MANAGED_BY}` })).items ?? []) as ExistingSlice[];
  let desired: DesiredSlice[] = [];
  if (svc && hasSelector(svc)) {
    const pods = (await api.core.listNamespacedPod({ namespace, labelSelector: selectorString(svc.spec!.selector!) })).items as PodLike[];
    const zones = new Map<string, string>();
    for (const n of (await api.core.listNode()).items) {
      const z = n.metadata?.labels?.[LABEL_ZONE];
      if (z) zones.set(n.metadata!.name!, z);
    }
    desired = desiredSlices(svc, pods, (n) => zones.get(n));
  }
  const labels: Record<string, string> = {
    ...(svc?.metadata?.labels ?? {}),
    [LABEL_SERVICE_NAME]: name,
    [LABEL_MANAGED_BY]: MANAGED_BY,
    ...(svc?.spec?.clusterIP === 'None' ? { [LABEL_HEADLESS]: '' } : {}),
  };
  // reuse existing slices with the same ports first, so slice names stay stable
  const pool = [...existing];
  const take = (ports: SlicePort[]): ExistingSlice | undefined => {
    const key = content(ports, null, undefined);
    const i = pool.findIndex((s) => content(s.ports ?? [], null, undefined) === key);
    return i === -1 ? pool.shift() : pool.splice(i, 1)[0];
  };
  for (const d of desired) {
    const body = {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        namespace,
        labels,
        annotations: { [ANNOTATION_TRIGGER_TIME]: triggerTime.toISOString() },
        ownerReferences: [{ apiVersion: 'v1', kind: 'Service', name, uid: svc!.metadata!.uid!, controller: true, blockOwnerDeletion: true }],
      } as Meta & { generateName?: string },
      addressType: 'IPv4',
      ports: d.ports,
      endpoints: d.endpoints,
    };
    const old = take(d.ports);
    if (old) {
      if (content(old.ports ?? [], old.endpoints ?? [], old.metadata?.labels) === content(d.ports, d.endpoints, labels)) continue;
      body.metadata.name = old.metadata!.name!;
      body.metadata.resourceVersion = old.metadata!.resourceVersion;
      await api.disc.replaceNamespacedEndpointSlice({ name: old.metadata!.name!, namespace, body: body as never });
      result.updated++;
    } else {
      body.metadata.generateName = `${name}-`;
      await api.disc.createNamespacedEndpointSlice({ namespace, body: body as never });
      result.created++;
    }
  }
  for (const s of pool) {
    await api.disc.deleteNamespacedEndpointSlice({ name: s.metadata!.name!, namespace }).catch((err: { code?: number }) => {
      if (err.code !== 404) throw err;
    });
    result.deleted++;
  }
  return result;
}
