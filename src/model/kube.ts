// The parts of Service, EndpointSlice, Node and ServiceCIDR that kpx reads, as zod schemas.
// Both sources (files and the API) run objects through these, so an object that
// would break a sync is refused at the door with the field that is wrong. Unknown fields
// are stripped: the copy kpx keeps holds only what it reads (no managedFields etc.).
import { z } from 'zod';

// The apiserver's name rules (apimachinery's validation), which also keep every name kpx
// writes into a rule or a chain-name hash free of quotes, spaces and separators.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** A DNS-1123 label: at most 63 lowercase letters, digits and '-', alphanumeric at both ends. */
export const dnsLabel = z.string().max(63).regex(DNS1123_LABEL, 'must be a DNS-1123 label (lowercase letters, digits and "-", at most 63)');
/** A DNS-1123 subdomain: dot-separated labels, at most 253 characters. */
export const dnsSubdomain = z.string().max(253).regex(DNS1123_SUBDOMAIN, 'must be a DNS-1123 subdomain (lowercase letters, digits, "-" and ".", at most 253)');
const port = z.number().int().min(1).max(65535);
const protocol = z.enum(['TCP', 'UDP', 'SCTP']);
/** A port name: empty, or a DNS-1123 label (Services and EndpointSlices alike). */
const portName = z.union([z.literal(''), dnsLabel]).nullish();

const metadataOf = (name: z.ZodString) =>
  z.object({
    name,
    namespace: dnsLabel.optional(),
    labels: z.record(z.string(), z.string()).nullish(),
    annotations: z.record(z.string(), z.string()).nullish(),
    resourceVersion: z.string().optional(),
    uid: z.string().optional(),
    creationTimestamp: z.union([z.string(), z.date()]).nullish(),
    deletionTimestamp: z.union([z.string(), z.date()]).nullish(),
  });
/**
 * A Service's name is a DNS-1123 label (the apiserver asks for a DNS-1035 label, one that
 * starts with a letter, unless RelaxedServiceNameValidation is on; kpx takes both).
 */
const serviceMetadata = metadataOf(dnsLabel);
const objectMetadata = metadataOf(dnsSubdomain);

export const serviceSchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: serviceMetadata,
  spec: z.object({
    type: z.enum(['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName']).optional(),
    clusterIP: z.string().optional(),
    clusterIPs: z.array(z.string()).nullish(),
    ipFamilies: z.array(z.enum(['IPv4', 'IPv6'])).max(2).nullish(),
    ipFamilyPolicy: z.string().nullish(),
    ports: z
      .array(
        z.object({
          name: portName,
          protocol: protocol.nullish(),
          port,
          targetPort: z.union([z.number().int(), z.string()]).nullish(),
          nodePort: z.number().int().min(0).max(65535).nullish(),
          appProtocol: z.string().nullish(),
        }),
      )
      .nullish(),
    externalIPs: z.array(z.string()).nullish(),
    loadBalancerSourceRanges: z.array(z.string()).nullish(),
    externalTrafficPolicy: z.enum(['Cluster', 'Local']).nullish(),
    internalTrafficPolicy: z.enum(['Cluster', 'Local']).nullish(),
    sessionAffinity: z.enum(['None', 'ClientIP']).nullish(),
    sessionAffinityConfig: z
      .looseObject({
        clientIP: z.object({ timeoutSeconds: z.number().int().min(1).max(86400).nullish() }).nullish(),
      })
      .nullish(),
    healthCheckNodePort: z.number().int().min(0).max(65535).nullish(),
    allocateLoadBalancerNodePorts: z.boolean().nullish(),
    // (no trafficDistribution: kube-proxy never reads it; the EndpointSlice controller turns it into hints)
  }),
  status: z
    .looseObject({
      loadBalancer: z
        .looseObject({
          ingress: z
            .array(
              z.object({
                ip: z.string().nullish(),
                hostname: z.string().nullish(),
                ipMode: z.enum(['VIP', 'Proxy']).nullish(),
              }),
            )
            .nullish(),
        })
        .nullish(),
    })
    .nullish(),
});

export const endpointSliceSchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: objectMetadata,
  addressType: z.enum(['IPv4', 'IPv6', 'FQDN']),
  endpoints: z
    .array(
      z.object({
        addresses: z.array(z.string()).min(1),
        conditions: z
          .looseObject({
            ready: z.boolean().nullish(),
            serving: z.boolean().nullish(),
            terminating: z.boolean().nullish(),
          })
          .nullish(),
        nodeName: dnsSubdomain.nullish(),
        zone: z.string().max(63).nullish(),
        hints: z
          .looseObject({
            forZones: z.array(z.object({ name: z.string() })).nullish(),
            forNodes: z.array(z.object({ name: z.string() })).nullish(),
          })
          .nullish(),
      }),
    )
    .nullish(),
  ports: z
    .array(
      z.object({
        name: portName,
        port: port.nullish(),
        protocol: protocol.nullish(),
      }),
    )
    .nullish(),
});

export const nodeSchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: objectMetadata,
  spec: z
    .looseObject({
      podCIDR: z.string().nullish(),
      podCIDRs: z.array(z.string()).nullish(),
      taints: z
        .array(z.object({ key: z.string(), value: z.string().nullish(), effect: z.string().nullish() }))
        .nullish(),
    })
    .nullish(),
  status: z
    .looseObject({
      addresses: z.array(z.object({ type: z.string(), address: z.string() })).nullish(),
    })
    .nullish(),
});

/** networking.k8s.io/v1 ServiceCIDR: the ranges cluster IPs are allocated from (one per family at most). */
export const serviceCIDRSchema = z.object({
  apiVersion: z.string().optional(),
  kind: z.string().optional(),
  metadata: objectMetadata,
  spec: z.looseObject({ cidrs: z.array(z.string()).max(2).nullish() }).nullish(),
});

export type ServiceObject = z.infer<typeof serviceSchema>;
export type EndpointSliceObject = z.infer<typeof endpointSliceSchema>;
export type NodeObject = z.infer<typeof nodeSchema>;
export type ServiceCIDRObject = z.infer<typeof serviceCIDRSchema>;

export type ResourceKind = 'Service' | 'EndpointSlice' | 'Node' | 'ServiceCIDR';
export type KubeObject = ServiceObject | EndpointSliceObject | NodeObject | ServiceCIDRObject;

export const schemaFor = {
  Service: serviceSchema,
  EndpointSlice: endpointSliceSchema,
  Node: nodeSchema,
  ServiceCIDR: serviceCIDRSchema,
} as const;

export const API_VERSION_FOR: Record<ResourceKind, string> = {
  Service: 'v1',
  EndpointSlice: 'discovery.k8s.io/v1',
  Node: 'v1',
  ServiceCIDR: 'networking.k8s.io/v1',
};

/** Kinds without a namespace: their key is the name. */
export const isClusterScoped = (kind: ResourceKind): boolean => kind === 'Node' || kind === 'ServiceCIDR';

/** Labels kube-proxy looks at. */
export const LABEL_SERVICE_NAME = 'kubernetes.io/service-name';
export const LABEL_SERVICE_PROXY_NAME = 'service.kubernetes.io/service-proxy-name';
export const LABEL_HEADLESS = 'service.kubernetes.io/headless';
export const LABEL_ZONE = 'topology.kubernetes.io/zone';
export const ANNOTATION_TRIGGER_TIME = 'endpoints.kubernetes.io/last-change-trigger-time';
export const TAINT_TO_BE_DELETED = 'ToBeDeletedByClusterAutoscaler';

/** "namespace/name" for namespaced objects, "name" for Nodes and ServiceCIDRs. */
export function objectKey(kind: ResourceKind, obj: { metadata: { name: string; namespace?: string | undefined } }): string {
  if (isClusterScoped(kind)) return obj.metadata.name;
  return [obj.metadata.namespace ?? 'default', obj.metadata.name].join('/');
}

/** One readable line for a zod failure: "spec.ports[1].port: Too big: expected number to be <=65535". */
export function describeZodError(err: z.ZodError): string {
  return err.issues
    .slice(0, 3)
    .map((i) => {
      const path = i.path
        .map((p, idx) => (typeof p === 'number' ? `[${p}]` : idx === 0 ? String(p) : `.${String(p)}`))
        .join('');
      return `${path || '(object)'}: ${i.message}`;
    })
    .join('; ');
}
