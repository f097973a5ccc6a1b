// Charts of a scale run: vega-lite specs compiled and rendered to SVG in Node (no browser,
// no canvas: vega's headless SVG renderer). One line per proxy; VM figures get their own
// charts, titled as emulated.
import * as vega from 'vega';
import * as vl from 'vega-lite';
import type { ScaleResults } from './types.js';

interface Point {
  proxy: string;
  services: number;
  value: number;
  finished: string;
  series?: string;
  rate?: number;
}

export interface Chart {
  file: string;
  title: string;
  spec: Record<string, unknown>;
}

const FINISHED = 'measured';
/** solid, dashed */
const SERIES = ['proxy metric (histogram, interpolated)', 'packets (write to new endpoint answering)'];
const DNF = 'did not finish (drawn at its limit)';

function points(res: ScaleResults, key: string, emulated: boolean, scale = 1): Point[] {
  const out: Point[] = [];
  for (const r of res.runs) {
    if (r.emulated !== emulated) continue;
    const f = r.figures[key];
    if (!f) continue;
    if (f.status === 'ok' && f.value !== null) out.push({ proxy: r.proxy, services: r.services, value: f.value * scale, finished: FINISHED });
    else if (f.status === 'dnf' && f.limit) out.push({ proxy: r.proxy, services: r.services, value: f.limit * scale, finished: DNF });
  }
  return out;
}

const color = { field: 'proxy', type: 'nominal', title: 'proxy', scale: { scheme: 'category10' }, legend: { labelLimit: 400 } };

function lineChart(o: { title: string; subtitle: string | string[]; data: Point[]; y: string; logY?: boolean; logX?: boolean; x?: { field: string; title: string }; facet?: Record<string, unknown> }): Record<string, unknown> {
  const x = o.x ?? { field: 'services', title: 'services (log scale)' };
  const xScale = o.logX === false ? { zero: false } : { type: 'log' };
  const layers = {
    layer: [
      {
        mark: { type: 'line', point: false },
        transform: [{ filter: `datum.finished === '${FINISHED}'` }],
        encoding: { x: { field: x.field, type: 'quantitative', title: x.title, scale: xScale }, y: { field: 'value', type: 'quantitative', title: o.y, scale: o.logY ? { type: 'log' } : { zero: true } }, color, ...(o.data.some((d) => d.series) ? { strokeDash: { field: 'series', type: 'nominal', title: 'measured by', legend: { labelLimit: 400 }, scale: { domain: SERIES, range: [[1, 0], [6, 4]] } } } : {}) },
      },
      {
        mark: { type: 'point', filled: true, size: 60 },
        encoding: {
          x: { field: x.field, type: 'quantitative', scale: xScale },
          y: { field: 'value', type: 'quantitative', scale: o.logY ? { type: 'log' } : { zero: true } },
          color,
          shape: { field: 'finished', type: 'nominal', title: '', scale: { domain: [FINISHED, DNF], range: ['circle', 'triangle-up'] }, legend: { labelLimit: 400 } },
          tooltip: [{ field: 'proxy' }, { field: 'services' }, { field: 'value' }],
        },
      },
    ],
  };
  const base = { $schema: 'https://vega.github.io/schema/vega-lite/v5.json', title: { text: o.title, subtitle: o.subtitle }, data: { values: o.data }, config: { font: 'sans-serif', background: 'white' } };
  if (o.facet) return { ...base, facet: o.facet, spec: { width: 300, height: 240, ...layers }, resolve: { scale: { y: 'shared' } } };
  return { ...base, width: 520, height: 320, ...layers };
}

/** The chart specs of a run (empty data: the chart is left out). */
export function chartSpecs(res: ScaleResults): Chart[] {
  const charts: Chart[] = [];
  const where = [false, ...(res.runs.some((r) => r.emulated) ? [true] : [])];
  for (const emulated of where) {
    const cfg = emulated ? res.vmConfig ?? res.config : res.config;
    const suffix = emulated ? '-vm' : '';
    const tag = emulated ? ' [qemu VM, software emulation: compare within this chart only]' : '';
    const e = `${cfg.endpoints} endpoints per service`;
    const add = (file: string, title: string, spec: Record<string, unknown>, data: unknown[]) => {
      if (data.length) charts.push({ file: `${file}${suffix}.svg`, title: `${title}${emulated ? ' (VM, emulated)' : ''}`, spec });
    };
    const full = points(res, 'fullSync.metric', emulated);
    add('full-sync', 'Full sync vs services', lineChart({ title: `First full sync after start${tag}`, subtitle: `proxy's own full-sync histogram; ${e}; lower is better; triangles: did not finish within the limit`, data: full, y: 'seconds (log scale)', logY: true }), full);
    const partial = points(res, 'endpointChange.sync', emulated);
    add('partial-sync', 'Partial sync vs services', lineChart({ title: `Sync caused by one endpoint change${tag}`, subtitle: `proxy's own sync histogram, median of repeats; ${e}; lower is better`, data: partial, y: 'seconds (log scale)', logY: true }), partial);
    const prog: Point[] = [];
    for (const r of res.runs) {
      if (r.emulated !== emulated) continue;
      for (const rate of cfg.churnRates) {
        for (const [key, series] of [['prog.p99', SERIES[0]!], ['packet.p99', SERIES[1]!]] as const) {
          const f = r.figures[`churn.${rate}.${key}`];
          if (f?.status === 'ok' && f.value !== null) prog.push({ proxy: r.proxy, services: r.services, rate, value: f.value, finished: FINISHED, series });
        }
      }
    }
    add(
      'netprog-p99',
      'Network programming p99 vs churn rate',
      lineChart({
        title: `Network programming latency p99 under endpoint churn${tag}`,
        subtitle: [
          'solid: kubeproxy_network_programming_duration_seconds (trigger time to rules in place),',
          '  interpolated within its bucket (kpx: doubling buckets; kube-proxy: 1 s wide above 1 s)',
          `dashed: API write to the first connection reaching the new endpoint (sampled changes)`,
          `one panel per cluster size; minSyncPeriod ${cfg.minSyncPeriod} for all; lower is better`,
        ],
        data: prog.map((p) => ({ ...p, size: `${p.services.toLocaleString('en')} services` })),
        y: 'p99, seconds',
        x: { field: 'rate', title: 'endpoint changes per second' },
        logX: false,
        facet: { column: { field: 'size', type: 'nominal', title: null, sort: { field: 'services' } } },
      }),
      prog,
    );
    const fp = [
      ...points(res, 'firstPacket.clusterIP.p50', emulated).map((p) => ({ ...p, quantile: 'p50' })),
      ...points(res, 'firstPacket.clusterIP.p99', emulated).map((p) => ({ ...p, quantile: 'p99' })),
    ];
    add(
      'first-packet',
      'First-packet latency vs services',
      lineChart({
        title: `connect() time to a random ClusterIP from a pod${tag}`,
        subtitle: `SYN to SYN-ACK through the node's rules; one panel per quantile; lower is better`,
        data: fp,
        y: 'milliseconds (log scale)',
        facet: { column: { field: 'quantile', type: 'nominal', title: null } },
        logY: true,
      }),
      fp,
    );
    const rss = points(res, 'rss.settled', emulated);
    add('rss', 'RSS vs services', lineChart({ title: `Proxy memory after settling${tag}`, subtitle: `VmRSS after the first sync and a quiet period, API source; ${e}; lower is better`, data: rss, y: 'MiB' }), rss);
  }
  return charts;
}

export async function renderSvg(spec: Record<string, unknown>): Promise<string> {
  const compiled = vl.compile(spec as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
