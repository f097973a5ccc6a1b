// IPVS mode without a kernel: the renderer (model -> virtual servers, sets, addresses), the
// diff (desired vs an in-memory IPVS), the applier's order and its idempotence across a
// restart, and graceful termination. The real-kernel proof is test/ipvs (under qemu).
import { describe, expect, it } from 'vitest';
import { ClusterState, type Change } from '../../src/model/state.js';
import { renderIpvs, type IpvsRenderConfig } from '../../src/render/ipvs/ipvs.js';
import { ipvsIptablesRuleset } from '../../src/render/ipvs/rules.js';
import { planIpvs } from '../../src/render/ipvs/plan.js';
import { parseIpsetSave, parseIpvsConnections, parseIpvsSave } from '../../src/ipvs/format.js';
import { IpvsApplier } from '../../src/apply/ipvs.js';
import { IptablesApplier } from '../../src/apply/iptables.js';
import { parseCIDR, type ParsedCIDR } from '../../src/util/ip.js';
import { silentLogger } from '../../src/util/log.js';
import { FakeIpvs } from '../substrate/fake-ipvs.js';
import { endpointSlice, service } from '../substrate/manifests.js';

const NODE_IP = '198.18.0.10';
const cfg = (o: Partial<IpvsRenderConfig> = {}): IpvsRenderConfig => ({
  family: 'IPv4',
  nodeName: 'node-a',
  zone: undefined,
  scheduler: 'rr',
  nodePortIPs: [NODE_IP],
  localDetector: { source: '198.18.1.0/24' },
  masqueradeAll: false,
  masqueradeMark: '0x4000',
  randomFully: true,
  conntrackTCPLiberal: false,
  excludeCIDRs: [],
  ...o,
});

function cluster() {
  const state = new ClusterState('node-a', silentLogger);
  const add = (kind: Change['kind'], current: object) => state.apply({ kind, current } as Change);
  const del = (kind: Change['kind'], previous: object) => state.apply({ kind, previous } as Change);
  const web = (eps: Array<{ ip: string; node?: string }>, spec: Record<string, unknown> = {}, extra: Partial<Parameters<typeof service>[0]> = {}) => {
    add('Service', service({ name: 'web', clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30080 }], type: 'NodePort', spec, ...extra }));
    add('EndpointSlice', endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: eps }));
  };
  const dns = (eps: string[]) => {
    add('Service', service({ name: 'dns', clusterIP: '198.19.0.53', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] }));
    add('EndpointSlice', endpointSlice({ service: 'dns', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }], endpoints: eps.map((ip) => ({ ip })) }));
  };
  return { state, add, del, web, dns, view: () => state.view('IPv4') };
}

const reals = (d: ReturnType<typeof renderIpvs>, key: string) => [...(d.services.get(key)?.reals.keys() ?? [])].sort();

describe('IPVS renderer', () => {
  it('one virtual server per service address, port and protocol, with every endpoint as a masqueraded real server', () => {
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }, { ip: '198.18.1.12' }], { externalIPs: ['198.18.0.100'] });
    c.dns(['198.18.1.13']);
    const d = renderIpvs(c.view(), cfg());
    expect([...d.services.keys()].sort()).toEqual(['tcp|198.18.0.100:80', 'tcp|198.18.0.10:30080', 'tcp|198.19.0.10:80', 'udp|198.19.0.53:53']);
    expect(reals(d, 'tcp|198.19.0.10:80')).toEqual(['198.18.1.11:8080', '198.18.1.12:8080']);
    expect(d.services.get('tcp|198.19.0.10:80')).toMatchObject({ scheduler: 'rr', persistence: 0 });
    expect([...d.services.get('tcp|198.19.0.10:80')!.reals.values()].every((r) => r.weight === 1)).toBe(true);
    expect([...d.addresses].sort()).toEqual(['198.18.0.100', '198.19.0.10', '198.19.0.53']);
    expect([...d.sets.get('KPX-CLUSTER-IP')!.members].sort()).toEqual(['198.19.0.10,tcp:80', '198.19.0.53,udp:53']);
    expect([...d.sets.get('KPX-EXTERNAL-IP')!.members]).toEqual(['198.18.0.100,tcp:80']);
    expect([...d.sets.get('KPX-NODE-PORT-TCP')!.members]).toEqual(['30080']);
    expect(d.sets.get('KPX-LOOP-BACK')!.members.has('198.18.1.11,tcp:8080,198.18.1.11')).toBe(true);
  });

  it('session affinity is persistence with its timeout; the scheduler comes from config', () => {
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }], { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } });
    const d = renderIpvs(c.view(), cfg({ scheduler: 'sh' }));
    expect(d.services.get('tcp|198.19.0.10:80')).toMatchObject({ scheduler: 'sh', persistence: 60 });
  });

  it('externalTrafficPolicy Local: NodePorts and LB IPs get only local endpoints and skip masquerade; the cluster IP keeps all', () => {
    const c = cluster();
    c.web([{ ip: '198.18.1.11', node: 'node-a' }, { ip: '198.18.2.11', node: 'node-b' }], { externalTrafficPolicy: 'Local', type: 'LoadBalancer' }, {
      type: 'LoadBalancer',
      status: { loadBalancer: { ingress: [{ ip: '198.18.0.200' }] } },
    });
    const d = renderIpvs(c.view(), cfg());
    expect(reals(d, 'tcp|198.19.0.10:80')).toEqual(['198.18.1.11:8080', '198.18.2.11:8080']);
    expect(reals(d, 'tcp|198.18.0.10:30080')).toEqual(['198.18.1.11:8080']);
    expect(reals(d, 'tcp|198.18.0.200:80')).toEqual(['198.18.1.11:8080']);
    expect([...d.sets.get('KPX-NODE-PORT-LOCAL-TCP')!.members]).toEqual(['30080']);
    expect([...d.sets.get('KPX-LOAD-BALANCER-LOCAL')!.members]).toEqual(['198.18.0.200,tcp:80']);
  });

  it('internalTrafficPolicy Local: the cluster IP gets only local endpoints (none: no real server)', () => {
    const c = cluster();
    c.web([{ ip: '198.18.2.11', node: 'node-b' }], { internalTrafficPolicy: 'Local' });
    const d = renderIpvs(c.view(), cfg());
    expect(reals(d, 'tcp|198.19.0.10:80')).toEqual([]);
    expect(d.noLocalEndpoints.internal).toBe(1);
  });

  it('LB source ranges fill the firewall sets; excluded CIDRs get no virtual server', () => {
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }], { loadBalancerSourceRanges: ['198.18.0.0/24', '198.18.3.3/32'] }, {
      type: 'LoadBalancer',
      status: { loadBalancer: { ingress: [{ ip: '198.18.0.200' }] } },
    });
    const excl = parseCIDR('198.18.0.192/26') as ParsedCIDR;
    const d = renderIpvs(c.view(), cfg({ excludeCIDRs: [excl] }));
    expect([...d.sets.get('KPX-LOAD-BALANCER-FW')!.members]).toEqual(['198.18.0.200,tcp:80']);
    expect([...d.sets.get('KPX-LOAD-BALANCER-SOURCE-CIDR')!.members].sort()).toEqual(['198.18.0.200,tcp:80,198.18.0.0/24', '198.18.0.200,tcp:80,198.18.3.3/32']);
    expect(d.services.has('tcp|198.18.0.200:80')).toBe(false);
    expect(d.services.has('tcp|198.19.0.10:80')).toBe(true);
  });

  it('iptables side: masquerade off-cluster sources to cluster IPs, or everything with masqueradeAll', () => {
    const nat = (c: IpvsRenderConfig) => new Map(ipvsIptablesRuleset(c).chains('nat'));
    expect(nat(cfg()).get('KPX-SERVICES')).toContain('-A KPX-SERVICES ! -s 198.18.1.0/24 -m comment --comment "kpx service traffic from outside the cluster" -m set --match-set KPX-CLUSTER-IP dst,dst -j KPX-MARK-MASQ');
    expect(nat(cfg({ masqueradeAll: true })).get('KPX-SERVICES')).toMatch(/^-A KPX-SERVICES -m comment .* -m set --match-set KPX-CLUSTER-IP dst,dst -j KPX-MARK-MASQ$/m);
    expect(nat(cfg({ family: 'IPv6' })).get('KPX-POSTROUTING')).toContain('--match-set KPX6-LOOP-BACK dst,dst,src -j MASQUERADE');
  });
});

describe('IPVS diff and applier (in-memory kernel)', () => {
  const applier = (fake: FakeIpvs, drainMs = 60_000) =>
    new IpvsApplier('IPv4', new IptablesApplier('IPv4', 'nft', fake, silentLogger), fake, silentLogger, drainMs);

  it('programs everything, then a restart with the same input changes nothing', async () => {
    const fake = new FakeIpvs();
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }, { ip: '198.18.1.12' }]);
    c.dns(['198.18.1.13']);
    const d = renderIpvs(c.view(), cfg());
    await applier(fake).apply(d, ipvsIptablesRuleset(cfg()), cfg());
    expect(fake.snapshot()).toBe(
      [
        '-A -t 198.18.0.10:30080 -s rr',
        '-a -t 198.18.0.10:30080 -r 198.18.1.11:8080 -m -w 1',
        '-a -t 198.18.0.10:30080 -r 198.18.1.12:8080 -m -w 1',
        '-A -t 198.19.0.10:80 -s rr',
        '-a -t 198.19.0.10:80 -r 198.18.1.11:8080 -m -w 1',
        '-a -t 198.19.0.10:80 -r 198.18.1.12:8080 -m -w 1',
        '-A -u 198.19.0.53:53 -s rr',
        '-a -u 198.19.0.53:53 -r 198.18.1.13:53 -m -w 1',
        '',
      ].join('\n'),
    );
    expect([...fake.device!].sort()).toEqual(['198.19.0.10', '198.19.0.53']);
    expect(fake.iptables.save('IPv4')).toContain('-A PREROUTING -m comment --comment "kpx service portals" -j KPX-SERVICES');
    const ipsetState = parseIpsetSave((await fake.run('ipset', ['save'])).stdout);
    expect([...ipsetState.get('KPX-CLUSTER-IP')!.members].sort()).toEqual(['198.19.0.10,tcp:80', '198.19.0.53,udp:53']);

    // a new process (empty memory), same input: no IPVS or ipset write at all
    const before = fake.calls.length;
    const rulesBefore = fake.iptables.save('IPv4');
    await applier(fake).apply(renderIpvs(c.view(), cfg()), ipvsIptablesRuleset(cfg()), cfg());
    const writes = fake.calls.slice(before).filter((x) => (x.command === 'ipvsadm' && x.args[0] === '-R') || (x.command === 'ipset' && x.args[0] === 'restore') || x.args.includes('-batch'));
    expect(writes).toEqual([]);
    expect(fake.iptables.save('IPv4').replace(/^#.*\n/gm, '')).toBe(rulesBefore.replace(/^#.*\n/gm, ''));
  });

  it('applies only the difference: a scaled service, a scheduler change, a deleted service; never a flush', async () => {
    const fake = new FakeIpvs();
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }, { ip: '198.18.1.12' }]);
    c.dns(['198.18.1.13']);
    const a = applier(fake);
    await a.apply(renderIpvs(c.view(), cfg()), ipvsIptablesRuleset(cfg()), cfg());
    c.web([{ ip: '198.18.1.11' }, { ip: '198.18.1.12' }, { ip: '198.18.1.14' }]);
    c.del('Service', service({ name: 'dns', clusterIP: '198.19.0.53', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }] }));
    const r = await a.apply(renderIpvs(c.view(), cfg({ scheduler: 'lc' })), ipvsIptablesRuleset(cfg({ scheduler: 'lc' })), cfg({ scheduler: 'lc' }));
    expect(fake.ipvsRestores().at(-1)!.split('\n').filter(Boolean).sort()).toEqual(
      [
        '-E -t 198.18.0.10:30080 -s lc',
        '-a -t 198.18.0.10:30080 -r 198.18.1.14:8080 -m -w 1',
        '-E -t 198.19.0.10:80 -s lc',
        '-a -t 198.19.0.10:80 -r 198.18.1.14:8080 -m -w 1',
        '-D -u 198.19.0.53:53',
      ].sort(),
    );
    expect(r.plan.addressesToDelete).toEqual(['198.19.0.53']);
    expect([...fake.device!]).toEqual(['198.19.0.10']);
    const sets = parseIpsetSave((await fake.run('ipset', ['save'])).stdout);
    expect([...sets.get('KPX-CLUSTER-IP')!.members]).toEqual(['198.19.0.10,tcp:80']);
    expect(fake.calls.some((x) => x.command === 'ipvsadm' && x.args.includes('-C'))).toBe(false);
  });

  it('a removed TCP endpoint drains at weight 0 while it has connections, and goes when they end or at the bound; UDP goes at once', async () => {
    const fake = new FakeIpvs();
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }, { ip: '198.18.1.12' }]);
    c.dns(['198.18.1.13', '198.18.1.14']);
    const a = applier(fake);
    const apply = () => a.apply(renderIpvs(c.view(), cfg()), ipvsIptablesRuleset(cfg()), cfg());
    await apply();
    fake.setConnections('-t 198.19.0.10:80', '198.18.1.12:8080', 3);
    c.web([{ ip: '198.18.1.11' }]);
    c.dns(['198.18.1.13']);
    const r = await apply();
    const vs = parseIpvsSave(fake.snapshot());
    expect(vs.get('tcp|198.19.0.10:80')!.reals.get('198.18.1.12:8080')?.weight).toBe(0);
    expect(vs.get('tcp|198.18.0.10:30080')!.reals.has('198.18.1.12:8080')).toBe(false); // no connections there
    expect(vs.get('udp|198.19.0.53:53')!.reals.has('198.18.1.14:53')).toBe(false);
    expect(r.plan.draining).toEqual(['tcp|198.19.0.10:80>198.18.1.12:8080']);
    // still connected: stays (and is not edited again)
    const again = await apply();
    expect(again.plan.ipvsadm).toBe('');
    // connections end: deleted
    fake.setConnections('-t 198.19.0.10:80', '198.18.1.12:8080', 0);
    await apply();
    expect(parseIpvsSave(fake.snapshot()).get('tcp|198.19.0.10:80')!.reals.has('198.18.1.12:8080')).toBe(false);
  });

  it('the drain bound deletes a real server that still has connections', () => {
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }]);
    const d = renderIpvs(c.view(), cfg());
    const kernel = {
      services: parseIpvsSave('-A -t 198.19.0.10:80 -s rr\n-a -t 198.19.0.10:80 -r 198.18.1.11:8080 -m -w 1\n-a -t 198.19.0.10:80 -r 198.18.1.12:8080 -m -w 0\n'),
      connections: parseIpvsConnections('TCP  198.19.0.10:80 rr\n  -> 198.18.1.12:8080             Masq    0      2          5\n'),
      sets: new Map(),
      addresses: new Set(['198.19.0.10']),
    };
    const id = 'tcp|198.19.0.10:80>198.18.1.12:8080';
    expect(kernel.connections.get(id)).toBe(7);
    const at = (now: number) => planIpvs(d, kernel, cfg(), { now, since: new Map([[id, 1000]]), boundMs: 5000 });
    expect(at(5999).ipvsadm).not.toContain('-d ');
    expect(at(6000).ipvsadm).toContain('-d -t 198.19.0.10:80 -r 198.18.1.12:8080');
  });

  it("leaves virtual servers that are not kpx's alone (other addresses, excluded CIDRs)", async () => {
    const fake = new FakeIpvs();
    await fake.run('ipvsadm', ['-R'], { input: '-A -t 198.18.5.5:80 -s wlc\n-a -t 198.18.5.5:80 -r 198.18.1.99:80 -m -w 1\n-A -t 198.18.0.10:9999 -s rr\n' });
    const c = cluster();
    c.web([{ ip: '198.18.1.11' }]);
    const excl = cfg({ excludeCIDRs: [parseCIDR('198.18.0.10/32')!] });
    await applier(fake).apply(renderIpvs(c.view(), excl), ipvsIptablesRuleset(excl), excl);
    const vs = parseIpvsSave(fake.snapshot());
    expect(vs.has('tcp|198.18.5.5:80')).toBe(true);
    // 198.18.0.10 is a NodePort address, but excluded: its foreign virtual server stays
    expect(vs.has('tcp|198.18.0.10:9999')).toBe(true);
    expect(vs.has('tcp|198.19.0.10:80')).toBe(true);
    // without the exclusion, a virtual server on a NodePort address that kpx does not want goes
    await applier(fake).apply(renderIpvs(c.view(), cfg()), ipvsIptablesRuleset(cfg()), cfg());
    expect(parseIpvsSave(fake.snapshot()).has('tcp|198.18.0.10:9999')).toBe(false);
    expect(parseIpvsSave(fake.snapshot()).has('tcp|198.18.5.5:80')).toBe(true);
  });
});
