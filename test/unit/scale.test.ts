// The pure parts of `npm run scale` (bench/scale): metric parsing, histogram quantiles,
// percentiles, /proc parsing, counting what a proxy programmed, and the report, CSV and
// charts generated from a results file. The fixture below is made up for these tests
// (round numbers); it is not a measurement.
import { describe, expect, it } from 'vitest';
import {
  gauge,
  histogram,
  histogramDelta,
  histogramQuantile,
  median,
  parseDuration,
  parseProcStat,
  parseProcStatus,
  parsePrometheus,
  percentile,
} from '../../bench/scale/metrics.js';
import { countIpsetEntries, countIptablesRules, countIpvs, countNft, NftCounter } from '../../bench/scale/proxies.js';
import { evaluateTargets, fmt, markdownReport, summaryTable, toCSV } from '../../bench/scale/report.js';
import { chartSpecs, renderSvg } from '../../bench/scale/charts.js';
import type { Environment, Figure, RunResult, ScaleResults } from '../../bench/scale/types.js';

const METRICS = `# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.1"} 3
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="1"} 4
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 4
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 1.25
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 4
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.001"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.1"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="1"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 1
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.0005
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 1
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7645e+09
odd_metric{path="/a,b}",msg="say \\"hi\\""} 7
kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 10
kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 50
kubeproxy_network_programming_duration_seconds_bucket{le="1"} 90
kubeproxy_network_programming_duration_seconds_bucket{le="2"} 100
kubeproxy_network_programming_duration_seconds_bucket{le="+Inf"} 100
kubeproxy_network_programming_duration_seconds_sum 55
kubeproxy_network_programming_duration_seconds_count 100
process_resident_memory_bytes 1.5e+08
`;

describe('scale: metrics', () => {
  const samples = parsePrometheus(METRICS);

  it('parses samples with labels, quoted commas and braces, escapes and +Inf', () => {
    expect(samples.find((s) => s.name === 'odd_metric')).toEqual({ name: 'odd_metric', labels: { path: '/a,b}', msg: 'say "hi"' }, value: 7 });
    expect(gauge(samples, 'process_resident_memory_bytes')).toBe(1.5e8);
    expect(gauge(samples, 'kubeproxy_sync_proxy_rules_last_timestamp_seconds', { ip_family: 'IPv4' })).toBe(1.7645e9);
    expect(samples.filter((s) => s.labels.le === '+Inf').every((s) => Number.isFinite(s.value))).toBe(true);
  });

  it('reads one family of a histogram, or the sum of all, and series without the label', () => {
    const v4 = histogram(samples, 'kubeproxy_sync_proxy_rules_duration_seconds', { ip_family: 'IPv4' })!;
    expect(v4.count).toBe(4);
    expect(v4.sum).toBe(1.25);
    expect(v4.buckets).toEqual([[0.001, 0], [0.1, 3], [1, 4], [Infinity, 4]]);
    const all = histogram(samples, 'kubeproxy_sync_proxy_rules_duration_seconds')!;
    expect(all.count).toBe(5);
    expect(all.buckets[0]).toEqual([0.001, 1]);
    // no ip_family label on these series: the filter lets them through
    expect(histogram(samples, 'kubeproxy_network_programming_duration_seconds', { ip_family: 'IPv4' })!.count).toBe(100);
    expect(histogram(samples, 'no_such_metric')).toBeUndefined();
  });

  it('subtracts snapshots and interpolates quantiles inside buckets as histogram_quantile does', () => {
    const h = histogram(samples, 'kubeproxy_network_programming_duration_seconds')!;
    // rank 50 is the top of the (0.25, 0.5] bucket; rank 99 is 9/10 into (1, 2]
    expect(histogramQuantile(0.5, h)).toEqual({ value: 0.5, lower: 0.25, upper: 0.5, aboveLastBucket: false });
    expect(histogramQuantile(0.99, h)!.value).toBeCloseTo(1.9, 10);
    expect(histogramQuantile(0.05, h)!.value).toBeCloseTo(0.125, 10);
    const before = { buckets: [[0.25, 10], [0.5, 40], [1, 40], [2, 40], [Infinity, 40]] as Array<[number, number]>, sum: 10, count: 40 };
    const d = histogramDelta(h, before);
    expect(d.count).toBe(60);
    expect(d.sum).toBe(45);
    expect(d.buckets).toEqual([[0.25, 0], [0.5, 10], [1, 50], [2, 60], [Infinity, 60]]);
    expect(histogramQuantile(0.5, d)!.upper).toBe(1);
    expect(histogramQuantile(0.5, { buckets: [[1, 0], [Infinity, 0]], sum: 0, count: 0 })).toBeUndefined();
    const high = { buckets: [[1, 1], [Infinity, 10]] as Array<[number, number]>, sum: 100, count: 10 };
    expect(histogramQuantile(0.99, high)).toEqual({ value: 1, lower: 1, upper: Infinity, aboveLastBucket: true });
  });

  it('takes nearest-rank percentiles', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(percentile(xs, 50)).toBe(50);
    expect(percentile(xs, 99)).toBe(99);
    expect(percentile(xs, 100)).toBe(100);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([], 50)).toBeUndefined();
    expect(median([3, 1, 2])).toBe(2);
  });

  it('reads CPU from /proc/PID/stat (a comm with spaces and parentheses) and memory from status', () => {
    const stat = '4242 (kube (proxy) x) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 75 30 12 20 0 12 0 987654 1000000 2000 18446744073709551615';
    expect(parseProcStat(stat)).toEqual({ utime: 2.5, stime: 0.75, cutime: 0.3, cstime: 0.12, starttimeTicks: 987654 });
    expect(parseProcStatus('Name:\tnode\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n')).toEqual({ rssMiB: 100, hwmMiB: 200 });
    expect(() => parseProcStatus('Name: x\n')).toThrow(/VmRSS/);
  });

  it('parses durations', () => {
    expect(parseDuration('60m')).toBe(3_600_000);
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('2.5')).toBe(2500);
    expect(() => parseDuration('soon')).toThrow(/bad duration/);
  });

  it('counts rules, virtual servers, set entries and nftables elements', () => {
    expect(countIptablesRules('*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j X\n-A X -j DNAT\nCOMMIT\n')).toBe(2);
    expect(countIpvs('-A -t 198.19.0.1:80 -s rr\n-a -t 198.19.0.1:80 -r 198.18.1.2:8080 -m -w 1\n-a -t 198.19.0.1:80 -r 198.18.1.3:8080 -m -w 1\n')).toEqual({ ipvsVirtualServers: 1, ipvsRealServers: 2 });
    expect(countIpsetEntries('Name: KUBE-CLUSTER-IP\nNumber of entries: 30\nName: KUBE-LOOP-BACK\nNumber of entries: 4\n')).toBe(34);
    const nft = JSON.stringify({
      nftables: [
        { metainfo: {} },
        { table: { family: 'ip', name: 'kube-proxy' } },
        { set: { name: 'cluster-ips', elem: ['198.19.0.1', '198.19.0.2'] } },
        { map: { name: 'service-ips', elem: [[1, 2]] } },
        { set: { name: 'empty' } },
        { rule: {} },
        { rule: {} },
      ],
    });
    expect(countNft(nft)).toEqual({ nftRules: 2, nftSetElements: 3 });
    expect(countNft('')).toEqual({ nftRules: 0, nftSetElements: 0 });
  });

  it('counts nft JSON fed in pieces cut anywhere, strings with braces and escapes included', () => {
    const nft = JSON.stringify({
      nftables: [
        { metainfo: { json_schema_version: 1 } },
        { chain: { name: 'service-X-ns/a{b}/tcp/p', comment: 'a "quoted" } brace \\' } },
        { rule: { expr: [{ match: { right: { set: ['{', ']'] } } }] } },
        { map: { name: 'm', elem: [[['198.19.0.1', 'tcp', 80], { goto: { target: 'x}' } }], [['198.19.0.2', 'udp', 53], { goto: { target: 'y' } }]] } },
        { rule: {} },
      ],
    });
    const whole = countNft(nft);
    expect(whole).toEqual({ nftRules: 2, nftSetElements: 2 });
    for (const size of [1, 2, 3, 7, 64]) {
      const c = new NftCounter();
      for (let i = 0; i < nft.length; i += size) c.push(nft.slice(i, i + size));
      expect({ nftRules: c.rules, nftSetElements: c.setElements }).toEqual(whole);
    }
  });
});

// ---- a made-up results file ----

const envOf = (where: 'host' | 'vm', kernel: string, ipvs: boolean): Environment => ({
  where,
  machine: 'Test CPU',
  cpus: 2,
  memGiB: 24,
  kernel,
  node: 'v20.0.0',
  iptables: 'iptables v1.8.9 (nf_tables)',
  ipset: 'ipset v7.17',
  ipvsadm: 'ipvsadm v1.31',
  nft: 'nftables v1.0.6',
  kubernetes: 'v1.36.3',
  kubeProxy: 'Kubernetes v1.36.3',
  kpx: '0.1.0 (abc1234)',
  ipvsKernel: ipvs,
});

const ok = (value: number, unit: Figure['unit'] = 's'): Figure => ({ value, unit, status: 'ok' });
function run(proxy: string, services: number, f: Record<string, Figure>, extra: Partial<RunResult> = {}): RunResult {
  const [impl, mode] = proxy.startsWith('kpx-') ? ['kpx', proxy.slice(4)] : ['kube-proxy', proxy.slice(11)];
  return { proxy, impl: impl as RunResult['impl'], mode: mode as RunResult['mode'], services, endpoints: 10, emulated: false, status: 'ok', figures: f, ...extra };
}
const figs = (full: number, partial: number, p99: number, fp50: number, rss: number, prog99Bounds?: [number, number]): Record<string, Figure> => ({
  'fullSync.metric': ok(full),
  'fullSync.outside': ok(full + 1),
  'endpointChange.sync': ok(partial),
  'endpointChange.packet': ok(partial + 0.01),
  'churn.50.prog.p99': { ...ok(p99), ...(prog99Bounds ? { bounds: prog99Bounds } : {}), note: 'fixture' },
  'churn.50.packet.p99': ok(p99 - 0.1),
  'firstPacket.clusterIP.p50': ok(fp50, 'ms'),
  'firstPacket.clusterIP.p99': ok(fp50 * 3, 'ms'),
  'rss.settled': ok(rss, 'MiB'),
  'rss.peak': ok(rss + 20, 'MiB'),
  'counts.iptablesRules': ok(123456, 'count'),
});

function fixture(): ScaleResults {
  const cfg = {
    services: [5000, 30000],
    endpoints: 10,
    proxies: ['kpx-iptables', 'kube-proxy-iptables', 'kube-proxy-nftables'],
    churnRates: [5, 50],
    churnSeconds: 60,
    connections: 3000,
    repeats: 3,
    minSyncPeriod: '1s',
    syncPeriod: '30s',
    settleSeconds: 20,
    fullSyncTimeoutS: 600,
    stepTimeoutS: 120,
    budgetS: 3600,
    endpointPool: 4060,
  };
  return {
    version: 1,
    startedAt: '2026-12-01T00:00:00.000Z',
    finishedAt: '2026-12-01T01:00:00.000Z',
    command: 'npm run scale -- --services 5000,30000',
    environment: envOf('host', '6.18.0', false),
    vmEnvironment: envOf('vm', '6.1.0-57-amd64', true),
    config: cfg,
    vmConfig: { ...cfg, services: [1000], proxies: ['kpx-iptables', 'kpx-ipvs'] },
    runs: [
      run('kpx-iptables', 5000, figs(4, 0.05, 0.9, 0.2, 150, [0.512, 1.024])),
      run('kube-proxy-iptables', 5000, figs(430, 0.37, 1.9, 0.5, 200)),
      run('kube-proxy-nftables', 5000, figs(2.9, 1.1, 2.5, 0.3, 140)),
      run('kpx-iptables', 30000, figs(40, 0.3, 1.5, 0.22, 260)),
      run('kube-proxy-iptables', 30000, { 'fullSync.metric': { value: null, unit: 's', status: 'dnf', limit: 600 }, 'fullSync.outside': { value: null, unit: 's', status: 'dnf', limit: 600 } }, { status: 'dnf', reason: 'full sync did not finish in 600 s' }),
      run('kube-proxy-nftables', 30000, figs(20, 0.5, 2.2, 0.35, 500)),
      run('kpx-iptables', 1000, figs(3, 0.2, 1.2, 1, 120), { emulated: true }),
      run('kpx-ipvs', 1000, { ...figs(9, 0.4, 1.4, 0.9, 130), 'counts.ipvsVirtualServers': ok(1100, 'count') }, { emulated: true }),
    ],
    skipped: ['kpx-ipvs (every size): no IPVS in this kernel (IPVS is measured in the VM part)'],
    notes: ['5000 services: created 5000 Services and EndpointSlices through the API in 30.0 s (64 in flight)'],
  };
}

describe('scale: report', () => {
  const res = fixture();

  it('evaluates the targets with ratios from the same run and says by how much one is missed', () => {
    const t = evaluateTargets(res);
    const find = (prefix: string, where: string) => t.find((x) => x.target.startsWith(prefix) && x.where.startsWith(where))!;
    // partial: 0.05 / 0.37 (best kube-proxy at 5k is iptables) = 0.14x; 0.3 / 0.5 = 0.6x at 30k
    expect(find('kpx iptables partial', '5k')).toMatchObject({ verdict: 'met' });
    expect(find('kpx iptables partial', '5k').detail).toContain('kube-proxy-iptables');
    const p30 = find('kpx iptables partial', '30k');
    expect(p30.verdict).toBe('missed');
    expect(p30.detail).toContain('0.60x');
    expect(p30.detail).toContain('against a target of 0.5x, 1.2 times over');
    // programming p99: 0.9 s and 0.9/1.9 = 0.47x -> met; 1.5 s at 30k -> missed
    expect(find('network programming', 'kpx-iptables, 5k').verdict).toBe('met');
    expect(find('network programming', 'kpx-iptables, 30k')).toMatchObject({ verdict: 'missed' });
    expect(find('network programming', 'kpx-iptables, 30k').detail).toContain('missed by 50%');
    // first packet: 0.2 -> 0.22 ms is 1.10x (flat); kube-proxy iptables did not finish at 30k, so 5k is used
    expect(find('first-packet p50, kpx iptables: flat', '5k').verdict).toBe('met');
    const fp = find('first-packet p50 at 30k', '5k');
    expect(fp.where).toContain('largest size where both were measured');
    expect(fp.detail).toContain('2.50x lower');
    expect(fp.verdict).toBe('missed');
    // RSS: 260 MiB at 30k, no 10k in the run -> 30k used and missed; 150 > 140 (nftables) at 5k -> missed
    expect(find('kpx RSS with the API source', 'kpx-iptables, 30k').verdict).toBe('missed');
    expect(find("kpx RSS <= kube-proxy's", 'kpx-iptables, 5k').detail).toContain('kube-proxy-nftables 140 MiB (missed by 7%');
    expect(find("kpx RSS <= kube-proxy's", 'kpx-iptables, 30k').verdict).toBe('met');
    // full sync: 4 / 430 = 0.01x met; at 30k kube-proxy did not finish in 600 s: 40/600 = 0.07x, met as a bound
    expect(find('full sync', '5k').verdict).toBe('met');
    expect(find('full sync', '30k').detail).toContain('did not finish in 600 s');
    expect(find('full sync', '30k').verdict).toBe('met');
    // IPVS: only in the VM, at 1k
    const ipvs = find('kpx IPVS', 'VM');
    expect(ipvs.verdict).toBe('reported');
    expect(ipvs.where).toContain('1k');
  });

  it('writes every figure to CSV with the environment, escaping what needs it', () => {
    const csv = toCSV(res);
    const lines = csv.trim().split('\n');
    const figures = res.runs.reduce((n, r) => n + Object.keys(r.figures).length, 0);
    const notOk = res.runs.filter((r) => r.status !== 'ok').length;
    expect(lines).toHaveLength(1 + figures + notOk);
    expect(lines[0]).toMatch(/^where,proxy,impl,mode,services,endpoints,emulated,figure,label,value,unit,status/);
    expect(csv).toContain('vm,kpx-ipvs,kpx,ipvs,1000,10,true,counts.ipvsVirtualServers');
    expect(csv).toContain('6.1.0-57-amd64');
    expect(csv).toContain(',dnf,600,');
    // labels with commas are quoted
    expect(csv).toMatch(/"full sync, proxy metric \(first sync after start\)"/);
  });

  it('writes the markdown report: how to read it, targets, findings, VM figures marked emulated, skipped', () => {
    const md = markdownReport(res, [{ file: 'full-sync.svg', title: 'Full sync vs services' }], { example: 'EXAMPLE: not a measurement' });
    expect(md).toContain('> **EXAMPLE: not a measurement**');
    expect(md).toContain('## How to read it');
    expect(md).toContain('## Targets (ratios within this run)');
    expect(md).toContain('**missed**');
    expect(md).toContain('did not finish in 600 s');
    expect(md).toContain('### iptables vs IPVS in the VM (emulated: compare within the VM only)');
    expect(md).toContain('## All figures (VM, emulated)');
    expect(md).toContain('![Full sync vs services](full-sync.svg)');
    expect(md).toContain('no IPVS in this kernel');
    expect(md).toContain('software emulation');
    // kpx vs kube-proxy at 5k: the lowest full sync is kube-proxy nftables (2.9 s); the others as ratios to it
    expect(md).toContain('kpx-iptables 4.00 s (1.38x), kube-proxy-iptables 430 s (148.28x), **kube-proxy-nftables 2.90 s**');
    const table = summaryTable(res, false);
    expect(table.split('\n')).toHaveLength(2 + 6);
    expect(table).toContain('| kube-proxy-iptables (dnf: full sync did not finish in 600 s) | 30k x 10 | did not finish in 600 s |');
    expect(fmt(undefined)).toBe('-');
    expect(fmt(ok(0.0123))).toBe('12 ms');
    expect(fmt(ok(0.42, 'ms'))).toBe('420 µs');
  });

  it('makes charts for the host and, separately, the VM, and renders them to SVG without a browser', async () => {
    const charts = chartSpecs(res);
    const files = charts.map((c) => c.file);
    expect(files).toEqual(expect.arrayContaining(['full-sync.svg', 'partial-sync.svg', 'netprog-p99.svg', 'first-packet.svg', 'rss.svg', 'full-sync-vm.svg', 'rss-vm.svg']));
    const full = charts.find((c) => c.file === 'full-sync.svg')!;
    const values = (full.spec.data as { values: Array<{ proxy: string; services: number; value: number; finished: string }> }).values;
    // the run that did not finish is drawn at its limit, marked as such
    expect(values).toContainEqual({ proxy: 'kube-proxy-iptables', services: 30000, value: 600, finished: 'did not finish (drawn at its limit)' });
    const svg = await renderSvg(full.spec);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('kube-proxy-nftables');
    expect(svg).toContain('First full sync after start');
  }, 30_000);
});
