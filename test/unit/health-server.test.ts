// /healthz and /livez on a node that is going away, as kube-proxy answers (its
// pkg/proxy/healthcheck, compared with the real binary in test/differential): /healthz
// 503 with nodeEligible false, while "healthy" stays the proxy's own health; /livez
// ignores the node.
import { afterEach, describe, expect, it } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { healthServer } from '../../src/server/http.js';
import { ProxyHealth } from '../../src/server/health.js';
import type { NodeFacts } from '../../src/model/types.js';

const node = (more: Partial<NodeFacts>): NodeFacts => ({ name: 'node-a', ips: { IPv4: ['198.18.0.10'], IPv6: [] }, podCIDRs: [], labels: {}, zone: undefined, deleting: false, toBeDeleted: false, ...more });

let server: Server | null = null;
afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

async function ask(facts: NodeFacts | null, syncedOk: boolean) {
  const health = new ProxyHealth(60_000);
  health.updated('IPv4');
  if (!syncedOk) {
    health.failed('IPv4', 'restore failed');
    health.failed('IPv4', 'restore failed');
  }
  server = healthServer(health, () => facts, null);
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const get = async (path: string) => {
    const r = await fetch(base + path);
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  };
  return { healthz: await get('/healthz'), livez: await get('/livez') };
}

describe('health server: node eligibility', () => {
  for (const [what, facts] of [
    ['being deleted', node({ deleting: true })],
    ['tainted ToBeDeletedByClusterAutoscaler', node({ toBeDeleted: true })],
  ] as const) {
    it(`node ${what}: /healthz 503, nodeEligible false, healthy still true; /livez 200`, async () => {
      const r = await ask(facts, true);
      expect(r.healthz.status).toBe(503);
      expect(r.healthz.body).toMatchObject({ nodeEligible: false, healthy: true });
      expect(r.livez.status).toBe(200);
      expect(r.livez.body).toMatchObject({ healthy: true });
      expect(r.livez.body).not.toHaveProperty('nodeEligible');
    });
  }

  it('an eligible node with failing syncs: healthy false in both', async () => {
    const r = await ask(node({}), false);
    expect(r.healthz).toMatchObject({ status: 503, body: { nodeEligible: true, healthy: false } });
    expect(r.livez).toMatchObject({ status: 503, body: { healthy: false } });
  });
});
