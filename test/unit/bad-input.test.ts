// Defence in depth against bad input, in pure code: what kpx writes into a rule's comment,
// the inputs its chain-name hashes take, which of two conflicting Services is served, and
// the addresses the apiserver refuses (ValidateNonSpecialIP).
import { describe, expect, it } from 'vitest';
import { comment, MAX_COMMENT } from '../../src/iptables/format.js';
import { endpointChain, servicePortChains, servicePortId } from '../../src/render/iptables/names.js';
import { convertEndpointSlice, convertService } from '../../src/model/convert.js';
import { ClusterState, type Change } from '../../src/model/state.js';
import type { EndpointSliceObject, ServiceObject } from '../../src/model/kube.js';
import type { ServicePort } from '../../src/model/types.js';
import { specialIPReason } from '../../src/util/ip.js';
import { endpointSlice, service } from '../substrate/manifests.js';
import { captureLogger } from '../substrate/log.js';
import { seededRandom } from '../../bench/synthetic.js';

const svc = (o: Parameters<typeof service>[0]) => service(o) as ServiceObject;
const portsOf = (o: Parameters<typeof service>[0]): readonly ServicePort[] => {
  const r = convertService(svc(o));
  if (!r.ok) throw new Error(r.reason);
  return r.value;
};

describe('comment(): a safe alphabet, bounded below the kernel limit', () => {
  /** What lies between the quotes of `-m comment --comment "..."`. */
  const inner = (text: string) => {
    const m = /^-m comment --comment "(.*)"$/s.exec(comment(text));
    if (!m) throw new Error(`not one quoted argument: ${comment(text)}`);
    return m[1]!;
  };
  const SAFE = /^[A-Za-z0-9 ._:;/>=,()[\]@+*?-]*$/;

  it.each([
    ['a quote', 'default/q"uote:http'],
    ['a newline', 'default/a\nb:http'],
    ['a carriage return and a tab', 'default/a\r\tb'],
    ['a backslash before a quote', 'default/a\\"b'],
    ['non-ASCII', 'default/café:ポート'],
    ['an emoji (two UTF-16 units)', 'default/\u{1F600}'],
    ['a NUL', 'default/a\u0000b'],
    ['shell syntax', 'default/$(rm -rf /);`x`'],
  ])('%s becomes one quoted argument of safe characters', (_what, text) => {
    const s = inner(text);
    expect(s).toMatch(SAFE);
    expect(s).not.toContain('"');
    // one character in, one character out: the readable parts stay where they were
    expect(s.length).toBe(text.length);
  });

  it('keeps text already in the alphabet as it is', () => {
    expect(inner('default/web:http cluster IP')).toBe('default/web:http cluster IP');
  });

  it('bounds a 253-character name (and anything longer) below the kernel limit of 255 bytes', () => {
    for (const text of [`default/${'a'.repeat(253)}:http`, `${'é'.repeat(253)}/${'n'.repeat(253)}`, 'x'.repeat(10_000)]) {
      const s = inner(text);
      expect(s).toMatch(SAFE);
      expect(s.length).toBeLessThanOrEqual(MAX_COMMENT);
      expect(Buffer.byteLength(s, 'utf8')).toBeLessThan(255);
      expect(s.endsWith('...')).toBe(true);
    }
    expect(inner('a'.repeat(MAX_COMMENT))).toBe('a'.repeat(MAX_COMMENT));
  });

  it('random text of any code points always gives a safe, bounded argument', () => {
    const r = seededRandom(14);
    for (let i = 0; i < 500; i++) {
      const len = r(400);
      let text = '';
      for (let j = 0; j < len; j++) text += String.fromCodePoint(r(4) === 0 ? r(0x110000 - 0xe000) + 0xe000 : r(128));
      const s = inner(text);
      expect(s).toMatch(SAFE);
      expect(s.length).toBeLessThanOrEqual(MAX_COMMENT);
    }
  });
});

describe('chain-name hashes take unambiguous input', () => {
  /** A service port of a Service with this name and port name (names the apiserver would refuse included). */
  const sp = (name: string, portName: string, namespace = 'default') =>
    portsOf({ name, namespace, clusterIP: '198.19.0.1', ports: [{ ...(portName ? { name: portName } : {}), port: 80 }] })[0]!;
  const chainsOf = (p: ServicePort) => servicePortChains(servicePortId(p), 'tcp');

  it.each([
    ['"x" port "a:b" and "x:a" port "b" (the issue\'s case)', ['x', 'a:b'], ['x:a', 'b']],
    ['"a" port "b" and "a:b" with no port name', ['a', 'b'], ['a:b', '']],
    ['"a:" port "b" and "a" port ":b"', ['a:', 'b'], ['a', ':b']],
    ['a NUL in the name and the same text split at the NUL', ['a\u0000tcp', ''], ['a', '']],
    ['"x" port "a:b:c" and "x:a:b" port "c"', ['x', 'a:b:c'], ['x:a:b', 'c']],
  ])('%s get different chains', (_what, [n1, p1], [n2, p2]) => {
    const a = sp(n1!, p1!);
    const b = sp(n2!, p2!);
    const ca = chainsOf(a);
    const cb = chainsOf(b);
    for (const role of ['svc', 'svl', 'ext', 'fw'] as const) expect(ca[role]).not.toBe(cb[role]);
    expect(endpointChain(servicePortId(a), 'tcp', '198.18.1.1:80')).not.toBe(endpointChain(servicePortId(b), 'tcp', '198.18.1.1:80'));
  });

  it('a NUL in a name cannot reach into the protocol or the endpoint', () => {
    const a = sp('a', '');
    // "default/a" + NUL + "tcp" would be the input of a port named "a\0tcp" joined naively
    expect(chainsOf(sp('a\u0000tcp', '')).svc).not.toBe(servicePortChains(servicePortId(a), 'tcp').svc);
    expect(endpointChain(servicePortId(sp('a', 'p\u0000tcp')), 'udp', '198.18.1.1:80')).not.toBe(endpointChain(servicePortId(sp('a', 'p')), 'tcp\u0000udp', '198.18.1.1:80'));
  });

  it('names the apiserver accepts keep the chain names kpx always had ("ns/name:port" hashed)', () => {
    const p = sp('web', 'http', 'shop');
    expect(servicePortId(p)).toBe('shop/web:http');
    expect(servicePortId(sp('web', '', 'shop'))).toBe('shop/web');
    expect(chainsOf(p)).toEqual(servicePortChains('shop/web:http', 'tcp'));
  });

  it('many generated names and port names: one chain per service port', () => {
    const r = seededRandom(7);
    const alphabet = ['a', 'b', ':', '/', '\u0000', '-'];
    const word = () => Array.from({ length: 1 + r(4) }, () => alphabet[r(alphabet.length)]).join('');
    const seen = new Map<string, string>();
    for (let i = 0; i < 2000; i++) {
      const name = word();
      const port = r(3) === 0 ? '' : word();
      const id = JSON.stringify([name, port]);
      const chain = chainsOf(sp(name, port)).svc;
      const before = seen.get(chain);
      if (before !== undefined) expect(before, `${id} and ${before} share ${chain}`).toBe(id);
      seen.set(chain, id);
    }
  });
});

describe('conflicting Services: the older one is served, whatever the order', () => {
  const add = (current: ServiceObject, origin?: string): Change => ({ kind: 'Service', current, ...(origin ? { origin } : {}) });
  const at = (o: Parameters<typeof service>[0], created?: string) => {
    const s = svc(o);
    if (created) (s.metadata as { creationTimestamp?: string }).creationTimestamp = created;
    return s;
  };
  const P = (name: string) => [{ name, port: 80 }];
  // frontends shared in a chain: a-b (cluster IP), b-c (external IP), c-d (NodePort), e alone; f and g tie on time
  const SERVICES = [
    at({ name: 'a', clusterIP: '198.19.0.1', ports: P('http') }, '2026-01-03T00:00:00Z'),
    at({ name: 'b', clusterIP: '198.19.0.1', ports: P('http'), spec: { externalIPs: ['198.19.9.1'] } }, '2026-01-01T00:00:00Z'),
    at({ name: 'c', clusterIP: '198.19.9.1', ports: P('http') }, '2026-01-02T00:00:00Z'),
    at({ name: 'd', type: 'NodePort', clusterIP: '198.19.0.4', ports: [{ name: 'http', port: 80, nodePort: 30080 }] }, '2026-01-04T00:00:00Z'),
    at({ name: 'c2', type: 'NodePort', clusterIP: '198.19.0.5', ports: [{ name: 'http', port: 80, nodePort: 30080 }] }, '2026-01-05T00:00:00Z'),
    at({ name: 'e', clusterIP: '198.19.0.6', ports: P('http') }, '2026-01-01T00:00:00Z'),
    at({ name: 'g', clusterIP: '198.19.0.7', ports: P('http') }),
    at({ name: 'f', clusterIP: '198.19.0.7', ports: P('http') }),
  ];

  function outcome(order: readonly ServiceObject[]): { served: string[]; skipped: string[] } {
    const { log, lines } = captureLogger();
    const s = new ClusterState('node-a', log);
    for (const o of order) s.apply(add(o));
    const skipped = new Set(lines.filter((l) => l.msg === 'conflicting Service skipped').map((l) => String(l.object)));
    const served = [...s.view('IPv4').serviceKeys()];
    for (const k of served) skipped.delete(k);
    return { served, skipped: [...skipped].sort() };
  }

  it('serves the older of each pair (and the first by name on a tie) in any of 200 orders', () => {
    const expected = { served: ['default/b', 'default/d', 'default/e', 'default/f'], skipped: ['default/a', 'default/c', 'default/c2', 'default/g'] };
    expect(outcome(SERVICES)).toEqual(expected);
    const r = seededRandom(2026);
    for (let i = 0; i < 200; i++) {
      const order = [...SERVICES];
      for (let j = order.length - 1; j > 0; j--) {
        const k = r(j + 1);
        [order[j], order[k]] = [order[k]!, order[j]!];
      }
      expect(outcome(order), order.map((o) => o.metadata.name).join(' ')).toEqual(expected);
    }
  });

  it('a Service deleted hands its frontend to the next oldest', () => {
    const s = new ClusterState('node-a', captureLogger().log);
    for (const o of SERVICES) s.apply(add(o));
    s.apply({ kind: 'Service', previous: SERVICES[1]! });
    // b gone: a gets its cluster IP back, and c its external IP
    expect(s.view('IPv4').serviceKeys()).toEqual(['default/a', 'default/c', 'default/d', 'default/e', 'default/f']);
  });

  it('the warning for a Service displaced by an older one names the file it came from', () => {
    const { log, lines } = captureLogger();
    const s = new ClusterState('node-a', log);
    s.apply(add(SERVICES[0]!, '/m/a.yaml')); // a, served until b arrives
    s.apply(add(SERVICES[1]!, '/m/b.yaml')); // b is older: a is displaced
    const w = lines.find((l) => l.msg === 'conflicting Service skipped');
    expect(w).toMatchObject({ level: 40, kind: 'Service', object: 'default/a', origin: '/m/a.yaml' });
    expect(String(w!.reason)).toContain('198.19.0.1:80/TCP is already served by Service default/b');
  });
});

describe('special addresses (the apiserver\'s ValidateNonSpecialIP)', () => {
  it.each([
    ['0.0.0.0', /unspecified/],
    ['::', /unspecified/],
    ['127.0.0.1', /loopback/],
    ['127.255.0.9', /loopback/],
    ['::1', /loopback/],
    ['169.254.169.254', /link-local range/],
    ['fe80::1', /link-local range/],
    ['febf::1', /link-local range/],
    ['224.0.0.251', /link-local multicast/],
    ['ff02::fb', /link-local multicast/],
  ])('%s is special', (ip, why) => expect(specialIPReason(ip)).toMatch(why));

  it.each(['198.18.0.1', '0.0.0.1', '126.255.255.255', '169.253.0.1', '224.0.1.1', '239.1.1.1', 'fec0::1', 'ff05::1', '2001:2::1', '::2'])('%s is not', (ip) =>
    expect(specialIPReason(ip)).toBeNull(),
  );

  const refusal = (r: { ok: boolean; reason?: string }) => (r.ok ? 'served' : r.reason);

  it('refuses a Service with a special external IP or cluster IP, naming the field and the value', () => {
    expect(refusal(convertService(svc({ name: 'x', clusterIP: '198.19.0.1', ports: P80, spec: { externalIPs: ['198.19.1.1', '127.0.0.1'] } })))).toBe(
      'spec.externalIPs[1]: 127.0.0.1 may not be in the loopback range (127.0.0.0/8, ::1/128)',
    );
    expect(refusal(convertService(svc({ name: 'x', clusterIP: '0.0.0.0', ports: P80 })))).toBe('spec.clusterIPs[0]: 0.0.0.0 may not be unspecified (0.0.0.0)');
    expect(refusal(convertService(svc({ name: 'x', clusterIP: ['198.19.0.1', 'fe80::5'], ports: P80 })))).toMatch(/^spec\.clusterIPs\[1\]: fe80::5 may not be in the link-local range/);
  });

  it('refuses an EndpointSlice with a special address in any endpoint, any address', () => {
    const sl = (addresses: string[][], family: 'IPv4' | 'IPv6' = 'IPv4') => {
      const o = endpointSlice({ service: 'x', family, ports: [{ port: 80 }], endpoints: addresses.map((a) => ({ ip: a[0]! })) }) as EndpointSliceObject;
      o.endpoints!.forEach((e, i) => (e.addresses = addresses[i]!));
      return convertEndpointSlice(o, 'node-a');
    };
    expect(refusal(sl([['198.18.1.1'], ['169.254.1.1']]))).toBe('endpoints[1].addresses[0]: 169.254.1.1 may not be in the link-local range (169.254.0.0/16, fe80::/10)');
    expect(refusal(sl([['198.18.1.1', '0.0.0.0']]))).toBe('endpoints[0].addresses[1]: 0.0.0.0 may not be unspecified (0.0.0.0)');
    expect(refusal(sl([['2001:2::1'], ['ff02::1']], 'IPv6'))).toMatch(/^endpoints\[1\]\.addresses\[0\]: ff02::1 may not be in the link-local multicast range/);
    expect(refusal(sl([['198.18.1.1', '198.18.1.2']]))).toBe('served');
  });

  it('serves a LoadBalancer without a special ingress IP, and says so in one warn line', () => {
    const { log, lines } = captureLogger();
    const s = new ClusterState('node-a', log);
    const o = svc({
      name: 'lb',
      type: 'LoadBalancer',
      clusterIP: '198.19.0.9',
      ports: [{ name: 'http', port: 80, nodePort: 30090 }],
      status: { loadBalancer: { ingress: [{ ip: '0.0.0.0' }, { ip: '198.19.60.1' }, { ip: '127.0.0.1' }] } },
    });
    s.apply({ kind: 'Service', current: o, origin: '/m/lb.yaml' });
    expect(s.view('IPv4').portsOf('default/lb').map((p) => p.loadBalancerVIPs)).toEqual([['198.19.60.1']]);
    const warns = lines.filter((l) => (l.level as number) >= 40);
    expect(warns).toHaveLength(1);
    expect(warns[0]).toMatchObject({
      kind: 'Service',
      object: 'default/lb',
      origin: '/m/lb.yaml',
      reason:
        'status.loadBalancer.ingress[0].ip: 0.0.0.0 may not be unspecified (0.0.0.0); status.loadBalancer.ingress[2].ip: 127.0.0.1 may not be in the loopback range (127.0.0.0/8, ::1/128)',
    });
  });
});

const P80 = [{ name: 'http', port: 80 }];
