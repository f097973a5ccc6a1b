// A sync that fails at any stage loses no change: the failure is logged once with its
// stage and cause, the sync reports it, the mode's failure counter counts it, health shows
// it (and turns unhealthy once the change waits past the timeout), and the next sync (with
// nothing new pending) is full and programs every change. In every mode, against its
// in-memory kernel; syncs run as kpx runs them (the controller, its metrics and health).
// Then, in the spirit of kube-proxy's runPacketFlowTests, packets are traced through the
// fake kernel's state after a sequence of real syncs.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { IptablesProxier } from '../../src/sync/iptables-mode.js';
import { NftablesProxier } from '../../src/sync/nftables-mode.js';
import { IpvsProxier } from '../../src/sync/ipvs-mode.js';
import { Controller } from '../../src/sync/controller.js';
import { PostSync } from '../../src/sync/post-sync.js';
import type { Driver, ModeDetail, ProxyMode, SyncStage } from '../../src/sync/driver.js';
import { IptablesRenderer } from '../../src/render/iptables/ruleset.js';
import { NftablesRenderer } from '../../src/render/nftables/ruleset.js';
import * as ipvsRender from '../../src/render/ipvs/ipvs.js';
import * as ipvsPlan from '../../src/render/ipvs/plan.js';
import { IptablesApplier } from '../../src/apply/iptables.js';
import { NftablesApplier } from '../../src/apply/nftables.js';
import { IpvsApplier } from '../../src/apply/ipvs.js';
import type { CommandRunner } from '../../src/apply/exec.js';
import { resolveConfig } from '../../src/config/config.js';
import { ProxyHealth } from '../../src/server/health.js';
import { KpxMetrics } from '../../src/server/metrics.js';
import { parseIpvsSave } from '../../src/ipvs/format.js';
import { Tracer, tablesFromSave, type Outcome, type TracePacket } from '../../src/trace/tracer.js';
import { NftTracer } from '../../src/trace/nftables.js';
import type { Source } from '../../src/source/types.js';
import { FakeIptables } from '../substrate/fake-iptables.js';
import { FakeNft } from '../substrate/fake-nft.js';
import { FakeIpvs } from '../substrate/fake-ipvs.js';
import { captureLogger } from '../substrate/log.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';

// the IPVS mode's render and planner are module functions: wrapped, so a test can make one throw
vi.mock('../../src/render/ipvs/ipvs.js', async (original) => {
  const m = await original<typeof import('../../src/render/ipvs/ipvs.js')>();
  return { ...m, renderIpvs: vi.fn(m.renderIpvs) };
});
vi.mock('../../src/render/ipvs/plan.js', async (original) => {
  const m = await original<typeof import('../../src/render/ipvs/plan.js')>();
  return { ...m, planIpvs: vi.fn(m.planIpvs) };
});

const hostOK = () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } });
const HEALTH_TIMEOUT_MS = 60_000;
const FAILED = 'sync failed; the previous rules stay in place';

const outcomes = (o: Outcome[]) => o.map((x) => [x.verdict, x.dnat ?? null, x.masquerade] as const);
const PACKET = { family: 'IPv4', proto: 'tcp', src: '198.18.1.50', from: { inIface: 'cbr0' } } as const;

/** One mode against its in-memory kernel: the runner, and where a packet to ip:port goes. */
interface Kernel {
  readonly runner: CommandRunner;
  /** where a connection to a cluster IP goes: each endpoint it may be sent to */
  endpointsOf(ip: string, port: number): Promise<string[]>;
}

const KERNELS: Record<ProxyMode, () => Kernel> = {
  iptables: () => {
    const fake = new FakeIptables();
    return {
      runner: fake,
      endpointsOf: async (ip, port) => targets(new Tracer(tablesFromSave(fake.save('IPv4')), { localAddresses: ['198.18.0.10', '127.0.0.1'] }).trace({ ...PACKET, dst: ip, dport: port })),
    };
  },
  nftables: () => {
    const fake = new FakeNft();
    return {
      runner: fake,
      endpointsOf: async (ip, port) => targets(new NftTracer(fake.model('IPv4'), { localAddresses: ['198.18.0.10', '127.0.0.1'] }).trace({ ...PACKET, dst: ip, dport: port })),
    };
  },
  ipvs: () => {
    const fake = new FakeIpvs();
    return {
      runner: fake,
      endpointsOf: async (ip, port) => [...(parseIpvsSave((await fake.run('ipvsadm', ['-Sn'])).stdout).get(`tcp|${ip}:${port}`)?.reals.keys() ?? [])].sort(),
    };
  },
};

/** The DNAT targets of accepted outcomes (an outcome that is not an ACCEPT to an endpoint shows as itself). */
function targets(o: Outcome[]): string[] {
  return outcomes(o)
    .map(([verdict, dnat]) => (verdict === 'ACCEPT' && dnat ? dnat : `${verdict}`))
    .sort();
}

const PROXIERS = { iptables: IptablesProxier, nftables: NftablesProxier, ipvs: IpvsProxier } as const;

function setup(hostFacts: () => ReturnType<typeof hostOK> = hostOK, mode: ProxyMode = 'iptables') {
  const kernel = KERNELS[mode]();
  const { log, lines } = captureLogger('info');
  // (no localhost NodePorts: a sync would set route_localnet in this process's namespace)
  const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.1.0/24', iptablesBackend: 'nft', proxyMode: mode, iptablesLocalhostNodeports: false }, 'node-a');
  const state = new ClusterState('node-a', log);
  const proxier: Driver<unknown, ModeDetail> = new PROXIERS[mode]({ config, state, runner: kernel.runner, log, hostFacts });
  let now = 1_000_000;
  const health = new ProxyHealth(HEALTH_TIMEOUT_MS, () => now);
  const metrics = new KpxMetrics(() => state.peekPending(), () => proxier.knownFamilies());
  const postSync = new PostSync(log, health, () => proxier.knownFamilies(), null, null);
  const source: Source = { start: () => Promise.resolve(), stop: () => Promise.resolve() };
  const controller = new Controller({ config, log, source, state, proxier, observers: [postSync, metrics] });
  const apply = (kind: Change['kind'], current: object) => {
    state.apply({ kind, current } as Change);
    postSync.onQueued();
  };
  const web = (name: string, ip: string, eps: string[], extra: Partial<Parameters<typeof service>[0]> = {}) => {
    apply('Service', service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }], ...extra }));
    apply('EndpointSlice', endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: eps.map((e) => ({ ip: e })) }));
  };
  /** one sync as kpx runs it; its report */
  const sync = async () => {
    await controller.syncOnce();
    return controller.lastReport!;
  };
  const failures = async () => {
    const counter = mode === 'nftables' ? metrics.nftablesSyncFailures : metrics.restoreFailures;
    return (await counter.get()).values.find((v) => v.labels.ip_family === 'IPv4')?.value ?? 0;
  };
  const advance = (ms: number) => void (now += ms);
  /** (iptables mode) where the fake kernel sends one packet: [verdict, DNAT target, masqueraded] per outcome */
  const fate = (pkt: Partial<TracePacket> & { dst: string; dport: number }) =>
    outcomes(new Tracer(tablesFromSave((kernel.runner as FakeIptables).save('IPv4')), { localAddresses: ['198.18.0.10', '127.0.0.1'] }).trace({ ...PACKET, ...pkt }));
  return { mode, kernel, state, proxier, web, sync, fate, lines, apply, health, failures, advance, controller };
}

afterEach(() => vi.restoreAllMocks());

type Setup = ReturnType<typeof setup>;
type Inject = (s: Setup) => void;
const fail = (stage: string) => () => {
  throw new Error(`injected: ${stage}`);
};
const reject = (stage: string) => () => Promise.reject(new Error(`injected: ${stage}`));

/** What each mode's sync runs, and how each stage is made to throw once. */
const STAGES: Record<ProxyMode, Array<[SyncStage, Inject]>> = {
  iptables: [
    ['config', () => void vi.spyOn(ClusterState.prototype, 'endpointCount').mockImplementationOnce(fail('config'))],
    // (only a full sync reads the kernel: this one is made full, as after a flush)
    ['reading the kernel', (s) => void (vi.spyOn(IptablesApplier.prototype, 'fullSyncGeneration').mockImplementationOnce(reject('reading the kernel')), s.proxier.requestFullSync())],
    ['render', () => void vi.spyOn(IptablesRenderer.prototype, 'render').mockImplementationOnce(fail('render'))],
    ['plan', () => void vi.spyOn(IptablesApplier.prototype, 'plan').mockImplementationOnce(reject('plan'))],
    ['apply', () => void vi.spyOn(IptablesApplier.prototype, 'apply').mockImplementationOnce(reject('apply'))],
  ],
  nftables: [
    ['config', (s) => void vi.spyOn(s.proxier.mode.family('IPv4'), 'config').mockImplementationOnce(fail('config'))],
    ['reading the kernel', (s) => void (vi.spyOn(NftablesApplier.prototype, 'readState').mockImplementationOnce(reject('reading the kernel')), s.proxier.requestFullSync())],
    ['render', () => void vi.spyOn(NftablesRenderer.prototype, 'render').mockImplementationOnce(fail('render'))],
    ['plan', () => void vi.spyOn(NftablesApplier.prototype as unknown as { planPartial(): unknown }, 'planPartial').mockImplementationOnce(fail('plan'))],
    ['apply', (s) => void ((s.kernel.runner as FakeNft).failNext = 'injected: apply')],
  ],
  ipvs: [
    ['config', (s) => void vi.spyOn(s.proxier.mode.family('IPv4'), 'config').mockImplementationOnce(fail('config'))],
    ['render', () => void vi.mocked(ipvsRender.renderIpvs).mockImplementationOnce(fail('render'))],
    ['reading the kernel', () => void vi.spyOn(IpvsApplier.prototype, 'readKernel').mockImplementationOnce(reject('reading the kernel'))],
    ['plan', () => void vi.mocked(ipvsPlan.planIpvs).mockImplementationOnce(fail('plan'))],
    ['apply', (s) => failCommand(s.kernel.runner, (command, args) => command === 'ipvsadm' && args[0] === '-R', 'injected: apply')],
  ],
};

/** The next run of the command `which` picks fails (the kernel refuses), once. */
function failCommand(runner: CommandRunner, which: (command: string, args: readonly string[]) => boolean, stderr: string): void {
  const real = runner.run.bind(runner);
  let armed = true;
  vi.spyOn(runner, 'run').mockImplementation((command, args, opts) => {
    if (!armed || !which(command, args)) return real(command, args, opts);
    armed = false;
    return Promise.resolve({ exitCode: 2, stdout: '', stderr });
  });
}

/** What a failed sync must leave: the report, one error line, the counter, health. */
async function expectFailed(s: Setup, stage: SyncStage, failuresBefore: number) {
  const message = `injected: ${stage}`;
  // the iptables mode's injections throw the message itself; the others' come through a tool's error
  const cause = s.mode === 'iptables' ? message : (expect.stringContaining(message) as unknown);
  const report = s.controller.lastReport!;
  expect(report.ok).toBe(false);
  const f = report.families[0];
  if (f) {
    expect(f.ok).toBe(false);
    if (!f.ok) expect([f.stage, f.error.message]).toEqual([stage, cause]);
  } else {
    expect([report.stage, report.error?.message]).toEqual([stage, cause]);
  }
  const errors = s.lines.filter((l) => l.msg === FAILED);
  expect(errors).toEqual([expect.objectContaining({ stage, err: cause })]);
  expect(await s.failures()).toBe(failuresBefore + 1);
  // health says why at once, and is unhealthy once the change waits past the timeout
  // (after a failure after the sync, nothing waits: the rules are in place)
  expect(s.health.status().families.IPv4?.error).toMatchObject({ reason: expect.stringContaining(message) as unknown, failures: 1 });
  s.advance(HEALTH_TIMEOUT_MS);
  const waiting = stage !== 'after sync';
  expect(s.health.status()).toMatchObject({ healthy: !waiting, families: { IPv4: { healthy: !waiting } } });
}

/** And the next sync, with nothing new pending, programs what the failed one did not. */
async function expectRecovered(s: Setup, failures: number) {
  const next = await s.sync();
  expect(next.ok).toBe(true);
  expect(next.families[0]!.full).toBe(true);
  expect(await s.kernel.endpointsOf('198.19.0.1', 80)).toEqual(['198.18.1.12:8080']);
  expect(await s.kernel.endpointsOf('198.19.0.2', 80)).toEqual(['198.18.1.13:8080']);
  if (s.mode === 'iptables') {
    expect(s.fate({ dst: '198.19.0.1', dport: 80 })).toEqual([['ACCEPT', '198.18.1.12:8080', false]]);
    expect(s.fate({ dst: '198.19.0.2', dport: 80 })).toEqual([['ACCEPT', '198.18.1.13:8080', false]]);
  }
  expect(await s.failures()).toBe(failures);
  expect(s.health.status()).toMatchObject({ healthy: true, families: { IPv4: { healthy: true } } });
  expect(s.health.status().families.IPv4?.error).toBeUndefined();
}

for (const mode of ['iptables', 'nftables', 'ipvs'] as const) {
  describe(`${mode} mode: a sync that fails at any stage loses no change`, () => {
    const start = async (hostFacts?: () => ReturnType<typeof hostOK>) => {
      const s = setup(hostFacts, mode);
      // (the IPVS mode's init sets sysctls of this process's namespace: not here)
      if (mode === 'iptables') await s.proxier.init();
      s.web('a', '198.19.0.1', ['198.18.1.11']);
      expect((await s.sync()).ok).toBe(true);
      expect(await s.kernel.endpointsOf('198.19.0.1', 80)).toEqual(['198.18.1.11:8080']);
      expect(s.health.status().healthy).toBe(true);
      return s;
    };
    const change = (s: Setup) => {
      s.web('a', '198.19.0.1', ['198.18.1.12']);
      s.web('b', '198.19.0.2', ['198.18.1.13']);
    };

    for (const [stage, inject] of STAGES[mode]) {
      it(`at ${stage}`, async () => {
        const s = await start();
        // a change, then a sync that fails at this stage
        change(s);
        inject(s);
        await s.sync();
        await expectFailed(s, stage, 0);
        expect(s.lines.filter((l) => l.msg === FAILED)).toEqual([expect.objectContaining({ family: 'IPv4' })]);
        await expectRecovered(s, 1);
      });
    }

    it('at host facts: no family syncs, the error is reported, the next sync programs the change', async () => {
      let broken = false;
      const s = await start(() => {
        if (broken) throw new Error('injected: host facts');
        return hostOK();
      });
      change(s);
      broken = true;
      const failed = await s.sync();
      expect(failed).toMatchObject({ ok: false, families: [] });
      await expectFailed(s, 'host facts', 0);
      broken = false;
      await expectRecovered(s, 1);
    });

    it('while choosing the families: no family syncs, the next sync programs the change', async () => {
      const s = await start();
      change(s);
      vi.spyOn(ClusterState.prototype, 'familiesInUse').mockImplementationOnce(fail('families'));
      await s.sync();
      await expectFailed(s, 'families', 0);
      await expectRecovered(s, 1);
    });

    it("after a good sync (another mode's leftovers): reported after the sync, as a failure of its own; the next sync is full", async () => {
      const s = await start();
      change(s);
      vi.spyOn(s.proxier.mode as { afterSuccess(): Promise<void> }, 'afterSuccess').mockImplementationOnce(reject('after sync'));
      expect(await s.controller.syncOnce()).toBe(false);
      // the sync itself programmed the change and was reported as such first
      expect(await s.kernel.endpointsOf('198.19.0.2', 80)).toEqual(['198.18.1.13:8080']);
      await expectFailed(s, 'after sync', 0);
      await expectRecovered(s, 1);
    });

    it('fails twice in a row: unhealthy at once', async () => {
      const s = await start();
      change(s);
      const [stage, inject] = STAGES[mode].at(-1)!;
      inject(s);
      await s.sync();
      expect(s.health.status().healthy).toBe(true);
      inject(s);
      await s.sync();
      expect(s.controller.lastReport!.ok).toBe(false);
      expect(await s.failures()).toBe(2);
      expect(s.health.status()).toMatchObject({ healthy: false, families: { IPv4: { healthy: false, error: { failures: 2, reason: expect.stringContaining(`injected: ${stage}`) as unknown } } } });
      await expectRecovered(s, 2);
    });
  });
}

describe('packet flows through the fake kernel after a sequence of syncs', () => {
  it('follow every change: scale up and down, no endpoints, NodePort, policy, delete', async () => {
    const s = setup();
    await s.proxier.init();
    s.apply('Node', node({ ips: ['198.18.0.10'], podCIDRs: ['198.18.1.0/24'] }));
    const np = { type: 'NodePort' as const, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 31001 }] };
    const steps: Array<{ change: () => void; flows: Array<[Parameters<typeof s.fate>[0], ReturnType<typeof s.fate>]> }> = [
      {
        change: () => s.web('web', '198.19.7.7', ['198.18.1.11']),
        flows: [[{ dst: '198.19.7.7', dport: 80 }, [['ACCEPT', '198.18.1.11:8080', false]]]],
      },
      {
        change: () => s.web('web', '198.19.7.7', ['198.18.1.11', '198.18.1.12']),
        flows: [[{ dst: '198.19.7.7', dport: 80 }, [['ACCEPT', '198.18.1.11:8080', false], ['ACCEPT', '198.18.1.12:8080', false]]]],
      },
      {
        // from outside the cluster CIDR: masqueraded
        change: () => {},
        flows: [[{ dst: '198.19.7.7', dport: 80, src: '198.18.0.1', from: { inIface: 'eth0' } }, [['ACCEPT', '198.18.1.11:8080', true], ['ACCEPT', '198.18.1.12:8080', true]]]],
      },
      {
        change: () => s.web('web', '198.19.7.7', []),
        flows: [[{ dst: '198.19.7.7', dport: 80 }, [['REJECT', null, false]]]],
      },
      {
        change: () => s.web('web', '198.19.7.7', ['198.18.1.13'], np),
        flows: [
          [{ dst: '198.19.7.7', dport: 80 }, [['ACCEPT', '198.18.1.13:8080', false]]],
          [{ dst: '198.18.0.10', dport: 31001, src: '198.18.0.1', from: { inIface: 'eth0' } }, [['ACCEPT', '198.18.1.13:8080', true]]],
        ],
      },
      {
        // externalTrafficPolicy Local with the only endpoint on another node: NodePort
        // traffic from outside is dropped
        change: () => {
          s.web('web', '198.19.7.7', [], { ...np, spec: { externalTrafficPolicy: 'Local' } });
          s.apply('EndpointSlice', endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.2.13', node: 'node-b' }] }));
        },
        flows: [[{ dst: '198.18.0.10', dport: 31001, src: '198.18.0.1', from: { inIface: 'eth0' } }, [['DROP', null, false]]]],
      },
      {
        change: () => s.state.apply({ kind: 'Service', previous: service({ name: 'web', clusterIP: '198.19.7.7', ports: [{ port: 80 }] }) } as Change),
        flows: [[{ dst: '198.19.7.7', dport: 80 }, [['ACCEPT', null, false]]]],
      },
    ];
    for (const [i, step] of steps.entries()) {
      step.change();
      const r = await s.sync();
      expect(r.ok, `step ${i}`).toBe(true);
      for (const [pkt, want] of step.flows) expect(s.fate(pkt).slice().sort(), `step ${i}: ${JSON.stringify(pkt)}`).toEqual(want.slice().sort());
    }
  });
});
