// Builders for the Service / EndpointSlice / Node objects tests feed to kpx.
export interface PortSpec {
  name?: string;
  port: number;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
  targetPort?: number;
  nodePort?: number;
}

export function service(o: {
  name: string;
  namespace?: string;
  clusterIP: string | string[];
  ports: PortSpec[];
  type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer';
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
  labels?: Record<string, string>;
}): object {
  const ips = Array.isArray(o.clusterIP) ? o.clusterIP : [o.clusterIP];
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: o.name, namespace: o.namespace ?? 'default', labels: o.labels },
    spec: {
      type: o.type ?? 'ClusterIP',
      clusterIP: ips[0],
      clusterIPs: ips,
      ports: o.ports.map((p) => ({ protocol: 'TCP', targetPort: p.port, ...p })),
      ...o.spec,
    },
    ...(o.status ? { status: o.status } : {}),
  };
}

export interface EndpointSpec {
  ip: string;
  node?: string;
  zone?: string;
  ready?: boolean;
  serving?: boolean;
  terminating?: boolean;
  zoneHints?: string[];
  nodeHints?: string[];
}

export function endpointSlice(o: {
  service: string;
  name?: string;
  namespace?: string;
  family?: 'IPv4' | 'IPv6';
  ports: Array<{ name?: string; port: number; protocol?: 'TCP' | 'UDP' | 'SCTP' }>;
  endpoints: EndpointSpec[];
  annotations?: Record<string, string>;
}): object {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: o.name ?? `${o.service}-${(o.family ?? 'IPv4').toLowerCase()}`,
      namespace: o.namespace ?? 'default',
      labels: { 'kubernetes.io/service-name': o.service },
      annotations: o.annotations,
    },
    addressType: o.family ?? 'IPv4',
    ports: o.ports.map((p) => ({ protocol: 'TCP', ...p })),
    endpoints: o.endpoints.map((e) => ({
      addresses: [e.ip],
      conditions: { ready: e.ready ?? true, serving: e.serving ?? e.ready ?? true, terminating: e.terminating ?? false },
      nodeName: e.node ?? 'node-a',
      ...(e.zone ? { zone: e.zone } : {}),
      ...(e.zoneHints || e.nodeHints
        ? {
            hints: {
              ...(e.zoneHints ? { forZones: e.zoneHints.map((name) => ({ name })) } : {}),
              ...(e.nodeHints ? { forNodes: e.nodeHints.map((name) => ({ name })) } : {}),
            },
          }
        : {}),
    })),
  };
}

export function node(o: { name?: string; ips: string[]; podCIDRs?: string[]; zone?: string; taints?: object[]; deleting?: boolean }): object {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: o.name ?? 'node-a',
      labels: o.zone ? { 'topology.kubernetes.io/zone': o.zone } : {},
      ...(o.deleting ? { deletionTimestamp: '2026-11-22T00:00:00Z' } : {}),
    },
    spec: { podCIDRs: o.podCIDRs ?? [], ...(o.taints ? { taints: o.taints } : {}) },
    status: { addresses: o.ips.map((address) => ({ type: 'InternalIP', address })) },
  };
}

/** A multi-document YAML file (JSON documents are valid YAML). */
export function yamlDocs(...objects: object[]): string {
  return objects.map((o) => JSON.stringify(o, null, 2)).join('\n---\n') + '\n';
}

/** A node and one NodePort Service "web" (port 80 -> 8080) served by `endpoints`: the smallest setup a suite needs. */
export function webNodePortDocs(o: { nodeIP: string; podCIDR: string; clusterIP: string; nodePort: number; endpoints: string[] }): string {
  return yamlDocs(
    node({ ips: [o.nodeIP], podCIDRs: [o.podCIDR] }),
    service({ name: 'web', type: 'NodePort', clusterIP: o.clusterIP, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: o.nodePort }] }),
    endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: o.endpoints.map((ip) => ({ ip })) }),
  );
}
