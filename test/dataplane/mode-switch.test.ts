// Switching proxy modes on a node, with real packets: iptables -> nftables -> iptables,
// each kpx started over the state the other left (as a DaemonSet rollout with a new
// --proxy-mode does). Traffic keeps flowing across each switch, the new mode removes the
// other's state once its own rules serve, and `kpx cleanup` removes whatever mode ran.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { webNodePortDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const CIP = '198.19.6.1';

describe.skipIf(!env.ok)(`switching proxy modes${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const flags = (mode: string) => ['--proxy-mode', mode, '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR, '--metrics-bind-address', '', '--healthz-bind-address', ''];
  const nftTables = async () => (await t.exec('node', 'nft', ['list', 'tables'])).stdout;
  const kpxChains = async () => (await t.save('IPv4')).split('\n').filter((l) => l.startsWith(':KPX-')).length;

  /** Connections to the ClusterIP and the NodePort, one after another, while `during` runs. */
  async function underTraffic(during: () => Promise<void>): Promise<{ ok: number; failed: number }> {
    let stop = false;
    const totals = { ok: 0, failed: 0 };
    const loop = (async () => {
      while (!stop) {
        for (const [from, host, port] of [
          ['client', CIP, 80],
          ['ext', NET.nodeIP, 30601],
        ] as const) {
          const r = await t.probe(from, 'tcp', host, port, { count: 2, timeoutMs: 1000 });
          totals.ok += r.ok;
          totals.failed += 2 - r.ok;
        }
      }
    })();
    try {
      await during();
      await sleep(500);
    } finally {
      stop = true;
      await loop;
    }
    return totals;
  }

  /** Waits (bounded) until `check` holds; false if it never did. */
  async function eventually(check: () => Promise<boolean>, tries = 100): Promise<boolean> {
    for (let i = 0; i < tries; i++) {
      if (await check()) return true;
      await sleep(100);
    }
    return false;
  }

  beforeAll(async () => {
    t = await Topology.create({ pods: [{ name: 'a', ip: P.a, ports: [8080] }, { name: 'b', ip: P.b, ports: [8080] }, { name: 'client', ip: P.client }] });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'all.yaml', webNodePortDocs({ nodeIP: NET.nodeIP, podCIDR: NET.podCIDR, clusterIP: CIP, nodePort: 30601, endpoints: [P.a, P.b] }));
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('iptables -> nftables -> iptables: no connection fails, and each mode removes the other one', async () => {
    let kpx = t.spawnKpx(['run', ...flags('iptables')]);
    expect(await eventually(async () => (await t.probe('client', 'tcp', CIP, 80, { count: 1, timeoutMs: 500 })).ok === 1)).toBe(true);
    expect(await kpxChains()).toBeGreaterThan(0);

    const toNft = await underTraffic(async () => {
      kpx.kill('SIGTERM');
      await kpx;
      kpx = t.spawnKpx(['run', ...flags('nftables')]);
      expect(await eventually(async () => (await nftTables()).includes('table ip kpx') && (await kpxChains()) === 0)).toBe(true);
    });
    console.log(`iptables -> nftables: ${toNft.ok} connections answered, ${toNft.failed} failed`);
    expect(toNft.failed).toBe(0);
    expect(toNft.ok).toBeGreaterThan(0);
    expect(await t.save('IPv4')).not.toContain('KPX-');

    const back = await underTraffic(async () => {
      kpx.kill('SIGTERM');
      await kpx;
      kpx = t.spawnKpx(['run', ...flags('iptables')]);
      expect(await eventually(async () => (await kpxChains()) > 0 && !(await nftTables()).includes('table ip kpx'))).toBe(true);
    });
    console.log(`nftables -> iptables: ${back.ok} connections answered, ${back.failed} failed`);
    expect(back.failed).toBe(0);
    expect(back.ok).toBeGreaterThan(0);
    kpx.kill('SIGTERM');
    await kpx;
  });

  it('kpx cleanup removes the nftables mode state', async () => {
    expect((await t.kpx(['run', '--once', ...flags('nftables')])).exitCode).toBe(0);
    expect(await nftTables()).toContain('table ip kpx');
    expect((await t.kpx(['cleanup'])).exitCode).toBe(0);
    expect(await nftTables()).not.toContain('kpx');
    expect((await t.probe('client', 'tcp', CIP, 80, { count: 1, timeoutMs: 1000 })).ok).toBe(0);
  });
});
