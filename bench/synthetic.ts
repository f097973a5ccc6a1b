// Synthetic clusters for benchmarks and scale tests: N ClusterIP services (every tenth a
// NodePort) with E endpoints each, as Service/EndpointSlice objects.
import { bigIntToIP, ipToBigInt } from '../src/util/ip.js';
import type { Change } from '../src/model/state.js';

const SERVICE_BASE = ipToBigInt('198.19.0.0');
const POD_BASE = ipToBigInt('198.18.4.0');
const POD_SPACE = 60_000n;

export function serviceIP(i: number): string {
  return bigIntToIP(SERVICE_BASE + BigInt(i + 1), 'IPv4');
}

export function podIP(n: number): string {
  return bigIntToIP(POD_BASE + (BigInt(n) % POD_SPACE), 'IPv4');
}

export function syntheticService(i: number): object {
  const nodePort = i % 10 === 0 && i / 10 < 2700;
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: `svc-${i}`, namespace: `ns-${i % 50}`, resourceVersion: '1' },
    spec: {
      type: nodePort ? 'NodePort' : 'ClusterIP',
      clusterIP: serviceIP(i),
      clusterIPs: [serviceIP(i)],
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, ...(nodePort ? { nodePort: 30000 + i / 10 } : {}) }],
    },
  };
}

export function syntheticSlice(i: number, endpoints: number, offset = 0): object {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name: `svc-${i}-abcde`,
      namespace: `ns-${i % 50}`,
      labels: { 'kubernetes.io/service-name': `svc-${i}` },
      annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': new Date().toISOString() },
    },
    addressType: 'IPv4',
    ports: [{ name: 'http', protocol: 'TCP', port: 8080 }],
    endpoints: Array.from({ length: endpoints }, (_, j) => ({
      addresses: [podIP(i * endpoints + j + offset)],
      conditions: { ready: true, serving: true, terminating: false },
      nodeName: `node-${j % 20}`,
    })),
  };
}

export function syntheticChanges(services: number, endpoints: number): Change[] {
  const out: Change[] = [];
  for (let i = 0; i < services; i++) {
    out.push({ kind: 'Service', current: syntheticService(i) } as Change);
    out.push({ kind: 'EndpointSlice', current: syntheticSlice(i, endpoints) } as Change);
  }
  return out;
}
