// `kpx trace --live` against real packets: kpx programs a node namespace, the trace runs
// inside it (kernel rules, `ip route get`), and its prediction (which endpoints, verdict,
// masquerade, egress device) is compared with what real connections did: which pod
// answered, and which client address the pod saw.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';
import type { Journey } from '../../src/trace/journey.js';

const env = await dataplaneEnv();
const WEB_IP = '198.19.0.10';
const NP_IP = '198.19.0.20';
const LOCAL_IP = '198.19.0.30';
const EMPTY_IP = '198.19.0.40';
const STICKY_IP = '198.19.0.50';
const pods = { 'web-a': '198.18.1.11', 'web-b': '198.18.1.12', 'web-r': '198.18.2.21', client: '198.18.1.50' } as const;
const byIP = new Map<string, string>(Object.entries(pods).map(([n, ip]) => [ip, n]));

const flags = (dir: string) => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR];

/** The endpoint pods a journey sends accepted packets to, with their probabilities. */
function predicted(j: Journey): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of j.outcomes) {
    if (o.verdict !== 'ACCEPT' || !o.dnat) continue;
    const name = byIP.get(o.dnat.split(':')[0]!) ?? o.dnat;
    out[name] = (out[name] ?? 0) + o.probability;
  }
  return out;
}

describe.skipIf(!env.ok)(`kpx trace --live against real packets${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const trace = async (src: string, dst: string, from: 'pod' | 'node' | 'external'): Promise<Journey> => {
    const r = await t.kpx(['trace', '--live', ...flags(dir), '--src', src, '--dst', dst, '--from', from, '--json', '--log-level', 'silent']);
    return JSON.parse(r.stdout) as Journey;
  };

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'web-a', ip: pods['web-a'], ports: [8080] },
        { name: 'web-b', ip: pods['web-b'], ports: [8080] },
        { name: 'web-r', ip: pods['web-r'], ports: [8080], remote: true },
        { name: 'client', ip: pods.client },
      ],
    });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
    const http = [{ name: 'http', port: 80, targetPort: 8080 }];
    const slice = (svc: string, eps: Array<{ ip: string; node?: string }>) => endpointSlice({ service: svc, ports: [{ name: 'http', port: 8080 }], endpoints: eps });
    await t.writeManifest(
      dir,
      'svc.yaml',
      yamlDocs(
        service({ name: 'web', clusterIP: WEB_IP, ports: http }),
        slice('web', [{ ip: pods['web-a'] }, { ip: pods['web-b'] }]),
        service({ name: 'np', type: 'NodePort', clusterIP: NP_IP, ports: [{ ...http[0]!, nodePort: 30080 }] }),
        slice('np', [{ ip: pods['web-b'] }]),
        service({ name: 'local', type: 'NodePort', clusterIP: LOCAL_IP, ports: [{ ...http[0]!, nodePort: 30081 }], spec: { externalTrafficPolicy: 'Local' } }),
        slice('local', [{ ip: pods['web-a'] }, { ip: pods['web-r'], node: 'node-b' }]),
        service({ name: 'empty', clusterIP: EMPTY_IP, ports: http }),
        service({ name: 'sticky', clusterIP: STICKY_IP, ports: http, spec: { sessionAffinity: 'ClientIP' } }),
        slice('sticky', [{ ip: pods['web-a'] }, { ip: pods['web-b'] }]),
      ),
    );
    await t.sync([...flags(dir), '--metrics-bind-address', '', '--healthz-bind-address', '']);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('ClusterIP with 2 endpoints from a pod: both, half each, source kept, out on the pod bridge', async () => {
    const j = await trace(pods.client, `${WEB_IP}:80/tcp`, 'pod');
    expect(j.packet.inInterface).toBe('kpxbr0');
    expect(predicted(j)).toEqual({ 'web-a': 0.5, 'web-b': 0.5 });
    expect(j.outcomes.map((o) => o.masquerade)).toEqual([false, false]);
    expect(j.outcomes.map((o) => o.route?.dev)).toEqual(['kpxbr0', 'kpxbr0']);
    expect(j.endpoints?.chosen.map((c) => c.addr).sort()).toEqual([`${pods['web-a']}:8080`, `${pods['web-b']}:8080`]);
    expect(j.mismatches).toEqual([]);
    const r = await t.probe('client', 'tcp', WEB_IP, 80, { count: 60 });
    expect(r.ok).toBe(60);
    expect(Object.keys(r.names).sort()).toEqual(Object.keys(predicted(j)).sort());
    // not masqueraded: the pods saw the client's own address
    expect(Object.keys(r.clients)).toEqual([pods.client]);
    console.log(`[trace] ClusterIP: predicted ${JSON.stringify(predicted(j))}, measured ${JSON.stringify(r.names)}`);
  });

  it('NodePort from an external client: the one endpoint, masqueraded', async () => {
    const j = await trace(NET.extIP, `${NET.nodeIP}:30080`, 'external');
    expect(j.packet.inInterface).toBe('eth0');
    expect(predicted(j)).toEqual({ 'web-b': 1 });
    expect(j.outcomes[0]!.masquerade).toBe(true);
    expect(j.outcomes[0]!.steps.some((s) => s.target === 'MASQUERADE')).toBe(true);
    expect(j.endpoints?.kind).toBe('NodePort');
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30080, { count: 10 });
    expect(r.names).toEqual({ 'web-b': 10 });
    // masqueraded: the pod saw the node's address on its bridge, not the client's
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
  });

  it('externalTrafficPolicy Local: only the local endpoint, the remote one excluded by policy, source kept', async () => {
    const j = await trace(NET.extIP, `${NET.nodeIP}:30081`, 'external');
    expect(predicted(j)).toEqual({ 'web-a': 1 });
    expect(j.outcomes[0]!.masquerade).toBe(false);
    expect(j.endpoints?.policy).toBe('Local');
    expect(j.endpoints?.excluded).toEqual([expect.objectContaining({ addr: `${pods['web-r']}:8080`, node: 'node-b', reason: expect.stringContaining('traffic policy Local') as unknown })]);
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30081, { count: 20 });
    expect(r.names).toEqual({ 'web-a': 20 });
    expect(Object.keys(r.clients)).toEqual([NET.extIP]);
    // from a pod the same NodePort short-circuits to both endpoints; the remote one leaves by the uplink
    const pj = await trace(pods.client, `${NET.bridgeIP}:30081`, 'pod');
    expect(predicted(pj)).toEqual({ 'web-a': 0.5, 'web-r': 0.5 });
    const remote = pj.outcomes.find((o) => o.dnat?.startsWith(pods['web-r']))!;
    expect(remote.route).toMatchObject({ dev: 'eth0', gateway: NET.extIP });
    const pr = await t.probe('client', 'tcp', NET.bridgeIP, 30081, { count: 60 });
    expect(Object.keys(pr.names).sort()).toEqual(['web-a', 'web-r']);
  });

  it('a service without endpoints: REJECT predicted, connections refused', async () => {
    const j = await trace(pods.client, `${EMPTY_IP}:80`, 'pod');
    expect(j.outcomes.map((o) => [o.verdict, o.probability])).toEqual([['REJECT', 1]]);
    expect(j.outcomes[0]!.decidedBy).toContain('has no endpoints');
    expect(j.endpoints?.whenNone).toBe('REJECT');
    expect(j.mismatches).toEqual([]);
    const r = await t.probe('client', 'tcp', EMPTY_IP, 80, { count: 3, timeoutMs: 3000 });
    expect(r.errors).toEqual({ ECONNREFUSED: 3 });
  });

  it('session affinity: once the client has an endpoint, the trace reads the kernel\'s xt_recent lists and predicts only that one', async () => {
    const before = await trace(pods.client, `${STICKY_IP}:80`, 'pod');
    expect(predicted(before)).toEqual({ 'web-a': 0.5, 'web-b': 0.5 });
    const first = await t.probe('client', 'tcp', STICKY_IP, 80, { count: 1 });
    const [bound] = Object.keys(first.names);
    expect(['web-a', 'web-b']).toContain(bound);
    const other = bound === 'web-a' ? 'web-b' : 'web-a';
    const after = await trace(pods.client, `${STICKY_IP}:80`, 'pod');
    expect(predicted(after)).toEqual({ [bound!]: 1 });
    expect(after.endpoints?.chosen.map((c) => c.addr)).toEqual([`${pods[bound as 'web-a']}:8080`]);
    expect(after.endpoints?.excluded).toEqual([expect.objectContaining({ addr: `${pods[other]}:8080`, reason: expect.stringContaining('session affinity') as unknown })]);
    expect(after.mismatches).toEqual([]);
    const r = await t.probe('client', 'tcp', STICKY_IP, 80, { count: 10 });
    expect(r.names).toEqual({ [bound!]: 10 });
  });

  it('the text journey names the rules, the exclusions and the next hop', async () => {
    const r = await t.kpx(['trace', '--live', ...flags(dir), '--src', NET.extIP, '--dst', `${NET.nodeIP}:30081`, '--log-level', 'silent']);
    expect(r.stdout).toContain('service default/local:http (TCP), reached as its NodePort');
    expect(r.stdout).toMatch(/198\.18\.2\.21:8080 +node-b +on node node-b: traffic policy Local/);
    expect(r.stdout).toMatch(/nat\/PREROUTING +KPX-SEP-\S+ .*DNAT --to-destination 198\.18\.1\.11:8080/);
    expect(r.stdout).toContain(`next hop for ${pods['web-a']}: on link dev kpxbr0`);
  });
});
