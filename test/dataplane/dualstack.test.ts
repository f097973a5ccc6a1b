// Dual-stack (ip6tables), nodePortAddresses and localhost NodePorts, proven with packets.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = {
  a: { ip: '198.18.1.11', ip6: '2001:2:1::11' },
  b: { ip: '198.18.1.12', ip6: '2001:2:1::12' },
  client: { ip: '198.18.1.50', ip6: '2001:2:1::50' },
};
const DS = { v4: '198.19.4.1', v6: '2001:2:0:ff::1' };

describe.skipIf(!env.ok)(`dual-stack, nodePortAddresses, localhost NodePorts${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const flags = (...extra: string[]) => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', `${NET.podCIDR},${NET.podCIDR6}`, ...extra];

  beforeAll(async () => {
    t = await Topology.create({
      ipv6: true,
      pods: [
        { name: 'a', ...P.a, ports: [8080] },
        { name: 'b', ...P.b, ports: [8080] },
        { name: 'client', ...P.client },
      ],
    });
    dir = await t.manifestsDir();
    const slice = (service: string, family: 'IPv4' | 'IPv6', eps: Array<keyof typeof P>) =>
      endpointSlice({ service, family, ports: [{ name: 'http', port: 8080 }], endpoints: eps.map((e) => ({ ip: family === 'IPv4' ? P[e].ip : P[e].ip6 })) });
    await t.writeManifest(
      dir,
      'all.yaml',
      yamlDocs(
        node({ ips: [NET.nodeIP, NET.nodeIP6], podCIDRs: [NET.podCIDR, NET.podCIDR6] }),
        service({
          name: 'ds',
          type: 'NodePort',
          clusterIP: [DS.v4, DS.v6],
          ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30301 }],
          spec: { ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack' },
        }),
        slice('ds', 'IPv4', ['a', 'b']),
        slice('ds', 'IPv6', ['a', 'b']),
        service({ name: 'v6only', clusterIP: '2001:2:0:ff::2', ports: [{ name: 'http', port: 80, targetPort: 8080 }], spec: { ipFamilies: ['IPv6'] } }),
        slice('v6only', 'IPv6', ['a']),
        service({ name: 'v6empty', clusterIP: '2001:2:0:ff::3', ports: [{ name: 'http', port: 80 }] }),
        // an IPv4 service with only an IPv6 slice has no IPv4 endpoints
        service({ name: 'v4wrong', clusterIP: '198.19.4.4', ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
        slice('v4wrong', 'IPv6', ['a']),
      ),
    );
    await t.sync(flags());
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('serves a dual-stack ClusterIP in both families', async () => {
    const v4 = await t.probe('client', 'tcp', DS.v4, 80, { count: 30 });
    const v6 = await t.probe('client', 'tcp', DS.v6, 80, { count: 30 });
    expect(Object.keys(v4.names).sort()).toEqual(['a', 'b']);
    expect(Object.keys(v6.names).sort()).toEqual(['a', 'b']);
    expect(Object.keys(v6.clients)).toEqual([P.client.ip6]);
  });

  it('serves an IPv6 NodePort to an external client, masqueraded', async () => {
    const r = await t.probe('ext', 'tcp', NET.nodeIP6, 30301, { count: 10 });
    expect(r.ok).toBe(10);
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP6]);
  });

  it('serves an IPv6-only service and rejects one without endpoints (icmp6)', async () => {
    expect((await t.probe('client', 'tcp', '2001:2:0:ff::2', 80, { count: 5 })).names).toEqual({ a: 5 });
    expect((await t.probe('client', 'tcp', '2001:2:0:ff::3', 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
  });

  it('keeps each family in its own tables and ignores slices of the other family', async () => {
    const v4 = await t.save('IPv4');
    const v6 = await t.save('IPv6');
    expect(v4).not.toMatch(/2001:2/);
    expect(v6).not.toMatch(/198\.1[89]\./);
    expect(v6).toContain('--to-destination [2001:2:1::11]:8080');
    expect((await t.probe('client', 'tcp', '198.19.4.4', 80, { count: 2, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 2 });
  });

  it('answers NodePorts on 127.0.0.1 (route_localnet) by default, never on ::1', async () => {
    const r = await t.probe('node', 'tcp', '127.0.0.1', 30301, { count: 5 });
    expect(r.ok).toBe(5);
    expect((await t.exec('node', 'sysctl', ['-n', 'net.ipv4.conf.all.route_localnet'])).stdout.trim()).toBe('1');
    expect(await t.save('IPv4')).toContain('-A KPX-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8');
    expect((await t.probe('node', 'tcp', '::1', 30301, { count: 1, timeoutMs: 1500 })).ok).toBe(0);
  });

  it('does not answer on 127.0.0.1 with --iptables-localhost-nodeports=false', async () => {
    await t.sync(flags('--iptables-localhost-nodeports', 'false'));
    expect((await t.probe('node', 'tcp', '127.0.0.1', 30301, { count: 1, timeoutMs: 1500 })).ok).toBe(0);
    expect(await t.save('IPv4')).not.toContain('KPX-FIREWALL');
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30301, { count: 3 })).ok).toBe(3);
  });

  it('answers NodePorts only on addresses in --nodeport-addresses', async () => {
    await t.sync(flags('--nodeport-addresses', '198.18.0.0/24,2001:2::/64'));
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30301, { count: 3 })).ok).toBe(3);
    expect((await t.probe('ext', 'tcp', NET.nodeIP6, 30301, { count: 3 })).ok).toBe(3);
    // the node's pod-facing address is outside the CIDRs now
    expect((await t.probe('client', 'tcp', NET.bridgeIP, 30301, { count: 2, timeoutMs: 1500 })).ok).toBe(0);
    expect((await t.probe('client', 'tcp', NET.bridgeIP6, 30301, { count: 2, timeoutMs: 1500 })).ok).toBe(0);
  });

  it('answers NodePorts on the Node object addresses with --nodeport-addresses primary', async () => {
    await t.sync(flags('--nodeport-addresses', 'primary'));
    expect((await t.probe('ext', 'tcp', NET.nodeIP, 30301, { count: 3 })).ok).toBe(3);
    expect((await t.probe('client', 'tcp', NET.bridgeIP, 30301, { count: 2, timeoutMs: 1500 })).ok).toBe(0);
    await t.sync(flags());
    expect((await t.probe('client', 'tcp', NET.bridgeIP, 30301, { count: 2 })).ok).toBe(2);
  });
});
