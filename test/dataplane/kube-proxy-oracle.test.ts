// Upstream kube-proxy as an oracle: the binary hack/kube-proxy builds runs in a test's node
// namespace against the real apiserver (test/substrate/kube-proxy.ts), and real TCP
// connections from a pod prove its rules work, per mode. It must change nothing outside
// its namespace: the root namespace's rulesets and conntrack sysctls are compared before
// and after. The --write-config-to part needs only the binary (no root, no apiserver).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { CoreV1Api, DiscoveryV1Api } from '@kubernetes/client-node';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, service } from '../substrate/manifests.js';
import { findApiserver, putEndpointSlice, type Apiserver } from '../substrate/apiserver.js';
import {
  FIXTURES_DIR,
  findKubeProxy,
  kubeProxyConfiguration,
  metricValue,
  renderConfigFixtures,
  rootNamespaceState,
  startKubeProxy,
  writeConfigTo,
  type KubeProxyHandle,
  type KubeProxyMode,
} from '../substrate/kube-proxy.js';

const bin = await findKubeProxy();
const env = await dataplaneEnv();
const choice = env.ok && bin.ok ? await findApiserver() : null;
const skip = !bin.ok ? bin.reason : !env.ok ? env.reason : !choice?.ok ? (choice as { reason: string }).reason : '';
const binPath = bin.ok ? bin.path : '';

const NS = `kpx-oracle-${process.pid}`;
const NODE = 'node-a';
const P = { a: '198.18.1.11', b: '198.18.1.12', client: '198.18.1.50' };
// static band of the test apiserver's 198.19.0.0/16
const WEB = '198.19.0.70';

/** kube-proxy's ipvs mode needs IP_VS in the kernel; this machine's kernel has none. */
const ipvsMissing = existsSync('/proc/net/ip_vs')
  ? ''
  : 'the host kernel has no IPVS (/proc/net/ip_vs absent, no loadable modules), which kube-proxy --proxy-mode ipvs needs';

describe.skipIf(!bin.ok)(`upstream kube-proxy --write-config-to${bin.ok ? ` (${bin.version})` : ` — skipped: ${bin.reason}`}`, () => {
  it.each(['iptables', 'nftables', 'ipvs'] as KubeProxyMode[])('reads the helper\'s namespace configuration for %s mode as written', async (mode) => {
    const cfg = await kubeProxyConfiguration({ mode, nodeName: NODE, kubeconfig: '/tmp/kubeconfig.conf', clusterCIDR: NET.podCIDR, minSyncPeriod: '250ms' });
    const r = await writeConfigTo(binPath, [], cfg);
    expect(r.stderr).not.toMatch(/lenient decoding/i);
    const out = parse(r.text) as Record<string, unknown>;
    expect(out).toMatchObject({
      kind: 'KubeProxyConfiguration',
      mode,
      hostnameOverride: NODE,
      clusterCIDR: NET.podCIDR,
      metricsBindAddress: '127.0.0.1:10249',
      healthzBindAddress: '127.0.0.1:10256',
      nodePortAddresses: ['primary'],
      bindAddressHardFail: true,
      clientConnection: { kubeconfig: '/tmp/kubeconfig.conf' },
      conntrack: { maxPerCore: 0, min: 0, tcpEstablishedTimeout: '0s', tcpCloseWaitTimeout: '0s', tcpBeLiberal: false },
      [mode]: { minSyncPeriod: '250ms' },
    });
  });

  it('the committed fixtures are what this kube-proxy writes (KPX_UPDATE_FIXTURES=1 rewrites them)', async () => {
    const files = await renderConfigFixtures(binPath);
    if (process.env.KPX_UPDATE_FIXTURES === '1') {
      await mkdir(FIXTURES_DIR, { recursive: true });
      for (const [name, text] of files) await writeFile(join(FIXTURES_DIR, name), text);
    }
    const committed = new Map<string, string>();
    for (const f of await readdir(FIXTURES_DIR)) {
      if (/\.(args|yaml)$/.test(f) && !f.startsWith('kubeadm-')) committed.set(f, await readFile(join(FIXTURES_DIR, f), 'utf8'));
    }
    expect(Object.fromEntries(files)).toEqual(Object.fromEntries(committed));
  });
});

describe.skipIf(!!skip)(`upstream kube-proxy in a node namespace${skip ? ` — skipped: ${skip}` : ''}`, () => {
  let api: Apiserver;
  let core: CoreV1Api;
  let disc: DiscoveryV1Api;
  const report: string[] = [];

  const putSlice = async (ips: string[]) => {
    const body = endpointSlice({ service: 'web', namespace: NS, ports: [{ name: 'http', port: 8080 }], endpoints: ips.map((ip) => ({ ip, node: NODE })) }) as {
      metadata: { name: string };
    };
    await putEndpointSlice(disc, NS, body);
  };

  beforeAll(async () => {
    if (!choice?.ok) return;
    api = await choice.start();
    core = api.admin.makeApiClient(CoreV1Api);
    disc = api.admin.makeApiClient(DiscoveryV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    await core.createNamespacedService({
      namespace: NS,
      body: service({ name: 'web', namespace: NS, clusterIP: WEB, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
    });
    await putSlice([P.a, P.b]);
  }, 300_000);

  afterAll(async () => {
    if (report.length) console.log(`kube-proxy oracle:\n  ${report.join('\n  ')}`);
    await api?.destroy();
  }, 120_000);

  for (const mode of ['iptables', 'nftables', 'ipvs'] as KubeProxyMode[]) {
    const why = mode === 'ipvs' ? ipvsMissing : '';
    describe.skipIf(!!why)(`--proxy-mode ${mode}${why ? ` — skipped: ${why}` : ''}`, () => {
      let t: Topology | null = null;
      let kp: KubeProxyHandle | null = null;
      let rootBefore: Record<string, string>;

      beforeAll(async () => {
        await putSlice([P.a, P.b]);
        rootBefore = await rootNamespaceState();
        t = await Topology.create({
          pods: [
            { name: 'a', ip: P.a, ports: [8080] },
            { name: 'b', ip: P.b, ports: [8080] },
            { name: 'client', ip: P.client },
          ],
        });
        kp = await startKubeProxy({
          bin: binPath,
          netns: t.node,
          apiserver: api,
          mode,
          node: { name: NODE, internalIP: NET.nodeIP, podCIDR: NET.podCIDR },
          clusterCIDR: NET.podCIDR,
          minSyncPeriod: '100ms',
        });
      }, 180_000);

      afterAll(async () => {
        await kp?.stop();
        await t?.destroy();
      }, 60_000);

      it('programs its own rules in the node namespace', async () => {
        if (mode === 'nftables') {
          const r = await t!.exec('node', 'nft', ['list', 'table', 'ip', 'kube-proxy']);
          expect(r.stdout).toContain(WEB);
        } else {
          const nat = (await t!.exec('node', 'iptables-save', ['-t', 'nat'])).stdout;
          expect(nat).toMatch(/^:KUBE-SERVICES /m);
          expect(nat).toMatch(new RegExp(`-d ${WEB.replace(/\./g, '\\.')}/32 .*-j KUBE-SVC-`));
        }
      });

      it('TCP connections from a pod to the ClusterIP reach both endpoints, unmasqueraded', async () => {
        const r = await t!.probe('client', 'tcp', WEB, 80, { count: 40 });
        expect(r.errors).toEqual({});
        expect(r.ok).toBe(40);
        expect(Object.keys(r.names).sort()).toEqual(['a', 'b']);
        // the client is inside --cluster-cidr: the endpoints see its own address
        expect(r.clients).toEqual({ [P.client]: 40 });
      });

      it('connections from outside the cluster CIDR are masqueraded to the node\'s bridge address', async () => {
        const r = await t!.probe('ext', 'tcp', WEB, 80, { count: 10 });
        expect(r.errors).toEqual({});
        expect(r.clients).toEqual({ [NET.bridgeIP]: 10 });
      });

      it('follows an EndpointSlice change from the apiserver', async () => {
        let last = await kp!.waitForSync();
        await putSlice([P.a]);
        // a periodic sync may have started before the change arrived: allow a few syncs
        let names: Record<string, number> = {};
        for (let i = 0; i < 3; i++) {
          last = await kp!.waitForSync(last);
          names = (await t!.probe('client', 'tcp', WEB, 80, { count: 20 })).names;
          if (!names.b) break;
        }
        expect(names).toEqual({ a: 20 });
        await putSlice([P.a, P.b]);
      });

      it('was kept from loading kernel modules for the machine', async () => {
        // nftables mode cleans up IPVS leftovers at start, which begins with modprobe ip_vs
        if (mode === 'nftables') expect(await kp!.refused()).toContain('modprobe -va ip_vs');
        else expect(await kp!.refused()).toEqual([]);
      });

      it('serves kube-proxy\'s metrics and healthz inside the namespace', async () => {
        const text = await kp!.metrics();
        expect(text).toMatch(/^# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram$/m);
        expect(metricValue(text, 'kubeproxy_sync_proxy_rules_duration_seconds_count')).toBeGreaterThanOrEqual(1);
        expect(text).toMatch(/^kubernetes_build_info\{.*git_version="v1\.36\.3"/m);
        const hz = await kp!.get(kp!.healthzURL);
        expect(hz.status).toBe(200);
      });

      it('stops and left the root namespace as it found it', async () => {
        await kp!.stop();
        report.push(`${mode}: kube-proxy ended with ${JSON.stringify(await kp!.exited)}`);
        kp = null;
        await t!.destroy();
        t = null;
        expect(await rootNamespaceState()).toEqual(rootBefore);
      });
    });
  }

  describe('what the namespace settings guard against', () => {
    let t: Topology | null = null;
    let rootBefore: Record<string, string>;
    const start = (overrides: Record<string, unknown>) =>
      startKubeProxy({
        bin: binPath,
        netns: t!.node,
        apiserver: api,
        mode: 'nftables',
        node: { name: NODE, internalIP: NET.nodeIP, podCIDR: NET.podCIDR },
        clusterCIDR: NET.podCIDR,
        overrides,
        timeoutMs: 45_000,
      });
    const nodeSysctl = async (key: string) => (await t!.exec('node', 'cat', [`/proc/sys/${key}`])).stdout.trim();

    beforeAll(async () => {
      rootBefore = await rootNamespaceState();
      t = await Topology.create({ pods: [] });
    }, 60_000);

    afterAll(async () => {
      await t?.destroy();
    }, 60_000);

    it('a conntrack limit (conntrack.maxPerCore > 0) makes kube-proxy exit: nf_conntrack_max is read-only in a namespace', async (ctx) => {
      const mode = (await t!.exec('node', 'stat', ['-c', '%a', '/proc/sys/net/netfilter/nf_conntrack_max'])).stdout.trim();
      // where it is writable, kube-proxy could go on to resize the machine-wide conntrack hash
      if (mode !== '444') ctx.skip(`nf_conntrack_max is mode ${mode} in a namespace here; not trying a limit`);
      const current = Number(await nodeSysctl('net/netfilter/nf_conntrack_max'));
      // a limit that differs from the current one, so kube-proxy must write it
      await expect(start({ conntrack: { maxPerCore: 1, min: current + 4 } })).rejects.toThrow(/nf_conntrack_max/);
      expect(await nodeSysctl('net/netfilter/nf_conntrack_max')).toBe(String(current));
    });

    it('kube-proxy\'s own TCP conntrack timeouts land in its namespace only', async () => {
      const kp = await start({ conntrack: { tcpEstablishedTimeout: '24h', tcpCloseWaitTimeout: '1h' } });
      try {
        expect(await nodeSysctl('net/netfilter/nf_conntrack_tcp_timeout_established')).toBe('86400');
        expect(await nodeSysctl('net/netfilter/nf_conntrack_tcp_timeout_close_wait')).toBe('3600');
      } finally {
        await kp.stop();
      }
      const root = await rootNamespaceState();
      expect(root['net/netfilter/nf_conntrack_tcp_timeout_established']).toBe(rootBefore['net/netfilter/nf_conntrack_tcp_timeout_established']);
      expect(root['net/netfilter/nf_conntrack_tcp_timeout_close_wait']).toBe(rootBefore['net/netfilter/nf_conntrack_tcp_timeout_close_wait']);
    });

    it('left the root namespace as it found it', async () => {
      await t!.destroy();
      t = null;
      expect(await rootNamespaceState()).toEqual(rootBefore);
    });
  });
});
