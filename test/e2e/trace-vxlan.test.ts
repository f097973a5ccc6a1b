// `kpx trace --live` across nodes on the netns cluster (VXLAN): a ClusterIP served only by
// a pod on node-2, traced on node-1, must name the endpoint, the flannel.1 egress device
// and node-2's underlay address as the VXLAN remote; real connections from the same
// places must reach that pod.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { netnsClusterSkip } from './netns-env.js';
import { NetnsCluster } from '../substrate/cluster/netns-cluster.js';
import { KPX_BIN } from '../substrate/netns.js';
import { ECHO_PORT, type ClusterPod, type ServiceInfo } from '../substrate/cluster/types.js';
import type { Journey } from '../../src/trace/journey.js';

const skip = await netnsClusterSkip();

describe.skipIf(!!skip)(`kpx trace across nodes, vxlan${skip ? ` — skipped: ${skip}` : ''}`, () => {
  let c: NetnsCluster;
  let server: ClusterPod;
  let client: ClusterPod;
  let svc: ServiceInfo;

  const trace = async (src: string, from: 'pod' | 'node'): Promise<Journey> => {
    // in node-1's namespace, as an operator on that node would run it
    const ns = c.nsOf({ node: 'node-1' });
    const r = await execa('ip', ['netns', 'exec', ns, process.execPath, KPX_BIN, 'trace', '--live', '--src', src, '--dst', `${svc.clusterIP}:80/tcp`, '--from', from, '--json', '--log-level', 'silent']);
    return JSON.parse(r.stdout) as Journey;
  };

  beforeAll(async () => {
    c = await NetnsCluster.up({ name: `t${process.pid}-trace`, nodes: 2, network: 'vxlan', proxyMode: 'iptables', owner: process.pid });
    server = await c.addPod({ name: 'far', node: 'node-2', labels: { app: 'far' } });
    client = await c.addPod({ name: 'near-client', node: 'node-1', labels: { role: 'client' } });
    svc = await c.applyService({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'far', namespace: 'default' }, spec: { selector: { app: 'far' }, ports: [{ name: 'tcp', port: 80, targetPort: ECHO_PORT, protocol: 'TCP' }] } });
    // node-1's kpx has programmed the service once a connection from node-1 reaches the pod
    for (let i = 0; i < 200; i++) {
      const r = await c.probe({ node: 'node-1' }, 'tcp', svc.clusterIP, 80, { count: 1, timeoutMs: 400 });
      if (r.names.far === 1) break;
      await sleep(100);
    }
  }, 120_000);
  afterAll(async () => {
    await c?.down();
  }, 60_000);

  it('from node-1 itself and from a pod on node-1: DNAT to the pod on node-2, out on flannel.1, encapsulated to node-2', async () => {
    const node2 = c.nodes.find((n) => n.name === 'node-2')!;
    const node1 = c.nodes.find((n) => n.name === 'node-1')!;
    for (const [where, src, from] of [
      [{ node: 'node-1' }, node1.internalIP, 'node'],
      [{ pod: client.name }, client.ip, 'pod'],
    ] as const) {
      const j = await trace(src, from);
      expect(j.outcomes.map((o) => [o.verdict, o.dnat, o.probability])).toEqual([['ACCEPT', `${server.ip}:${ECHO_PORT}`, 1]]);
      const route = j.outcomes[0]!.route!;
      expect(route.dev).toBe('flannel.1');
      expect(route.vxlan).toMatchObject({ device: 'flannel.1', vni: 1, remote: node2.internalIP });
      if (from === 'pod') expect(j.packet.inInterface).toBe('cni0');
      // the packets go where the trace said
      const r = await c.probe(where, 'tcp', svc.clusterIP, 80, { count: 5 });
      expect(r.names).toEqual({ far: 5 });
      if (from === 'node') {
        const text = await execa('ip', ['netns', 'exec', c.nsOf({ node: 'node-1' }), process.execPath, KPX_BIN, 'trace', '--live', '--src', src, '--dst', `${svc.clusterIP}:80`, '--from', 'node', '--log-level', 'silent']);
        expect(text.stdout).toContain(`vxlan flannel.1 (VNI 1): encapsulated to ${node2.internalIP}`);
        console.log(text.stdout);
      }
      console.log(`[trace vxlan] from ${from} ${src}: predicted ${j.outcomes[0]!.dnat} via ${route.dev} to ${route.vxlan?.remote} (node-2 is ${node2.internalIP}); measured ${JSON.stringify(r.names)}`);
    }
  });
});
