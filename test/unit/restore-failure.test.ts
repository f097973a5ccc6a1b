// What a refused iptables-restore leaves for the operator: its own reason, without banner
// and usage hints, in the error kpx logs and counts (restoreReason); and /healthz, which
// answers 503 with that reason after consecutive failed full syncs and 200 once a sync
// succeeds again (the real health server, fed by the real post-sync observer, over a
// proxier whose restores go to the in-memory iptables).
import { afterEach, describe, expect, it } from 'vitest';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { ClusterState, type Change } from '../../src/model/state.js';
import { IptablesProxier } from '../../src/sync/iptables-mode.js';
import { resolveConfig } from '../../src/config/config.js';
import { restoreReason } from '../../src/apply/iptables.js';
import { ProxyHealth } from '../../src/server/health.js';
import { healthServer } from '../../src/server/http.js';
import { PostSync } from '../../src/sync/post-sync.js';
import { silentLogger } from '../../src/util/log.js';
import { FakeIptables } from '../substrate/fake-iptables.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';

describe('restoreReason: iptables-restore in its own words', () => {
  const cases: Array<[string, string, string]> = [
    [
      'nf_tables refusing a commit (the kernel checks the jump depth then)',
      'iptables-nft-restore v1.8.9 (nf_tables): \nline 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT\n',
      'line 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT',
    ],
    [
      'nf_tables, the reason on the banner line',
      'iptables-nft-restore v1.8.9 (nf_tables): line 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT\n',
      'line 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT',
    ],
    [
      'ip6tables-nft, a jump to a missing chain, with the usage hint',
      "ip6tables-nft-restore v1.8.9 (nf_tables): Chain 'KPX-SVC-ABC' does not exist\nError occurred at line: 5\nTry `ip6tables-nft-restore -h' or 'ip6tables-nft-restore --help' for more information.\n",
      "Chain 'KPX-SVC-ABC' does not exist",
    ],
    ['legacy, a failed line', 'iptables-restore: line 3 failed\n', 'iptables-restore: line 3 failed'],
    ['legacy, a failed COMMIT', 'ip6tables-legacy-restore: line 42 failed\n', 'ip6tables-legacy-restore: line 42 failed'],
    [
      'legacy, a target it cannot load',
      "iptables-restore v1.8.7 (legacy): Couldn't load target `KPX-SEP-XYZ':No such file or directory\n\nError occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
      "Couldn't load target `KPX-SEP-XYZ':No such file or directory",
    ],
    [
      'the xtables lock',
      'Another app is currently holding the xtables lock. Stopped waiting after 5s.\n',
      'Another app is currently holding the xtables lock. Stopped waiting after 5s.',
    ],
    ['nothing said at all', '\n\n', 'unknown error'],
  ];
  for (const [what, stderr, reason] of cases) it(what, () => expect(restoreReason(stderr)).toBe(reason));

  it('keeps the first three of nft repeating itself once per rule of the refused transaction', () => {
    const stderr = [
      'iptables-nft-restore v1.8.9 (nf_tables): ',
      ...Array.from({ length: 50 }, (_, i) => `line ${1000 + i}: RULE_INSERT failed (Too many links): rule in chain KPX-DST-${i}`),
    ].join('\n');
    expect(restoreReason(stderr)).toBe(
      'line 1000: RULE_INSERT failed (Too many links): rule in chain KPX-DST-0; ' +
        'line 1001: RULE_INSERT failed (Too many links): rule in chain KPX-DST-1; ' +
        'line 1002: RULE_INSERT failed (Too many links): rule in chain KPX-DST-2; and 47 more lines like these',
    );
  });
});

describe('/healthz after failed full syncs', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
  });

  it('answers 503 with the restore reason after consecutive failures, and 200 after a success', async () => {
    const fake = new FakeIptables();
    const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.1.0/24', iptablesBackend: 'nft' }, 'node-a');
    const state = new ClusterState('node-a', silentLogger);
    const proxier = new IptablesProxier({ config, state, runner: fake, log: silentLogger, hostFacts: () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } }) });
    const health = new ProxyHealth(2 * config.syncPeriodMs);
    const post = new PostSync(silentLogger, health, () => proxier.knownFamilies(), null, null);
    const apply = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
    apply('Node', node({ ips: ['198.18.0.10'], podCIDRs: ['198.18.1.0/24'] }));
    apply('Service', service({ name: 'web', clusterIP: '198.19.0.1', ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
    const endpoint = (ip: string) => apply('EndpointSlice', endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip }] }));
    endpoint('198.18.1.11');
    server = healthServer(health, () => state.node, null);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/healthz`;
    const get = async () => {
      const res = await fetch(url);
      return { status: res.status, body: (await res.json()) as { healthy: boolean; status?: Record<string, { healthy: boolean; lastError?: { reason: string; failures: number } }> } };
    };
    const sync = async () => {
      const pending = state.takePending();
      post.onQueued();
      const report = await proxier.sync(pending);
      await post.onSync(report, pending);
      return report;
    };

    await proxier.init();
    expect((await sync()).ok).toBe(true);
    expect((await get()).status).toBe(200);

    const stderr = 'iptables-nft-restore v1.8.9 (nf_tables): \nline 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT';
    const reason = 'line 218754: RULE_INSERT failed (Too many links): rule in chain OUTPUT';
    const restores = fake.restores().length;
    for (let attempt = 1; attempt <= 3; attempt++) {
      // (a change each time: a full sync that finds the kernel as wanted restores nothing)
      endpoint(`198.18.1.${20 + attempt}`);
      proxier.requestFullSync();
      fake.failNextRestore = stderr;
      const r = await sync();
      expect(r.ok).toBe(false);
      expect(r.families[0]!.full).toBe(true);
      expect(r.families[0]!.error?.message).toContain(reason);
      const h = await get();
      // one failure may be a blip; the second in a row is the node's state
      expect(h.status, `after ${attempt} failed full sync(s)`).toBe(attempt >= 2 ? 503 : 200);
      expect(h.body.healthy).toBe(attempt < 2);
      expect(h.body.status?.IPv4?.lastError).toMatchObject({ failures: attempt });
      expect(h.body.status?.IPv4?.lastError?.reason).toContain(`iptables-restore (IPv4) failed: ${reason}`);
    }
    // each failed attempt reached the (fake) kernel: the failures are the restore's own
    expect(fake.restores().length).toBe(restores + 3);

    const ok = await sync();
    expect(ok.ok).toBe(true);
    expect(ok.families[0]!.full).toBe(true);
    expect(fake.save('IPv4')).toContain('--to-destination 198.18.1.23:8080');
    const h = await get();
    expect(h.status).toBe(200);
    expect(h.body.healthy).toBe(true);
    expect(h.body.status?.IPv4?.lastError).toBeUndefined();
  });
});
