// From results.json to CSV, the summary table, the targets and docs/scale/README.md.
// Pure functions of the results (test/unit/scale.test.ts runs them on a fixture).
import { figureInfo, type Figure, type ScaleResults } from './types.js';

export function get(res: ScaleResults, proxy: string, services: number, key: string, emulated = false): Figure | undefined {
  return res.runs.find((r) => r.proxy === proxy && r.services === services && r.emulated === emulated)?.figures[key];
}

const num = (f: Figure | undefined): number | undefined => (f?.status === 'ok' && f.value !== null ? f.value : undefined);

export function fmtValue(v: number, unit: Figure['unit']): string {
  switch (unit) {
    case 's':
      return v >= 100 ? `${v.toFixed(0)} s` : v >= 1 ? `${v.toFixed(2)} s` : v >= 0.01 ? `${(v * 1000).toFixed(0)} ms` : `${(v * 1000).toFixed(1)} ms`;
    case 'ms':
      return v >= 100 ? `${v.toFixed(0)} ms` : v >= 1 ? `${v.toFixed(2)} ms` : `${(v * 1000).toFixed(0)} µs`;
    case 'MiB':
      return `${v.toFixed(0)} MiB`;
    case 'cpu-s':
      return `${v.toFixed(1)} s`;
    case 'writes/s':
      return `${v.toFixed(1)}/s`;
    default:
      return Math.round(v).toLocaleString('en');
  }
}

/** A figure as a table cell: value, "did not finish in N s", "failed", or "-" when absent. */
export function fmt(f: Figure | undefined): string {
  if (!f) return '-';
  if (f.status === 'ok' && f.value !== null) return fmtValue(f.value, f.unit);
  if (f.status === 'dnf') return `did not finish in ${f.limit ?? '?'} s`;
  return f.status;
}

const csvCell = (s: string | number | boolean | null | undefined) => {
  const t = s === null || s === undefined ? '' : String(s);
  return /[",\n]/.test(t) ? `"${t.replaceAll('"', '""')}"` : t;
};

/** Every figure, one a line (long format), with the run's environment in each row. */
export function toCSV(res: ScaleResults): string {
  const head = ['where', 'proxy', 'impl', 'mode', 'services', 'endpoints', 'emulated', 'figure', 'label', 'value', 'unit', 'status', 'limit_s', 'samples', 'note', 'kernel', 'iptables', 'ipset', 'ipvsadm', 'nft', 'kubernetes', 'machine'];
  const lines = [head.join(',')];
  for (const r of res.runs) {
    const e = r.emulated ? (res.vmEnvironment ?? res.environment) : res.environment;
    const base = [r.emulated ? 'vm' : 'host', r.proxy, r.impl, r.mode, r.services, r.endpoints, r.emulated];
    const tail = [e.kernel, e.iptables, e.ipset, e.ipvsadm, e.nft, e.kubernetes, e.machine];
    const figs = Object.entries(r.figures);
    if (!figs.length || r.status !== 'ok') lines.push([...base, 'run', 'run status', '', '', r.status, '', '', r.reason ?? '', ...tail].map(csvCell).join(','));
    for (const [k, f] of figs) {
      lines.push([...base, k, figureInfo(k).label, f.value, f.unit, f.status, f.limit ?? '', f.samples?.join(' ') ?? '', f.note ?? '', ...tail].map(csvCell).join(','));
    }
  }
  return `${lines.join('\n')}\n`;
}

const sizesOf = (res: ScaleResults, emulated: boolean) => [...new Set(res.runs.filter((r) => r.emulated === emulated).map((r) => r.services))].sort((a, b) => a - b);
const proxiesOf = (res: ScaleResults, emulated: boolean) => {
  const order = emulated ? (res.vmConfig?.proxies ?? []) : res.config.proxies;
  const seen = [...new Set(res.runs.filter((r) => r.emulated === emulated).map((r) => r.proxy))];
  return [...order.filter((p) => seen.includes(p)), ...seen.filter((p) => !order.includes(p))];
};
const k = (n: number) => (n >= 1000 && n % 1000 === 0 ? `${n / 1000}k` : n.toLocaleString('en'));

/** The main table: one row per proxy and size. */
export function summaryTable(res: ScaleResults, emulated = false): string {
  const rates = (emulated ? res.vmConfig?.churnRates : res.config.churnRates) ?? [];
  const cols: Array<[string, string]> = [
    ['full sync (metric)', 'fullSync.metric'],
    ['full sync (outside)', 'fullSync.outside'],
    ['endpoint change: sync', 'endpointChange.sync'],
    ['endpoint change: packet', 'endpointChange.packet'],
    ['service added: sync', 'serviceAdd.sync'],
    ['service added: packet', 'serviceAdd.packet'],
    ...rates.flatMap((r): Array<[string, string]> => [
      [`${r}/s: prog p50 / p99 (metric)`, `churn.${r}.prog`],
      [`${r}/s: p50 / p99 (packets)`, `churn.${r}.packet`],
      [`${r}/s: CPU own + children`, `churn.${r}.cpu`],
    ]),
    ['first packet ClusterIP p50 / p99', 'firstPacket.clusterIP'],
    ['first packet NodePort p50 / p99', 'firstPacket.nodePort'],
    ['RSS settled (peak)', 'rss'],
    ['programmed', 'counts'],
  ];
  const rows = [`| proxy | services | ${cols.map((c) => c[0]).join(' | ')} |`, `|---|---:|${cols.map(() => '---').join('|')}|`];
  for (const size of sizesOf(res, emulated)) {
    for (const proxy of proxiesOf(res, emulated)) {
      const run = res.runs.find((r) => r.proxy === proxy && r.services === size && r.emulated === emulated);
      if (!run) continue;
      const f = run.figures;
      const cell = (key: string): string => {
        if (/^churn\.[\d.]+\.(prog|packet)$/.test(key) || key.startsWith('firstPacket')) {
          const a = f[`${key}.p50`];
          const b = f[`${key}.p99`];
          return a || b ? `${fmt(a)} / ${fmt(b)}` : '-';
        }
        if (/^churn\.[\d.]+\.cpu$/.test(key)) return f[key] ? `${fmt(f[key])} + ${fmt(f[`${key}Children`])}` : '-';
        if (key === 'rss') return f['rss.settled'] ? `${fmt(f['rss.settled'])} (${fmt(f['rss.peak'])})` : '-';
        if (key === 'counts') {
          const parts = Object.entries(f)
            .filter(([n, x]) => n.startsWith('counts.') && x.status === 'ok')
            .map(([n, x]) => `${fmtValue(x.value!, 'count')} ${shortCount(n)}`);
          const notCounted = f['counts.failed'];
          if (notCounted) parts.push(`not counted: ${notCounted.note ?? 'the count failed'}`);
          return parts.join(', ') || '-';
        }
        return fmt(f[key]);
      };
      const status = run.status === 'ok' ? '' : ` (${run.status}${run.reason ? `: ${run.reason.split('\n')[0]!.slice(0, 80)}` : ''})`;
      rows.push(`| ${proxy}${status} | ${k(size)} x ${run.endpoints} | ${cols.map((c) => cell(c[1])).join(' | ')} |`);
    }
  }
  return rows.join('\n');
}

function shortCount(key: string): string {
  return (
    {
      'counts.iptablesRules': 'iptables rules',
      'counts.ipvsVirtualServers': 'virtual servers',
      'counts.ipvsRealServers': 'real servers',
      'counts.ipsetEntries': 'ipset entries',
      'counts.nftRules': 'nft rules',
      'counts.nftSetElements': 'set elements',
    }[key] ?? key
  );
}

// ---- targets ----

export interface TargetResult {
  target: string;
  where: string;
  verdict: 'met' | 'missed' | 'not measured' | 'reported';
  detail: string;
}

const KUBE_PROXIES = (res: ScaleResults, emulated = false) => proxiesOf(res, emulated).filter((p) => p.startsWith('kube-proxy-'));
const KPX = (res: ScaleResults, emulated = false) => proxiesOf(res, emulated).filter((p) => p.startsWith('kpx-'));

/** The best (lowest) kube-proxy figure at a size, with the mode it came from. */
function bestKubeProxy(res: ScaleResults, size: number, key: string, emulated = false): { proxy: string; value: number } | undefined {
  let best: { proxy: string; value: number } | undefined;
  for (const p of KUBE_PROXIES(res, emulated)) {
    const v = num(get(res, p, size, key, emulated));
    if (v !== undefined && (!best || v < best.value)) best = { proxy: p, value: v };
  }
  return best;
}

/** Sizes the target names, those of them in the run; else every size run (said in `where`). */
function targetSizes(res: ScaleResults, wanted: number[]): { sizes: number[]; note: string } {
  const run = sizesOf(res, false);
  const inRun = wanted.filter((s) => run.includes(s));
  if (inRun.length) return { sizes: inRun, note: '' };
  return { sizes: run, note: ` (the target's sizes ${wanted.map(k).join('/')} were not in this run)` };
}

const ratioText = (r: number) => `${r.toFixed(2)}x`;
/** "missed by": how far over a ceiling (or under a floor) a value is. */
const overBy = (value: number, limit: number) => `missed by ${((value / limit - 1) * 100).toFixed(0)}%`;
/** for a ratio target ("<= 0.5x"): how many times over it the measured ratio is */
const overRatio = (ratio: number, target: number) => `missed: ${ratioText(ratio)} against a target of ${target}x, ${(ratio / target).toFixed(1)} times over`;

export function evaluateTargets(res: ScaleResults): TargetResult[] {
  const out: TargetResult[] = [];
  const endpoints = res.config.endpoints;
  const eNote = endpoints === 10 ? '' : ` [this run: ${endpoints} endpoints per service; the targets are for 10]`;

  // 1. partial sync
  {
    const t = 'kpx iptables partial sync (one endpoint changed) <= 0.5x the best kube-proxy mode';
    const { sizes, note } = targetSizes(res, [5000, 10000, 30000]);
    for (const size of sizes) {
      const v = num(get(res, 'kpx-iptables', size, 'endpointChange.sync'));
      const best = bestKubeProxy(res, size, 'endpointChange.sync');
      const where = `${k(size)} services${note}${eNote}`;
      if (v === undefined || !best) {
        out.push({ target: t, where, verdict: 'not measured', detail: v === undefined ? `kpx-iptables: ${fmt(get(res, 'kpx-iptables', size, 'endpointChange.sync'))}` : `no kube-proxy mode finished (${KUBE_PROXIES(res).map((p) => `${p}: ${fmt(get(res, p, size, 'endpointChange.sync'))}`).join(', ')})` });
        continue;
      }
      const r = v / best.value;
      out.push({
        target: t,
        where,
        verdict: r <= 0.5 ? 'met' : 'missed',
        detail: `kpx ${fmtValue(v, 's')} vs ${best.proxy} ${fmtValue(best.value, 's')}: ${ratioText(r)}${r <= 0.5 ? '' : `; ${overRatio(r, 0.5)}`}`,
      });
    }
  }

  // 2. network programming p99 under churn
  {
    const rates = res.config.churnRates;
    const rate = rates.includes(50) ? 50 : Math.max(...rates);
    const t = `network programming p99 at ${rate} writes/s: kpx < 1 s and <= 0.5x the best kube-proxy mode`;
    for (const size of sizesOf(res, false)) {
      for (const p of KPX(res)) {
        const key = `churn.${rate}.prog.p99`;
        const v = num(get(res, p, size, key));
        const best = bestKubeProxy(res, size, key);
        const where = `${p}, ${k(size)} services${rate === 50 ? '' : ' (50/s not in this run)'}${eNote}`;
        if (v === undefined) {
          out.push({ target: t, where, verdict: 'not measured', detail: `${p}: ${fmt(get(res, p, size, key))}` });
          continue;
        }
        const under1 = v < 1;
        const r = best ? v / best.value : undefined;
        const met = under1 && (r === undefined || r <= 0.5);
        const parts = [`p99 ${fmtValue(v, 's')} (${get(res, p, size, key)?.note ?? ''})`, under1 ? '< 1 s' : `not < 1 s: ${overBy(v, 1)}`];
        if (best && r !== undefined) parts.push(`vs ${best.proxy} ${fmtValue(best.value, 's')}: ${ratioText(r)}${r <= 0.5 ? '' : ` (${overRatio(r, 0.5)})`}`);
        else parts.push('no kube-proxy figure at this size to compare with');
        const pk = num(get(res, p, size, `churn.${rate}.packet.p99`));
        if (pk !== undefined) parts.push(`packets p99 ${fmtValue(pk, 's')}`);
        out.push({ target: t, where, verdict: best ? (met ? 'met' : 'missed') : under1 ? 'met' : 'missed', detail: parts.join('; ') });
      }
    }
  }

  // 3. first packet
  {
    const key = 'firstPacket.clusterIP.p50';
    const sizes = sizesOf(res, false);
    const flat = sizes.filter((s) => s >= 1000);
    const use = flat.length >= 2 ? flat : sizes;
    const vals = use.map((s) => [s, num(get(res, 'kpx-iptables', s, key))] as const).filter((x): x is readonly [number, number] => x[1] !== undefined);
    const t1 = 'first-packet p50, kpx iptables: flat within 20% from 1k to 30k services';
    if (vals.length >= 2) {
      const min = Math.min(...vals.map((v) => v[1]));
      const max = Math.max(...vals.map((v) => v[1]));
      const spread = max / min;
      out.push({
        target: t1,
        where: `${vals.map((v) => k(v[0])).join(', ')} services${use === flat ? '' : ' (fewer than two sizes >= 1k in this run)'}${eNote}`,
        verdict: spread <= 1.2 ? 'met' : 'missed',
        detail: `${vals.map((v) => `${k(v[0])}: ${fmtValue(v[1], 'ms')}`).join(', ')}; max/min ${ratioText(spread)}${spread <= 1.2 ? '' : `; ${overBy(spread, 1.2)}`}`,
      });
    } else out.push({ target: t1, where: 'kpx-iptables', verdict: 'not measured', detail: 'needs two sizes' });
    const t2 = 'first-packet p50 at 30k: kpx iptables >= 3x lower than kube-proxy iptables';
    const both = sizes.filter((s) => num(get(res, 'kpx-iptables', s, key)) !== undefined && num(get(res, 'kube-proxy-iptables', s, key)) !== undefined);
    const at = both.includes(30000) ? 30000 : both.at(-1);
    if (at === undefined) {
      out.push({ target: t2, where: '30k services', verdict: 'not measured', detail: `kube-proxy-iptables: ${sizes.map((s) => `${k(s)} ${fmt(get(res, 'kube-proxy-iptables', s, 'fullSync.metric'))}`).join(', ') || 'not run'}` });
    } else {
      const a = num(get(res, 'kpx-iptables', at, key))!;
      const b = num(get(res, 'kube-proxy-iptables', at, key))!;
      const r = b / a;
      const why30 = at === 30000 ? '' : ` (largest size where both were measured; 30k ${sizes.includes(30000) ? `kube-proxy-iptables: ${fmt(get(res, 'kube-proxy-iptables', 30000, 'fullSync.metric'))}` : 'not in this run'})`;
      out.push({
        target: t2,
        where: `${k(at)} services${why30}${eNote}`,
        verdict: r >= 3 ? 'met' : 'missed',
        detail: `kpx ${fmtValue(a, 'ms')} vs kube-proxy-iptables ${fmtValue(b, 'ms')}: ${ratioText(r)} lower${r >= 3 ? '' : `; missed: needs 3x, short by ${((1 - r / 3) * 100).toFixed(0)}%`}`,
      });
    }
  }

  // 4. RSS
  {
    const key = 'rss.settled';
    const t1 = 'kpx RSS with the API source <= 200 MiB at 10k x 10';
    const sizes = sizesOf(res, false);
    for (const p of KPX(res)) {
      const at = sizes.includes(10000) ? 10000 : sizes.at(-1);
      const v = at === undefined ? undefined : num(get(res, p, at, key));
      if (at === undefined || v === undefined) {
        out.push({ target: t1, where: p, verdict: 'not measured', detail: at === undefined ? 'no sizes' : fmt(get(res, p, at, key)) });
        continue;
      }
      out.push({
        target: t1,
        where: `${p}, ${k(at)} services${at === 10000 ? '' : ' (10k not in this run)'}${eNote}`,
        verdict: v <= 200 ? 'met' : 'missed',
        detail: `${fmtValue(v, 'MiB')} (peak ${fmt(get(res, p, at, 'rss.peak'))})${v <= 200 ? '' : `; ${overBy(v, 200)}`}`,
      });
    }
    const t2 = 'kpx RSS <= kube-proxy\'s (each mode) at every size';
    for (const p of KPX(res)) {
      for (const size of sizes) {
        const v = num(get(res, p, size, key));
        const others = KUBE_PROXIES(res)
          .map((q) => [q, num(get(res, q, size, key))] as const)
          .filter((x): x is readonly [string, number] => x[1] !== undefined);
        if (v === undefined || !others.length) {
          out.push({ target: t2, where: `${p}, ${k(size)}`, verdict: 'not measured', detail: v === undefined ? `${p}: ${fmt(get(res, p, size, key))}` : 'no kube-proxy figure' });
          continue;
        }
        const worst = others.filter(([, x]) => v > x);
        out.push({
          target: t2,
          where: `${p}, ${k(size)} services${eNote}`,
          verdict: worst.length ? 'missed' : 'met',
          detail: `${fmtValue(v, 'MiB')} vs ${others.map(([q, x]) => `${q} ${fmtValue(x, 'MiB')}${v > x ? ` (${overBy(v, x)})` : ''}`).join(', ')}`,
        });
      }
    }
  }

  // 5. full sync
  {
    const t = 'full sync, kpx iptables <= 0.2x kube-proxy iptables (where it finishes)';
    for (const size of sizesOf(res, false)) {
      const a = get(res, 'kpx-iptables', size, 'fullSync.metric');
      const b = get(res, 'kube-proxy-iptables', size, 'fullSync.metric');
      const where = `${k(size)} services${eNote}`;
      if (num(a) === undefined || !b) {
        out.push({ target: t, where, verdict: 'not measured', detail: `kpx-iptables ${fmt(a)}, kube-proxy-iptables ${fmt(b)}` });
        continue;
      }
      const av = num(a)!;
      if (b.status === 'dnf' && b.limit) {
        const r = av / b.limit;
        out.push({ target: t, where, verdict: r <= 0.2 ? 'met' : 'not measured', detail: `kpx ${fmtValue(av, 's')}; kube-proxy-iptables did not finish in ${b.limit} s, so the ratio is below ${ratioText(r)}` });
        continue;
      }
      const bv = num(b);
      if (bv === undefined) {
        out.push({ target: t, where, verdict: 'not measured', detail: `kube-proxy-iptables ${fmt(b)}` });
        continue;
      }
      const r = av / bv;
      out.push({ target: t, where, verdict: r <= 0.2 ? 'met' : 'missed', detail: `kpx ${fmtValue(av, 's')} vs ${fmtValue(bv, 's')}: ${ratioText(r)}${r <= 0.2 ? '' : `; ${overRatio(r, 0.2)}`}` });
    }
  }

  // 6. kpx IPVS one endpoint change at 10k
  {
    const t = 'kpx IPVS: the sync one endpoint change causes at 10k services';
    const found: TargetResult[] = [];
    for (const emulated of [false, true]) {
      const sizes = sizesOf(res, emulated);
      if (!proxiesOf(res, emulated).includes('kpx-ipvs')) continue;
      const at = sizes.includes(10000) ? 10000 : sizes.filter((s) => num(get(res, 'kpx-ipvs', s, 'endpointChange.sync', emulated)) !== undefined).at(-1);
      if (at === undefined) continue;
      const f = get(res, 'kpx-ipvs', at, 'endpointChange.sync', emulated);
      const kp = get(res, 'kube-proxy-ipvs', at, 'endpointChange.sync', emulated);
      found.push({
        target: t,
        where: `${emulated ? 'VM (emulated), ' : ''}${k(at)} services${at === 10000 ? '' : ' (10k not run here: largest size measured)'}`,
        verdict: num(f) === undefined ? 'not measured' : 'reported',
        detail: `kpx-ipvs ${fmt(f)}; kube-proxy-ipvs ${fmt(kp)}${num(f) !== undefined && num(kp) !== undefined ? ` (${ratioText(num(f)! / num(kp)!)})` : ''}`,
      });
    }
    out.push(...(found.length ? found : [{ target: t, where: '10k services', verdict: 'not measured' as const, detail: 'kpx-ipvs was not run (no IPVS on the host and no VM part)' }]));
  }
  return out;
}

// ---- what the figures say ----

function compareLine(res: ScaleResults, size: number, key: string, proxies: string[], emulated: boolean): string | null {
  const vals = proxies.map((p) => [p, get(res, p, size, key, emulated)] as const).filter(([, f]) => f);
  if (vals.length < 2) return null;
  const okVals = vals.filter(([, f]) => num(f) !== undefined) as Array<readonly [string, Figure]>;
  const best = okVals.length ? okVals.reduce((a, b) => (num(b[1])! < num(a[1])! ? b : a)) : null;
  const parts = vals.map(([p, f]) => {
    const v = num(f);
    if (v === undefined || !best) return `${p} ${fmt(f)}`;
    return p === best[0] ? `**${p} ${fmt(f)}**` : `${p} ${fmt(f)} (${ratioText(v / num(best[1])!)})`;
  });
  return `${figureInfo(key).label}: ${parts.join(', ')}`;
}

function findings(res: ScaleResults, emulated: boolean): string[] {
  const out: string[] = [];
  const proxies = proxiesOf(res, emulated);
  const rates = (emulated ? res.vmConfig?.churnRates : res.config.churnRates) ?? [];
  const keys = ['fullSync.metric', 'endpointChange.sync', 'serviceAdd.sync', ...rates.map((r) => `churn.${r}.prog.p99`), 'firstPacket.clusterIP.p50', 'firstPacket.clusterIP.p99', 'rss.settled'];
  for (const size of sizesOf(res, emulated)) {
    out.push(`\n**${k(size)} services x ${emulated ? res.vmConfig?.endpoints : res.config.endpoints} endpoints${emulated ? ' (VM, emulated)' : ''}** (bold: the lowest; ratios to it)`);
    const groups: Array<[string, string[]]> = [];
    const kpx = proxies.filter((p) => p.startsWith('kpx-'));
    const kp = proxies.filter((p) => p.startsWith('kube-proxy-'));
    if (kpx.length > 1) groups.push(['kpx, by mode', kpx]);
    if (kp.length > 1) groups.push(['kube-proxy, by mode', kp]);
    if (kpx.length && kp.length) groups.push(['kpx vs kube-proxy', proxies]);
    for (const [title, ps] of groups) {
      const lines = keys.map((key) => compareLine(res, size, key, ps, emulated)).filter((l): l is string => !!l);
      if (lines.length) out.push(`- ${title}:\n${lines.map((l) => `  - ${l}`).join('\n')}`);
    }
    const dnfs = res.runs.filter((r) => r.services === size && r.emulated === emulated && r.status !== 'ok');
    for (const r of dnfs) out.push(`- ${r.proxy}: ${r.status === 'dnf' ? 'did not finish' : r.status}: ${(r.reason ?? '').split('\n')[0]}`);
  }
  return out;
}

function envLine(e: ScaleResults['environment']): string {
  return `${e.machine}, ${e.cpus} cores, ${e.memGiB} GiB; Linux ${e.kernel}; ${e.iptables}; ${e.ipset}; ${e.ipvsadm}; ${e.nft}; Kubernetes ${e.kubernetes} (test apiserver); kube-proxy ${e.kubeProxy}; kpx ${e.kpx}; Node ${e.node}; IPVS in the kernel: ${e.ipvsKernel ? 'yes' : 'no'}`;
}

export interface ChartRef {
  file: string;
  title: string;
}

export function markdownReport(res: ScaleResults, charts: ChartRef[], opts: { example?: string } = {}): string {
  const targets = evaluateTargets(res);
  const c = res.config;
  const L: string[] = [];
  L.push('# Scale: kpx vs kube-proxy, iptables vs IPVS vs nftables', '');
  if (opts.example) L.push(`> **${opts.example}**`, '');
  L.push(
    `Generated by \`npm run scale\` (bench/scale/) from \`results.json\` of the run started ${res.startedAt}, finished ${res.finishedAt}:`,
    '',
    '```',
    res.command,
    '```',
    '',
    `Host: ${envLine(res.environment)}`,
    '',
  );
  if (res.vmEnvironment) L.push(`VM (qemu, **software emulation**, every VM figure is marked "emulated"): ${envLine(res.vmEnvironment)}`, '');
  L.push(
    '## How to read it',
    '',
    `- Every proxy and size ran one after the other in this one run, each in fresh network namespaces, against the same real apiserver holding the same Services (ClusterIPs and NodePorts allocated by the apiserver, uniformly random) with ${c.endpoints} endpoints each. Compare ratios within a run, not absolute times across runs or machines.`,
    `- Every proxy reads the API (kpx with its ServiceAccount from manifests/, kube-proxy as system:node-proxier), with syncPeriod ${c.syncPeriod} and minSyncPeriod ${c.minSyncPeriod} for all of them. A change waits up to minSyncPeriod for the next sync, so latencies under churn include that wait.`,
    '- **full sync (metric)**: the proxy\'s own `kubeproxy_sync_full_proxy_rules_duration_seconds` for its first sync (kube-proxy modes without that histogram: `kubeproxy_sync_proxy_rules_duration_seconds`). **full sync (outside)**: from spawning the process to the first connection answered by the last Service created (process start, list/watch, the sync, all told). IPVS modes add virtual servers one by one during a sync, so there the last Service can answer before the sync (and its metric) ends.',
    '- **endpoint change / service added**: one API write; **sync** is the sync it caused (the proxy\'s partial-sync histogram where it has one, else its sync histogram; median of the repeats); **packet** is from the API write to the first connection that reached the new endpoint (a real client pod, real echo servers answering with the address they were reached at).',
    `- **churn**: endpoint changes (one endpoint of a random Service replaced, \`endpoints.kubernetes.io/last-change-trigger-time\` set) at a steady rate for ${c.churnSeconds} s. **prog** is \`kubeproxy_network_programming_duration_seconds\` over the churn (p50/p99 interpolated within histogram buckets, as histogram_quantile does: kube-proxy's buckets are 0.25 s, 0.5 s, 1 s, then 1 s wide, so its quantiles are coarse); **packets** is write-to-answer for a sample of the changes (at most a few probed at once). CPU is the proxy process's own plus its finished children (iptables-restore, ipset, ...), from /proc/PID/stat.`,
    `- **first packet**: \`connect()\` time (SYN to SYN-ACK through the node's rules) from a client pod to random ClusterIPs and NodePorts, ${c.connections} connections, one at a time.`,
    `- **RSS settled**: VmRSS ${c.settleSeconds} s after the first sync; peak: VmHWM at the end of the run.`,
    `- **did not finish in N s**: the step passed its limit (full sync ${c.fullSyncTimeoutS} s, other steps ${c.stepTimeoutS} s, all capped by the budget of ${Math.round(c.budgetS / 60)} min); the proxy was stopped and never waited for. A proxy that did not finish its full sync at one size is not run at larger sizes.`,
    '- Endpoints are a pool of ' +
      `${c.endpointPool.toLocaleString('en')} addresses on a few pod namespaces (a few local, most "remote" behind a router), so Services share endpoint addresses; proxies program one chain or real server per endpoint of each Service whatever the address, so the rule counts are those of distinct pods.`,
    '',
  );
  L.push('## Targets (ratios within this run)', '', '| target | where | verdict | figures |', '|---|---|---|---|');
  for (const t of targets) L.push(`| ${t.target} | ${t.where} | ${t.verdict === 'met' ? 'met' : t.verdict === 'missed' ? '**missed**' : t.verdict} | ${t.detail} |`);
  L.push('', '## What the figures say', '');
  L.push(...findings(res, false));
  if (res.runs.some((r) => r.emulated)) {
    L.push('', '### iptables vs IPVS in the VM (emulated: compare within the VM only)', '');
    const vmRuns = res.runs.filter((r) => r.emulated);
    const cover = proxiesOf(res, true).map((p) => {
      const rs = vmRuns.filter((r) => r.proxy === p).sort((a, b) => a.services - b.services);
      return `${p}: ${rs.map((r) => `${k(r.services)} ${r.status === 'ok' ? 'finished' : r.status === 'dnf' ? 'did not finish' : r.status}`).join(', ')}`;
    });
    L.push(`Sizes the VM ran (${(res.vmConfig?.services ?? []).map(k).join(', ')} asked): ${cover.join('; ')}. Sizes not listed were skipped (see Skipped).`);
    L.push(...findings(res, true));
  }
  L.push('', '## Charts', '');
  for (const ch of charts) L.push(`### ${ch.title}`, '', `![${ch.title}](${ch.file})`, '');
  L.push('## All figures (host)', '', summaryTable(res, false), '');
  if (res.runs.some((r) => r.emulated)) L.push('## All figures (VM, emulated)', '', summaryTable(res, true), '');
  if (res.skipped.length) L.push('## Skipped', '', ...res.skipped.map((s) => `- ${s}`), '');
  if (res.notes.length) L.push('## Notes', '', ...res.notes.map((s) => `- ${s}`), '');
  L.push('Every figure, with its note (which histogram, how many samples): `results.csv` and `results.json` next to this file.', '');
  return L.join('\n');
}
