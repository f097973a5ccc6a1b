// Full vs partial sync decisions, against an in-memory iptables: after every step the fake
// kernel holds exactly what the renderer says, and each step writes only what it must.
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { IptablesProxier } from '../../src/sync/iptables-mode.js';
import { resolveConfig } from '../../src/config/config.js';
import { parseSave } from '../../src/iptables/save.js';
import { Tracer, tablesFromSave } from '../../src/trace/tracer.js';
import { isFixedChain } from '../../src/render/iptables/names.js';
import { silentLogger } from '../../src/util/log.js';
import { FakeIptables } from '../substrate/fake-iptables.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';

const host = () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } });

function setup() {
  const fake = new FakeIptables();
  const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.1.0/24', iptablesBackend: 'nft' }, 'node-a');
  const state = new ClusterState('node-a', silentLogger);
  const proxier = new IptablesProxier({ config, state, runner: fake, log: silentLogger, hostFacts: host });
  const add = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
  const web = (name: string, ip: string, eps: string[]) => {
    add('Service', service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }));
    add('EndpointSlice', endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: eps.map((e) => ({ ip: e })) }));
  };
  /** the fake kernel's KPX chains equal the renderer's (and nothing else of kpx's is there) */
  const consistent = async (report: Awaited<ReturnType<IptablesProxier['sync']>>) => {
    const renderer = report.families[0]!.ruleset;
    const kernel = parseSave(fake.save('IPv4'));
    for (const t of ['filter', 'nat'] as const) {
      const want = new Map([...renderer.chains(t)].map(([n, b]) => [n, b ? b.split('\n').map((l) => l.slice(l.indexOf(' ', 3) + 1)) : []]));
      const have = new Map([...kernel.get(t)!].filter(([n]) => n.startsWith('KPX-')).map(([n, c]) => [n, c.rules]));
      expect(have).toEqual(want);
    }
  };
  return { fake, state, proxier, add, web, consistent, config };
}

describe('sync decisions', () => {
  it('starts with a full sync that reads the kernel, then writes only what changed', async () => {
    const s = setup();
    await s.proxier.init();
    for (let i = 0; i < 20; i++) s.web(`svc-${i}`, `198.19.0.${i + 1}`, ['198.18.1.11', '198.18.1.12']);
    let r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.full).toBe(true);
    expect(s.fake.saves()).toBeGreaterThan(0); // read the kernel once
    await s.consistent(r);

    // one endpoint changes: only that service's chains are written, nothing is read back
    const saves = s.fake.saves();
    s.web('svc-3', '198.19.0.4', ['198.18.1.11', '198.18.1.13']);
    r = await s.proxier.sync(s.state.takePending());
    const f = r.families[0]!;
    expect(f.full).toBe(false);
    expect(f.servicePortsRendered).toBe(1);
    expect(s.fake.saves()).toBe(saves);
    const payload = s.fake.restores().at(-1)!;
    expect(payload).not.toContain('default/svc-4');
    expect(payload).toMatch(/^-X KPX-SEP-/m); // the removed endpoint's chain is deleted
    expect(f.chainsWritten).toBeLessThanOrEqual(3);
    await s.consistent(r);
  });

  it('a sync with no changes writes nothing (the periodic sync is cheap)', async () => {
    const s = setup();
    await s.proxier.init();
    s.web('a', '198.19.0.1', ['198.18.1.11']);
    await s.proxier.sync(s.state.takePending());
    const before = s.fake.restores().length;
    const r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.full).toBe(false);
    expect(r.families[0]!.chainsWritten).toBe(0);
    expect(s.fake.restores().length).toBe(before);
  });

  it('a new or deleted service changes only its own chains and one dispatch path', async () => {
    const s = setup();
    await s.proxier.init();
    for (let i = 0; i < 200; i++) s.web(`svc-${i}`, `198.19.${i >> 6}.${(i & 63) + 1}`, ['198.18.1.11']);
    await s.proxier.sync(s.state.takePending());
    s.web('new', '198.19.9.9', ['198.18.1.11']);
    let r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.full).toBe(false);
    expect(r.families[0]!.chainsWritten).toBeLessThan(12);
    await s.consistent(r);
    s.state.apply({ kind: 'Service', previous: service({ name: 'svc-7', clusterIP: '198.19.0.8', ports: [{ name: 'http', port: 80 }] }) } as Change);
    r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.chainsDeleted).toBeGreaterThanOrEqual(2);
    await s.consistent(r);
  });

  it('a change of this node\'s facts forces a full sync', async () => {
    const s = setup();
    await s.proxier.init();
    s.web('a', '198.19.0.1', ['198.18.1.11']);
    s.add('Node', node({ ips: ['198.18.0.10'], podCIDRs: ['198.18.1.0/24'] }));
    await s.proxier.sync(s.state.takePending());
    s.add('Node', node({ ips: ['198.18.0.11'], podCIDRs: ['198.18.1.0/24'] }));
    const r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.full).toBe(true);
    await s.consistent(r);
  });

  it('after a failed restore the previous rules stay and the next sync is full', async () => {
    const s = setup();
    await s.proxier.init();
    s.web('a', '198.19.0.1', ['198.18.1.11']);
    await s.proxier.sync(s.state.takePending());
    const kernelBefore = s.fake.save('IPv4');
    s.web('a', '198.19.0.1', ['198.18.1.12']);
    s.fake.failNextRestore = 'iptables-restore: boom';
    let r = await s.proxier.sync(s.state.takePending());
    expect(r.ok).toBe(false);
    expect(r.families[0]!.error?.message).toContain('boom');
    expect(s.fake.save('IPv4')).toBe(kernelBefore);
    const saves = s.fake.saves();
    r = await s.proxier.sync(s.state.takePending());
    expect(r.ok).toBe(true);
    expect(r.families[0]!.full).toBe(true);
    expect(s.fake.saves()).toBeGreaterThan(saves); // it read the kernel again
    await s.consistent(r);
  });

  it('detects an external flush by the canary and resyncs everything', async () => {
    const s = setup();
    await s.proxier.init();
    s.web('a', '198.19.0.1', ['198.18.1.11']);
    await s.proxier.sync(s.state.takePending());
    expect(await s.proxier.checkCanaries()).toEqual([]);
    s.fake.flush('IPv4', 'nat');
    expect(await s.proxier.checkCanaries()).toEqual(['IPv4']);
    const r = await s.proxier.sync(s.state.takePending());
    expect(r.families[0]!.full).toBe(true);
    await s.consistent(r);
  });

  it('a restart with the same input writes nothing', async () => {
    const s = setup();
    await s.proxier.init();
    for (let i = 0; i < 30; i++) s.web(`svc-${i}`, `198.19.0.${i + 1}`, ['198.18.1.11']);
    await s.proxier.sync(s.state.takePending());
    const p2 = new IptablesProxier({ config: s.config, state: s.state, runner: s.fake, log: silentLogger, hostFacts: host });
    await p2.init();
    const before = s.fake.save('IPv4');
    const restores = s.fake.restores().length;
    const r = await p2.sync(s.state.takePending());
    const f = r.families[0]!;
    expect(f.full).toBe(true);
    expect(f.chainsWritten).toBe(0);
    expect(f.chainsDeleted).toBe(0);
    expect(s.fake.restores().length).toBe(restores); // not even an empty restore
    expect(s.fake.save('IPv4')).toBe(before);
    // and a restart after one change writes that change only, in one transaction
    s.web('svc-3', '198.19.0.4', ['198.18.1.12']);
    const p3 = new IptablesProxier({ config: s.config, state: s.state, runner: s.fake, log: silentLogger, hostFacts: host });
    await p3.init();
    const r3 = (await p3.sync(s.state.takePending())).families[0]!;
    expect(r3.chainsWritten).toBeLessThanOrEqual(3);
    expect(r3.ruleset.generation).toEqual({ nat: 0, filter: 0 });
    await s.consistent(await p3.sync(s.state.takePending()));
  });

  it('a restart after many changes writes the other name set, switches to it, removes the old one; packets go where the model says', async () => {
    const s = setup();
    await s.proxier.init();
    const N = 3000;
    for (let i = 0; i < N; i++) s.web(`svc-${i}`, `198.19.${i >> 8}.${(i & 255) + 1}`, ['198.18.1.11', '198.18.1.12']);
    await s.proxier.sync(s.state.takePending());
    const before = s.fake.save('IPv4');
    // while kpx was away every service moved to other pods: too much to rewrite in place
    for (let i = 0; i < N; i++) s.web(`svc-${i}`, `198.19.${i >> 8}.${(i & 255) + 1}`, ['198.18.1.13', '198.18.1.14']);
    const p2 = new IptablesProxier({ config: s.config, state: s.state, runner: s.fake, log: silentLogger, hostFacts: host });
    await p2.init();
    const r = await p2.sync(s.state.takePending());
    const f = r.families[0]!;
    expect(f.error).toBeUndefined();
    expect(f.ruleset.generation).toEqual({ nat: 1, filter: 1 });
    const owned = (save: string) => [...parseSave(save).get('nat')!.keys()].filter((n) => n.startsWith('KPX-'));
    const fixed = owned(before).filter((n) => isFixedChain(n));
    expect(f.chainsDeleted).toBe(owned(before).length - fixed.length); // the old name set, all of it
    expect(owned(s.fake.save('IPv4')).filter((n) => fixed.includes(n))).toEqual(fixed);
    await s.consistent(r);
    const tracer = new Tracer(tablesFromSave(s.fake.save('IPv4')), { localAddresses: ['198.18.0.10', '127.0.0.1'] });
    for (let i = 0; i < N; i += 97) {
      const outs = tracer.trace({ family: 'IPv4', proto: 'tcp', src: '198.18.1.50', dst: `198.19.${i >> 8}.${(i & 255) + 1}`, dport: 80, from: { inIface: 'cbr0' } });
      expect(outs.map((o) => o.dnat).sort()).toEqual(['198.18.1.13:8080', '198.18.1.14:8080']);
    }
    // the next restart with the same input writes nothing, in the new name set
    const p3 = new IptablesProxier({ config: s.config, state: s.state, runner: s.fake, log: silentLogger, hostFacts: host });
    await p3.init();
    const f3 = (await p3.sync(s.state.takePending())).families[0]!;
    expect(f3.ruleset.generation).toEqual({ nat: 1, filter: 1 });
    expect(f3.chainsWritten).toBe(0);
  }, 60_000);
});
