// Differential test against upstream kube-proxy, with real packets, once per mode (both
// proxies in the same mode; iptables and nftables from differential.test.ts, IPVS from
// test/ipvs/differential.test.ts inside the qemu VM): twin node namespaces with the same
// topology, kube-proxy in one and kpx in the other, both watching the same apiserver
// objects (test/substrate/differential.ts says why both twins are the same Node). Every
// case's probes (from a pod, from the node, from an external client, to every address and
// port the Service exposes) must have the same outcome on both twins: answered or not and
// how, which endpoints answered, which client address they saw. A difference passes only
// if DELIBERATE lists it for that mode (and docs/features.md says why); a DELIBERATE row
// that no longer matches in a mode it names fails too.
import { execa } from 'execa';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoreV1Api, DiscoveryV1Api } from '@kubernetes/client-node';
import { NET, dataplaneEnv, type PodSpec } from '../substrate/netns.js';
import { endpointSlice, service, type EndpointSpec, type PortSpec } from '../substrate/manifests.js';
import { findApiserver, putEndpointSlice, type Apiserver } from '../substrate/apiserver.js';
import { findKubeProxy } from '../substrate/kube-proxy.js';
import {
  REMOTE_NODE,
  TWIN_NODE,
  Twins,
  changeCount,
  compare,
  jsonShape,
  metricFamilies,
  probeId,
  runProbes,
  sameOutcomes,
  showOutcome,
  table,
  waitForChangeTaken,
  type Comparison,
  type Deliberate,
  type Outcome,
  type Probe,
  type ProxyVariant,
  type Twin,
  type TwinMode,
} from '../substrate/differential.js';

const bin = await findKubeProxy();
const env = await dataplaneEnv();
const choice = env.ok && bin.ok ? await findApiserver() : null;
/** Why the differential suites cannot run here ('' when they can). */
export const differentialSkip = !bin.ok ? bin.reason : !env.ok ? env.reason : !choice?.ok ? (choice as { reason: string }).reason : '';

const NS = 'kpx-differential';
const POD = { a: '198.18.1.11', b: '198.18.1.12', c: '198.18.1.13', client: '198.18.1.50', r1: '198.18.2.11', r2: '198.18.2.12' };
const PODS: PodSpec[] = [
  { name: 'a', ip: POD.a, ports: [8080] },
  { name: 'b', ip: POD.b, ports: [8080] },
  { name: 'c', ip: POD.c, ports: [8080] },
  { name: 'client', ip: POD.client },
  { name: 'r1', ip: POD.r1, ports: [8080], remote: true },
  { name: 'r2', ip: POD.r2, ports: [8080], remote: true },
];
const local = (name: keyof typeof POD, more: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip: POD[name], node: TWIN_NODE, ...more });
const remote = (name: keyof typeof POD, more: Partial<EndpointSpec> = {}): EndpointSpec => ({ ip: POD[name], node: REMOTE_NODE, ...more });
const TERMINATING = { ready: false, serving: true, terminating: true };
/** the twins' Node (node-a) carries this topology.kubernetes.io/zone label */
const ZONE = 'zone-a';
const OTHER_ZONE = 'zone-b';
/** an endpoint in `zone`, hinted for it (what the EndpointSlice controller writes) */
const inZone = (zone: string): Partial<EndpointSpec> => ({ zone, zoneHints: [zone] });

interface Case {
  name: string;
  /** features.md row(s) it covers */
  row: string;
  type?: 'ClusterIP' | 'NodePort' | 'LoadBalancer';
  clusterIP: string;
  ports: PortSpec[];
  spec?: Record<string, unknown>;
  lbIP?: string;
  endpoints: EndpointSpec[];
  /** sources besides client, node and ext */
  ext2?: boolean;
  /** affinity: which endpoint answers is random, compare how many did */
  countOnly?: boolean;
  extra?: Probe[];
}

const tcp = (port: number, nodePort?: number): PortSpec => ({ name: `tcp-${port}`, port, protocol: 'TCP', targetPort: 8080, nodePort });
const udp = (port: number, nodePort?: number): PortSpec => ({ name: `udp-${port}`, port, protocol: 'UDP', targetPort: 8080, nodePort });

/** A NodePort Service of the topology hint cases: the i-th (198.19.0.115 + i, NodePort 30112 + i). */
function hinted(i: number, name: string, what: string, trafficDistribution: string, endpoints: EndpointSpec[], spec: Record<string, unknown> = {}): Case {
  return { name, row: `Topology hints (${what})`, type: 'NodePort', clusterIP: `198.19.0.${115 + i}`, ports: [tcp(80, 30112 + i)], spec: { trafficDistribution, ...spec }, endpoints };
}

// static band of the test apiserver's 198.19.0.0/16; NodePorts fixed so both twins' are the same anyway
/** in the service CIDR, held by no Service */
const UNALLOCATED = '198.19.0.199';
const CASES: Case[] = [
  {
    name: 'cluster-ip',
    row: 'ClusterIP, Masquerade, Protocols; a port it does not define; an address of the service CIDR no Service holds',
    clusterIP: '198.19.0.101',
    ports: [tcp(80), udp(53)],
    endpoints: [local('a'), local('b'), remote('r1')],
    extra: ['client', 'node', 'ext'].flatMap((from) => [
      { from, proto: 'tcp' as const, host: '198.19.0.101', port: 81 },
      { from, proto: 'tcp' as const, host: UNALLOCATED, port: 80 },
    ]),
  },
  {
    name: 'node-port',
    row: 'NodePort, nodePortAddresses primary: loopback and bridge address are not NodePort addresses',
    type: 'NodePort',
    clusterIP: '198.19.0.102',
    ports: [tcp(80, 30101), udp(53, 30102)],
    endpoints: [local('a'), remote('r1')],
    extra: [
      // not NodePort addresses under nodePortAddresses: [primary]
      { from: 'node', proto: 'tcp', host: '127.0.0.1', port: 30101 },
      { from: 'client', proto: 'tcp', host: NET.bridgeIP, port: 30101 },
    ],
  },
  { name: 'load-balancer', row: 'LoadBalancer ingress IPs', type: 'LoadBalancer', clusterIP: '198.19.0.103', lbIP: '198.19.100.1', ports: [tcp(80, 30103)], endpoints: [local('a'), local('b')] },
  {
    name: 'lb-source-ranges',
    row: 'loadBalancerSourceRanges',
    type: 'LoadBalancer',
    clusterIP: '198.19.0.104',
    lbIP: '198.19.100.2',
    ports: [tcp(80, 30104)],
    spec: { loadBalancerSourceRanges: [`${NET.extIP}/32`] },
    endpoints: [local('a')],
    ext2: true,
  },
  { name: 'external-ips', row: 'externalIPs', clusterIP: '198.19.0.105', ports: [tcp(80), udp(53)], spec: { externalIPs: ['198.19.200.1'] }, endpoints: [local('a'), remote('r1')] },
  {
    name: 'session-affinity',
    row: 'sessionAffinity ClientIP',
    type: 'NodePort',
    clusterIP: '198.19.0.106',
    ports: [tcp(80, 30105)],
    spec: { sessionAffinity: 'ClientIP' },
    endpoints: [local('a'), local('b'), local('c')],
    countOnly: true,
  },
  {
    name: 'etp-local',
    row: 'externalTrafficPolicy Local (local endpoint)',
    type: 'LoadBalancer',
    clusterIP: '198.19.0.107',
    lbIP: '198.19.100.3',
    ports: [tcp(80, 30106)],
    spec: { externalTrafficPolicy: 'Local', externalIPs: ['198.19.200.3'] },
    endpoints: [local('a'), remote('r1')],
  },
  {
    name: 'etp-local-none-local',
    row: 'externalTrafficPolicy Local (no local endpoint)',
    type: 'LoadBalancer',
    clusterIP: '198.19.0.108',
    lbIP: '198.19.100.4',
    ports: [tcp(80, 30107)],
    spec: { externalTrafficPolicy: 'Local', externalIPs: ['198.19.200.4'] },
    endpoints: [remote('r1')],
  },
  { name: 'itp-local', row: 'internalTrafficPolicy Local', clusterIP: '198.19.0.109', ports: [tcp(80)], spec: { internalTrafficPolicy: 'Local' }, endpoints: [local('a'), remote('r1')] },
  { name: 'itp-local-none-local', row: 'internalTrafficPolicy Local (none local)', clusterIP: '198.19.0.110', ports: [tcp(80), udp(53)], spec: { internalTrafficPolicy: 'Local' }, endpoints: [remote('r1')] },
  {
    name: 'no-endpoints',
    row: 'No endpoints',
    type: 'LoadBalancer',
    clusterIP: '198.19.0.111',
    lbIP: '198.19.100.5',
    ports: [tcp(80, 30108), udp(53, 30109)],
    spec: { externalIPs: ['198.19.200.2'] },
    endpoints: [],
  },
  {
    name: 'terminating',
    row: 'Terminating endpoints (Cluster)',
    type: 'NodePort',
    clusterIP: '198.19.0.112',
    ports: [tcp(80, 30110)],
    endpoints: [local('a', TERMINATING), local('b', TERMINATING), remote('r1', { ready: false, serving: false, terminating: true })],
  },
  {
    name: 'terminating-local',
    row: 'Terminating endpoints (Local falls back, Cluster uses ready)',
    type: 'NodePort',
    clusterIP: '198.19.0.113',
    ports: [tcp(80, 30111)],
    spec: { externalTrafficPolicy: 'Local' },
    endpoints: [local('a', TERMINATING), remote('r1')],
  },
  // topology hints: this node (node-a) is in ZONE; a and b are local pods in it, r1 a remote pod in another
  hinted(0, 'hints-zone', 'every endpoint hinted, some for this zone', 'PreferClose', [local('a', inZone(ZONE)), local('b', inZone(ZONE)), remote('r1', inZone(OTHER_ZONE))]),
  hinted(1, 'hints-partial', 'one ready endpoint without hints: all ignored', 'PreferClose', [local('a', inZone(ZONE)), remote('r1', { zone: OTHER_ZONE })]),
  hinted(2, 'hints-other-zone', 'none for this zone: all ignored', 'PreferClose', [local('a', { zone: ZONE, zoneHints: [OTHER_ZONE] }), remote('r1', inZone(OTHER_ZONE))]),
  hinted(3, 'hints-node', 'node hints win over zone hints', 'PreferSameNode', [
    local('a', { ...inZone(ZONE), nodeHints: [TWIN_NODE] }),
    local('b', { ...inZone(ZONE), nodeHints: [REMOTE_NODE] }),
    remote('r1', { ...inZone(ZONE), nodeHints: [REMOTE_NODE] }),
  ]),
  hinted(4, 'hints-etp-local', 'Cluster policy only: external traffic under Local ignores them', 'PreferClose', [local('a', inZone(OTHER_ZONE)), local('b', inZone(ZONE)), remote('r1', inZone(OTHER_ZONE))], {
    externalTrafficPolicy: 'Local',
  }),
  {
    name: 'hairpin',
    row: 'Hairpin',
    clusterIP: '198.19.0.114',
    ports: [tcp(80)],
    endpoints: [local('a')],
    extra: [{ from: 'a', proto: 'tcp', host: '198.19.0.114', port: 80 }],
  },
];

/** The cases probed again under each configuration variant: masquerade decisions and the pods' Local short-circuit. */
const VARIANT_CASES = ['cluster-ip', 'node-port', 'etp-local-none-local', 'itp-local', 'hairpin'];

/** The probe matrix of a case: from a pod, the node and the external client to everything it exposes. */
function probesOf(c: Case): Probe[] {
  const targets: Array<{ proto: 'tcp' | 'udp'; host: string; port: number; external: boolean }> = [];
  for (const p of c.ports) {
    const proto = p.protocol === 'UDP' ? 'udp' : 'tcp';
    targets.push({ proto, host: c.clusterIP, port: p.port, external: false });
    if (p.nodePort) targets.push({ proto, host: NET.nodeIP, port: p.nodePort, external: true });
    if (c.lbIP) targets.push({ proto, host: c.lbIP, port: p.port, external: true });
    for (const ip of (c.spec?.externalIPs as string[] | undefined) ?? []) targets.push({ proto, host: ip, port: p.port, external: true });
  }
  const probes: Probe[] = [];
  for (const t of targets) {
    for (const from of ['client', 'node', 'ext']) probes.push({ from, proto: t.proto, host: t.host, port: t.port });
    if (c.ext2) probes.push({ from: 'ext', bind: NET.extIP2, proto: t.proto, host: t.host, port: t.port });
  }
  return [...probes, ...(c.extra ?? [])];
}

/**
 * Differences from kube-proxy that are on purpose (docs/features.md says why), with the
 * modes each holds in. Exact outcomes on both sides, as showOutcome prints them.
 */
const DELIBERATE: Array<Deliberate & { modes: readonly TwinMode[] }> = [
  {
    // kpx's source-range DROP sits in filter OUTPUT, which the node's own packets reach
    // after IPVS (LOCAL_OUT, before filter) has already rewritten their destination to the
    // endpoint, so the LB-IP match misses; kube-proxy drops them (its check evidently runs before IPVS)
    modes: ['ipvs'],
    case: 'lb-source-ranges',
    probe: 'node -> 198.19.100.2:80/tcp',
    kubeProxy: 'timeout [-] from [-]',
    kpx: 'answered [a] from [198.18.1.1]',
    reason: 'the node itself is not held to loadBalancerSourceRanges in kpx IPVS mode (filter OUTPUT runs after the IPVS DNAT)',
  },
];

/**
 * kube-proxy's metric families kpx does not expose, per mode, and why (docs/features.md,
 * Differences from kube-proxy). kube-proxy's iptables mode counts these packets with nfacct objects its rules
 * feed; kpx's rules do not use nfacct, and a metric kpx exposes but never counts would say
 * "0 packets" falsely.
 */
const METRIC_EXCEPTIONS: Record<TwinMode, Record<string, string>> = {
  iptables: {
    kubeproxy_iptables_ct_state_invalid_dropped_packets_total: 'nfacct counter',
    kubeproxy_iptables_localhost_nodeports_accepted_packets_total: 'nfacct counter',
  },
  nftables: {},
  ipvs: {},
};

/**
 * kube-proxy lists a labelled family only once it has a sample, and a failure counter may
 * get none in a healthy run; these are the ones it registers in each mode (its metrics
 * registration) that this run need not fill. kpx lists every family it registers, so
 * each of these must be in kpx's list whether kube-proxy shows it yet or not.
 */
const REGISTERED_UNTIL_COUNTED: Record<TwinMode, string[]> = {
  iptables: [
    'kubeproxy_sync_proxy_rules_iptables_restore_failures_total',
    'kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total',
    'kubeproxy_conntrack_reconciler_deleted_entries_total',
  ],
  nftables: [
    'kubeproxy_sync_proxy_rules_nftables_sync_failures_total',
    'kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total',
    'kubeproxy_conntrack_reconciler_deleted_entries_total',
  ],
  ipvs: [
    'kubeproxy_sync_proxy_rules_iptables_restore_failures_total',
    'kubeproxy_conntrack_reconciler_deleted_entries_total',
  ],
};

/** Probes both twins until their outcomes agree or boundMs has passed (0: once). */
async function probeTwins(twins: Twins, probes: Probe[], countOnly = false, boundMs = 0): Promise<{ kp: Map<string, Outcome>; kpx: Map<string, Outcome> }> {
  const end = Date.now() + boundMs;
  for (;;) {
    const [kp, kpx] = await Promise.all(twins.twins.map((tw) => runProbes(tw.t, probes, { countOnly })));
    if (sameOutcomes(kp!, kpx!) || Date.now() >= end) return { kp: kp!, kpx: kpx! };
    // a sync may still be running on one twin: give it time rather than a busy loop of probes
    await sleep(250);
  }
}

/** The configuration variants (both proxies restarted with one), by name; see VARIANTS in the suite. */
export type VariantName = 'masqueradeAll' | 'detectLocalMode NodeCIDR' | 'detectLocalMode InterfaceNamePrefix' | 'detectLocalMode BridgeInterface' | 'nodePortAddresses all (localhost NodePorts)';
/** The health checks beyond the healthy one, by name. */
export type HealthCheckName = 'sync stall' | 'node tainted' | 'node being deleted';

/** What a mode's run takes of the catalogue (default: all of it) and how it waits. */
export interface SuiteOptions {
  /** names of CASES to create and probe */
  cases?: readonly string[];
  /** names of VARIANTS to run; each one's cases must be among `cases` */
  variants?: readonly VariantName[];
  health?: readonly HealthCheckName[];
  /** run the SCTP case (it skips where there are no SCTP sockets or no SCTP client) */
  sctp?: boolean;
  /** every wait and hook bound multiplied by it (software emulation in the qemu VM: about 3) */
  timeScale?: number;
}

/** The single-stack twins' suite for one mode; skips (saying why) when `extraSkip` or differentialSkip is set. */
export function describeDifferential(mode: TwinMode, opts: SuiteOptions = {}, extraSkip = ''): void {
  const skip = differentialSkip || extraSkip;
  describe.skipIf(!!skip)(`differential: kpx vs upstream kube-proxy, ${mode} mode${skip ? ` — skipped: ${skip}` : ''}`, () => suite(mode, opts));
}

/** The dual-stack twins' suite for one mode. */
export function describeDualStackDifferential(mode: TwinMode, extraSkip = ''): void {
  const skip = differentialSkip || extraSkip;
  describe.skipIf(!!skip)(`differential, dual-stack: kpx vs upstream kube-proxy, ${mode} mode${skip ? ` — skipped: ${skip}` : ''}`, () => dualStackSuite(mode));
}

function suite(mode: TwinMode, opts: SuiteOptions): void {
  const deliberate: Deliberate[] = DELIBERATE.filter((d) => d.modes.includes(mode));
  const scale = opts.timeScale ?? 1;
  const cases = opts.cases ? CASES.filter((c) => opts.cases!.includes(c.name)) : CASES;
  if (opts.cases && cases.length !== opts.cases.length) throw new Error(`unknown case in ${JSON.stringify(opts.cases)}`);
  const healthChecks = new Set<HealthCheckName>(opts.health ?? ['sync stall', 'node tainted', 'node being deleted']);
  let api: Apiserver;
  let core: CoreV1Api;
  let disc: DiscoveryV1Api;
  let twins: Twins;
  const rows: Comparison[] = [];
  const summary: Array<Array<string | number>> = [];
  let startedAt = 0;

  const record = (name: string, cmp: Comparison[]) => {
    rows.push(...cmp);
    summary.push([name, cmp.length, cmp.filter((r) => r.verdict === 'equal').length, cmp.filter((r) => r.verdict === 'deliberate').length, cmp.filter((r) => r.verdict === 'DIFFERENT').length]);
  };
  const differences = (cmp: Comparison[]) =>
    cmp.filter((r) => r.verdict === 'DIFFERENT').map((r) => `${r.case}: ${r.probe}: kube-proxy ${showOutcome(r.kubeProxy)}, kpx ${showOutcome(r.kpx)}`);

  const createService = async (c: { name: string; type?: Case['type']; clusterIP: string; ports: PortSpec[]; spec?: Record<string, unknown>; lbIP?: string }) => {
    await core.createNamespacedService({ namespace: NS, body: service({ name: c.name, namespace: NS, type: c.type, clusterIP: c.clusterIP, ports: c.ports, spec: c.spec }) });
    if (c.lbIP) {
      const s = await core.readNamespacedService({ name: c.name, namespace: NS });
      s.status = { loadBalancer: { ingress: [{ ip: c.lbIP }] } };
      await core.replaceNamespacedServiceStatus({ name: c.name, namespace: NS, body: s });
    }
  };
  const putSlice = async (name: string, ports: PortSpec[], endpoints: EndpointSpec[]) => {
    // the trigger time feeds both proxies' network programming latency (a metric family to compare)
    const body = endpointSlice({
      service: name,
      namespace: NS,
      ports: ports.map((p) => ({ name: p.name, port: 8080, protocol: p.protocol })),
      endpoints,
      annotations: { 'endpoints.kubernetes.io/last-change-trigger-time': new Date().toISOString() },
    }) as { metadata: { name: string } };
    await putEndpointSlice(disc, NS, body);
  };

  /** Probes both twins; returns their outcomes once they agree, or the last ones after the bound. */
  const probeBoth = (probes: Probe[], countOnly = false, boundMs = 0) => probeTwins(twins, probes, countOnly, boundMs);

  /**
   * Compares both proxies' /healthz and /livez (code, shape, verdicts) and the
   * healthCheckNodePort answer of etp-local (asked from outside), records them as a
   * summary row and fails on a difference. The one deliberate difference: kube-proxy's
   * body has an IPv6 status entry wherever ip6tables (nftables mode: nft's ip6 family)
   * works; kpx has one per family it programs (docs/features.md, Dual-stack), and nothing
   * here uses IPv6.
   */
  const healthBoth = async (name: string): Promise<Record<string, HealthAnswer>> => {
    const got: Record<string, HealthAnswer> = {};
    for (const tw of twins.twins) for (const [path, a] of Object.entries(await healthOf(tw))) got[`${tw.name} ${path}`] = a;
    const port = (await core.readNamespacedService({ name: 'etp-local', namespace: NS })).spec!.healthCheckNodePort!;
    const [hkp, hkpx] = await Promise.all(twins.twins.map(async (tw) => httpAnswer((await tw.t.exec('ext', 'curl', ['-s', '-m', '5', '-D', '-', `http://${NET.nodeIP}:${port}/`])).stdout)));
    const cmp: Array<{ what: string; verdict: Comparison['verdict']; kp: unknown; kpx: unknown }> = [];
    for (const path of ['/healthz', '/livez']) {
      const kp = got[`kube-proxy ${path}`]!;
      const kpx = got[`kpx ${path}`]!;
      const same = JSON.stringify(kp) === JSON.stringify(kpx);
      const deliberateIPv6 = !same && hasIPv6Status(kp) && JSON.stringify(withoutIPv6(kp)) === JSON.stringify(kpx);
      cmp.push({ what: path, verdict: same ? 'equal' : deliberateIPv6 ? 'deliberate' : 'DIFFERENT', kp, kpx });
    }
    cmp.push({ what: 'healthCheckNodePort etp-local', verdict: JSON.stringify(hkp) === JSON.stringify(hkpx) ? 'equal' : 'DIFFERENT', kp: hkp, kpx: hkpx });
    summary.push([name, cmp.length, cmp.filter((c) => c.verdict === 'equal').length, cmp.filter((c) => c.verdict === 'deliberate').length, cmp.filter((c) => c.verdict === 'DIFFERENT').length]);
    console.log(`[differential ${mode}] ${name}: ${JSON.stringify(cmp.map((c) => ({ what: c.what, verdict: c.verdict, kubeProxy: c.kp })))}`);
    expect(cmp.filter((c) => c.verdict === 'DIFFERENT').map((c) => ({ what: c.what, kubeProxy: c.kp, kpx: c.kpx }))).toEqual([]);
    return got;
  };

  /** Waits (bounded) until both proxies' /healthz answer `status`; the comparison after it says whether they did. */
  const untilHealth = async (status: number, boundMs = 30_000 * scale) => {
    const end = Date.now() + boundMs;
    for (;;) {
      const codes = await Promise.all(twins.twins.map(async (tw) => (await tw.proxy!.get(tw.proxy!.healthzURL)).status));
      if (codes.every((c) => c === status) || Date.now() >= end) return;
      await sleep(250);
    }
  };

  beforeAll(async () => {
    startedAt = Date.now();
    if (!choice?.ok) return;
    api = await choice.start();
    core = api.admin.makeApiClient(CoreV1Api);
    disc = api.admin.makeApiClient(DiscoveryV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    // every case's objects exist before the proxies start: their first sync has them all
    for (const c of cases) {
      await createService(c);
      await putSlice(c.name, c.ports, c.endpoints);
    }
    // the twins' Node is in ZONE (the topology hint cases)
    twins = await Twins.start({ kubeProxyBin: bin.ok ? bin.path : '', mode, apiserver: api, pods: PODS, nodeLabels: { 'topology.kubernetes.io/zone': ZONE }, timeScale: scale });
  }, 180_000 * scale);

  afterAll(async () => {
    if (summary.length) {
      console.log(
        summaryText(`differential (kube-proxy ${bin.ok ? bin.version : '?'} vs kpx, ${mode} mode`, startedAt, summary, rows) +
          (rows.some((r) => r.verdict !== 'equal')
            ? `\n\nnot equal:\n${rows
                .filter((r) => r.verdict !== 'equal')
                .map((r) => `  [${r.verdict}] ${r.case}: ${r.probe}\n      kube-proxy ${showOutcome(r.kubeProxy)}\n      kpx        ${showOutcome(r.kpx)}`)
                .join('\n')}`
            : ''),
      );
    }
    await twins?.destroy();
    await api?.destroy();
  }, 120_000 * scale);

  for (const c of cases) {
    it(`${c.name} (${c.row}): every probe's outcome is kube-proxy's`, async () => {
      // under emulation a connection of the 40 can time out on one twin now and then: poll
      // (bounded) until both agree, as the change and variant probes do; a real difference stays
      const { kp, kpx } = await probeBoth(probesOf(c), c.countOnly, scale > 1 ? 10_000 * scale : 0);
      const cmp = compare(c.name, kp, kpx, deliberate);
      record(c.name, cmp);
      // every probe has a result on both twins
      expect(cmp.length).toBe(probesOf(c).length);
      expect(differences(cmp)).toEqual([]);
    });
  }

  it('changes: scale up, endpoints turning terminating, scale to zero, delete, recreate: both converge on the same outcomes', async () => {
    const churn = { name: 'churn', type: 'NodePort' as const, clusterIP: '198.19.0.150', ports: [tcp(80, 30120), udp(53, 30121)] };
    const probes: Probe[] = [];
    for (const from of ['client', 'node', 'ext']) {
      for (const p of churn.ports) {
        const proto = p.protocol === 'UDP' ? 'udp' : 'tcp';
        probes.push({ from, proto, host: churn.clusterIP, port: p.port }, { from, proto, host: NET.nodeIP, port: p.nodePort! });
      }
    }
    const step = async (name: string, change: () => Promise<void>) => {
      const before = await Promise.all(twins.twins.map((tw) => changeCount(tw.proxy!)));
      await change();
      await Promise.all(twins.twins.map((tw, i) => waitForChangeTaken(tw.proxy!, before[i]!, 20_000 * scale)));
      // a change may arrive as more than one event: poll (bounded) until both agree
      const { kp, kpx } = await probeBoth(probes, false, 15_000 * scale);
      const cmp = compare(`churn: ${name}`, kp, kpx, deliberate);
      record(`churn: ${name}`, cmp);
      return { cmp, kp };
    };
    const steps: Array<{ name: string; cmp: Comparison[] }> = [];
    let r = await step('create (1 endpoint)', async () => {
      await createService(churn);
      await putSlice('churn', churn.ports, [local('a')]);
    });
    steps.push({ name: 'create', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.endpoints).toBe('a');
    r = await step('scale up (3 endpoints)', () => putSlice('churn', churn.ports, [local('a'), local('b'), remote('r1')]));
    steps.push({ name: 'scale up', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.endpoints).toBe('a,b,r1');
    r = await step('endpoint turning terminating', () => putSlice('churn', churn.ports, [local('a', TERMINATING), local('b'), remote('r1')]));
    steps.push({ name: 'endpoint turning terminating', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.endpoints).toBe('b,r1');
    r = await step('all endpoints terminating (serving ones used)', () =>
      putSlice('churn', churn.ports, [local('a', TERMINATING), local('b', TERMINATING), remote('r1', { ready: false, serving: false, terminating: true })]),
    );
    steps.push({ name: 'all terminating', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.endpoints).toBe('a,b');
    r = await step('scale to zero', () => putSlice('churn', churn.ports, []));
    steps.push({ name: 'scale to zero', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.outcome).toBe('refused');
    r = await step('delete', async () => {
      await disc.deleteNamespacedEndpointSlice({ name: 'churn-ipv4', namespace: NS });
      await core.deleteNamespacedService({ name: 'churn', namespace: NS });
    });
    steps.push({ name: 'delete', ...r });
    r = await step('recreate (other endpoint)', async () => {
      await createService(churn);
      await putSlice('churn', churn.ports, [local('b'), remote('r2')]);
    });
    steps.push({ name: 'recreate', ...r });
    expect(r.kp.get(probeId(probes[0]!))!.endpoints).toBe('b,r2');
    expect(steps.flatMap((s) => differences(s.cmp))).toEqual([]);
  });

  it(`metrics: every kubeproxy_* metric kube-proxy exposes in ${mode} mode exists in kpx`, async () => {
    // the healthz and livez counters get their first samples
    for (const tw of twins.twins) for (const path of ['/healthz', '/livez']) await tw.proxy!.get(tw.proxy!.healthzURL.replace(/\/healthz$/, path));
    const [kp, kpx] = await Promise.all(twins.twins.map(async (tw) => metricFamilies(await tw.proxy!.metrics(), 'kubeproxy_')));
    const EXCEPTIONS = METRIC_EXCEPTIONS[mode];
    // an exception kube-proxy no longer has, or kpx now has, is stale
    for (const n of Object.keys(EXCEPTIONS)) expect({ [n]: kp!.has(n) && !kpx!.has(n) }).toEqual({ [n]: true });
    const wanted = new Set([...kp!, ...REGISTERED_UNTIL_COUNTED[mode]]);
    const missing = [...wanted].filter((n) => !kpx!.has(n) && !(n in EXCEPTIONS)).sort();
    const extra = [...kpx!].filter((n) => !wanted.has(n)).sort();
    console.log(
      `kubeproxy_* metric families (${mode} mode): kube-proxy ${kp!.size} listed (${[...kp!].sort().join(', ')}), kpx ${kpx!.size}; ` +
        `only in kpx: ${extra.join(', ') || '-'}`,
    );
    expect(kp!.size).toBeGreaterThan(0);
    expect(missing).toEqual([]);
  });

  it('/healthz, /livez and healthCheckNodePort: same status codes, JSON body shape and verdicts when healthy', async () => {
    const got = await healthBoth('health: healthy');
    expect(got['kube-proxy /healthz']!.status).toBe(200);
    expect(got['kube-proxy /livez']!.status).toBe(200);
  });

  it('healthCheckNodePort: the same status, headers and body from both proxies, asked from outside the node', async () => {
    const answers: Record<string, unknown> = {};
    for (const [name, status] of [['etp-local', 200], ['etp-local-none-local', 503]] as const) {
      const svc = await core.readNamespacedService({ name, namespace: NS });
      const port = svc.spec?.healthCheckNodePort;
      expect(port, `${name} has a healthCheckNodePort`).toBeGreaterThan(0);
      const [kp, kpx] = await Promise.all(twins.twins.map(async (tw) => httpAnswer((await tw.t.exec('ext', 'curl', ['-s', '-m', '5', '-D', '-', `http://${NET.nodeIP}:${port}/`])).stdout)));
      answers[name] = kp;
      expect(kp!.status, `${name}: kube-proxy's status`).toBe(status);
      expect(kpx, name).toEqual(kp);
    }
    console.log(`[differential ${mode}] healthCheckNodePort answers (kube-proxy's, kpx's the same): ${JSON.stringify(answers)}`);
  });

  // Configuration variants: both proxies restarted with the same change to the
  // configuration, then a subset of the cases probed again. The masquerade decisions
  // (which client address an endpoint sees) and the Local short-circuit for pods are
  // what detect-local and masqueradeAll change.
  const VARIANTS: Array<{ name: VariantName; variant: ProxyVariant; cases: string[]; extra?: Probe[] }> = [
    // kube-proxy's IPVS mode reads masqueradeAll from the iptables section (there is none in ipvs)
    { name: 'masqueradeAll', variant: { overrides: { [mode === 'nftables' ? 'nftables' : 'iptables']: { masqueradeAll: true } } }, cases: VARIANT_CASES },
    { name: 'detectLocalMode NodeCIDR', variant: { overrides: { detectLocalMode: 'NodeCIDR' } }, cases: VARIANT_CASES },
    // the pods sit on a bridge: what they send to a service arrives on kpxbr0
    {
      name: 'detectLocalMode InterfaceNamePrefix',
      variant: { overrides: { detectLocalMode: 'InterfaceNamePrefix', detectLocal: { interfaceNamePrefix: 'kpxbr' } } },
      cases: VARIANT_CASES,
    },
    { name: 'detectLocalMode BridgeInterface', variant: { overrides: { detectLocalMode: 'BridgeInterface', detectLocal: { bridgeInterface: 'kpxbr0' } } }, cases: VARIANT_CASES },
    // every address a NodePort address: kube-proxy's iptables mode then serves NodePorts on
    // 127.0.0.1 too (route_localnet, inside the node namespace); its nftables mode does not
    {
      name: 'nodePortAddresses all (localhost NodePorts)',
      variant: { nodePortAddresses: [] },
      cases: ['node-port'],
      extra: [
        { from: 'node', proto: 'tcp', host: '127.0.0.1', port: 30101 },
        { from: 'node', proto: 'udp', host: '127.0.0.1', port: 30102 },
        { from: 'node', proto: 'tcp', host: NET.bridgeIP, port: 30101 },
        { from: 'client', proto: 'tcp', host: NET.bridgeIP, port: 30101 },
        { from: 'client', proto: 'udp', host: NET.bridgeIP, port: 30102 },
      ],
    },
  ];
  for (const v of opts.variants ? VARIANTS.filter((x) => opts.variants!.includes(x.name)) : VARIANTS) {
    const missing = v.cases.filter((n) => !cases.some((c) => c.name === n));
    if (missing.length) throw new Error(`variant ${v.name} probes cases this run does not create: ${missing.join(', ')}`);
    it(`${v.name}: both proxies restarted with it, every probe's outcome is kube-proxy's`, async () => {
      await twins.restart(v.variant);
      // all probes at once (their ids differ across cases), then compared case by case
      const groups = [...v.cases.map((name) => ({ name, probes: probesOf(CASES.find((x) => x.name === name)!) })), { name: 'extra', probes: v.extra ?? [] }];
      // both have synced once (restart waits for it); a second event may still be on its way
      const { kp, kpx } = await probeBoth(groups.flatMap((g) => g.probes), false, 10_000 * scale);
      const cmp: Comparison[] = [];
      for (const g of groups) {
        const ids = new Set(g.probes.map(probeId));
        const pick = (m: Map<string, Outcome>) => new Map([...m].filter(([id]) => ids.has(id)));
        cmp.push(...compare(`${v.name} / ${g.name}`, pick(kp), pick(kpx), deliberate));
      }
      record(v.name, cmp);
      expect(cmp.length).toBe(groups.reduce((n, g) => n + g.probes.length, 0));
      expect(differences(cmp)).toEqual([]);
    });
  }

  if (opts.sctp ?? true) it('SCTP', async (ctx) => {
    // the probe client and the echo servers speak SCTP only where the kernel has SCTP sockets
    const r = await execa('python3', ['-c', 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP)'], { reject: false });
    if (r.exitCode !== 0) {
      console.log(`[differential ${mode}] SCTP skipped: this kernel has no SCTP sockets (${String(r.stderr).trim().split('\n').at(-1)})`);
      ctx.skip();
    }
    // not a pass: the probes (test/substrate/probe-matrix.mjs, Node) have no SCTP client yet
    console.log(`[differential ${mode}] SCTP skipped: the kernel has SCTP sockets, but the probes have no SCTP client yet`);
    ctx.skip();
  });

  if (healthChecks.has('sync stall')) it('/healthz, /livez and healthCheckNodePort while a sync stalls: both turn unhealthy, and healthy again once it runs', async () => {
    // syncPeriod 2s: both call a change unprogrammed after 2 x syncPeriod unhealthy
    const gate = join(tmpdir(), `kpx-differential-gate-${process.pid}-${mode}`);
    await twins.restart({ syncPeriod: '2s', commandGate: gate });
    const stall = { name: 'stall', type: 'NodePort' as const, clusterIP: '198.19.0.151', ports: [tcp(80, 30122)] };
    try {
      await writeFile(gate, '');
      await createService(stall);
      await putSlice(stall.name, stall.ports, [local('a')]);
      await untilHealth(503);
      const got = await healthBoth('health: sync stalled');
      expect(got['kube-proxy /healthz']!.status).toBe(503);
      expect(got['kube-proxy /livez']!.status).toBe(503);
    } finally {
      await rm(gate, { force: true });
    }
    await untilHealth(200);
    await healthBoth('health: sync running again');
    const probes: Probe[] = ['client', 'node', 'ext'].map((from) => ({ from, proto: 'tcp', host: stall.clusterIP, port: 80 }));
    const { kp, kpx } = await probeBoth(probes, false, 15_000 * scale);
    const cmp = compare('stall: service programmed after the stall', kp, kpx, deliberate);
    record('stall: service programmed after', cmp);
    expect([...kp.values()].map((o) => o.outcome)).toEqual(['answered', 'answered', 'answered']);
    expect(differences(cmp)).toEqual([]);
  });

  if (healthChecks.has('node tainted')) it('/healthz, /livez and healthCheckNodePort on a node tainted ToBeDeletedByClusterAutoscaler, and after the taint is gone', async () => {
    const taint = { key: 'ToBeDeletedByClusterAutoscaler', value: String(Math.floor(Date.now() / 1000)), effect: 'NoSchedule' };
    const n = await core.readNode({ name: TWIN_NODE });
    n.spec = { ...n.spec, taints: [...(n.spec?.taints ?? []), taint] };
    await core.replaceNode({ name: TWIN_NODE, body: n });
    await untilHealth(503);
    const got = await healthBoth('health: node tainted to be deleted');
    expect(got['kube-proxy /healthz']!.status).toBe(503);
    expect(got['kube-proxy /livez']!.status).toBe(200);
    const m = await core.readNode({ name: TWIN_NODE });
    m.spec = { ...m.spec, taints: (m.spec?.taints ?? []).filter((t) => t.key !== taint.key) };
    await core.replaceNode({ name: TWIN_NODE, body: m });
    await untilHealth(200);
    await healthBoth('health: taint removed');
  });

  // last: the Node stays "being deleted" (a finalizer holds it) until the apiserver goes
  if (healthChecks.has('node being deleted')) it('/healthz, /livez and healthCheckNodePort on a node being deleted (deletionTimestamp set)', async () => {
    const n = await core.readNode({ name: TWIN_NODE });
    n.metadata = { ...n.metadata, finalizers: [...(n.metadata?.finalizers ?? []), 'kpx.test/hold'] };
    await core.replaceNode({ name: TWIN_NODE, body: n });
    await core.deleteNode({ name: TWIN_NODE });
    expect((await core.readNode({ name: TWIN_NODE })).metadata?.deletionTimestamp).toBeTruthy();
    await untilHealth(503);
    const got = await healthBoth('health: node being deleted');
    expect(got['kube-proxy /healthz']!.status).toBe(503);
    expect(got['kube-proxy /livez']!.status).toBe(200);
  });

  it(`every DELIBERATE row for ${mode} mode still matches a probe (a stale row fails)`, () => {
    const used = (d: Deliberate) => rows.some((r) => r.verdict === 'deliberate' && r.case === d.case && r.probe === d.probe);
    expect(deliberate.filter((d) => !used(d))).toEqual([]);
  });
}

/**
 * An HTTP answer as curl -D - prints it: status, headers (lower-case names), body. Left out:
 * Date, and the hop-by-hop headers by which Node's and Go's HTTP servers differ whatever the
 * application does (Connection, Keep-Alive).
 */
function httpAnswer(text: string): { status: number; headers: Record<string, string>; body: string } {
  const cut = text.indexOf('\r\n\r\n');
  const [statusLine, ...lines] = text.slice(0, cut).split('\r\n');
  const headers: Record<string, string> = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    const k = l.slice(0, i).trim().toLowerCase();
    if (!['date', 'connection', 'keep-alive'].includes(k)) headers[k] = l.slice(i + 1).trim();
  }
  return { status: Number(/^HTTP\/[\d.]+ (\d+)/.exec(statusLine ?? '')?.[1] ?? 0), headers, body: text.slice(cut + 4) };
}

/** /healthz and /livez of one proxy: status code, body shape, and the body's verdicts (its booleans). */
async function healthOf(tw: Twin): Promise<Record<string, HealthAnswer>> {
  const out: Record<string, HealthAnswer> = {};
  for (const path of ['/healthz', '/livez']) {
    const r = await tw.proxy!.get(tw.proxy!.healthzURL.replace(/\/healthz$/, path));
    let body: unknown;
    try {
      body = JSON.parse(r.body);
    } catch {
      body = `not JSON: ${r.body.slice(0, 80)}`;
    }
    out[path] = { status: r.status, shape: jsonShape(body), verdicts: verdicts(body) };
  }
  return out;
}

/** The summary table (a total row added), and with KPX_DIFFERENTIAL_VERBOSE every probe's outcome. */
function summaryText(title: string, startedAt: number, summary: Array<Array<string | number>>, rows: Comparison[]): string {
  const total = summary.reduce((s, r) => [s[0]!, Number(s[1]) + Number(r[1]), Number(s[2]) + Number(r[2]), Number(s[3]) + Number(r[3]), Number(s[4]) + Number(r[4])], ['total', 0, 0, 0, 0]);
  return (
    `${title}; ${((Date.now() - startedAt) / 1000).toFixed(1)} s):\n` +
    table(['case', 'probes', 'equal', 'deliberate', 'different'], [...summary, total]) +
    (process.env.KPX_DIFFERENTIAL_VERBOSE ? `\n\nall probes (kube-proxy's outcome):\n${rows.map((r) => `  ${r.case}: ${r.probe}: ${showOutcome(r.kubeProxy)}`).join('\n')}` : '')
  );
}

interface HealthAnswer {
  status: number;
  shape: unknown;
  verdicts: unknown;
}

/** The booleans of a JSON value (healthy, nodeEligible, per family), with their paths; the rest dropped. */
function verdicts(v: unknown): unknown {
  if (typeof v === 'boolean') return v;
  if (!v || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const out = Object.entries(v)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, x]) => [k, verdicts(x)] as const)
    .filter(([, x]) => x !== undefined);
  return out.length ? Object.fromEntries(out) : undefined;
}

const hasIPv6Status = (a: HealthAnswer): boolean => !!(a.shape as { status?: Record<string, unknown> }).status?.IPv6;

/** A health answer without its IPv6 status entry (shape and verdicts). */
function withoutIPv6(a: HealthAnswer): HealthAnswer {
  const c = structuredClone(a);
  for (const part of [c.shape, c.verdicts] as Array<{ status?: Record<string, unknown> } | undefined>) delete part?.status?.IPv6;
  return c;
}

// Dual-stack: twins with IPv6 (the Node has an InternalIP and a pod CIDR of each family),
// both proxies programming both families, their own apiserver. Service addresses in the
// test apiserver's IPv6 range (APISERVER_SERVICE_CIDR6).
const POD6: Record<string, string> = { a: '2001:2:1::11', b: '2001:2:1::12', client: '2001:2:1::50', r1: '2001:2:2::11' };
const DS_PODS: PodSpec[] = PODS.filter((p) => p.name in POD6).map((p) => ({ ...p, ip6: POD6[p.name] }));
const ep6 = (name: keyof typeof POD, node = TWIN_NODE): EndpointSpec => ({ ip: POD6[name]!, node });
interface DualStackCase {
  name: string;
  row: string;
  service: Parameters<typeof service>[0];
  slices: Partial<Record<'IPv4' | 'IPv6', EndpointSpec[]>>;
  targets: Array<{ proto: 'tcp' | 'udp'; host: string; port: number }>;
}
const DS_CASES: DualStackCase[] = [
  {
    name: 'dual-stack NodePort',
    row: 'Dual-stack (RequireDualStack: ClusterIP and NodePort of each family, TCP and UDP)',
    service: {
      name: 'ds',
      namespace: NS,
      type: 'NodePort',
      clusterIP: ['198.19.0.160', '2001:2:0:ffff::160'],
      ports: [tcp(80, 30130), udp(53, 30131)],
      spec: { ipFamilies: ['IPv4', 'IPv6'], ipFamilyPolicy: 'RequireDualStack' },
    },
    slices: { IPv4: [local('a'), remote('r1')], IPv6: [ep6('a'), ep6('r1', REMOTE_NODE)] },
    targets: [
      ...['198.19.0.160', '2001:2:0:ffff::160'].flatMap((host) => [
        { proto: 'tcp' as const, host, port: 80 },
        { proto: 'udp' as const, host, port: 53 },
      ]),
      ...[NET.nodeIP, NET.nodeIP6].flatMap((host) => [
        { proto: 'tcp' as const, host, port: 30130 },
        { proto: 'udp' as const, host, port: 30131 },
      ]),
    ],
  },
  {
    name: 'IPv6-only ClusterIP',
    row: 'Dual-stack (an IPv6 single-stack Service; a port it does not define)',
    service: { name: 'v6only', namespace: NS, clusterIP: '2001:2:0:ffff::161', ports: [tcp(80)], spec: { ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack' } },
    slices: { IPv6: [ep6('b')] },
    targets: [
      { proto: 'tcp', host: '2001:2:0:ffff::161', port: 80 },
      { proto: 'tcp', host: '2001:2:0:ffff::161', port: 81 },
    ],
  },
  {
    name: 'IPv6 no endpoints',
    row: 'No endpoints (icmp6 reject), Dual-stack',
    service: { name: 'v6empty', namespace: NS, type: 'NodePort', clusterIP: '2001:2:0:ffff::162', ports: [tcp(80, 30132)], spec: { ipFamilies: ['IPv6'], ipFamilyPolicy: 'SingleStack' } },
    slices: { IPv6: [] },
    targets: [
      { proto: 'tcp', host: '2001:2:0:ffff::162', port: 80 },
      { proto: 'tcp', host: NET.nodeIP6, port: 30132 },
    ],
  },
];

function dualStackSuite(mode: TwinMode): void {
  let api: Apiserver;
  let twins: Twins;
  const summary: Array<Array<string | number>> = [];
  const rows: Comparison[] = [];
  let startedAt = 0;

  beforeAll(async () => {
    startedAt = Date.now();
    if (!choice?.ok) return;
    api = await choice.start();
    const core = api.admin.makeApiClient(CoreV1Api);
    const disc = api.admin.makeApiClient(DiscoveryV1Api);
    await core.createNamespace({ body: { metadata: { name: NS } } });
    for (const c of DS_CASES) {
      await core.createNamespacedService({ namespace: NS, body: service(c.service) });
      for (const [family, endpoints] of Object.entries(c.slices)) {
        const ports = c.service.ports.map((p) => ({ name: p.name, port: 8080, protocol: p.protocol }));
        await disc.createNamespacedEndpointSlice({ namespace: NS, body: endpointSlice({ service: c.service.name, namespace: NS, family: family as 'IPv4' | 'IPv6', ports, endpoints }) as never });
      }
    }
    twins = await Twins.start({ kubeProxyBin: bin.ok ? bin.path : '', mode, apiserver: api, pods: DS_PODS, ipv6: true });
  }, 180_000);

  afterAll(async () => {
    if (summary.length) {
      console.log(summaryText(`differential, dual-stack (kube-proxy ${bin.ok ? bin.version : '?'} vs kpx, ${mode} mode`, startedAt, summary, rows));
    }
    await twins?.destroy();
    await api?.destroy();
  }, 120_000);

  for (const c of DS_CASES) {
    it(`${c.name} (${c.row}): every probe's outcome is kube-proxy's`, async () => {
      const probes: Probe[] = c.targets.flatMap((t) => ['client', 'node', 'ext'].map((from) => ({ from, ...t })));
      // the twins' IPv6 addresses and first IPv6 syncs may still be settling: agree within 10 s
      const { kp, kpx } = await probeTwins(twins, probes, false, 10_000);
      const cmp = compare(c.name, kp, kpx, []);
      rows.push(...cmp);
      summary.push([c.name, cmp.length, cmp.filter((r) => r.verdict === 'equal').length, 0, cmp.filter((r) => r.verdict === 'DIFFERENT').length]);
      expect(cmp.length).toBe(probes.length);
      expect(cmp.filter((r) => r.verdict === 'DIFFERENT').map((r) => `${r.probe}: kube-proxy ${showOutcome(r.kubeProxy)}, kpx ${showOutcome(r.kpx)}`)).toEqual([]);
    });
  }

  it('/healthz and /livez: the same, IPv6 status entry included, once kpx programs IPv6', async () => {
    const [kp, kpx] = await Promise.all(twins.twins.map((tw) => healthOf(tw)));
    summary.push(['health: healthy', 2, ['/healthz', '/livez'].filter((p) => JSON.stringify(kp![p]) === JSON.stringify(kpx![p])).length, 0, ['/healthz', '/livez'].filter((p) => JSON.stringify(kp![p]) !== JSON.stringify(kpx![p])).length]);
    expect(hasIPv6Status(kp!['/healthz']!)).toBe(true);
    expect(kp!['/healthz']!.status).toBe(200);
    expect(kpx).toEqual(kp);
  });
}
