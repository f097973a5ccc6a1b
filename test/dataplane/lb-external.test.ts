// LoadBalancer and externalIPs, proven with packets: VIP capture for external and in-cluster
// clients, loadBalancerSourceRanges (allowed, dropped, the node itself), ipMode Proxy,
// NodePorts outside source ranges, and REJECT when there are no endpoints.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { l1: '198.18.1.11', l2: '198.18.1.12', client: '198.18.1.50', r1: '198.18.2.21' };
const VIP = { ranged: '198.19.100.1', proxyMode: '198.19.100.2', open: '198.19.100.5', empty: '198.19.100.9' };
const EXT_IP = '198.19.200.1';
const EXT_IP_EMPTY = '198.19.200.9';

function lb(name: string, clusterIP: string, vip: string, opts: { nodePort?: number; ranges?: string[]; ipMode?: 'VIP' | 'Proxy'; eps: string[] }) {
  return [
    service({
      name,
      type: 'LoadBalancer',
      clusterIP,
      ports: [{ name: 'http', port: 80, targetPort: 8080, ...(opts.nodePort ? { nodePort: opts.nodePort } : {}) }],
      spec: {
        ...(opts.ranges ? { loadBalancerSourceRanges: opts.ranges } : {}),
        ...(opts.nodePort ? {} : { allocateLoadBalancerNodePorts: false }),
      },
      status: { loadBalancer: { ingress: [{ ip: vip, ...(opts.ipMode ? { ipMode: opts.ipMode } : {}) }] } },
    }),
    ...(opts.eps.length
      ? [endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: opts.eps.map((ip) => ({ ip, node: ip.startsWith('198.18.2.') ? 'node-b' : 'node-a' })) })]
      : []),
  ];
}

describe.skipIf(!env.ok)(`LoadBalancer and externalIPs${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'l1', ip: P.l1, ports: [8080] },
        { name: 'l2', ip: P.l2, ports: [8080] },
        { name: 'client', ip: P.client },
        { name: 'r1', ip: P.r1, remote: true, ports: [8080] },
      ],
    });
    const dir = await t.manifestsDir();
    await t.writeManifest(
      dir,
      'all.yaml',
      yamlDocs(
        node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] }),
        // the node (198.18.0.10) and one external client are in range; 198.18.0.2 is not
        ...lb('ranged', '198.19.1.1', VIP.ranged, { nodePort: 30101, ranges: [`${NET.extIP}/32`, ' 198.18.0.10/32'], eps: [P.l1, P.r1] }),
        ...lb('proxied', '198.19.1.2', VIP.proxyMode, { ipMode: 'Proxy', eps: [P.l1] }),
        ...lb('open', '198.19.1.5', VIP.open, { eps: [P.l2] }),
        ...lb('empty-lb', '198.19.1.9', VIP.empty, { eps: [] }),
        service({ name: 'extip', clusterIP: '198.19.2.1', ports: [{ name: 'http', port: 80, targetPort: 8080 }], spec: { externalIPs: [EXT_IP] } }),
        endpointSlice({ service: 'extip', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.r1, node: 'node-b' }] }),
        service({ name: 'extip-empty', clusterIP: '198.19.2.9', ports: [{ name: 'http', port: 80 }], spec: { externalIPs: [EXT_IP_EMPTY] } }),
      ),
    );
    await t.sync(['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR]);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('serves an LB IP to an external client in loadBalancerSourceRanges, masqueraded', async () => {
    const r = await t.probe('ext', 'tcp', VIP.ranged, 80, { count: 40, bind: NET.extIP });
    expect(r.errors).toEqual({});
    expect(Object.keys(r.names).sort()).toEqual(['l1', 'r1']);
    expect(Object.keys(r.clients).every((c) => c === NET.bridgeIP || c === NET.nodeIP)).toBe(true);
  });

  it('drops (does not reject) an external client outside the source ranges', async () => {
    const r = await t.probe('ext', 'tcp', VIP.ranged, 80, { count: 2, bind: NET.extIP2, timeoutMs: 1500 });
    expect(r.errors).toEqual({ TIMEOUT: 2 });
  });

  it('lets the node itself reach its LB IP when the node is in range', async () => {
    const r = await t.probe('node', 'tcp', VIP.ranged, 80, { count: 10 });
    expect(r.ok).toBe(10);
  });

  it('does not apply source ranges to the NodePort of the same service', async () => {
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30101, { count: 10, bind: NET.extIP2 });
    expect(r.ok).toBe(10);
  });

  it('captures nothing for an ingress with ipMode Proxy', async () => {
    const r = await t.probe('ext', 'tcp', VIP.proxyMode, 80, { count: 2, timeoutMs: 1500 });
    expect(r.ok).toBe(0);
    expect(await t.save()).not.toContain(VIP.proxyMode);
    // its ClusterIP still works
    expect((await t.probe('client', 'tcp', '198.19.1.2', 80, { count: 3 })).names).toEqual({ l1: 3 });
  });

  it('serves an LB IP without source ranges to anyone, and to pods', async () => {
    expect((await t.probe('ext', 'tcp', VIP.open, 80, { count: 5, bind: NET.extIP2 })).names).toEqual({ l2: 5 });
    expect((await t.probe('client', 'tcp', VIP.open, 80, { count: 5 })).names).toEqual({ l2: 5 });
  });

  it('captures an externalIP for external and in-cluster clients', async () => {
    const ext = await t.probe('ext', 'tcp', EXT_IP, 80, { count: 5 });
    expect(ext.names).toEqual({ r1: 5 });
    const pod = await t.probe('client', 'tcp', EXT_IP, 80, { count: 5 });
    expect(pod.names).toEqual({ r1: 5 });
  });

  it('rejects at once an externalIP and an LB IP whose service has no endpoints', async () => {
    expect((await t.probe('ext', 'tcp', EXT_IP_EMPTY, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
    expect((await t.probe('ext', 'tcp', VIP.empty, 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
  });

  it('allocates no NodePort rule when allocateLoadBalancerNodePorts is false', async () => {
    const save = await t.save();
    const nodePortRules = save.split('\n').filter((l) => /^-A KPX-(NODEPORTS|NP-)/.test(l) && l.includes('--dport 3'));
    expect(nodePortRules.map((l) => /"([^"]+)"/.exec(l)?.[1])).toEqual(['default/ranged:http']);
  });
});
