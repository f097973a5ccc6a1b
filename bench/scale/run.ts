// One proxy at one size, in fresh namespaces, against the population already in the
// apiserver: every step has a time limit; a step past it is recorded as "did not finish"
// and the proxy is stopped (its children killed with the namespaces), never waited for.
import { readFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Apiserver } from '../../test/substrate/apiserver.js';
import { NET } from '../../test/substrate/netns.js';
import { type PoolShape, type Population, ScaleTopology, SERVICE_PORT } from './cluster.js';
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
  type Histogram,
  type Sample,
} from './metrics.js';
import { type ProxyDef, type RunningProxy, saveRules } from './proxies.js';
import type { Figure, RunResult } from './types.js';

export const M = {
  sync: 'kubeproxy_sync_proxy_rules_duration_seconds',
  full: 'kubeproxy_sync_full_proxy_rules_duration_seconds',
  partial: 'kubeproxy_sync_partial_proxy_rules_duration_seconds',
  programming: 'kubeproxy_network_programming_duration_seconds',
  last: 'kubeproxy_sync_proxy_rules_last_timestamp_seconds',
} as const;
const V4 = { ip_family: 'IPv4' };

export interface RunSettings {
  endpoints: number;
  churnRates: number[];
  churnSeconds: number;
  connections: number;
  repeats: number;
  minSyncPeriod: string;
  syncPeriod: string;
  settleSeconds: number;
  fullSyncTimeoutS: number;
  stepTimeoutS: number;
  /** churn: changes probed with packets per second (every k-th write, so the sample does not
   *  follow the sync cycle), at most probeConcurrency in flight, probeBurst connections per
   *  round, a round every probeIntervalMs */
  probeRate: number;
  probeConcurrency: number;
  probeBurst: number;
  probeIntervalMs: number;
  emulated: boolean;
  /** where to save each run's programmed rules (none when unset) */
  saveRulesDir?: string;
}

export interface RunEnv {
  api: Apiserver;
  population: Population;
  shape: PoolShape;
  kubeProxyBin?: string;
  /** epoch ms when the run's budget ends */
  budgetEnd: number;
  log: (msg: string) => void;
  step: (name: string) => void;
  /** registers a cleanup for signal handling; returns the unregister function */
  onAbort: (fn: () => Promise<void>) => () => void;
}

export class StepTimeout extends Error {
  constructor(
    readonly step: string,
    readonly limitS: number,
    readonly budget: boolean,
  ) {
    super(`${step}: did not finish in ${limitS} s${budget ? ' (the run budget ran out)' : ''}`);
  }
}

class ProxyExited extends Error {}

const ok = (value: number, unit: Figure['unit'], extra: Partial<Figure> = {}): Figure => ({ value, unit, status: 'ok', ...extra });
const dnf = (unit: Figure['unit'], limit: number, note?: string): Figure => ({ value: null, unit, status: 'dnf', limit, ...(note ? { note } : {}) });
const failed = (unit: Figure['unit'], note: string): Figure => ({ value: null, unit, status: 'failed', note });

export async function runOne(def: ProxyDef, size: number, s: RunSettings, env: RunEnv): Promise<RunResult> {
  const result: RunResult = { proxy: def.name, impl: def.impl, mode: def.mode, services: size, endpoints: s.endpoints, emulated: s.emulated, status: 'ok', figures: {} };
  const fig = (key: string, f: Figure) => (result.figures[key] = f);
  const t0 = Date.now();
  const pop = env.population;
  let topo: ScaleTopology | null = null;
  let proxy: RunningProxy | null = null;
  const added: string[] = [];
  const dir = await mkdtemp(join(tmpdir(), `kpx-scale-${def.name}-${size}-`));
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    await proxy?.stop().catch(() => {});
    await topo?.destroy().catch(() => {});
    for (const n of added) await pop.deleteService(n).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  };
  const unregister = env.onAbort(cleanup);

  /** runs fn with a time limit (capped by the budget); aborts it and throws StepTimeout when passed */
  const step = async <T>(name: string, limitS: number, fn: (signal: AbortSignal) => Promise<T>): Promise<T> => {
    env.step(name);
    const left = (env.budgetEnd - Date.now()) / 1000;
    const byBudget = left < limitS;
    const limit = Math.max(0, Math.min(limitS, left));
    const ac = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(() => {
        ac.abort();
        rej(new StepTimeout(name, limit >= 10 ? Math.round(limit) : Math.round(limit * 10) / 10, byBudget));
      }, limit * 1000);
    });
    const died = proxy
      ? proxy.exited.then((r) => {
          throw new ProxyExited(`${def.name} exited during "${name}" (${JSON.stringify(r)}); its log ends:\n${proxy!.logTail().slice(-1500)}`);
        })
      : new Promise<never>(() => {});
    try {
      return await Promise.race([fn(ac.signal), timeout, died]);
    } finally {
      clearTimeout(timer);
      ac.abort();
    }
  };
  const snap = async (): Promise<Sample[]> => parsePrometheus(await proxy!.metrics());
  const hist = (x: Sample[], name: string): Histogram | undefined => histogram(x, name, V4);
  const status = async () => parseProcStatus(await readFile(`/proc/${proxy!.pid}/status`, 'utf8'));
  const stat = async () => parseProcStat(await readFile(`/proc/${proxy!.pid}/stat`, 'utf8'));
  /** polls metrics until a sync finished at or after `afterMs` and the sync count passed `count` */
  const syncedAfter = async (afterMs: number, count: number, signal: AbortSignal): Promise<Sample[]> => {
    for (;;) {
      if (signal.aborted) throw new Error('aborted');
      const x = await snap().catch(() => null);
      if (x) {
        const last = gauge(x, M.last, V4);
        const n = hist(x, M.sync)?.count ?? 0;
        if (last !== undefined && last * 1000 >= afterMs && n > count) return x;
      }
      await sleep(100);
    }
  };
  /** the sync(s) between two snapshots: partial histogram if it moved, else all syncs */
  const syncBetween = (a: Sample[], b: Sample[]): { seconds: number; syncs: number; kind: string } | null => {
    const p = hist(b, M.partial);
    const dp = p ? histogramDelta(p, hist(a, M.partial)) : null;
    if (dp && dp.count > 0) return { seconds: dp.sum / dp.count, syncs: dp.count, kind: 'partial' };
    const all = hist(b, M.sync);
    if (!all) return null;
    const d = histogramDelta(all, hist(a, M.sync));
    if (d.count <= 0) return null;
    const f = hist(b, M.full);
    const df = f ? histogramDelta(f, hist(a, M.full)) : null;
    return { seconds: d.sum / d.count, syncs: d.count, kind: df && df.count > 0 ? 'full' : p ? 'partial' : 'sync (mode has no full/partial split)' };
  };
  const minSyncMs = parseDuration(s.minSyncPeriod);

  try {
    topo = await step('namespaces', s.stepTimeoutS, () => ScaleTopology.create(env.shape));
    const last = pop.services.at(-1)!;
    const lastProbe = topo.until({ host: last.clusterIP, port: SERVICE_PORT, burst: 1, intervalMs: 20, connectTimeoutMs: 250, deadlineMs: s.fullSyncTimeoutS * 1000 });

    // ---- full sync ----
    proxy = await step('start', s.stepTimeoutS, () =>
      def.start({ api: env.api, topo: topo!.topo, dir, kubeProxyBin: env.kubeProxyBin, syncPeriod: s.syncPeriod, minSyncPeriod: s.minSyncPeriod }),
    );
    const started = proxy.startedAt;
    let first: Sample[];
    try {
      first = await step('full sync', s.fullSyncTimeoutS - (Date.now() - started) / 1000, (signal) => syncedAfter(0, 0, signal));
    } catch (err) {
      if (!(err instanceof StepTimeout)) throw err;
      // the limit counts from the process start
      const limit = err.budget ? Math.round((Date.now() - started) / 1000) : s.fullSyncTimeoutS;
      const why = `full sync did not finish in ${limit} s after the process started${err.budget ? ' (the run budget ran out)' : ''}`;
      fig('fullSync.metric', dnf('s', limit, why));
      fig('fullSync.outside', dnf('s', limit, why));
      result.status = 'dnf';
      result.reason = why;
      topo.cancel(lastProbe.id);
      return result;
    }
    const full = hist(first, M.full);
    const any = hist(first, M.sync);
    if (full && full.count > 0) fig('fullSync.metric', ok(full.sum / full.count, 's', { note: `${M.full}${full.count > 1 ? ` (${full.count} full syncs, mean)` : ''}` }));
    else if (any && any.count > 0) fig('fullSync.metric', ok(any.sum / any.count, 's', { note: `${M.sync} (no full-sync histogram in this mode)${any.count > 1 ? `, ${any.count} syncs, mean` : ''}` }));
    else fig('fullSync.metric', failed('s', 'no sync histogram'));
    try {
      const r = await step('full sync (outside)', s.fullSyncTimeoutS - (Date.now() - started) / 1000, () => lastProbe.done);
      fig('fullSync.outside', r.ok ? ok((r.startedAt! - started) / 1000, 's', { note: `last service created (${last.name}, ${last.clusterIP}) answered` }) : failed('s', `probe: ${r.error}`));
    } catch (err) {
      if (!(err instanceof StepTimeout)) throw err;
      topo.cancel(lastProbe.id);
      fig('fullSync.outside', dnf('s', err.limitS, err.message));
    }

    // ---- settle: RSS ----
    await step('settle', s.settleSeconds + s.stepTimeoutS, () => sleep(s.settleSeconds * 1000));
    fig('rss.settled', ok((await status()).rssMiB, 'MiB', { note: `${s.settleSeconds} s after the first sync` }));

    // ---- data plane: connect() to random ClusterIPs and NodePorts ----
    await step('data plane', s.stepTimeoutS * 2, async () => {
      const withNodePort = pop.services.filter((x) => x.nodePort);
      const nNodePort = withNodePort.length ? Math.floor(s.connections / 3) : 0;
      const cluster: Array<[string, number]> = Array.from({ length: s.connections - nNodePort }, () => [pop.services[pop.randomIndex()]!.clusterIP, SERVICE_PORT]);
      const nodePort: Array<[string, number]> = Array.from({ length: nNodePort }, () => [NET.nodeIP, withNodePort[pop.randomIndex(withNodePort.length)]!.nodePort!]);
      const c = await topo!.connect(cluster);
      const note = (r: { ms: number[]; errors: Record<string, number> }) => `${r.ms.length} connections${Object.keys(r.errors).length ? `, errors ${JSON.stringify(r.errors)}` : ''}`;
      if (c.ms.length) {
        fig('firstPacket.clusterIP.p50', ok(percentile(c.ms, 50)!, 'ms', { note: note(c) }));
        fig('firstPacket.clusterIP.p99', ok(percentile(c.ms, 99)!, 'ms', { note: note(c) }));
      } else fig('firstPacket.clusterIP.p50', failed('ms', note(c)));
      if (nodePort.length) {
        const n = await topo!.connect(nodePort);
        if (n.ms.length) {
          fig('firstPacket.nodePort.p50', ok(percentile(n.ms, 50)!, 'ms', { note: note(n) }));
          fig('firstPacket.nodePort.p99', ok(percentile(n.ms, 99)!, 'ms', { note: note(n) }));
        } else fig('firstPacket.nodePort.p50', failed('ms', note(n)));
      }
    }).catch((err: unknown) => {
      if (!(err instanceof StepTimeout)) throw err;
      fig('firstPacket.clusterIP.p50', dnf('ms', err.limitS, err.message));
    });

    // ---- what it programmed ----
    await step('counts', s.stepTimeoutS, async () => {
      for (const [k, v] of Object.entries(await def.counts(topo!.topo))) fig(`counts.${k}`, ok(v, 'count'));
      if (s.saveRulesDir) await saveRules(topo!.topo, def.mode, join(s.saveRulesDir, `${size}-${def.name}`));
    }).catch((err: unknown) => {
      // a count that fails is a missing figure, not a failed run (the proxy served)
      if (!(err instanceof StepTimeout)) fig('counts.failed', failed('count', err instanceof Error ? err.message : String(err)));
      else fig('counts.iptablesRules', dnf('count', err.limitS, err.message));
    });

    // ---- one endpoint changed ----
    const changeSync: number[] = [];
    const changePacket: number[] = [];
    const kinds = new Set<string>();
    try {
      for (let r = 0; r < s.repeats; r++) {
        await step(`endpoint change ${r + 1}/${s.repeats}`, s.stepTimeoutS, async (signal) => {
          const i = pop.randomIndex();
          const svc = pop.services[i]!;
          const before = await snap();
          const tWrite = Date.now();
          const { added: ep } = await pop.changeOneEndpoint(i, new Date(tWrite));
          const probe = topo!.until({ host: svc.clusterIP, port: SERVICE_PORT, expect: [ep.ip], burst: 8, intervalMs: 20, deadlineMs: s.stepTimeoutS * 1000, signal });
          // the packet first: once the new endpoint answers, the sync that programmed it has run
          const p = await probe.done;
          const after = await syncedAfter(tWrite, hist(before, M.sync)?.count ?? 0, signal);
          if (p.ok) changePacket.push((p.startedAt! - tWrite) / 1000);
          const d = syncBetween(before, after);
          if (d) {
            changeSync.push(d.seconds);
            kinds.add(d.kind + (d.syncs > 1 ? ` (${d.syncs} syncs, mean)` : ''));
          }
        });
        await sleep(minSyncMs + 300);
      }
    } catch (err) {
      if (!(err instanceof StepTimeout)) throw err;
      fig('endpointChange.sync', dnf('s', err.limitS, err.message));
      fig('endpointChange.packet', dnf('s', err.limitS, err.message));
    }
    if (changeSync.length && !result.figures['endpointChange.sync']) fig('endpointChange.sync', ok(median(changeSync)!, 's', { samples: changeSync, note: `median of ${changeSync.length}; ${[...kinds].join(', ')}` }));
    if (changePacket.length && !result.figures['endpointChange.packet']) fig('endpointChange.packet', ok(median(changePacket)!, 's', { samples: changePacket, note: `median of ${changePacket.length}` }));

    // ---- one service added ----
    const addSync: number[] = [];
    const addPacket: number[] = [];
    const addKinds = new Set<string>();
    try {
      for (let r = 0; r < s.repeats; r++) {
        await step(`service added ${r + 1}/${s.repeats}`, s.stepTimeoutS, async (signal) => {
          const before = await snap();
          const name = `add-${def.name}-${size}-${r}`.slice(0, 63);
          added.push(name);
          const tWrite = Date.now();
          let probe: ReturnType<ScaleTopology['until']> | null = null;
          await pop.createService(name, {
            nodePort: false,
            triggerTime: new Date(tWrite),
            onAllocated: (x) => (probe = topo!.until({ host: x.clusterIP, port: SERVICE_PORT, burst: 1, intervalMs: 20, connectTimeoutMs: 250, deadlineMs: s.stepTimeoutS * 1000, signal })),
          });
          const p = await (probe as ReturnType<ScaleTopology['until']> | null)!.done;
          const after = await syncedAfter(tWrite, hist(before, M.sync)?.count ?? 0, signal);
          if (p.ok) addPacket.push((p.startedAt! - tWrite) / 1000);
          const d = syncBetween(before, after);
          if (d) {
            addSync.push(d.seconds);
            addKinds.add(d.kind + (d.syncs > 1 ? ` (${d.syncs} syncs, mean)` : ''));
          }
        });
        await sleep(minSyncMs + 300);
      }
    } catch (err) {
      if (!(err instanceof StepTimeout)) throw err;
      fig('serviceAdd.sync', dnf('s', err.limitS, err.message));
      fig('serviceAdd.packet', dnf('s', err.limitS, err.message));
    }
    if (addSync.length && !result.figures['serviceAdd.sync']) fig('serviceAdd.sync', ok(median(addSync)!, 's', { samples: addSync, note: `median of ${addSync.length}; ${[...addKinds].join(', ')}` }));
    if (addPacket.length && !result.figures['serviceAdd.packet']) fig('serviceAdd.packet', ok(median(addPacket)!, 's', { samples: addPacket, note: `median of ${addPacket.length}` }));

    // ---- churn ----
    for (const rate of s.churnRates) {
      const k = (x: string) => `churn.${rate}.${x}`;
      try {
        await step(`churn ${rate}/s`, s.churnSeconds + s.stepTimeoutS * 2, (signal) => churn(rate, signal));
      } catch (err) {
        if (!(err instanceof StepTimeout)) throw err;
        fig(k('prog.p99'), dnf('s', err.limitS, err.message));
      }
      await sleep(2000);
    }
    async function churn(rate: number, signal: AbortSignal): Promise<void> {
      const k = (x: string) => `churn.${rate}.${x}`;
      const before = await snap();
      const stat0 = await stat();
      const busy = new Set<number>();
      const probeLat: number[] = [];
      let probesActive = 0;
      let probesLost = 0;
      let probesSkipped = 0;
      const stride = Math.max(1, Math.round(rate / s.probeRate));
      let writes = 0;
      let lastWrite = 0;
      const inflight = new Set<Promise<void>>();
      const probes = new Set<Promise<void>>();
      let peakRss = 0;
      const sampler = setInterval(() => {
        void status()
          .then((x) => (peakRss = Math.max(peakRss, x.rssMiB)))
          .catch(() => {});
      }, 500);
      const period = 1000 / rate;
      const n = Math.round(rate * s.churnSeconds);
      const start = Date.now();
      try {
        for (let j = 0; j < n && !signal.aborted; j++) {
          const due = start + j * period;
          const wait = due - Date.now();
          if (wait > 0) await sleep(wait);
          if (inflight.size >= 64) continue; // the apiserver is behind: the achieved rate says so
          let i = pop.randomIndex();
          for (let tries = 0; busy.has(i) && tries < 100; tries++) i = pop.randomIndex();
          if (busy.has(i)) continue;
          busy.add(i);
          const w = (async () => {
            const tWrite = Date.now();
            try {
              const { added: ep } = await pop.changeOneEndpoint(i, new Date(tWrite));
              writes++;
              lastWrite = Math.max(lastWrite, tWrite);
              const sampled = j % stride === 0;
              if (sampled && probesActive >= s.probeConcurrency) probesSkipped++;
              if (sampled && probesActive < s.probeConcurrency) {
                probesActive++;
                const svc = pop.services[i]!;
                const pr = (async () => {
                  const p = await topo!.until({ host: svc.clusterIP, port: SERVICE_PORT, expect: [ep.ip], burst: s.probeBurst, intervalMs: s.probeIntervalMs, deadlineMs: s.stepTimeoutS * 1000, signal }).done;
                  if (p.ok) probeLat.push((p.startedAt! - tWrite) / 1000);
                  else probesLost++;
                  probesActive--;
                  busy.delete(i);
                })();
                probes.add(pr);
                void pr.finally(() => probes.delete(pr));
                return;
              }
            } catch (err) {
              env.log(`churn write failed: ${(err as Error).message}`);
            }
            busy.delete(i);
          })();
          inflight.add(w);
          void w.finally(() => inflight.delete(w));
        }
        const elapsed = (Date.now() - start) / 1000;
        await Promise.all(inflight);
        await Promise.all(probes);
        // the syncs that carry the last writes
        const after = await syncedAfter(lastWrite, 0, signal);
        const stat1 = await stat();
        fig(k('rate'), ok(writes / elapsed, 'writes/s', { note: `${writes} endpoint changes in ${elapsed.toFixed(1)} s (asked: ${rate}/s for ${s.churnSeconds} s)` }));
        const prog = hist(after, M.programming);
        const d = prog ? histogramDelta(prog, hist(before, M.programming)) : null;
        for (const q of [50, 99] as const) {
          const x = d ? histogramQuantile(q / 100, d) : undefined;
          if (x) {
            fig(
              k(`prog.p${q}`),
              ok(x.value, 's', {
                bounds: [x.lower, x.upper === Infinity ? null : x.upper],
                note: `${d!.count} observations; ${x.aboveLastBucket ? `above the last bucket (> ${x.lower} s)` : `in the bucket (${x.lower}, ${x.upper}] s, interpolated`}`,
              }),
            );
          } else fig(k(`prog.p${q}`), failed('s', prog ? 'no observations (trigger-time annotations not used?)' : `no ${M.programming}`));
        }
        if (probeLat.length) {
          const note = `${probeLat.length} probed changes (1 in ${stride} writes${probesSkipped ? `; ${probesSkipped} not probed: ${s.probeConcurrency} probes already in flight` : ''}), a round of ${s.probeBurst} connections every ${s.probeIntervalMs} ms`;
          fig(k('packet.p50'), ok(percentile(probeLat, 50)!, 's', { note }));
          fig(k('packet.p99'), ok(percentile(probeLat, 99)!, 's', { note }));
        }
        fig(k('packet.lost'), ok(probesLost, 'count', { note: `of ${probeLat.length + probesLost} probed, not seen within ${s.stepTimeoutS} s` }));
        fig(k('cpu'), ok(stat1.utime + stat1.stime - stat0.utime - stat0.stime, 'cpu-s', { note: `over ${((Date.now() - start) / 1000).toFixed(0)} s` }));
        fig(k('cpuChildren'), ok(stat1.cutime + stat1.cstime - stat0.cutime - stat0.cstime, 'cpu-s'));
        fig(k('peakRss'), ok(peakRss, 'MiB'));
      } finally {
        clearInterval(sampler);
      }
    }

    fig('rss.peak', ok((await status()).hwmMiB, 'MiB'));
    return result;
  } catch (err) {
    if (err instanceof StepTimeout) {
      result.status = 'dnf';
      result.reason = err.message;
    } else {
      result.status = 'failed';
      result.reason = (err as Error).message;
    }
    return result;
  } finally {
    result.seconds = (Date.now() - t0) / 1000;
    unregister();
    await cleanup();
  }
}
