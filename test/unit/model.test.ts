import { describe, expect, it } from 'vitest';
import { convertEndpointSlice, convertNode, convertService, mergeEndpoints } from '../../src/model/convert.js';
import { ClusterState, type Change } from '../../src/model/state.js';
import { validateObject } from '../../src/model/validate.js';
import type { EndpointSliceObject, NodeObject, ServiceObject } from '../../src/model/kube.js';
import { endpointSlice, node, service } from '../substrate/manifests.js';
import { captureLogger } from '../substrate/log.js';
import { silentLogger } from '../../src/util/log.js';

const svc = (o: Parameters<typeof service>[0]) => service(o) as ServiceObject;
const slice = (o: Parameters<typeof endpointSlice>[0]) => endpointSlice(o) as EndpointSliceObject;

describe('convertService', () => {
  it('keys service ports like kube-proxy and keeps one per family', () => {
    const r = convertService(
      svc({
        name: 'web',
        namespace: 'shop',
        clusterIP: ['198.19.0.10', '2001:2:0:ff::a'],
        ports: [
          { name: 'http', port: 80 },
          { name: 'dns', port: 53, protocol: 'UDP' },
        ],
      }),
    );
    if (!r.ok) throw new Error(JSON.stringify(r));
    expect(r.value.map((p) => `${p.family} ${p.name} ${p.protocol} ${p.clusterIP}:${p.port}`)).toEqual([
      'IPv4 shop/web:http TCP 198.19.0.10:80',
      'IPv4 shop/web:dns UDP 198.19.0.10:53',
      'IPv6 shop/web:http TCP 2001:2:0:ff::a:80',
      'IPv6 shop/web:dns UDP 2001:2:0:ff::a:53',
    ]);
  });

  it('names an unnamed port "ns/name"', () => {
    const r = convertService(svc({ name: 'a', clusterIP: '198.19.0.1', ports: [{ port: 80 }] }));
    expect(r.ok && r.value[0]!.name).toBe('default/a');
  });

  it('skips what kube-proxy skips', () => {
    expect(convertService(svc({ name: 'h', clusterIP: 'None', ports: [{ port: 80 }] }))).toEqual({ ok: false, refusal: 'ignored', reason: 'headless (no cluster IP)' });
    expect(convertService(svc({ name: 'e', clusterIP: '198.19.0.1', ports: [{ port: 80 }], spec: { type: 'ExternalName' } }))).toEqual({ ok: false, refusal: 'ignored', reason: 'type ExternalName',
    });
    const labelled = svc({ name: 'l', clusterIP: '198.19.0.1', ports: [{ port: 80 }], labels: { 'service.kubernetes.io/service-proxy-name': 'other' } });
    expect(convertService(labelled)).toMatchObject({ ok: false, refusal: 'ignored' });
  });

  it('names the field that is wrong', () => {
    expect(convertService(svc({ name: 'x', clusterIP: '198.19.0.300', ports: [{ port: 80 }] }))).toEqual({ ok: false, refusal: 'invalid', reason: 'spec.clusterIPs[0]: invalid IP "198.19.0.300"',
    });
    expect(
      convertService(svc({ name: 'x', clusterIP: '198.19.0.1', ports: [{ port: 80 }], spec: { ipFamilies: ['IPv6'] } })),
    ).toEqual({ ok: false, refusal: 'invalid', reason: 'spec.ipFamilies[0]: IPv6 does not match spec.clusterIPs[0] 198.19.0.1' });
    expect(
      convertService(svc({ name: 'x', clusterIP: '198.19.0.1', ports: [{ name: 'a', port: 80 }, { name: 'a', port: 81 }] })),
    ).toEqual({ ok: false, refusal: 'invalid', reason: 'spec.ports[1].name: duplicate port name "a"' });
    expect(
      convertService(svc({ name: 'x', clusterIP: '198.19.0.1', ports: [{ name: 'a', port: 80 }, { name: 'b', port: 80 }] })),
    ).toEqual({ ok: false, refusal: 'invalid', reason: 'spec.ports[1]: duplicate port 80/TCP' });
    expect(convertService(svc({ name: 'x', clusterIP: '198.19.0.1', ports: [{ port: 80 }], spec: { externalIPs: ['nope'] } }))).toEqual({ ok: false, refusal: 'invalid', reason: 'spec.externalIPs[0]: invalid IP "nope"',
    });
  });

  it('rejects leading zeros like Kubernetes validation', () => {
    expect(convertService(svc({ name: 'x', clusterIP: '198.019.0.1', ports: [{ port: 80 }] }))).toMatchObject({ ok: false, refusal: 'invalid' });
  });

  it('is refused by the schema when a port is out of range, naming the path', () => {
    const v = validateObject('Service', svc({ name: 'x', clusterIP: '198.19.0.1', ports: [{ port: 70000 }] }));
    expect(v.ok).toBe(false);
    expect(!v.ok && v.reason).toMatch(/^spec\.ports\[0\]\.port: /);
    expect(!v.ok && v.name).toBe('default/x');
  });
});

describe('convertEndpointSlice', () => {
  it('applies kube-proxy condition defaults and marks local endpoints', () => {
    const raw = slice({ service: 'web', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.1', node: 'node-a' }] });
    (raw.endpoints![0] as { conditions: unknown }).conditions = {};
    const r = convertEndpointSlice(raw, 'node-a');
    if (!r.ok) throw new Error('refused');
    expect(r.value.byPort.get('http/TCP')).toEqual([
      expect.objectContaining({ ip: '198.18.1.1', port: 8080, ready: true, serving: true, terminating: false, isLocal: true }),
    ]);
  });

  it('refuses an address of the wrong family, naming it', () => {
    const r = convertEndpointSlice(slice({ service: 'web', ports: [{ port: 80 }], endpoints: [{ ip: '2001:2::1' }] }), 'n');
    expect(r).toEqual({ ok: false, refusal: 'invalid', reason: 'endpoints[0].addresses[0]: 2001:2::1 is not IPv4 (addressType)' });
  });

  it('ignores slices without the service-name label and FQDN slices', () => {
    const s = slice({ service: 'web', ports: [{ port: 80 }], endpoints: [] });
    delete (s.metadata.labels as Record<string, string>)['kubernetes.io/service-name'];
    expect(convertEndpointSlice(s, 'n')).toMatchObject({ ok: false, refusal: 'ignored' });
    expect(convertEndpointSlice({ ...slice({ service: 'web', ports: [], endpoints: [] }), addressType: 'FQDN' }, 'n')).toEqual({ ok: false, refusal: 'ignored', reason: 'addressType FQDN',
    });
  });
});

describe('mergeEndpoints', () => {
  it('de-duplicates ip:port across slices, keeping the best-conditioned copy', () => {
    const ep = (ip: string, ready: boolean, terminating = false) => ({
      ip,
      port: 80,
      addr: `${ip}:80`,
      ready,
      serving: ready || terminating,
      terminating,
      nodeName: undefined,
      zone: undefined,
      zoneHints: undefined,
      nodeHints: undefined,
      isLocal: false,
    });
    const merged = mergeEndpoints([[ep('198.18.1.2', false, true), ep('198.18.1.1', true)], [ep('198.18.1.2', true)]]);
    expect(merged.map((e) => `${e.ip} ${e.ready}`)).toEqual(['198.18.1.1 true', '198.18.1.2 true']);
  });
});

describe('convertNode', () => {
  it('takes InternalIPs first, pod CIDRs and zone', () => {
    const r = convertNode(node({ ips: ['198.18.0.10', '2001:2::10'], podCIDRs: ['198.18.1.0/24'], zone: 'z1' }) as NodeObject);
    if (!r.ok) throw new Error('refused');
    expect(r.value.ips).toEqual({ IPv4: ['198.18.0.10'], IPv6: ['2001:2::10'] });
    expect(r.value.podCIDRs.map((c) => c.text)).toEqual(['198.18.1.0/24']);
    expect(r.value.zone).toBe('z1');
  });
});

describe('ClusterState', () => {
  const add = (kind: Change['kind'], current: object): Change => ({ kind, current }) as Change;

  it('merges endpoints from every slice of a service and tracks what changed', () => {
    const s = new ClusterState('node-a', silentLogger);
    s.apply(add('Service', svc({ name: 'web', clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80 }] })));
    s.apply(add('EndpointSlice', slice({ service: 'web', name: 'web-1', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.1' }] })));
    s.apply(add('EndpointSlice', slice({ service: 'web', name: 'web-2', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.2' }] })));
    const v = s.view('IPv4');
    const ports = [...v.serviceKeys()].flatMap((k) => v.portsOf(k));
    expect(ports.map((p) => p.name)).toEqual(['default/web:http']);
    expect(v.endpointsOf(ports[0]!).map((e) => e.ip)).toEqual(['198.18.1.1', '198.18.1.2']);
    const p = s.takePending();
    expect([...p.services]).toEqual(['default/web']);
    expect([...p.endpoints]).toEqual(['default/web']);
    expect(s.takePending().services.size).toBe(0);
  });

  it('keeps object identity when an update changes nothing kpx uses', () => {
    const s = new ClusterState('node-a', silentLogger);
    const a = svc({ name: 'web', clusterIP: '198.19.0.10', ports: [{ name: 'http', port: 80 }] });
    s.apply(add('Service', a));
    const before = s.view('IPv4').portsOf('default/web')[0];
    s.takePending();
    const b = { ...a, metadata: { ...a.metadata, annotations: { touched: 'yes' } } };
    s.apply({ kind: 'Service', previous: a, current: b });
    expect(s.view('IPv4').portsOf('default/web')[0]).toBe(before);
    expect(s.takePending().services.size).toBe(0);
  });

  it('logs an invalid Service with its key and field, and keeps serving the others', () => {
    const { log, lines } = captureLogger();
    const s = new ClusterState('node-a', log);
    s.apply(add('Service', svc({ name: 'bad', clusterIP: '198.19.0.999', ports: [{ port: 80 }] })));
    s.apply(add('Service', svc({ name: 'good', clusterIP: '198.19.0.2', ports: [{ port: 80 }] })));
    const v = s.view('IPv4');
    expect([...v.serviceKeys()].flatMap((k) => v.portsOf(k)).map((p) => p.name)).toEqual(['default/good']);
    expect(lines).toContainEqual(
      expect.objectContaining({ object: 'default/bad', reason: 'spec.clusterIPs[0]: invalid IP "198.19.0.999"' }),
    );
  });

  it('records last-change-trigger-time of endpoint changes', () => {
    const s = new ClusterState('node-a', silentLogger);
    s.startedAt = Date.parse('2026-11-22T07:00:00Z');
    s.apply(
      add(
        'EndpointSlice',
        slice({
          service: 'web',
          ports: [{ port: 80 }],
          endpoints: [{ ip: '198.18.1.1' }],
          annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': '2026-11-22T08:00:00Z' },
        }),
      ),
    );
    expect(s.takePending().triggerTimes).toEqual([{ family: 'IPv4', time: Date.parse('2026-11-22T08:00:00Z') }]);
  });
});
