// A sync that fails at any stage loses no change: the failure is logged once with its
// stage and cause, the sync reports it, and the next sync (with nothing new pending) is
// full and programs every change. Then, in the spirit of kube-proxy's runPacketFlowTests,
// packets are traced through the fake kernel's state after a sequence of real syncs.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { IptablesProxier } from '../../src/sync/iptables-mode.js';
import { IptablesRenderer } from '../../src/render/iptables/ruleset.js';
import { IptablesApplier } from '../../src/apply/iptables.js';
import { resolveConfig } from '../../src/config/config.js';
import { Tracer, tablesFromSave, type TracePacket } from '../../src/trace/tracer.js';
import { FakeIptables } from '../substrate/fake-iptables.js';
import { captureLogger } from '../substrate/log.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';

const hostOK = () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } });

function setup(hostFacts: () => ReturnType<typeof hostOK> = hostOK) {
  const fake = new FakeIptables();
  const { log, lines } = captureLogger('info');
  const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.1.0/24', iptablesBackend: 'nft' }, 'node-a');
  const state = new ClusterState('node-a', log);
  const proxier = new IptablesProxier({ config, state, runner: fake, log, hostFacts });
  const apply = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
  const web = (name: string, ip: string, eps: string[], extra: Partial<Parameters<typeof service>[0]> = {}) => {
    apply('Service', service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }], ...extra }));
    apply('EndpointSlice', endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: eps.map((e) => ({ ip: e })) }));
  };
  const sync = () => proxier.sync(state.takePending());
  /** where the fake kernel sends one packet: [verdict, DNAT target, masqueraded] per outcome */
  const fate = (pkt: Partial<TracePacket> & { dst: string; dport: number }) =>
    new Tracer(tablesFromSave(fake.save('IPv4')), { localAddresses: ['198.18.0.10', '127.0.0.1'] })
      .trace({ family: 'IPv4', proto: 'tcp', src: '198.18.1.50', from: { inIface: 'cbr0' }, ...pkt })
      .map((o) => [o.verdict, o.dnat ?? null, o.masquerade] as const);
  return { fake, state, proxier, web, sync, fate, lines, apply };
}

afterEach(() => vi.restoreAllMocks());

describe('a sync that fails at any stage loses no change', () => {
  const stages: Array<[string, () => void]> = [
    ['config', () => void vi.spyOn(ClusterState.prototype, 'endpointCount').mockImplementationOnce(() => { throw new Error('injected: config'); })],
    // (only a full sync reads the kernel: this one is made full, as after a flush)
    ['reading the kernel', () => void vi.spyOn(IptablesApplier.prototype, 'fullSyncGeneration').mockRejectedValueOnce(new Error('injected: reading the kernel'))],
    ['render', () => void vi.spyOn(IptablesRenderer.prototype, 'render').mockImplementationOnce(() => { throw new Error('injected: render'); })],
    ['plan', () => void vi.spyOn(IptablesApplier.prototype, 'plan').mockRejectedValueOnce(new Error('injected: plan'))],
    ['apply', () => void vi.spyOn(IptablesApplier.prototype, 'apply').mockRejectedValueOnce(new Error('injected: apply'))],
  ];
  for (const [stage, inject] of stages) {
    it(`at ${stage}`, async () => {
      const s = setup();
      await s.proxier.init();
      s.web('a', '198.19.0.1', ['198.18.1.11']);
      expect((await s.sync()).ok).toBe(true);
      // a change, then a sync that fails at this stage
      s.web('a', '198.19.0.1', ['198.18.1.12']);
      s.web('b', '198.19.0.2', ['198.18.1.13']);
      inject();
      if (stage === 'reading the kernel') s.proxier.requestFullSync();
      const failed = await s.sync();
      expect(failed.ok).toBe(false);
      const f = failed.families[0]!;
      expect(f.ok).toBe(false);
      if (!f.ok) expect([f.stage, f.error.message]).toEqual([stage, `injected: ${stage}`]);
      const errors = s.lines.filter((l) => l.msg === 'sync failed; the previous rules stay in place');
      expect(errors).toEqual([expect.objectContaining({ family: 'IPv4', stage, err: `injected: ${stage}` })]);
      // nothing new is pending: the next sync must still program both changes
      const next = await s.sync();
      expect(next.ok).toBe(true);
      expect(next.families[0]!.full).toBe(true);
      expect(s.fate({ dst: '198.19.0.1', dport: 80 })).toEqual([['ACCEPT', '198.18.1.12:8080', false]]);
      expect(s.fate({ dst: '198.19.0.2', dport: 80 })).toEqual([['ACCEPT', '198.18.1.13:8080', false]]);
    });
  }

  it('at host facts: no family syncs, the error is reported, the next sync programs the change', async () => {
    let fail = false;
    const s = setup(() => {
      if (fail) throw new Error('injected: host facts');
      return hostOK();
    });
    await s.proxier.init();
    s.web('a', '198.19.0.1', ['198.18.1.11']);
    await s.sync();
    s.web('a', '198.19.0.1', ['198.18.1.12']);
    fail = true;
    const failed = await s.sync();
    expect(failed).toMatchObject({ ok: false, families: [] });
    expect(failed.error?.message).toBe('injected: host facts');
    expect(s.lines.filter((l) => l.msg === 'sync failed; the previous rules stay in place')).toEqual([expect.objectContaining({ stage: 'host facts' })]);
    fail = false;
    const next = await s.sync();
    expect(next.families[0]!.full).toBe(true);
    expect(s.fate({ dst: '198.19.0.1', dport: 80 })).toEqual([['ACCEPT', '198.18.1.12:8080', false]]);
  });
});

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
