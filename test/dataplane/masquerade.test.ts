// Masquerade decisions with packets: masqueradeAll and every detectLocalMode, and service
// traffic surviving a FORWARD policy of DROP thanks to kpx's forward rules.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATAPLANE_MODES, NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { webNodePortDocs } from '../substrate/manifests.js';

const env = await dataplaneEnv();
const P = { a: '198.18.1.11', client: '198.18.1.50' };
const CIP = '198.19.5.1';

describe.skipIf(!env.ok).each(DATAPLANE_MODES)(`masquerade and detect-local modes, %s mode${env.ok ? '' : ` — skipped: ${env.reason}`}`, (mode) => {
  let t: Topology;
  let dir: string;
  const sync = (...extra: string[]) => t.sync(['--proxy-mode', mode, '--manifests', dir, '--hostname-override', 'node-a', ...extra]);
  /** the client address the endpoint saw, for a pod, the node and an external client */
  const seen = async () => {
    const one = async (from: string) => Object.keys((await t.probe(from, 'tcp', CIP, 80, { count: 3 })).clients);
    return { pod: await one('client'), node: await one('node'), ext: await one('ext') };
  };

  beforeAll(async () => {
    t = await Topology.create({ pods: [{ name: 'a', ip: P.a, ports: [8080] }, { name: 'client', ip: P.client }] });
    dir = await t.manifestsDir();
    await t.writeManifest(dir, 'all.yaml', webNodePortDocs({ nodeIP: NET.nodeIP, podCIDR: NET.podCIDR, clusterIP: CIP, nodePort: 30401, endpoints: [P.a] }));
  });
  afterAll(async () => {
    await t?.destroy();
  });

  const podKept = { pod: [P.client], node: [NET.bridgeIP], ext: [NET.bridgeIP] };
  for (const [mode, flags] of [
    ['ClusterCIDR', ['--cluster-cidr', NET.podCIDR]],
    ['NodeCIDR', ['--detect-local-mode', 'NodeCIDR']],
    ['BridgeInterface', ['--detect-local-mode', 'BridgeInterface', '--pod-bridge-interface', 'kpxbr0']],
    ['InterfaceNamePrefix', ['--detect-local-mode', 'InterfaceNamePrefix', '--pod-interface-name-prefix', 'kpxbr']],
  ] as const) {
    it(`${mode}: pod traffic keeps its source, the node's and external traffic is masqueraded`, async () => {
      await sync(...flags);
      expect(await seen()).toEqual(podKept);
    });
  }

  it('masqueradeAll: pod traffic is masqueraded too', async () => {
    await sync('--cluster-cidr', NET.podCIDR, '--masquerade-all');
    expect(await seen()).toEqual({ pod: [NET.bridgeIP], node: [NET.bridgeIP], ext: [NET.bridgeIP] });
  });

  it('no local detection and no masqueradeAll: nothing to a ClusterIP is masqueraded', async () => {
    await sync();
    // unmasqueraded, the node's source is the address of its route to the ClusterIP (the uplink)
    expect(await seen()).toEqual({ pod: [P.client], node: [NET.nodeIP], ext: [NET.extIP] });
  });

  // kube-proxy's nftables mode does not accept packets for another table's FORWARD policy
  // (an accept in one table is not final for another): the iptables modes only
  it.skipIf(mode === 'nftables')('service traffic survives a FORWARD policy of DROP (kpx accepts marked and established packets)', async () => {
    await sync('--cluster-cidr', NET.podCIDR);
    await t.exec('node', 'iptables', ['-P', 'FORWARD', 'DROP']);
    try {
      // masqueraded (marked) traffic: NodePort and ClusterIP from outside
      expect((await t.probe('ext', 'tcp', NET.nodeIP, 30401, { count: 5 })).ok).toBe(5);
      expect((await t.probe('ext', 'tcp', CIP, 80, { count: 5 })).ok).toBe(5);
      // plain forwarding that kpx has no business accepting stays dropped
      expect((await t.probe('ext', 'tcp', P.a, 8080, { count: 1, timeoutMs: 1000 })).errors).toEqual({ TIMEOUT: 1 });
    } finally {
      await t.exec('node', 'iptables', ['-P', 'FORWARD', 'ACCEPT']);
    }
  });
});
