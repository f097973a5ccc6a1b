// `npm run bench`: kpx's sync against its floors, measured in the same run, printed as
// tables, for the iptables mode and the nftables mode (bench/nftables.ts has that half).
// Asserts nothing. Needs root: every scale and mode runs in its own fresh network
// namespace (deleted afterwards, also on failure); nothing touches the machine's root
// namespace.
//
//   npm run bench -- [--scales=1000,10000] [--modes=iptables,nftables] [--layout=apiserver|sequential]
//
// iptables mode:
//   render        cold full render (first in the process) and warm full render (median):
//                 the ruleset a sync works from; endpoint and service chain texts are not
//                 kept but written out while a sync streams them, so
//   render+text   a warm full render plus writing out every chain's text (median): the
//                 CPU a full sync spends before iptables-restore, all told
//   full sync     kpx's first sync (render + plan + iptables-restore) into an empty table
//                 (median of 3: the first in the process, then two fresh proxiers)
//   full floor    a bare iptables-restore of exactly the payload kpx applied (median of
//                 3, alternating with the full syncs)
//   restart       a new kpx's full sync into a kernel that holds the same rules: it writes
//                 the other name set, switches, and deletes the old chains
//   one transaction  the same rules as ONE transaction per table, the way kube-proxy
//                 applies a full sync; superlinear on iptables-nft 1.8.9, so only run up
//                 to 2k services (for context)
//   partial sync  kpx's sync after one endpoint of one service changed (median of 5)
//   partial floor a bare restore of one kube-proxy-shaped service chain + 10 endpoint chains
//   kube-proxy-shaped partial   that floor plus rewriting a dispatch chain of N rules,
//                  which is what kube-proxy's partial sync does (for context)
//   canary        the periodic flush check (iptables -S KPX-CANARY in nat and filter)
//   RSS           a real `kpx run` process 2 s and 30 s after its first sync (VmRSS), and
//                 its peak (VmHWM)
import { execa } from 'execa';
import { cpus, totalmem, tmpdir } from 'node:os';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClusterState, type Change } from '../src/model/state.js';
import { IptablesProxier } from '../src/sync/iptables-mode.js';
import { IptablesRenderer } from '../src/render/iptables/ruleset.js';
import { resolveConfig } from '../src/config/config.js';
import { execRunner } from '../src/apply/exec.js';
import { silentLogger } from '../src/util/log.js';
import { podIP, syntheticCluster, type SyntheticCluster } from './synthetic.js';
import { median, ms, ratio, Recorder, timed, withNetns } from './common.js';
import { launcherArgv } from '../test/substrate/launcher.js';
import { nftablesInner, type NftablesResult } from './nftables.js';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const REPO = resolve(HERE, HERE.includes('.bench-dist') ? '../..' : '..');
const ENDPOINTS = 10;

interface Result {
  services: number;
  renderColdMs: number;
  renderWarmMs: number;
  renderTextMs: number;
  fullSyncMs: number;
  fullFloorMs: number;
  fullSyncRuns: number[];
  fullFloorRuns: number[];
  batches: number;
  oneRestoreMs: number | null;
  restartMs: number;
  payloadMB: number;
  rules: number;
  partialSyncMs: number[];
  partialFloorMs: number[];
  kubeProxyPartialMs: number[];
  canaryMs: number;
  rssMiB?: number;
  settledMiB?: number;
  peakMiB?: number;
}

async function restore(text: string): Promise<number> {
  const [r, t] = await timed(() => execa('iptables-nft-restore', ['-w', '5', '--noflush'], { input: text, reject: false }));
  if (r.exitCode !== 0) throw new Error(`iptables-restore failed: ${r.stderr}`);
  return t;
}

/** One kube-proxy-shaped service chain with its endpoint chains (the partial floor). */
function kubeProxyService(round: number, extra = ''): string {
  const lines = ['*nat', ':KUBE-SVC-BENCHMARK0000 - [0:0]'];
  for (let j = 0; j < ENDPOINTS; j++) lines.push(`:KUBE-SEP-BENCHMARK${j.toString().padStart(4, '0')} - [0:0]`);
  if (extra) lines.push(':KUBE-SERVICES-BENCH - [0:0]');
  for (let j = 0; j < ENDPOINTS; j++) {
    const sep = `KUBE-SEP-BENCHMARK${j.toString().padStart(4, '0')}`;
    const ep = `${podIP(500_000 + round * 100 + j)}:8080`;
    const stat = j < ENDPOINTS - 1 ? ` -m statistic --mode random --probability ${(1 / (ENDPOINTS - j)).toFixed(10)}` : '';
    lines.push(`-A KUBE-SVC-BENCHMARK0000 -m comment --comment "bench/svc:http -> ${ep}"${stat} -j ${sep}`);
    lines.push(`-A ${sep} -s ${ep.split(':')[0]}/32 -m comment --comment bench/svc:http -j KPX-MARK-MASQ`);
    lines.push(`-A ${sep} -p tcp -m comment --comment bench/svc:http -m tcp -j DNAT --to-destination ${ep}`);
  }
  if (extra) lines.push(extra);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** The same restore input merged into one *table...COMMIT section per table (declarations first). */
function oneTransactionPerTable(text: string): string {
  const tables = new Map<string, { decl: string[]; rules: string[] }>();
  let cur: { decl: string[]; rules: string[] } | undefined;
  for (const l of text.split('\n')) {
    if (l.startsWith('*')) {
      cur = tables.get(l) ?? { decl: [], rules: [] };
      tables.set(l, cur);
    } else if (!cur || l === 'COMMIT' || l === '' || l.startsWith('#')) continue;
    else if (l.startsWith(':')) cur.decl.push(l);
    else cur.rules.push(l);
  }
  return [...tables].map(([t, { decl, rules }]) => [t, ...decl, ...rules, 'COMMIT'].join('\n')).join('\n') + '\n';
}

async function inner(cluster: SyntheticCluster): Promise<Result> {
  const services = cluster.size;
  const state = new ClusterState('node-a', silentLogger);
  for (const c of cluster.changes()) state.apply(c);
  const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.0.0/16', iptablesBackend: 'nft', iptablesLocalhostNodeports: 'false' }, 'node-a');
  const rec = new Recorder('iptables');
  const proxier = new IptablesProxier({ config, state, runner: rec, log: silentLogger, hostFacts: () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } }) });
  await proxier.init();

  const [first, fullSyncMs] = await timed(() => proxier.sync(state.takePending()));
  const f = first.families.find((x) => x.family === 'IPv4')!;
  if (f.error) throw f.error;
  const payload = rec.inputs.join('');
  const batches = payload.split('\nCOMMIT\n').length - 1;
  const cleanup = () => execa(process.execPath, [join(REPO, 'bin/kpx.js'), 'cleanup', '--log-level', 'warn']);
  // the floor: remove kpx's rules, restore the identical payload bare
  await cleanup();
  const fullSyncs = [fullSyncMs];
  const fullFloors = [await restore(payload)];
  // restores of 10^5 rules vary by 10-20% from one run to the next here: two more rounds
  // of (a fresh kpx's first full sync, the bare restore), alternating, and medians
  for (let round = 0; round < 2; round++) {
    await cleanup();
    const again = new IptablesProxier({ config, state, runner: execRunner, log: silentLogger, hostFacts: () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } }) });
    await again.init();
    const [r, t] = await timed(() => again.sync(state.takePending()));
    if (!r.ok) throw new Error('full sync failed');
    fullSyncs.push(t);
    await cleanup();
    fullFloors.push(await restore(payload));
  }
  let oneRestoreMs: number | null = null;
  if (services <= 2000) {
    await cleanup();
    oneRestoreMs = await restore(oneTransactionPerTable(payload));
  }

  // a restart: a new process's full sync into a kernel that holds the same rules (it
  // writes the other name set, switches, and deletes the old one)
  const restarted = new IptablesProxier({ config, state, runner: execRunner, log: silentLogger, hostFacts: () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } }) });
  await restarted.init();
  const [rr, restartMs] = await timed(() => restarted.sync(state.takePending()));
  if (!rr.ok) throw new Error(`restart sync failed: ${rr.families[0]?.error?.message}`);
  const warm: number[] = [];
  const withText: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = new IptablesRenderer();
    const t = performance.now();
    r.render(state.view('IPv4'), f.config!, 'all');
    warm.push(performance.now() - t);
    let chars = 0;
    for (const table of ['filter', 'nat'] as const) for (const [n, b] of r.chains(table)) chars += n.length + b.length;
    withText.push(performance.now() - t);
    if (chars === 0) throw new Error('no rules rendered');
  }

  const partialSyncMs: number[] = [];
  for (let k = 0; k < 5; k++) {
    const i = (k * 7919) % services;
    state.apply({ kind: 'EndpointSlice', previous: cluster.slice(i), current: cluster.slice(i, 700_000 + k) } as Change);
    const [r, t] = await timed(() => restarted.sync(state.takePending()));
    const rf = r.families.find((x) => x.family === 'IPv4')!;
    if (rf.error || rf.full) throw new Error(`partial sync expected: ${rf.error?.message ?? 'it was full'}`);
    partialSyncMs.push(t);
  }
  const partialFloorMs: number[] = [];
  for (let k = 0; k < 5; k++) partialFloorMs.push(await restore(kubeProxyService(k)));

  // kube-proxy's partial sync also rewrites its KUBE-SERVICES chain (one rule per service)
  const dispatch = Array.from(
    { length: services },
    (_, i) => `-A KUBE-SERVICES-BENCH -d ${cluster.serviceIP(i)}/32 -p tcp -m comment --comment "ns/svc-${i}:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-BENCHMARK0000`,
  ).join('\n');
  await restore(kubeProxyService(9, dispatch));
  const kubeProxyPartialMs: number[] = [];
  for (let k = 0; k < 3; k++) kubeProxyPartialMs.push(await restore(kubeProxyService(k, dispatch)));

  const [, canaryMs] = await timed(() => restarted.checkCanaries());
  return {
    services,
    renderColdMs: f.renderMs,
    renderWarmMs: median(warm),
    renderTextMs: median(withText),
    fullSyncMs: median(fullSyncs),
    fullFloorMs: median(fullFloors),
    fullSyncRuns: fullSyncs,
    fullFloorRuns: fullFloors,
    batches,
    oneRestoreMs,
    restartMs,
    payloadMB: payload.length / 1048576,
    rules: f.ruleCounts.filter + f.ruleCounts.nat,
    partialSyncMs,
    partialFloorMs,
    kubeProxyPartialMs,
    canaryMs,
  };
}

/** RSS of a real `kpx run` on a manifests directory of this scale, after its first sync. */
async function measureRss(cluster: SyntheticCluster, mode: Mode): Promise<{ rssMiB: number; settledMiB: number; peakMiB: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'kpx-bench-'));
  try {
    const items = [...cluster.objects()];
    await writeFile(join(dir, 'all.json'), JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
    return await withNetns(`kpxb-${process.pid}-rss`, async () => {
      const p = execa(
        'ip',
        ['netns', 'exec', `kpxb-${process.pid}-rss`, process.execPath, ...launcherArgv(join(REPO, 'bin/kpx.js')), 'run', '--manifests', dir, '--hostname-override', 'node-a', '--metrics-bind-address', '', '--healthz-bind-address', '', '--proxy-mode', mode, ...(mode === 'iptables' ? ['--iptables-backend', 'nft'] : [])],
        { reject: false, buffer: false, env: { KPX_LOG_LEVEL: 'info' } },
      );
      await new Promise<void>((res, rej) => {
        let buf = '';
        const timer = setTimeout(() => rej(new Error('kpx did not sync in time')), 600_000);
        p.stderr?.on('data', (d: Buffer) => {
          buf += d.toString();
          if (/"msg":"sync"/.test(buf)) {
            clearTimeout(timer);
            res();
          }
        });
      });
      // VmRSS each second for 30 s: 2 s after the sync, and settled (V8 gives freed pages
      // back some seconds after a collection); VmHWM is the peak over the whole run
      const kb = async (k: string) => {
        const status = await readFile(`/proc/${p.pid}/status`, 'utf8');
        return Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) / 1024;
      };
      const samples: number[] = [];
      for (let i = 0; i < 30; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        samples.push(await kb('VmRSS'));
      }
      const peakMiB = await kb('VmHWM');
      p.kill('SIGTERM');
      await p;
      return { rssMiB: samples[1]!, settledMiB: samples.at(-1)!, peakMiB };
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function table(results: Result[]): string {
  const rows = [
    '| services x endpoints | rules | payload | render cold | render warm | render+text warm | full sync | full floor (bare restore) | full ratio | same rules as one transaction per table | restart full sync | partial sync (median) | partial floor (median) | partial ratio | kube-proxy-shaped partial | canary check | RSS 2 s / 30 s after first sync (peak) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    const ps = median(r.partialSyncMs);
    const pf = median(r.partialFloorMs);
    rows.push(
      `| ${r.services.toLocaleString('en')} x ${ENDPOINTS} | ${r.rules.toLocaleString('en')} | ${r.payloadMB.toFixed(1)} MB | ${ms(r.renderColdMs)} | ${ms(r.renderWarmMs)} | ${ms(r.renderTextMs)} | ${ms(r.fullSyncMs)} (${r.batches} transactions) | ${ms(r.fullFloorMs)} | ${ratio(r.fullSyncMs, r.fullFloorMs)} | ${r.oneRestoreMs === null ? 'not run' : ms(r.oneRestoreMs)} | ${ms(r.restartMs)} | ${ms(ps)} | ${ms(pf)} | ${ratio(ps, pf)} | ${ms(median(r.kubeProxyPartialMs))} | ${ms(r.canaryMs)} | ${r.rssMiB?.toFixed(0) ?? '-'} / ${r.settledMiB?.toFixed(0) ?? '-'} MiB (${r.peakMiB?.toFixed(0) ?? '-'} MiB) |`,
    );
  }
  return rows.join('\n');
}

type Mode = 'iptables' | 'nftables';
const MODES: readonly Mode[] = ['iptables', 'nftables'];

function nftablesTable(results: NftablesResult[]): string {
  const rows = [
    '| services x endpoints | statements | payload | render cold | full sync | full floor (bare nft -f) | full ratio | restart full sync | partial sync (median) | of it in nft -f | delete one service | RSS 2 s / 30 s after first sync (peak) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    rows.push(
      `| ${r.services.toLocaleString('en')} x ${ENDPOINTS} | ${r.statements.toLocaleString('en')} | ${r.payloadMB.toFixed(1)} MB | ${ms(r.renderColdMs)} | ${ms(r.fullSyncMs)} | ${ms(r.fullFloorMs)} | ${ratio(r.fullSyncMs, r.fullFloorMs)} | ${ms(r.restartMs)}${r.restartWrote ? ' (wrote!)' : ' (wrote nothing)'} | ${ms(median(r.partialSyncMs))} | ${ms(median(r.partialNftMs))} | ${ms(r.deleteMs)} | ${r.rssMiB?.toFixed(0) ?? '-'} / ${r.settledMiB?.toFixed(0) ?? '-'} MiB (${r.peakMiB?.toFixed(0) ?? '-'} MiB) |`,
    );
  }
  return rows.join('\n');
}

/** Runs one mode's inner bench in a child process inside a fresh namespace of its own. */
async function innerInNetns<T>(mode: Mode, n: number, layout: string): Promise<T> {
  const ns = `kpxb-${process.pid}-${mode}-${n}`;
  return withNetns(ns, async () => {
    const out = await execa('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url), `--inner-${mode}`, String(n), `--layout=${layout}`], { stderr: 'inherit' });
    return JSON.parse(out.stdout.trim().split('\n').at(-1)!) as T;
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const layout = args.find((a) => a.startsWith('--layout='))?.slice(9) ?? 'apiserver';
  if (layout !== 'apiserver' && layout !== 'sequential') throw new Error(`--layout: apiserver or sequential, not ${layout}`);
  const cluster = (n: number) => syntheticCluster(n, ENDPOINTS, { layout });
  if (args[0] === '--inner-iptables' || args[0] === '--inner-nftables') {
    const c = cluster(Number(args[1]));
    process.stdout.write(`${JSON.stringify(args[0] === '--inner-iptables' ? await inner(c) : await nftablesInner(c))}\n`);
    return;
  }
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (it creates network namespaces and runs iptables and nft in them)');
    process.exit(2);
  }
  const scales = (args.find((a) => a.startsWith('--scales='))?.slice(9) ?? '1000,10000').split(',').map(Number);
  const modes = (args.find((a) => a.startsWith('--modes='))?.slice(8) ?? MODES.join(',')).split(',') as Mode[];
  for (const m of modes) if (!MODES.includes(m)) throw new Error(`--modes: ${MODES.join(', ')}, not ${m}`);
  const results: Result[] = [];
  const nft: NftablesResult[] = [];
  // per scale, the modes one after the other: their ratios come from the same minutes
  for (const n of scales) {
    for (const mode of modes) {
      console.error(`bench: ${mode} mode, ${n} services x ${ENDPOINTS} endpoints ...`);
      if (mode === 'iptables') {
        const r = await innerInNetns<Result>(mode, n, layout);
        results.push(Object.assign(r, await measureRss(cluster(n), mode)));
      } else {
        const r = await innerInNetns<NftablesResult>(mode, n, layout);
        nft.push(Object.assign(r, await measureRss(cluster(n), mode)));
      }
    }
  }
  const iptables = (await execa('iptables', ['--version'])).stdout.trim();
  const nftVersion = (await execa('nft', ['--version'], { reject: false })).stdout.trim();
  const kernel = (await execa('uname', ['-r'])).stdout.trim();
  console.log(`\nMachine: ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Linux ${kernel}; ${iptables}; ${nftVersion}; Node ${process.version}`);
  console.log(`ClusterIPs and NodePorts: ${layout === 'apiserver' ? 'allocated as the apiserver does (random in 198.19.0.0/16 and 30000-32767)' : 'sequential'}\n`);
  if (results.length) {
    console.log('iptables mode (iptables-nft)\n');
    console.log(table(results));
    for (const r of results) {
      const pr = median(r.partialSyncMs) / median(r.partialFloorMs);
      console.log(
        `\n${r.services} services: partial <= 1.25x floor: ${pr <= 1.25 ? 'yes' : 'no'} (${pr.toFixed(2)}x); full <= 1.10x floor: ${r.fullSyncMs / r.fullFloorMs <= 1.1 ? 'yes' : 'no'}; ` +
          `render <= 300 ms: ${r.renderColdMs <= 300 ? 'yes' : 'no'} (cold ${ms(r.renderColdMs)}, warm ${ms(r.renderWarmMs)}, warm with all text ${ms(r.renderTextMs)}); RSS <= 200 MiB: ${r.settledMiB !== undefined && r.settledMiB <= 200 ? 'yes' : 'no'} (2 s after the first sync ${r.rssMiB?.toFixed(0)} MiB, 30 s after ${r.settledMiB?.toFixed(0)} MiB, peak ${r.peakMiB?.toFixed(0)} MiB)`,
      );
      console.log(`  full syncs: ${r.fullSyncRuns.map(ms).join(', ')}; full floors: ${r.fullFloorRuns.map(ms).join(', ')}`);
      console.log(`  partial syncs: ${r.partialSyncMs.map(ms).join(', ')}; partial floors: ${r.partialFloorMs.map(ms).join(', ')}`);
    }
  }
  if (nft.length) {
    console.log(`\nnftables mode (${nftVersion})\n`);
    console.log(nftablesTable(nft));
    for (const r of nft) {
      console.log(`\n${r.services} services: full syncs ${r.fullSyncRuns.map(ms).join(', ')}; floors ${r.fullFloorRuns.map(ms).join(', ')}; partial syncs ${r.partialSyncMs.map(ms).join(', ')} (in nft -f ${r.partialNftMs.map(ms).join(', ')})`);
      const ipt = results.find((x) => x.services === r.services);
      if (!ipt) continue;
      // the nftables targets that have a same-run iptables baseline
      const rss = r.settledMiB !== undefined && ipt.settledMiB !== undefined ? `${r.settledMiB.toFixed(0)} vs ${ipt.settledMiB.toFixed(0)} MiB (${ratio(r.settledMiB, ipt.settledMiB)}): ${r.settledMiB <= ipt.settledMiB ? 'yes' : 'no'}` : 'not measured';
      console.log(
        `  nftables vs iptables mode, same run: full sync ${ratio(r.fullSyncMs, ipt.fullSyncMs)}, partial sync ${ratio(median(r.partialSyncMs), median(ipt.partialSyncMs))}; RSS 30 s after the first sync no higher than the iptables mode's: ${rss}`,
      );
    }
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
