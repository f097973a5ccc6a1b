// Traffic policies and endpoint selection, proven with packets against a long-running kpx:
// externalTrafficPolicy Local (source kept, local endpoints only, drop without them, pod and
// node short-circuits, healthCheckNodePort servers), internalTrafficPolicy Local,
// terminating-endpoint fallback, topology hints, and ClientIP session affinity.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { DATAPLANE_MODES, NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs, type EndpointSpec } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { l1: '198.18.1.11', l2: '198.18.1.12', client: '198.18.1.50', r1: '198.18.2.21' };
const CLIENT_EXTRA = Array.from({ length: 8 }, (_, i) => `198.18.1.${51 + i}`);

const ep = (ip: string, extra: Partial<EndpointSpec> = {}): EndpointSpec => ({
  ip,
  node: ip.startsWith('198.18.2.') ? 'node-b' : 'node-a',
  zone: ip.startsWith('198.18.2.') ? 'z2' : 'z1',
  ...extra,
});

function svc(name: string, ip: string, eps: EndpointSpec[], opts: { spec?: Record<string, unknown>; type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer'; nodePort?: number; vip?: string } = {}) {
  return [
    service({
      name,
      type: opts.type ?? 'ClusterIP',
      clusterIP: ip,
      ports: [{ name: 'http', port: 80, targetPort: 8080, ...(opts.nodePort ? { nodePort: opts.nodePort } : {}) }],
      spec: opts.spec,
      ...(opts.vip ? { status: { loadBalancer: { ingress: [{ ip: opts.vip }] } } } : {}),
    }),
    endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: eps }),
  ];
}

const local = { externalTrafficPolicy: 'Local' };
const notReady = { ready: false, serving: true, terminating: true };

function objects() {
  return [
    node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR], zone: 'z1' }),
    ...svc('etp', '198.19.3.1', [ep(P.l1), ep(P.r1)], { type: 'LoadBalancer', nodePort: 30201, vip: '198.19.100.21', spec: { ...local, healthCheckNodePort: 32201 } }),
    ...svc('etp-none', '198.19.3.2', [ep(P.r1)], {
      type: 'LoadBalancer',
      nodePort: 30202,
      vip: '198.19.100.22',
      spec: { ...local, healthCheckNodePort: 32202, externalIPs: ['198.19.200.22'] },
    }),
    ...svc('itp', '198.19.3.3', [ep(P.l2), ep(P.r1)], { spec: { internalTrafficPolicy: 'Local' } }),
    ...svc('itp-none', '198.19.3.4', [ep(P.r1)], { spec: { internalTrafficPolicy: 'Local' } }),
    ...svc('term', '198.19.3.5', [ep(P.l1, notReady), ep(P.r1, { ready: false, serving: false, terminating: true })]),
    ...svc('term-ready', '198.19.3.6', [ep(P.l1, notReady), ep(P.r1)]),
    ...svc('term-local', '198.19.3.7', [ep(P.l2, notReady), ep(P.r1)], { type: 'NodePort', nodePort: 30207, spec: local }),
    ...svc('topo', '198.19.3.8', [ep(P.l1, { zoneHints: ['z1'] }), ep(P.r1, { zoneHints: ['z2'] })], { spec: { trafficDistribution: 'PreferClose' } }),
    ...svc('topo-partial', '198.19.3.9', [ep(P.l1, { zoneHints: ['z1'] }), ep(P.r1)]),
    ...svc('topo-node', '198.19.3.10', [ep(P.l2, { zoneHints: ['z1'], nodeHints: ['node-a'] }), ep(P.l1, { zoneHints: ['z1'], nodeHints: ['node-x'] }), ep(P.r1, { zoneHints: ['z1'], nodeHints: ['node-b'] })], {
      spec: { trafficDistribution: 'PreferSameNode' },
    }),
    ...svc('topo-elsewhere', '198.19.3.11', [ep(P.l1, { zoneHints: ['z2'] }), ep(P.r1, { zoneHints: ['z2'] })]),
    ...svc('aff', '198.19.3.12', [ep(P.l1), ep(P.l2), ep(P.r1)], { spec: { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } } }),
  ];
}

describe.skipIf(!env.ok).each(DATAPLANE_MODES)(`traffic policies and endpoint selection, %s mode${env.ok ? '' : ` — skipped: ${env.reason}`}`, (mode) => {
  let t: Topology;
  let dir: string;
  let kpx: ReturnType<Topology['spawnKpx']>;

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'l1', ip: P.l1, ports: [8080] },
        { name: 'l2', ip: P.l2, ports: [8080] },
        { name: 'client', ip: P.client, extraIPs: CLIENT_EXTRA },
        { name: 'r1', ip: P.r1, remote: true, ports: [8080] },
      ],
    });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'all.yaml', yamlDocs(...objects()));
    kpx = t.spawnKpx(['--proxy-mode', mode, '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR, '--iptables-min-sync-period', '100ms', '--metrics-bind-address', '', '--healthz-bind-address', '']);
    for (let i = 0; i < 100 && (await t.httpGet('ext', `http://${NET.nodeIP}:32201/`)).status !== 200; i++) await sleep(100);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('externalTrafficPolicy Local: external clients reach only local endpoints and keep their address', async () => {
    for (const [host, port] of [
      [NET.nodeIP, 30201],
      ['198.19.100.21', 80],
    ] as const) {
      const r = await t.probe('ext', 'tcp', host, port, { count: 20 });
      expect(r.names, `${host}:${port}`).toEqual({ l1: 20 });
      expect(Object.keys(r.clients)).toEqual([NET.extIP]);
    }
  });

  it('serves healthCheckNodePort: 200 with the local endpoint count, 503 without local endpoints', async () => {
    const ok = await t.httpGet('ext', `http://${NET.nodeIP}:32201/`);
    expect(ok.status).toBe(200);
    expect(ok.header).toBe('1');
    expect(JSON.parse(ok.body)).toEqual({ service: { namespace: 'default', name: 'etp' }, localEndpoints: 1, serviceProxyHealthy: true });
    const none = await t.httpGet('ext', `http://${NET.nodeIP}:32202/healthz`);
    expect(none.status).toBe(503);
    expect(none.header).toBe('0');
    expect(JSON.parse(none.body).localEndpoints).toBe(0);
  });

  it('externalTrafficPolicy Local without local endpoints: external traffic dropped, pods and the node short-circuit', async () => {
    for (const [host, port] of [
      [NET.nodeIP, 30202],
      ['198.19.100.22', 80],
      ['198.19.200.22', 80],
    ] as const) {
      expect((await t.probe('ext', 'tcp', host, port, { count: 1, timeoutMs: 1500 })).errors, `${host}:${port}`).toEqual({ TIMEOUT: 1 });
    }
    expect((await t.probe('client', 'tcp', '198.19.100.22', 80, { count: 5 })).names).toEqual({ r1: 5 });
    expect((await t.probe('client', 'tcp', '198.19.200.22', 80, { count: 5 })).names).toEqual({ r1: 5 });
    const fromNode = await t.probe('node', 'tcp', NET.nodeIP, 30202, { count: 5 });
    expect(fromNode.names).toEqual({ r1: 5 });
  });

  it('internalTrafficPolicy Local: only local endpoints; none -> dropped', async () => {
    expect((await t.probe('client', 'tcp', '198.19.3.3', 80, { count: 20 })).names).toEqual({ l2: 20 });
    expect((await t.probe('client', 'tcp', '198.19.3.4', 80, { count: 1, timeoutMs: 1500 })).errors).toEqual({ TIMEOUT: 1 });
  });

  it('falls back to serving terminating endpoints only when none is ready, per policy', async () => {
    expect((await t.probe('client', 'tcp', '198.19.3.5', 80, { count: 10 })).names).toEqual({ l1: 10 });
    expect((await t.probe('client', 'tcp', '198.19.3.6', 80, { count: 10 })).names).toEqual({ r1: 10 });
    // Local policy has no ready local endpoint: the terminating local one serves externals...
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30207, { count: 10 })).names).toEqual({ l2: 10 });
    // ...while Cluster policy (the ClusterIP) uses the ready remote one
    expect((await t.probe('client', 'tcp', '198.19.3.7', 80, { count: 10 })).names).toEqual({ r1: 10 });
  });

  it('uses topology hints only when every endpoint has one and one is for this zone or node', async () => {
    expect((await t.probe('client', 'tcp', '198.19.3.8', 80, { count: 20 })).names).toEqual({ l1: 20 });
    expect(Object.keys((await t.probe('client', 'tcp', '198.19.3.9', 80, { count: 40 })).names).sort()).toEqual(['l1', 'r1']);
    expect((await t.probe('client', 'tcp', '198.19.3.10', 80, { count: 20 })).names).toEqual({ l2: 20 });
    expect(Object.keys((await t.probe('client', 'tcp', '198.19.3.11', 80, { count: 40 })).names).sort()).toEqual(['l1', 'r1']);
  });

  it('keeps a client on one endpoint with ClientIP affinity, and spreads different clients', async () => {
    const seen = new Set<string>();
    for (const src of [P.client, ...CLIENT_EXTRA]) {
      const r = await t.probe('client', 'tcp', '198.19.3.12', 80, { count: 8, bind: src });
      expect(Object.keys(r.names), `client ${src}`).toHaveLength(1);
      seen.add(Object.keys(r.names)[0]!);
    }
    expect(seen.size).toBeGreaterThanOrEqual(2);
  });

  it('opens and closes health check servers as services come and go', async () => {
    await t.writeManifest(
      dir,
      'late.yaml',
      yamlDocs(...svc('late', '198.19.3.20', [ep(P.l2)], { type: 'LoadBalancer', nodePort: 30220, vip: '198.19.100.20', spec: { ...local, healthCheckNodePort: 32220 } })),
    );
    let r = { status: 0, header: null as string | null, body: '' };
    for (let i = 0; i < 50 && r.status !== 200; i++) {
      await sleep(100);
      r = await t.httpGet('ext', `http://${NET.nodeIP}:32220/`);
    }
    expect(r.status).toBe(200);
    await rm(join(dir, 'late.yaml'));
    for (let i = 0; i < 50 && r.status !== 0; i++) {
      await sleep(100);
      r = await t.httpGet('ext', `http://${NET.nodeIP}:32220/`);
    }
    expect(r.body).toBe('ECONNREFUSED');
    // the other servers are unaffected
    expect((await t.httpGet('ext', `http://${NET.nodeIP}:32201/`)).status).toBe(200);
    kpx.kill('SIGTERM');
    const out = await kpx;
    expect(out.stderr).toContain('closed health check node port');
  });
});
