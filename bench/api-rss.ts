// `tsx bench/api-rss.ts [options] LABEL=BIN ...`: the resident memory of `kpx run` with
// the API source, for one or more kpx builds (BIN: a checkout's bin/kpx.js) in one run.
// One test apiserver holds N Services x M endpoints (the scale run's population); each
// build runs in turn, `--rounds` times, alternating, each time in fresh network
// namespaces, with kpx's ServiceAccount token from a tokenFile as kubeadm's kube-proxy.
// VmRSS and VmHWM come from /proc/PID/status `--settle` seconds after the first sync.
// Needs root. Asserts nothing; prints the figures.
import { Command } from 'commander';
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { findApiserver, kpxServiceAccountToken, type Apiserver } from '../test/substrate/apiserver.js';
import { FaultProxy } from '../test/substrate/fault-proxy.js';
import { ensureNode } from '../test/substrate/kube-proxy.js';
import { launcherNodeFlags } from '../test/substrate/launcher.js';
import { NET, REPO, Topology } from '../test/substrate/netns.js';
import { Http2Api } from './scale/api.js';
import { endpointPool, NODE_NAME, Population } from './scale/cluster.js';

const BRIDGE_PORT = 16443;

/** A kpx checkout's launcher, and the flags node gets before it: its shebang's, then any given (V8 heap flags, say). */
interface Build {
  label: string;
  bin: string;
  nodeFlags: string[];
}

interface Sample {
  label: string;
  round: number;
  firstSyncS: number;
  rssMiB: number;
  hwmMiB: number;
}

const kib = (status: string, field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);

/** One kpx build, started in fresh namespaces; resolves with its memory after the settle time. */
async function measure(api: Apiserver, dir: string, build: Build, mode: string, round: number, settleS: number, showLog: RegExp | null): Promise<Sample> {
  const { label, bin, nodeFlags } = build;
  const topo = await Topology.create({ pods: [] });
  const forwarder = new FaultProxy(join(dir, `apiserver-${label}-${round}.sock`), api.target());
  let kpx: ResultPromise | null = null;
  try {
    await forwarder.start();
    const bridge = topo.spawn('node', process.execPath, [join(REPO, 'test/substrate/unix-bridge.mjs'), '127.0.0.1', String(BRIDGE_PORT), forwarder.socketPath]);
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error('the apiserver bridge did not start in 10 s')), 10_000);
      bridge.stdout!.on('data', (d: Buffer) => {
        if (!d.toString().includes('READY')) return;
        clearTimeout(timer);
        ok();
      });
    });
    const startedAt = Date.now();
    kpx = topo.spawn('node', process.execPath, [
      ...nodeFlags, bin, 'run', '--proxy-mode', mode, '--kubeconfig', join(dir, 'kpx.kubeconfig'), '--hostname-override', NODE_NAME, '--cluster-cidr', NET.podCIDR,
      '--metrics-bind-address', '127.0.0.1:10249', '--healthz-bind-address', '127.0.0.1:10256',
      '--iptables-min-sync-period', '1s', '--iptables-sync-period', '30s',
    ]);
    let buf = '';
    let tail = '';
    await new Promise<void>((ok, fail) => {
      const timer = setTimeout(() => fail(new Error(`${label}: no first sync in 300 s; log ends:\n${tail}`)), 300_000);
      kpx!.stderr!.on('data', (d: Buffer) => {
        tail = (tail + d.toString()).slice(-3000);
        buf += d.toString();
        const lines = buf.split('\n');
        buf = lines.pop()!;
        if (showLog) for (const l of lines.filter((x) => showLog.test(x))) console.error(`${label} round ${round}: ${l}`);
        if (!lines.some((l) => l.includes('"msg":"sync"'))) return;
        clearTimeout(timer);
        ok();
      });
      void kpx!.then((r) => fail(new Error(`${label}: kpx exited ${r.exitCode}; log ends:\n${tail}`)));
    });
    const firstSyncS = (Date.now() - startedAt) / 1000;
    await sleep(settleS * 1000);
    // `ip netns exec` execs node: the pid is kpx's
    const status = await readFile(`/proc/${kpx.pid}/status`, 'utf8');
    return { label, round, firstSyncS, rssMiB: kib(status, 'VmRSS') / 1024, hwmMiB: kib(status, 'VmHWM') / 1024 };
  } finally {
    await topo.destroy();
    await forwarder.stop();
  }
}

async function main(): Promise<void> {
  const program = new Command('tsx bench/api-rss.ts')
    .description('VmRSS of `kpx run` with the API source, for kpx builds given as LABEL=path/to/bin/kpx.js (needs root)')
    .argument('<builds...>', 'LABEL=BIN[,NODE_FLAG...] (node gets the launcher\'s shebang flags, then these), e.g. before=/tmp/kpx-main/bin/kpx.js after=bin/kpx.js semi1=bin/kpx.js,--max-semi-space-size=1')
    .option('--mode <mode>', 'proxy mode of every build', 'iptables')
    .option('--services <n>', 'Services in the apiserver', '1000')
    .option('--endpoints <n>', 'endpoints per Service', '10')
    .option('--settle <s>', 'seconds after the first sync before memory is read', '20')
    .option('--rounds <n>', 'runs of each build, alternating', '2')
    .option('--show-log <regex>', 'print the kpx log lines (up to its first sync) that match');
  program.parse(process.argv);
  const o = program.opts<{ services: string; endpoints: string; settle: string; rounds: string; mode: string; showLog?: string }>();
  const builds = program.args.map((a): Build => {
    const i = a.indexOf('=');
    if (i <= 0) throw new Error(`not LABEL=BIN[,NODE_FLAG...]: ${a}`);
    const [bin, ...extra] = a.slice(i + 1).split(',');
    const path = resolve(bin!);
    return { label: a.slice(0, i), bin: path, nodeFlags: [...launcherNodeFlags(path), ...extra] };
  });
  if (process.getuid?.() !== 0) throw new Error('needs root (network namespaces)');
  const choice = await findApiserver();
  if (!choice.ok) throw new Error(choice.reason);
  const dir = await mkdtemp(join(tmpdir(), 'kpx-api-rss-'));
  const api = await choice.start();
  try {
    const h2 = await Http2Api.connect(api.admin);
    await Population.ensureNamespace(h2);
    await ensureNode(api.admin, { name: NODE_NAME, internalIP: NET.nodeIP, podCIDR: NET.podCIDR });
    const pop = new Population(h2, endpointPool({ remotePods: 4, remoteIPsPerPod: 1000 }), Number(o.endpoints));
    const t0 = Date.now();
    await pop.growTo(Number(o.services), 32);
    console.error(`created ${o.services} services x ${o.endpoints} endpoints in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    // no trailing newline, as the kubelet writes it: kpx builds that read tokens through
    // client-node would send the newline, which node refuses in a header
    await writeFile(join(dir, 'token'), await kpxServiceAccountToken(api.admin, REPO, 86400), { mode: 0o600 });
    await writeFile(
      join(dir, 'kpx.kubeconfig'),
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'test', cluster: { server: `https://127.0.0.1:${BRIDGE_PORT}`, 'certificate-authority-data': Buffer.from(await api.caPem()).toString('base64') } }],
        users: [{ name: 'kpx', user: { tokenFile: 'token' } }],
        contexts: [{ name: 'kpx', context: { cluster: 'test', user: 'kpx' } }],
        'current-context': 'kpx',
      }),
    );
    const samples: Sample[] = [];
    for (let round = 1; round <= Number(o.rounds); round++) {
      for (const b of builds) {
        const s = await measure(api, dir, b, o.mode, round, Number(o.settle), o.showLog ? new RegExp(o.showLog) : null);
        samples.push(s);
        console.error(`${s.label} round ${round}: first sync ${s.firstSyncS.toFixed(1)} s, VmRSS ${s.rssMiB.toFixed(1)} MiB, VmHWM ${s.hwmMiB.toFixed(1)} MiB`);
      }
    }
    const node = (await execa(process.execPath, ['--version'])).stdout;
    console.log(`kpx run, API source, ${o.services} services x ${o.endpoints} endpoints, ${o.mode} mode, node ${node}; memory ${o.settle} s after the first sync`);
    console.log('build   rounds  VmRSS MiB (each)        VmHWM MiB (each)        first sync s (each)');
    for (const b of builds) {
      const mine = samples.filter((s) => s.label === b.label);
      const f = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(', ');
      console.log(`${b.label.padEnd(8)}${String(mine.length).padEnd(8)}${f(mine.map((s) => s.rssMiB)).padEnd(24)}${f(mine.map((s) => s.hwmMiB)).padEnd(24)}${f(mine.map((s) => s.firstSyncS))}`);
    }
  } finally {
    await api.destroy();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
