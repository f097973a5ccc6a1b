// A sync that throws right after a Service was added loses nothing, with real packets:
// kpx's proxier runs in this process against the node namespace (its commands through
// `ip netns exec`). A Service is added, the sync that should program it fails (the host's
// addresses cannot be read in the iptables mode; the kernel refuses the transaction in the
// nftables mode), a connection to it is not served, and the following sync, with nothing
// new pending, programs it: a real connection reaches its endpoint.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATAPLANE_MODES, NET, Topology, dataplaneEnv, localPods, netnsRunner, type DataplaneMode } from '../substrate/netns.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';
import { captureLogger } from '../substrate/log.js';
import { ClusterState, type Change } from '../../src/model/state.js';
import { resolveConfig } from '../../src/config/config.js';
import { Controller } from '../../src/sync/controller.js';
import { PostSync } from '../../src/sync/post-sync.js';
import { IptablesProxier } from '../../src/sync/iptables-mode.js';
import { NftablesProxier } from '../../src/sync/nftables-mode.js';
import { ProxyHealth } from '../../src/server/health.js';
import type { CommandRunner } from '../../src/apply/exec.js';
import type { HostFacts } from '../../src/apply/host.js';
import type { Source } from '../../src/source/types.js';

const env = await dataplaneEnv();
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const IP = { web: '198.19.9.1', late: '198.19.9.2' };
const FAILED = 'sync failed; the previous rules stay in place';

/** How each mode's sync is made to fail once: where, and the switch that arms it. */
const FAULTS: Record<DataplaneMode, { stage: string; cause: RegExp }> = {
  // the host's addresses cannot be read
  iptables: { stage: 'host facts', cause: /injected: cannot read the host's addresses/ },
  // the kernel refuses kpx's transaction (nft exits non-zero)
  nftables: { stage: 'apply', cause: /injected: the kernel refuses/ },
};

for (const mode of DATAPLANE_MODES) {
  describe.skipIf(!env.ok)(`${mode} mode: a failed sync after a new Service, then the next one serves it${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
    let t: Topology;
    let broken = false;
    const { log, lines } = captureLogger('info');
    const state = new ClusterState('node-a', log);
    const health = new ProxyHealth(60_000);
    let controller: Controller;

    const apply = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
    const addService = (name: string, ip: string, pod: string) => {
      apply('Service', service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
      apply('EndpointSlice', endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: pod }] }));
    };
    /** which pods answered `count` connections from the client pod, and the errors */
    const reach = async (ip: string, count = 5) => {
      const r = await t.probe('client', 'tcp', ip, 80, { count, timeoutMs: 1500 });
      return { names: r.names, ok: r.ok };
    };

    beforeAll(async () => {
      t = await Topology.create({ pods: localPods({ a: P.a, b: P.b }, { client: P.client }) });
      const inNode = netnsRunner(t.node);
      // the nftables mode's fault: the next transaction that writes kpx's table fails
      const runner: CommandRunner = {
        run: (command, args, opts) =>
          broken && mode === 'nftables' && command === 'nft' && args.join(' ') === '-f -'
            ? Promise.resolve({ exitCode: 1, stdout: '', stderr: '/dev/stdin:1:1-1: Error: injected: the kernel refuses\n' })
            : inNode.run(command, args, opts),
      };
      // the iptables mode's fault: the host's addresses cannot be read
      const hostFacts = (): HostFacts => {
        if (broken && mode === 'iptables') throw new Error("injected: cannot read the host's addresses");
        return { addresses: { IPv4: [NET.nodeIP], IPv6: [] } };
      };
      // (no localhost NodePorts: a sync would set route_localnet in this process's namespace)
      const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: NET.podCIDR, iptablesBackend: 'nft', proxyMode: mode, iptablesLocalhostNodeports: false }, 'node-a');
      const proxier = new (mode === 'iptables' ? IptablesProxier : NftablesProxier)({ config, state, runner, log, hostFacts });
      const source: Source = { start: () => Promise.resolve(), stop: () => Promise.resolve() };
      const postSync = new PostSync(log, health, () => proxier.knownFamilies(), null, null);
      controller = new Controller({ config, log, source, state, proxier, observers: [postSync] });
      await proxier.init();
      apply('Node', node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] }));
      addService('web', IP.web, P.a);
      expect(await controller.syncOnce()).toBe(true);
    });
    afterAll(async () => {
      await t?.destroy();
    });

    it('serves the first Service', async () => {
      expect(await reach(IP.web)).toEqual({ names: { a: 5 }, ok: 5 });
    });

    it(`a Service added, the sync fails (${FAULTS[mode].stage}): it is not served, the old one still is`, async () => {
      addService('late', IP.late, P.b);
      broken = true;
      expect(await controller.syncOnce()).toBe(false);
      broken = false;
      const errors = lines.filter((l) => l.msg === FAILED);
      expect(errors).toEqual([expect.objectContaining({ stage: FAULTS[mode].stage, err: expect.stringMatching(FAULTS[mode].cause) as unknown })]);
      expect(health.status().families.IPv4?.error?.reason).toMatch(FAULTS[mode].cause);
      expect((await reach(IP.late, 2)).ok).toBe(0);
      expect(await reach(IP.web)).toEqual({ names: { a: 5 }, ok: 5 });
    });

    it('the next sync, with nothing new pending, programs it: a real connection reaches its endpoint', async () => {
      expect(state.peekPending().services.size + state.peekPending().endpoints.size).toBe(0);
      expect(await controller.syncOnce()).toBe(true);
      expect(controller.lastReport?.families[0]?.full).toBe(true);
      expect(await reach(IP.late)).toEqual({ names: { b: 5 }, ok: 5 });
      expect(await reach(IP.web)).toEqual({ names: { a: 5 }, ok: 5 });
      expect(health.status().families.IPv4?.error).toBeUndefined();
    });
  });
}
