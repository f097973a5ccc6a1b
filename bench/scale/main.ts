// `npm run scale`: kpx against upstream kube-proxy, iptables vs IPVS vs nftables, at
// cluster sizes given on the command line; every proxy and size in fresh network
// namespaces, one after the other in one run, against one real apiserver. Writes
// results.json, results.csv, SVG charts and README.md (the report) to --out.
// IPVS needs a kernel that has it: on a host without, the IPVS rows run in the qemu VM of
// hack/ipvs-vm (software emulation; those figures are marked emulated).
// Needs root. Asserts nothing; prints the figures.
import { Command, Option } from 'commander';
import cliProgress from 'cli-progress';
import { execa, type ResultPromise } from 'execa';
import { cpus, totalmem } from 'node:os';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { findApiserver, type Apiserver } from '../../test/substrate/apiserver.js';
import { ensureNode, findKubeProxy } from '../../test/substrate/kube-proxy.js';
import { NET, REPO, removeStaleNamespaces } from '../../test/substrate/netns.js';
import { Http2Api } from './api.js';
import { chartSpecs, renderSvg, type Chart } from './charts.js';
import { endpointPool, NODE_NAME, Population, type PoolShape } from './cluster.js';
import { parseDuration } from './metrics.js';
import { proxyByName, PROXIES } from './proxies.js';
import { markdownReport, summaryTable, evaluateTargets, toCSV } from './report.js';
import { runOne, StepTimeout, type RunSettings } from './run.js';
import type { Environment, RunConfig, RunResult, ScaleResults } from './types.js';

const list = (s: string) => s.split(',').map((x) => x.trim()).filter(Boolean);
const numbers = (s: string) =>
  list(s).map((x) => {
    const n = Number(x.replace(/k$/i, '000'));
    if (!Number.isFinite(n) || n <= 0) throw new Error(`not a positive number: ${x}`);
    return n;
  });

/** packet probes in the VM: 1 change in 2 s, 2 in flight, rounds of 4 connections every 200 ms */
const VM_PROBE = ['--probe-rate', '0.5', '--probe-concurrency', '2', '--probe-burst', '4', '--probe-interval', '200ms'];

function cli(): Command {
  return new Command('npm run scale --')
    .description('scale test: kpx vs upstream kube-proxy, iptables vs IPVS vs nftables, against the real test apiserver (needs root)')
    .option('--services <list>', 'cluster sizes in services, comma separated (1k = 1000)', '1000,5000,10000,30000')
    .option('--endpoints <n>', 'endpoints per service', '10')
    .option('--proxies <list>', `proxies to run, in order (known: ${PROXIES.map((p) => p.name).join(', ')})`, PROXIES.map((p) => p.name).join(','))
    .option('--churn-rates <list>', 'endpoint changes per second for the churn steps', '5,50')
    .option('--churn-seconds <n>', 'duration of each churn step', '60')
    .option('--connections <n>', 'connect() samples for the first-packet figures (a third to NodePorts)', '3000')
    .option('--repeats <n>', 'repeats of the one-endpoint-change and one-service-added steps (median)', '3')
    .option('--min-sync-period <d>', 'minSyncPeriod for every proxy (kube-proxy\'s default)', '1s')
    .option('--sync-period <d>', 'syncPeriod for every proxy (kube-proxy\'s default)', '30s')
    .option('--settle-seconds <n>', 'quiet time after the first sync before RSS is read', '20')
    .option('--full-sync-timeout <d>', 'limit of the first full sync (from process start)', '600s')
    .option('--step-timeout <d>', 'limit of every other step (churn: its duration plus twice this)', '120s')
    .option('--budget <d>', 'the host part; steps are cut to what is left, runs past it are skipped (4 sizes to 30k x 5 proxies: about 90 min here)', '120m')
    .option('--out <dir>', 'where results.json, results.csv, the SVG charts and README.md go', 'docs/scale')
    .option('--remote-pods <n>', 'remote endpoint pods (each owns a routed block of addresses)', '4')
    .option('--ips-per-pod <n>', 'addresses per remote endpoint pod (at most 1022)', '1000')
    .option('--create-concurrency <n>', 'parallel API requests while creating the population', '64')
    .option('--probe-rate <n>', 'churn: changes per second probed with packets (every k-th write)', '2')
    .option('--probe-concurrency <n>', 'churn: probes in flight at most (a sampled change is skipped, and counted, when all are busy)', '8')
    .option('--probe-burst <n>', 'parallel connections per probe round (the proxy picks endpoints at random)', '8')
    .option('--probe-interval <d>', 'churn: time between probe rounds', '50ms')
    .option('--seed <n>', 'seed of the random choices (services, endpoints)', '42')
    .option('--vm-services <list>', 'sizes for the VM part (IPVS under qemu); "" = no VM part', '200,1000')
    .option('--vm-proxies <list>', 'proxies for the VM part', 'kpx-iptables,kpx-ipvs,kube-proxy-iptables,kube-proxy-ipvs')
    .option('--vm-budget <d>', 'budget of the VM part', '60m')
    .option('--vm-churn-seconds <n>', 'duration of each churn step in the VM', '20')
    .option('--vm-connections <n>', 'connect() samples in the VM', '500')
    .option('--vm-mem <size>', 'VM memory (qemu -m)', '6G')
    .option('--no-vm', 'skip the VM part')
    .option('--save-rules <dir>', 'save what each proxy programmed at each size (nft list ruleset, iptables-save, ipvsadm -Sn, ipset save) under DIR/<size>-<proxy>/')
    .option('--report-from <results.json>', 'only regenerate CSV, charts and README.md from a results file into --out')
    .option('--example <label>', 'label the report as an example (a banner at the top)')
    .addOption(new Option('--inside-vm', 'run as the VM part (set by the host run)').hideHelp());
}

interface Opts {
  services: string;
  endpoints: string;
  proxies: string;
  churnRates: string;
  churnSeconds: string;
  connections: string;
  repeats: string;
  minSyncPeriod: string;
  syncPeriod: string;
  settleSeconds: string;
  fullSyncTimeout: string;
  stepTimeout: string;
  budget: string;
  out: string;
  remotePods: string;
  ipsPerPod: string;
  createConcurrency: string;
  probeRate: string;
  probeConcurrency: string;
  probeBurst: string;
  probeInterval: string;
  seed: string;
  vmServices: string;
  vmProxies: string;
  vmBudget: string;
  vmChurnSeconds: string;
  vmConnections: string;
  vmMem: string;
  vm: boolean;
  reportFrom?: string;
  example?: string;
  insideVm?: boolean;
  saveRules?: string;
}

async function version(cmd: string, args: string[]): Promise<string> {
  const r = await execa(cmd, args, { reject: false });
  return (String(r.stdout).trim() || String(r.stderr).trim()).split('\n')[0] || `${cmd}: not found`;
}

/** `ipvsadm --version` asks the kernel (and fails without ip_vs): the package's version then. */
async function ipvsadmVersion(): Promise<string> {
  const v = await version('ipvsadm', ['--version']);
  if (/^ipvsadm v/.test(v)) return v;
  const d = await execa('dpkg-query', ['-W', '-f', '${Version}', 'ipvsadm'], { reject: false });
  return d.exitCode === 0 ? `ipvsadm ${String(d.stdout).trim()} (Debian package; ipvsadm --version needs ip_vs in the kernel)` : v;
}

async function ipvsInKernel(): Promise<boolean> {
  const ns = `kpxt-${process.pid}-ipvsprobe`;
  await execa('ip', ['netns', 'add', ns]);
  try {
    return (await execa('ip', ['netns', 'exec', ns, 'ipvsadm', '-Ln'], { reject: false })).exitCode === 0;
  } finally {
    await execa('ip', ['netns', 'del', ns], { reject: false });
  }
}

async function environment(where: 'host' | 'vm', api: Http2Api | null, kubeProxy: string): Promise<Environment> {
  const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
  const git = await execa('git', ['-C', REPO, 'rev-parse', '--short', 'HEAD'], { reject: false });
  const dirty = await execa('git', ['-C', REPO, 'status', '--porcelain', '--', 'src'], { reject: false });
  let kubernetes = 'unknown';
  if (api) kubernetes = (await api.request<{ gitVersion?: string }>('GET', '/version')).body.gitVersion ?? 'unknown';
  if (!/^v1\.\d+\.\d+/.test(kubernetes)) {
    // an unstamped build: the version its go.mod pins
    const mod = await readFile(join(REPO, 'hack/test-apiserver/go.mod'), 'utf8').catch(() => '');
    const v = /^\s*k8s\.io\/kubernetes (v\S+)/m.exec(mod)?.[1];
    if (v) kubernetes = `${v} (k8s.io/kubernetes in hack/test-apiserver/go.mod; the binary's /version says ${kubernetes})`;
  }
  return {
    where,
    machine: cpus()[0]?.model ?? 'unknown CPU',
    cpus: cpus().length,
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: (await version('uname', ['-r'])),
    node: process.version,
    iptables: await version('iptables', ['--version']),
    ipset: await version('ipset', ['--version']),
    ipvsadm: await ipvsadmVersion(),
    nft: await version('nft', ['--version']),
    kubernetes,
    kubeProxy,
    kpx: `${pkg.version} (${git.exitCode === 0 ? String(git.stdout).trim() : 'no git'}${String(dirty.stdout).trim() ? ', src/ modified' : ''})`,
    ipvsKernel: await ipvsInKernel(),
  };
}

async function writeOutputs(res: ScaleResults, out: string, example?: string): Promise<Chart[]> {
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'results.json'), `${JSON.stringify(res, null, 1)}\n`);
  await writeFile(join(out, 'results.csv'), toCSV(res));
  const charts = chartSpecs(res);
  for (const c of charts) await writeFile(join(out, c.file), await renderSvg(c.spec));
  await writeFile(join(out, 'README.md'), markdownReport(res, charts, { example }));
  return charts;
}

async function main(): Promise<void> {
  const program = cli();
  program.parse(process.argv);
  const o = program.opts<Opts>();
  const out = resolve(o.out);

  if (o.reportFrom) {
    const res = JSON.parse(await readFile(o.reportFrom, 'utf8')) as ScaleResults;
    const charts = await writeOutputs(res, out, o.example);
    console.log(`wrote ${out}/README.md, results.csv, results.json and ${charts.length} charts`);
    return;
  }
  if (process.getuid?.() !== 0) {
    console.error('scale: needs root (network namespaces, iptables/IPVS in them)');
    process.exit(2);
  }

  const sizes = numbers(o.services).sort((a, b) => a - b);
  const defs = list(o.proxies).map(proxyByName);
  const budgetMs = parseDuration(o.budget);
  const startedAt = new Date();
  const budgetEnd = startedAt.getTime() + budgetMs;
  const shape: PoolShape = { remotePods: Number(o.remotePods), remoteIPsPerPod: Number(o.ipsPerPod) };
  const settings: RunSettings = {
    endpoints: Number(o.endpoints),
    churnRates: numbers(o.churnRates),
    churnSeconds: Number(o.churnSeconds),
    connections: Number(o.connections),
    repeats: Number(o.repeats),
    minSyncPeriod: o.minSyncPeriod,
    syncPeriod: o.syncPeriod,
    settleSeconds: Number(o.settleSeconds),
    fullSyncTimeoutS: parseDuration(o.fullSyncTimeout) / 1000,
    stepTimeoutS: parseDuration(o.stepTimeout) / 1000,
    probeRate: Number(o.probeRate),
    probeConcurrency: Number(o.probeConcurrency),
    probeBurst: Number(o.probeBurst),
    probeIntervalMs: parseDuration(o.probeInterval),
    emulated: !!o.insideVm,
    ...(o.saveRules ? { saveRulesDir: o.saveRules } : {}),
  };
  const pool = endpointPool(shape);
  if (settings.endpoints > pool.length) throw new Error(`--endpoints ${settings.endpoints} is more than the pool of ${pool.length} addresses`);
  const config: RunConfig = {
    services: sizes,
    endpoints: settings.endpoints,
    proxies: defs.map((d) => d.name),
    churnRates: settings.churnRates,
    churnSeconds: settings.churnSeconds,
    connections: settings.connections,
    repeats: settings.repeats,
    minSyncPeriod: settings.minSyncPeriod,
    syncPeriod: settings.syncPeriod,
    settleSeconds: settings.settleSeconds,
    fullSyncTimeoutS: settings.fullSyncTimeoutS,
    stepTimeoutS: settings.stepTimeoutS,
    budgetS: budgetMs / 1000,
    endpointPool: pool.length,
  };

  // progress on stderr; plain lines when it is not a terminal
  const tty = !!process.stderr.isTTY;
  const bars = new cliProgress.MultiBar(
    { format: '{bar} {value}/{total} runs | {what} | {elapsed}', hideCursor: tty, noTTYOutput: false, clearOnComplete: false, stream: process.stderr },
    cliProgress.Presets.shades_classic,
  );
  const totalRuns = sizes.length * defs.length;
  const bar = tty ? bars.create(totalRuns, 0, { what: 'starting', elapsed: '0s' }) : null;
  const elapsed = () => `${Math.round((Date.now() - startedAt.getTime()) / 1000)}s`;
  const log = (msg: string) => (tty ? bars.log(`${msg}\n`) : console.error(`[scale ${elapsed()}] ${msg}`));
  let current = '';
  const stepLog = (name: string) => {
    if (tty) bar!.update({ what: `${current}: ${name}`, elapsed: elapsed() });
    else console.error(`[scale ${elapsed()}] ${current}: ${name}`);
  };

  const skipped: string[] = [];
  const notes: string[] = [];
  const runs: RunResult[] = [];
  const aborts = new Set<() => Promise<void>>();
  let api: Apiserver | null = null;
  let h2: Http2Api | null = null;
  let vmChild: ResultPromise | null = null;
  let vmDir: string | null = null;
  let env: Environment | null = null;
  let vmPart: ScaleResults | null = null;

  const results = (): ScaleResults => ({
    version: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    command: `npm run scale -- ${process.argv.slice(2).map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ')}`,
    environment: env!,
    ...(vmPart ? { vmEnvironment: vmPart.environment, vmConfig: vmPart.config } : {}),
    config,
    runs: [...runs, ...(vmPart?.runs ?? [])],
    skipped: [...skipped, ...(vmPart?.skipped.map((s) => `VM: ${s}`) ?? [])],
    notes: [...notes, ...(vmPart?.notes.map((s) => `VM: ${s}`) ?? [])],
  });
  const finish = async () => {
    for (const fn of [...aborts]) await fn().catch(() => {});
    aborts.clear();
    vmChild?.kill('SIGTERM');
    h2?.close();
    await api?.destroy().catch(() => {});
    api = null;
    if (vmDir) await rm(vmDir, { recursive: true, force: true });
  };
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (stopping) return;
      stopping = true;
      bars.stop();
      console.error(`\nscale: ${sig}: stopping proxies, removing namespaces and the apiserver ...`);
      void (async () => {
        await finish();
        if (env && !o.insideVm) {
          skipped.push(`the run was interrupted by ${sig}: what follows it was not run`);
          await mkdir(out, { recursive: true });
          await writeFile(join(out, 'results.json'), `${JSON.stringify(results(), null, 1)}\n`).catch(() => {});
          console.error(`scale: partial results in ${out}/results.json`);
        }
        process.exit(sig === 'SIGINT' ? 130 : 143);
      })();
    });
  }

  try {
    const stale = await removeStaleNamespaces();
    if (stale.length) log(`removed ${stale.length} namespaces left by dead runs`);

    const kp = defs.some((d) => d.needs.includes('kube-proxy-binary')) || (o.vm && !o.insideVm) ? await findKubeProxy() : ({ ok: false, reason: 'not needed' } as const);
    const choice = await findApiserver();
    if (!choice.ok) throw new Error(choice.reason);
    if (choice.kind !== 'built') notes.push(`apiserver: ${choice.kind}`);
    log(`starting the ${choice.kind} apiserver ...`);
    api = await choice.start();
    h2 = await Http2Api.connect(api.admin);
    env = await environment(o.insideVm ? 'vm' : 'host', h2, kp.ok ? kp.version : `not available: ${kp.reason}`);
    log(`${env.machine}, ${env.cpus} cores; Linux ${env.kernel}; ${env.iptables}; Kubernetes ${env.kubernetes}; IPVS in the kernel: ${env.ipvsKernel ? 'yes' : 'no'}`);

    if (o.insideVm) {
      notes.push(`qemu VM, software emulation (TCG) on the host's 2 cores: every figure here is emulated and only comparable with other VM figures`);
      notes.push(`churn packet probes reduced in the VM (rate ${o.probeRate}/s, ${o.probeConcurrency} in flight, ${o.probeBurst} connections every ${o.probeInterval}) so they take less of the emulated CPUs from the proxy`);
    }
    const usable = new Map<string, string>(); // proxy -> why not
    for (const d of defs) {
      if (d.needs.includes('ipvs') && !env.ipvsKernel) usable.set(d.name, `no IPVS in this kernel${o.insideVm ? '' : ' (IPVS is measured in the VM part)'}`);
      else if (d.needs.includes('kube-proxy-binary') && !kp.ok) usable.set(d.name, `no kube-proxy binary: ${kp.reason}`);
    }
    for (const [p, why] of usable) skipped.push(`${p} (every size): ${why}`);

    await Population.ensureNamespace(h2);
    await ensureNode(api.admin, { name: NODE_NAME, internalIP: NET.nodeIP, podCIDR: NET.podCIDR });
    const population = new Population(h2, pool, settings.endpoints, Number(o.seed));
    const gaveUp = new Map<string, string>(); // proxy -> why larger sizes are skipped
    let done = 0;

    for (let si = 0; si < sizes.length; si++) {
      const size = sizes[si]!;
      current = `${size} services`;
      const left = budgetEnd - Date.now();
      if (left < 30_000) {
        for (const s of sizes.slice(si)) skipped.push(`${s} services (every proxy): the budget of ${o.budget} ran out`);
        break;
      }
      stepLog(`creating services and slices (${population.services.length} -> ${size})`);
      const t = Date.now();
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(new StepTimeout('create', Math.round(left / 1000), true)), left);
      try {
        await population.growTo(size, Number(o.createConcurrency), undefined, ac.signal);
      } catch (err) {
        for (const s of sizes.slice(si)) skipped.push(`${s} services (every proxy): creating the population failed: ${(err as Error).message}`);
        break;
      } finally {
        clearTimeout(timer);
      }
      notes.push(`${size} services: created ${size - (si ? sizes[si - 1]! : 0)} Services and EndpointSlices through the API in ${((Date.now() - t) / 1000).toFixed(1)} s (${o.createConcurrency} in flight)`);
      log(notes.at(-1)!);

      for (const d of defs) {
        current = `${d.name} @ ${size}`;
        const why = usable.get(d.name) ? null : gaveUp.get(d.name) ?? (budgetEnd - Date.now() < 60_000 ? `the budget of ${o.budget} ran out` : null);
        if (usable.get(d.name)) {
          done++;
          bar?.update(done);
          continue;
        }
        if (why) {
          skipped.push(`${d.name} at ${size} services: ${why}`);
          done++;
          bar?.update(done);
          continue;
        }
        log(`${d.name} at ${size} services ...`);
        const r = await runOne(d, size, settings, {
          api,
          population,
          shape,
          kubeProxyBin: kp.ok ? kp.path : undefined,
          budgetEnd,
          log,
          step: stepLog,
          onAbort: (fn) => {
            aborts.add(fn);
            return () => aborts.delete(fn);
          },
        });
        runs.push(r);
        if (r.status !== 'ok') log(`${d.name} at ${size}: ${r.status}: ${r.reason}`);
        if (r.figures['fullSync.metric']?.status === 'dnf') gaveUp.set(d.name, `its full sync did not finish at ${size} services (limit ${r.figures['fullSync.metric'].limit} s)`);
        if (r.status === 'failed') gaveUp.set(d.name, `it failed at ${size} services: ${(r.reason ?? '').split('\n')[0]}`);
        done++;
        bar?.update(done, { what: `${d.name} @ ${size}: ${r.status} in ${Math.round(r.seconds ?? 0)} s` });
      }
    }
    bar?.update(totalRuns, { what: 'host part done' });
    h2.close();
    await api.destroy();
    api = null;

    // ---- the VM part: IPVS (and iptables, for the comparison) under qemu ----
    const vmSizes = o.vmServices ? numbers(o.vmServices) : [];
    if (!o.insideVm && o.vm && vmSizes.length) {
      bars.stop();
      vmDir = join(REPO, `.scale-vm-${process.pid}`);
      const vmBudget = parseDuration(o.vmBudget);
      // under emulation every connection costs the proxy CPU it would otherwise have: the
      // packet probes there are fewer and slower (VM_PROBE), and say so in the notes
      const pass = ['--endpoints', o.endpoints, '--churn-rates', o.churnRates, '--churn-seconds', o.vmChurnSeconds, '--connections', o.vmConnections, '--repeats', o.repeats,
        '--min-sync-period', o.minSyncPeriod, '--sync-period', o.syncPeriod, '--settle-seconds', o.settleSeconds, '--full-sync-timeout', o.fullSyncTimeout, '--step-timeout', o.stepTimeout,
        '--remote-pods', o.remotePods, '--ips-per-pod', o.ipsPerPod, '--create-concurrency', o.createConcurrency, ...VM_PROBE, '--seed', o.seed];
      const args = ['--timeout', String(Math.ceil(vmBudget / 1000) + 600), '--mem', o.vmMem, '--smp', '2'];
      if (kp.ok) args.push('-e', `KPX_KUBE_PROXY_BIN=${kp.path}`);
      args.push('--', join(REPO, 'node_modules/.bin/tsx'), join(REPO, 'bench/scale/main.ts'), '--inside-vm', '--services', o.vmServices, '--proxies', o.vmProxies, '--budget', o.vmBudget, '--out', vmDir, ...pass);
      console.error(`[scale ${elapsed()}] VM part: ${o.vmProxies} at ${o.vmServices} services (qemu, software emulation; budget ${o.vmBudget}) ...`);
      vmChild = execa(join(REPO, 'hack/ipvs-vm/run.sh'), args, { reject: false, stdout: 'inherit', stderr: 'inherit', stdin: 'ignore' });
      const r = await vmChild;
      vmChild = null;
      const text = await readFile(join(vmDir, 'results.json'), 'utf8').catch(() => null);
      if (text) {
        vmPart = JSON.parse(text) as ScaleResults;
        if (r.exitCode !== 0) skipped.push(`VM part ended with exit ${r.exitCode}; its results file is used as far as it goes`);
      } else skipped.push(`VM part: no results (hack/ipvs-vm/run.sh exited ${r.exitCode}${r.exitCode === 124 ? ': VM timeout' : ''})`);
      await rm(vmDir, { recursive: true, force: true });
      vmDir = null;
    } else if (!o.insideVm) {
      skipped.push('VM part (IPVS under qemu): not run (--no-vm or --vm-services "")');
    }
  } catch (err) {
    skipped.push(`the run stopped early: ${(err as Error).message}`);
    console.error(err);
  } finally {
    bars.stop();
    await finish();
  }
  if (!env) process.exit(1);

  const res = results();
  if (o.insideVm) {
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'results.json'), `${JSON.stringify(res, null, 1)}\n`);
    console.error(`[scale VM] results in ${out}/results.json`);
    return;
  }
  const charts = await writeOutputs(res, out, o.example);
  console.log(`\n${summaryTable(res, false)}\n`);
  if (res.runs.some((r) => r.emulated)) console.log(`VM (emulated):\n\n${summaryTable(res, true)}\n`);
  console.log('Targets:');
  for (const t of evaluateTargets(res)) console.log(`- [${t.verdict}] ${t.target} @ ${t.where}: ${t.detail}`);
  if (res.skipped.length) console.log(`\nSkipped:\n${res.skipped.map((s) => `- ${s}`).join('\n')}`);
  console.log(`\nwrote ${out}/README.md, results.json, results.csv and ${charts.length} charts`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
