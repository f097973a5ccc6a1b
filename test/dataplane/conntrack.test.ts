// Stale UDP conntrack cleanup (a long-lived flow follows endpoint changes, scale-to-zero
// and service deletion), SCTP DNAT with raw packets, and the FORWARD INVALID drop.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setTimeout as sleep } from 'node:timers/promises';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { NET, REPO, Topology, dataplaneEnv, type ProbeResult } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
const RAW = join(REPO, 'test/substrate/rawpkt.py');
const UDP_IP = '198.19.6.1';

describe.skipIf(!env.ok)(`conntrack cleanup, SCTP and INVALID${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  let t: Topology;
  let dir: string;
  const flags = () => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR];

  async function writeUdp(eps: string[], opts: { deleted?: boolean } = {}) {
    if (opts.deleted) return rm(join(dir, 'udp.yaml'), { force: true });
    await t.writeManifest(
      dir,
      'udp.yaml',
      yamlDocs(
        service({ name: 'dns', type: 'NodePort', clusterIP: UDP_IP, ports: [{ name: 'dns', port: 53, protocol: 'UDP', targetPort: 5353, nodePort: 30053 }] }),
        endpointSlice({ service: 'dns', ports: [{ name: 'dns', port: 5353, protocol: 'UDP' }], endpoints: eps.map((ip) => ({ ip })) }),
      ),
    );
  }

  /** One UDP flow (same source port, 8 s of packets) while `during` changes things; a kpx
   *  process start plus a restore must land well inside it, even on a loaded machine. */
  async function flowAround(from: string, host: string, port: number, during: () => Promise<void>): Promise<string[]> {
    const probe = t.probe(from, 'udp', host, port, { count: 80, intervalMs: 100, timeoutMs: 250, samePort: true, sequence: true });
    await sleep(1500);
    await during();
    const r: ProbeResult = await probe;
    return r.sequence!;
  }

  beforeAll(async () => {
    t = await Topology.create({
      pods: [
        { name: 'a', ip: P.a, ports: [5353] },
        { name: 'b', ip: P.b, ports: [5353] },
        { name: 'client', ip: P.client },
      ],
    });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
    await t.writeManifest(
      dir,
      'sctp.yaml',
      yamlDocs(
        service({ name: 'sig', type: 'NodePort', clusterIP: '198.19.6.5', ports: [{ name: 'sctp', port: 9999, protocol: 'SCTP', targetPort: 7777, nodePort: 30099 }] }),
        endpointSlice({ service: 'sig', ports: [{ name: 'sctp', port: 7777, protocol: 'SCTP' }], endpoints: [{ ip: P.a }] }),
      ),
    );
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('moves a long-lived UDP flow to the new endpoint when its endpoint is replaced', async () => {
    await writeUdp([P.a]);
    await t.sync(flags());
    const seq = await flowAround('client', UDP_IP, 53, async () => {
      await writeUdp([P.b]);
      await t.sync(flags());
    });
    const firstB = seq.indexOf('b');
    expect(seq[0]).toBe('a');
    expect(firstB).toBeGreaterThan(0);
    // a still runs, yet after the switch nothing of the flow reaches it
    expect(seq.slice(firstB).filter((x) => x !== 'b')).toEqual([]);
  });

  it('moves a NodePort UDP flow from outside too', async () => {
    const seq = await flowAround('ext', NET.nodeIP, 30053, async () => {
      await writeUdp([P.a]);
      await t.sync(flags());
    });
    const firstA = seq.indexOf('a');
    expect(seq[0]).toBe('b');
    expect(firstA).toBeGreaterThan(0);
    expect(seq.slice(firstA).filter((x) => x !== 'a')).toEqual([]);
  });

  it('cuts the flow when the service scales to zero (REJECT answers, the old endpoint hears nothing)', async () => {
    await writeUdp([P.a]);
    await t.sync(flags());
    const seq = await flowAround('client', UDP_IP, 53, async () => {
      await writeUdp([]);
      await t.sync(flags());
    });
    const firstErr = seq.findIndex((x) => x.startsWith('!'));
    expect(seq[0]).toBe('a');
    expect(firstErr).toBeGreaterThan(0);
    const after = seq.slice(firstErr);
    // nothing reaches the endpoint any more; the kernel rate-limits ICMP errors, so some
    // datagrams go unanswered instead of refused
    expect(after.filter((x) => !x.startsWith('!'))).toEqual([]);
    // (how many are refused depends on how long the sync took; more than one shows REJECT)
    expect(after.filter((x) => x === '!ECONNREFUSED').length).toBeGreaterThanOrEqual(2);
  });

  it('cuts the flow when the service is deleted', async () => {
    await writeUdp([P.a]);
    await t.sync(flags());
    const seq = await flowAround('client', UDP_IP, 53, async () => {
      await writeUdp([], { deleted: true });
      await t.sync(flags());
    });
    const firstErr = seq.findIndex((x) => x.startsWith('!'));
    expect(seq[0]).toBe('a');
    expect(firstErr).toBeGreaterThan(0);
    expect(seq.slice(firstErr).filter((x) => x === 'a')).toEqual([]);
  });

  it('a TCP client that tried a service address before the service existed can reuse its source port once it does', async () => {
    // connect from a fixed source port; prints "ok <name>" or "ERR <errno name>"
    const connect = async () =>
      (
        await t.exec('client', 'python3', [
          '-c',
          "import socket,errno\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('198.18.1.50',41000));s.settimeout(2)\ntry:\n  s.connect(('198.19.6.77',80));print('ok',s.recv(200).decode().split('\"name\":\"')[1].split('\"')[0])\nexcept OSError as e: print('ERR',errno.errorcode.get(e.errno,e))",
        ])
      ).stdout.trim();
    await t.sync(flags());
    expect(await connect()).toMatch(/^ERR/);
    // the attempt left an un-NATed SYN_SENT entry in the node (it would stay 2 minutes)
    const entries = (await t.exec('node', 'conntrack', ['-L', '-p', 'tcp', '--orig-dst', '198.19.6.77'], { reject: false })).stdout;
    expect(entries).toMatch(/SYN_SENT .*sport=41000 dport=80 .*src=198\.19\.6\.77/);
    await t.writeManifest(dir, 'late.yaml', yamlDocs(
      service({ name: 'late', clusterIP: '198.19.6.77', ports: [{ name: 'http', port: 80, targetPort: 5353 }] }),
      endpointSlice({ service: 'late', ports: [{ name: 'http', port: 5353 }], endpoints: [{ ip: P.a }] }),
    ));
    await t.sync(flags());
    expect(await connect()).toBe('ok a');
    await rm(join(dir, 'late.yaml'));
    await t.sync(flags());
  });

  it('DNATs SCTP to the endpoint (raw INIT packets; this kernel has no SCTP sockets)', async () => {
    await t.sync(flags());
    for (const [from, src, dst, dport] of [
      ['client', P.client, '198.19.6.5', 9999],
      ['ext', NET.extIP, NET.nodeIP, 30099],
    ] as const) {
      const listener = t.exec('a', 'python3', [RAW, 'listen', 'sctp', '2']);
      await sleep(500);
      await t.exec(from, 'python3', [RAW, 'send-sctp-init', src, dst, String(dport)]);
      const got = (await listener).stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .filter((x) => x.proto === 'sctp');
      expect(got, `${from} -> ${dst}:${dport}`).toEqual([
        expect.objectContaining({ dst: P.a, dport: 7777, chunk: 1, src: from === 'client' ? P.client : NET.bridgeIP }),
      ]);
    }
  });

  it('drops forwarded conntrack-INVALID packets, unless nf_conntrack_tcp_be_liberal is set', async () => {
    const synackReaches = async () => {
      const listener = t.exec('a', 'python3', [RAW, 'listen', 'tcp', '1.5']);
      await sleep(400);
      await t.exec('ext', 'python3', [RAW, 'send-tcp-synack', NET.extIP, P.a, '8080']);
      return (await listener).stdout.includes('"flags": 18');
    };
    await t.sync(flags());
    expect(await t.save()).toContain('-A KPX-FORWARD -m conntrack --ctstate INVALID -j DROP');
    expect(await synackReaches()).toBe(false);
    await t.exec('node', 'sysctl', ['-qw', 'net.netfilter.nf_conntrack_tcp_be_liberal=1']);
    await t.sync(flags());
    expect(await t.save()).not.toContain('--ctstate INVALID');
    expect(await synackReaches()).toBe(true);
  });
});
