// The sync engine against a long-running kpx: metrics scraped over HTTP after real syncs,
// recovery from an external flush, health that turns 503 while syncs are blocked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const CIP = '198.19.8.1';
const SYNC_PERIOD_S = 2;

describe.skipIf(!env.ok)(`sync engine: metrics, health, flush recovery${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  let kpx: ReturnType<Topology['spawnKpx']>;

  const writeWeb = (eps: string[]) =>
    t.writeManifest(
      dir,
      'web.yaml',
      yamlDocs(
        service({ name: 'web', clusterIP: CIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
        endpointSlice({
          service: 'web',
          ports: [{ name: 'http', port: 8080 }],
          endpoints: eps.map((ip) => ({ ip })),
          annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': new Date().toISOString() },
        }),
      ),
    );
  const metrics = async () => (await t.httpGet('node', 'http://127.0.0.1:10249/metrics')).body;
  const metric = (text: string, name: string, labels = ''): number => {
    const prefix = labels ? `${name}{${labels}} ` : `${name} `;
    const line = text.split('\n').find((l) => l.startsWith(prefix));
    return line ? Number(line.slice(prefix.length)) : NaN;
  };
  const waitFor = async (what: string, cond: () => Promise<boolean>, ms: number) => {
    const end = Date.now() + ms;
    while (!(await cond())) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(100);
    }
    return ms - (end - Date.now());
  };

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [8080] },
        { name: 'b', ip: P.b, ports: [8080] },
        { name: 'client', ip: P.client },
      ],
    });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
    await writeWeb([P.a]);
    kpx = t.spawnKpx([
      '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR,
      '--iptables-sync-period', `${SYNC_PERIOD_S}s`, '--iptables-min-sync-period', '100ms',
      '--metrics-bind-address', '127.0.0.1:10249', '--healthz-bind-address', '127.0.0.1:10256',
    ]);
    await waitFor('first sync', async () => (await t.probe('client', 'tcp', CIP, 80, { count: 1, timeoutMs: 500 })).ok === 1, 15_000);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('exposes kube-proxy metrics with non-zero counts after real syncs', async () => {
    await writeWeb([P.a, P.b]);
    await waitFor('endpoint change', async () => Object.keys((await t.probe('client', 'tcp', CIP, 80, { count: 20 })).names).length === 2, 10_000);
    const m = await metrics();
    expect(metric(m, 'kubeproxy_sync_proxy_rules_duration_seconds_count', 'ip_family="IPv4"')).toBeGreaterThanOrEqual(2);
    expect(metric(m, 'kubeproxy_sync_full_proxy_rules_duration_seconds_count', 'ip_family="IPv4"')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'kubeproxy_sync_partial_proxy_rules_duration_seconds_count', 'ip_family="IPv4"')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'kubeproxy_network_programming_duration_seconds_count', 'ip_family="IPv4"')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'kubeproxy_sync_proxy_rules_endpoint_changes_total')).toBeGreaterThanOrEqual(2);
    expect(metric(m, 'kubeproxy_sync_proxy_rules_service_changes_total')).toBeGreaterThanOrEqual(1);
    expect(metric(m, 'kubeproxy_sync_proxy_rules_iptables_total', 'table="nat",ip_family="IPv4"')).toBeGreaterThan(5);
    expect(metric(m, 'kubeproxy_sync_proxy_rules_last_timestamp_seconds', 'ip_family="IPv4"')).toBeGreaterThan(Date.now() / 1000 - 60);
    expect(metric(m, 'kpx_sync_render_duration_seconds_count', 'ip_family="IPv4",sync="partial"')).toBeGreaterThanOrEqual(1);
    expect(m).toContain('process_resident_memory_bytes');
    // the smallest sync bucket is far below kube-proxy's 1 ms
    expect(m).toContain('kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.0001",ip_family="IPv4"}');
  });

  it('answers /healthz and /livez like kube-proxy', async () => {
    const h = await t.httpGet('node', 'http://127.0.0.1:10256/healthz', 'content-type');
    expect(h.status).toBe(200);
    const body = JSON.parse(h.body);
    expect(body).toMatchObject({ healthy: true, nodeEligible: true });
    expect(Date.parse(body.currentTime)).toBeGreaterThan(0);
    expect(Date.parse(body.lastUpdated)).toBeGreaterThan(0);
    expect((await t.httpGet('node', 'http://127.0.0.1:10256/livez')).status).toBe(200);
    expect(metric(await metrics(), 'kubeproxy_proxy_healthz_total', 'code="200"')).toBeGreaterThanOrEqual(1);
  });

  it('recovers from an external flush of its tables within one syncPeriod', async () => {
    for (const table of ['nat', 'filter']) {
      await t.exec('node', 'iptables', ['-t', table, '-F']);
      await t.exec('node', 'iptables', ['-t', table, '-X']);
    }
    expect((await t.probe('client', 'tcp', CIP, 80, { count: 1, timeoutMs: 500 })).ok).toBe(0);
    const tookMs = await waitFor('traffic after flush', async () => (await t.probe('client', 'tcp', CIP, 80, { count: 1, timeoutMs: 300 })).ok === 1, SYNC_PERIOD_S * 1000 + 3000);
    expect(tookMs).toBeLessThanOrEqual(SYNC_PERIOD_S * 1000 + 3000);
  });

  it('turns /healthz 503 while syncs keep failing, and 200 again once they succeed', async () => {
    // someone else's rule references b's endpoint chain: kpx cannot remove b
    const sepB = new RegExp(`^-A (KPX-SEP-\\S+) .*--to-destination ${P.b.replaceAll('.', '\\.')}:8080$`, 'm').exec(await t.save())?.[1];
    expect(sepB).toBeDefined();
    await t.exec('node', 'iptables', ['-t', 'nat', '-N', 'BLOCKER']);
    await t.exec('node', 'iptables', ['-t', 'nat', '-A', 'BLOCKER', '-j', sepB!]);
    await writeWeb([P.a]);
    await waitFor('503', async () => (await t.httpGet('node', 'http://127.0.0.1:10256/healthz')).status === 503, 4 * SYNC_PERIOD_S * 1000 + 5000);
    const sick = JSON.parse((await t.httpGet('node', 'http://127.0.0.1:10256/livez')).body);
    expect(sick.healthy).toBe(false);
    expect(metric(await metrics(), 'kubeproxy_sync_proxy_rules_iptables_restore_failures_total', 'ip_family="IPv4"')).toBeGreaterThanOrEqual(1);
    // the old rules still serve meanwhile
    expect((await t.probe('client', 'tcp', CIP, 80, { count: 10 })).ok).toBe(10);
    await t.exec('node', 'iptables', ['-t', 'nat', '-F', 'BLOCKER']);
    await t.exec('node', 'iptables', ['-t', 'nat', '-X', 'BLOCKER']);
    await waitFor('200 again', async () => (await t.httpGet('node', 'http://127.0.0.1:10256/healthz')).status === 200, 4 * SYNC_PERIOD_S * 1000 + 5000);
    expect((await t.probe('client', 'tcp', CIP, 80, { count: 10 })).names).toEqual({ a: 10 });
    kpx.kill('SIGTERM');
    const logs = (await kpx).stderr;
    expect(logs).toContain('kpx chains were flushed externally');
  });
});
