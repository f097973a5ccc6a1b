// Invalid input never breaks a sync: bad objects are skipped with a log line naming the
// object and the field, and every other service keeps working (real packets).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const A = '198.18.1.11';

describe.skipIf(!env.ok)(`invalid input${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let logs: Array<Record<string, unknown>>;

  beforeAll(async () => {
    t = await Topology.create({ pods: [{ name: 'a', ip: A, ports: [8080] }, { name: 'client', ip: '198.18.1.50' }] });
    const dir = await t.manifestsDir();
    const good = (name: string, ip: string) => [
      service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
      endpointSlice({ service: name, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: A }] }),
    ];
    await t.writeManifest(
      dir,
      'objects.yaml',
      yamlDocs(
        node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] }),
        ...good('good-1', '198.19.7.1'),
        service({ name: 'bad-ip', clusterIP: '198.19.7.300', ports: [{ name: 'http', port: 80 }] }),
        service({ name: 'bad-port', clusterIP: '198.19.7.3', ports: [{ name: 'http', port: 70000 }] }),
        service({ name: 'bad-family', clusterIP: '198.19.7.4', ports: [{ name: 'http', port: 80 }], spec: { ipFamilies: ['IPv6'] } }),
        service({ name: 'dup-ports', clusterIP: '198.19.7.5', ports: [{ name: 'http', port: 80 }, { name: 'http', port: 81 }] }),
        ...good('bad-slice', '198.19.7.6').slice(0, 1),
        endpointSlice({ service: 'bad-slice', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: A }, { ip: '198.18.1.999' }] }),
        ...good('good-2', '198.19.7.2'),
      ),
    );
    await t.writeManifest(dir, 'broken.yaml', 'apiVersion: v1\nkind: Service\nmetadata: {name: x\n');
    const r = await t.kpx(['run', '--once', '--log-level', 'info', '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR], { reject: false });
    expect(r.exitCode).toBe(0);
    logs = r.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('keeps serving the valid services', async () => {
    expect((await t.probe('client', 'tcp', '198.19.7.1', 80, { count: 3 })).names).toEqual({ a: 3 });
    expect((await t.probe('client', 'tcp', '198.19.7.2', 80, { count: 3 })).names).toEqual({ a: 3 });
  });

  it('names each bad object and field in one warning or error line', () => {
    const errors = logs.filter((l) => (l.level as number) >= 40).map((l) => `${l.object ?? l.file}: ${l.reason}`);
    expect(errors).toEqual(
      expect.arrayContaining([
        'default/bad-ip: spec.clusterIPs[0]: invalid IP "198.19.7.300"',
        expect.stringMatching(/^default\/bad-port: spec\.ports\[0\]\.port: /),
        'default/bad-family: spec.ipFamilies[0]: IPv6 does not match spec.clusterIPs[0] 198.19.7.4',
        'default/dup-ports: spec.ports[1].name: duplicate port name "http"',
        'default/bad-slice-ipv4: endpoints[1].addresses[0]: invalid IP "198.18.1.999"',
        expect.stringMatching(/broken\.yaml: /),
      ]),
    );
  });

  it('skips the bad ones entirely (a service whose slice is bad has no endpoints: rejected)', async () => {
    const save = await t.save();
    for (const name of ['bad-ip', 'bad-port', 'bad-family', 'dup-ports']) expect(save).not.toContain(`default/${name}`);
    expect((await t.probe('client', 'tcp', '198.19.7.6', 80, { count: 1, timeoutMs: 3000 })).errors).toEqual({ ECONNREFUSED: 1 });
  });
});
