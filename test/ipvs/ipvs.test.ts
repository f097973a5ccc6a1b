// IPVS mode on a kernel that has IPVS, with real packets: the same namespace topology as
// the dataplane tests, kpx --proxy-mode ipvs in the node namespace. This machine's kernel
// has no ip_vs, so `npm run test:ipvs` runs this file inside a qemu VM booting Debian's
// kernel (hack/ipvs-vm); elsewhere it skips and says why.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

async function ipvsEnv(): Promise<{ ok: boolean; reason: string }> {
  const env = await dataplaneEnv();
  if (!env.ok) return env;
  const ns = `kpxt-${process.pid}-ipvsprobe`;
  await execa('ip', ['netns', 'add', ns]);
  try {
    const r = await execa('ip', ['netns', 'exec', ns, 'ipvsadm', '-Ln'], { reject: false });
    if (r.exitCode !== 0) return { ok: false, reason: `no IPVS in this kernel (${r.stderr.trim().split('\n')[0]}); npm run test:ipvs runs this suite under qemu` };
    return { ok: true, reason: '' };
  } finally {
    await execa('ip', ['netns', 'del', ns], { reject: false });
  }
}

const env = await ipvsEnv();
const P = { a: '198.18.1.11', b: '198.18.1.12', c: '198.18.1.13', client: '198.18.1.50', r: '198.18.2.21' };
const WEB = '198.19.0.10';
const EMPTY = '198.19.0.30';
const STICKY = '198.19.0.40';
const LOCAL = '198.19.0.50';
const HOLD = '198.19.0.60';
const CLIENTS = Array.from({ length: 8 }, (_, i) => `198.18.1.${100 + i}`);

/** A TCP server that answers its name and keeps the connection open (for draining). */
const HOLD_SERVER = `const n=process.argv[1];require('net').createServer(s=>{s.on('error',()=>{});s.write(JSON.stringify({name:n})+'\\n')}).listen(9000,()=>console.log('ready'))`;
/** Connects, prints the first line, keeps the connection until stdin closes, then resets it
 *  (IPVS keeps a reset connection 10 s, a FIN-closed one in TIME_WAIT for 2 minutes). */
const HOLD_CLIENT = `const s=require('net').connect(90,'${HOLD}');s.once('data',d=>console.log(String(d).trim()));process.stdin.on('end',()=>s.resetAndDestroy());process.stdin.resume()`;
/** N new connections: the names that answered. */
const NEW_CONNECTIONS = (n: number) =>
  `const net=require('net');const out={};let left=${n};const one=()=>{const s=net.connect(90,'${HOLD}');s.once('data',d=>{const k=JSON.parse(String(d)).name;out[k]=(out[k]??0)+1;s.destroy();if(--left)one();else console.log(JSON.stringify(out))});s.on('error',e=>{out['!'+e.code]=(out['!'+e.code]??0)+1;if(--left)one();else console.log(JSON.stringify(out))})};one()`;

describe.skipIf(!env.ok)(`IPVS mode with real packets${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const flags = (extra: string[] = []) => [
    '--proxy-mode', 'ipvs', '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR,
    '--metrics-bind-address', '', '--healthz-bind-address', '', ...extra,
  ];
  const ipvs = async () => (await t.exec('node', 'ipvsadm', ['-Sn'])).stdout;

  const writeAll = async (web: string[], hold: string[]) => {
    await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
    await t.writeManifest(dir, 'web.yaml', yamlDocs(
      service({ name: 'web', type: 'NodePort', clusterIP: WEB, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30080 }, { name: 'dns', port: 53, protocol: 'UDP', targetPort: 8080, nodePort: 30053 }] }),
      endpointSlice({ service: 'web', ports: [{ name: 'http', port: 8080 }, { name: 'dns', port: 8080, protocol: 'UDP' }], endpoints: web.map((ip) => ({ ip, node: 'node-a' })) }),
    ));
    await t.writeManifest(dir, 'empty.yaml', yamlDocs(service({ name: 'empty', type: 'NodePort', clusterIP: EMPTY, ports: [{ name: 'http', port: 80, nodePort: 30099 }] })));
    await t.writeManifest(dir, 'sticky.yaml', yamlDocs(
      service({ name: 'sticky', clusterIP: STICKY, ports: [{ name: 'http', port: 80, targetPort: 8080 }], spec: { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 600 } } } }),
      endpointSlice({ service: 'sticky', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.a }, { ip: P.b }, { ip: P.c }] }),
    ));
    await t.writeManifest(dir, 'local.yaml', yamlDocs(
      service({ name: 'local', type: 'NodePort', clusterIP: LOCAL, ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30050 }], spec: { externalTrafficPolicy: 'Local' } }),
      endpointSlice({ service: 'local', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.a, node: 'node-a' }, { ip: P.r, node: 'node-b' }] }),
    ));
    await t.writeManifest(dir, 'hold.yaml', yamlDocs(
      service({ name: 'hold', clusterIP: HOLD, ports: [{ name: 'p', port: 90, targetPort: 9000 }] }),
      endpointSlice({ service: 'hold', ports: [{ name: 'p', port: 9000 }], endpoints: hold.map((ip) => ({ ip })) }),
    ));
  };

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [8080] },
        { name: 'b', ip: P.b, ports: [8080] },
        { name: 'c', ip: P.c, ports: [8080] },
        { name: 'client', ip: P.client, extraIPs: CLIENTS },
        { name: 'r', ip: P.r, ports: [8080], remote: true },
      ],
    });
    for (const p of ['a', 'b']) {
      const srv = t.spawn(p, process.execPath, ['-e', HOLD_SERVER, p]);
      await new Promise<void>((res) => srv.stdout?.on('data', (d: Buffer) => d.toString().includes('ready') && res()));
    }
    dir = await t.manifestsDir();
    await writeAll([P.a, P.b, P.c], [P.a, P.b]);
    const r = await t.kpx(['run', '--once', ...flags()], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
  }, 300_000);
  afterAll(async () => {
    await t?.destroy();
  });

  it('spreads ClusterIP connections from a pod and from the node over every endpoint (TCP and UDP)', async () => {
    for (const from of ['client', 'node']) {
      const r = await t.probe(from, 'tcp', WEB, 80, { count: 150 });
      expect(r.errors, from).toEqual({});
      for (const n of ['a', 'b', 'c']) expect(r.names[n] ?? 0, `${from} -> ${n}: ${JSON.stringify(r.names)}`).toBeGreaterThanOrEqual(30);
    }
    const u = await t.probe('client', 'udp', WEB, 53, { count: 30 });
    expect(Object.keys(u.names).sort()).toEqual(['a', 'b', 'c']);
    // kpx put the service addresses on its dummy interface and made one virtual server each
    expect((await t.exec('node', 'ip', ['-o', 'addr', 'show', 'dev', 'kpx-ipvs0'])).stdout).toContain(`${WEB}/32`);
    expect(await ipvs()).toMatch(new RegExp(`-A -t ${WEB.replaceAll('.', '\\.')}:80 -s rr`));
  });

  it('serves a NodePort to an external client and masquerades it to the node', async () => {
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30080, { count: 30 });
    expect(r.ok).toBe(30);
    expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
  });

  it('lets a pod reach itself through its ClusterIP (hairpin)', async () => {
    await t.writeManifest(dir, 'self.yaml', yamlDocs(
      service({ name: 'self', clusterIP: '198.19.0.70', ports: [{ name: 'p', port: 80, targetPort: 8080 }] }),
      endpointSlice({ service: 'self', ports: [{ name: 'p', port: 8080 }], endpoints: [{ ip: P.a }] }),
    ));
    await t.sync(flags());
    const r = await t.probe('a', 'tcp', '198.19.0.70', 80, { count: 5 });
    expect(r.names).toEqual({ a: 5 });
  });

  it('keeps a client on one endpoint with session affinity, and spreads different clients', async () => {
    const one = await t.probe('client', 'tcp', STICKY, 80, { count: 20 });
    expect(Object.keys(one.names)).toHaveLength(1);
    const seen = new Set<string>();
    for (const ip of CLIENTS) {
      const r = await t.probe('client', 'tcp', STICKY, 80, { count: 3, bind: ip });
      expect(Object.keys(r.names), ip).toHaveLength(1);
      seen.add(Object.keys(r.names)[0]!);
    }
    expect(seen.size).toBeGreaterThan(1);
    expect(await ipvs()).toMatch(new RegExp(`-A -t ${STICKY.replaceAll('.', '\\.')}:80 -s rr -p 600`));
  });

  it('externalTrafficPolicy Local: a NodePort reaches only the local endpoint and keeps the client address', async () => {
    const r = await t.probe('ext', 'tcp', NET.nodeIP, 30050, { count: 20 });
    expect(r.names).toEqual({ a: 20 });
    expect(Object.keys(r.clients)).toEqual([NET.extIP]);
    // the cluster IP still uses every endpoint
    const c = await t.probe('client', 'tcp', LOCAL, 80, { count: 40 });
    expect(Object.keys(c.names).sort()).toEqual(['a', 'r']);
  });

  it('internalTrafficPolicy Local: the cluster IP reaches only the local endpoint', async () => {
    await t.writeManifest(dir, 'itp.yaml', yamlDocs(
      service({ name: 'itp', clusterIP: '198.19.0.55', ports: [{ name: 'http', port: 80, targetPort: 8080 }], spec: { internalTrafficPolicy: 'Local' } }),
      endpointSlice({ service: 'itp', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.a, node: 'node-a' }, { ip: P.r, node: 'node-b' }] }),
    ));
    await t.sync(flags());
    expect((await t.probe('client', 'tcp', '198.19.0.55', 80, { count: 20 })).names).toEqual({ a: 20 });
  });

  it('LoadBalancer IP with source ranges lets listed clients in and drops the rest; external IPs serve outside and in-cluster clients', async () => {
    await t.writeManifest(dir, 'lb.yaml', yamlDocs(
      service({
        name: 'lb', type: 'LoadBalancer', clusterIP: '198.19.0.80', ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30081 }],
        spec: { loadBalancerSourceRanges: [`${NET.extIP}/32`], externalIPs: ['198.19.0.202'] },
        status: { loadBalancer: { ingress: [{ ip: '198.19.0.201' }] } },
      }),
      endpointSlice({ service: 'lb', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.b }] }),
    ));
    await t.sync(flags());
    expect((await t.probe('ext', 'tcp', '198.19.0.201', 80, { count: 5, bind: NET.extIP })).names).toEqual({ b: 5 });
    const denied = await t.probe('ext', 'tcp', '198.19.0.201', 80, { count: 2, bind: NET.extIP2, timeoutMs: 1500 });
    expect(denied.ok).toBe(0);
    expect(Object.keys(denied.errors)).toEqual(['TIMEOUT']);
    expect((await t.probe('ext', 'tcp', '198.19.0.202', 80, { count: 5 })).names).toEqual({ b: 5 });
    expect((await t.probe('client', 'tcp', '198.19.0.202', 80, { count: 5 })).names).toEqual({ b: 5 });
  });

  it('a source range of 0.0.0.0/0 lets every client in (and is not written into an ipset, which cannot hold a /0)', async () => {
    await t.writeManifest(dir, 'lb0.yaml', yamlDocs(
      service({
        name: 'lb0', type: 'LoadBalancer', clusterIP: '198.19.0.81', ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30082 }],
        spec: { loadBalancerSourceRanges: ['0.0.0.0/0'] },
        status: { loadBalancer: { ingress: [{ ip: '198.19.0.203' }] } },
      }),
      endpointSlice({ service: 'lb0', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: P.b }] }),
    ));
    await t.sync(flags());
    expect((await t.probe('ext', 'tcp', '198.19.0.203', 80, { count: 3, bind: NET.extIP })).names).toEqual({ b: 3 });
    expect((await t.probe('ext', 'tcp', '198.19.0.203', 80, { count: 3, bind: NET.extIP2 })).names).toEqual({ b: 3 });
    // back to the suite's common input, so the tests after this one start from it
    await rm(join(dir, 'lb0.yaml'));
    await t.sync(flags());
    expect(await ipvs()).not.toContain('198.19.0.203');
  });

  it('refuses connections to a service without endpoints at once, ClusterIP and NodePort', async () => {
    const started = Date.now();
    const r = await t.probe('client', 'tcp', EMPTY, 80, { count: 3, timeoutMs: 3000 });
    expect(r.ok).toBe(0);
    expect(r.errors).toEqual({ ECONNREFUSED: 3 });
    expect(Date.now() - started).toBeLessThan(3000);
    const np = await t.probe('ext', 'tcp', NET.nodeIP, 30099, { count: 2, timeoutMs: 3000 });
    expect(np.errors).toEqual({ ECONNREFUSED: 2 });
    // and ports of service addresses that are not services are rejected too
    const other = await t.probe('client', 'tcp', WEB, 22, { count: 1, timeoutMs: 3000 });
    expect(other.ok).toBe(0);
  });

  it('a restart with the same input changes nothing in IPVS', async () => {
    const before = await ipvs();
    const r = await t.kpx(['run', '--once', '--log-level', 'debug', ...flags()], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('ipvs changes');
    expect(await ipvs()).toBe(before);
  });

  it('drains a removed endpoint: weight 0 while its connection lasts, gone after it closes', async () => {
    const proc = t.spawnKpx(['run', ...flags(['--ipvs-sync-period', '1s', '--ipvs-min-sync-period', '100ms'])]);
    try {
      await sleep(1500);
      const held = execa('ip', ['netns', 'exec', t.ns('client'), process.execPath, '-e', HOLD_CLIENT], { input: undefined, stdin: 'pipe', reject: false });
      const first = await new Promise<string>((res) => held.stdout?.once('data', (d: Buffer) => res(d.toString())));
      const victim = (JSON.parse(first) as { name: 'a' | 'b' }).name;
      const other = victim === 'a' ? 'b' : 'a';
      await writeAll([P.a, P.b, P.c], [P[other]]);
      const real = `${P[victim]}:9000`;
      let line = '';
      for (let i = 0; i < 40; i++) {
        await sleep(250);
        line = (await t.exec('node', 'ipvsadm', ['-Sn'])).stdout.split('\n').find((l) => l.includes(`${HOLD}:90 -r ${real}`)) ?? '';
        if (line.endsWith('-w 0')) break;
      }
      expect(line).toMatch(/-m -w 0$/);
      // new connections all go to the endpoint that stays
      const fresh = JSON.parse((await t.exec('client', process.execPath, ['-e', NEW_CONNECTIONS(10)])).stdout) as Record<string, number>;
      expect(fresh).toEqual({ [other]: 10 });
      // the held connection still works both ways until it is closed
      held.stdin?.end();
      await held;
      let gone = false;
      for (let i = 0; i < 60 && !gone; i++) {
        await sleep(1000);
        gone = !(await ipvs()).includes(`-r ${real}`);
      }
      expect(gone, 'the drained real server is deleted once its connections are gone').toBe(true);
    } finally {
      proc.kill('SIGTERM');
      await proc;
    }
  }, 180_000);

  it('switching modes removes the other mode: ipvs -> iptables -> ipvs', async () => {
    // IPVS mode left no iptables-mode service chains
    expect(await t.save()).not.toMatch(/:KPX-SVC-/);
    expect((await t.kpx(['run', '--once', ...flags().filter((f) => f !== 'ipvs' && f !== '--proxy-mode')], { reject: false })).exitCode).toBe(0);
    expect(await t.save()).toMatch(/:KPX-SVC-/);
    expect(await t.save()).not.toContain('KPX-IPVS-FILTER');
    expect(await ipvs()).toBe('');
    expect((await t.exec('node', 'ip', ['link', 'show', 'kpx-ipvs0'], { reject: false })).exitCode).not.toBe(0);
    expect((await t.exec('node', 'ipset', ['list', '-n'])).stdout.trim()).toBe('');
    // iptables mode serves
    expect((await t.probe('client', 'tcp', WEB, 80, { count: 10 })).ok).toBe(10);
    // and back
    await t.sync(flags());
    expect(await t.save()).not.toMatch(/:KPX-SVC-/);
    expect((await t.probe('client', 'tcp', WEB, 80, { count: 10 })).ok).toBe(10);
    // kpx cleanup removes IPVS mode's state too
    expect((await t.kpx(['cleanup'])).exitCode).toBe(0);
    expect(await ipvs()).toBe('');
    expect((await t.exec('node', 'ipset', ['list', '-n'])).stdout.trim()).toBe('');
  });
});

describe.skipIf(!env.ok)(`IPVS mode, dual-stack${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const D = { a: { ip: '198.18.1.11', ip6: '2001:2:1::11' }, b: { ip: '198.18.1.12', ip6: '2001:2:1::12' }, client: { ip: '198.18.1.50', ip6: '2001:2:1::50' } };
  const V6 = '2001:2:0:ff::10';

  beforeAll(async () => {
    t = await Topology.create({ ipv6: true, pods: [{ name: 'a', ...D.a, ports: [8080] }, { name: 'b', ...D.b, ports: [8080] }, { name: 'client', ...D.client }] });
    dir = await t.manifestsDir();
    const slice = (family: 'IPv4' | 'IPv6') =>
      endpointSlice({ service: 'ds', family, ports: [{ name: 'http', port: 8080 }], endpoints: (['a', 'b'] as const).map((e) => ({ ip: family === 'IPv4' ? D[e].ip : D[e].ip6 })) });
    await t.writeManifest(dir, 'all.yaml', yamlDocs(
      node({ ips: [NET.nodeIP, NET.nodeIP6], podCIDRs: [NET.podCIDR, NET.podCIDR6] }),
      service({ name: 'ds', type: 'NodePort', clusterIP: ['198.19.0.10', V6], ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30301 }], spec: { ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack' } }),
      slice('IPv4'),
      slice('IPv6'),
    ));
    const r = await t.kpx(['run', '--once', '--proxy-mode', 'ipvs', '--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', `${NET.podCIDR},${NET.podCIDR6}`, '--metrics-bind-address', '', '--healthz-bind-address', ''], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
  }, 300_000);
  afterAll(async () => {
    await t?.destroy();
  });

  it('serves the IPv6 ClusterIP from a pod and the IPv6 NodePort from outside, masqueraded', async () => {
    const v6 = await t.probe('client', 'tcp', V6, 80, { count: 30 });
    expect(Object.keys(v6.names).sort()).toEqual(['a', 'b']);
    expect(Object.keys(v6.clients)).toEqual([D.client.ip6]);
    const np = await t.probe('ext', 'tcp', NET.nodeIP6, 30301, { count: 10 });
    expect(np.ok).toBe(10);
    expect(Object.keys(np.clients)).toEqual([NET.bridgeIP6]);
    expect((await t.exec('node', 'ipset', ['list', '-n'])).stdout).toContain('KPX6-CLUSTER-IP');
  });
});
