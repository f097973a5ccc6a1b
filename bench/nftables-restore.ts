// The nftables mode's sync costs, printed as a table; asserts nothing. Needs root: every
// scale runs in its own fresh network namespace (deleted afterwards, also on failure).
//
//   tsc -p tsconfig.bench.json && node .bench-dist/bench/nftables-restore.js [1000,5000,10000,30000] [rules|vmap]
//
//   render      a full render of N services x 10 endpoints (every tenth a NodePort)
//   full sync   the applier's first sync into an empty namespace: the whole table in ONE
//               `nft -f` transaction (add table; delete table; add table; ...)
//   nft floor   a bare `nft -f` of exactly that transaction text into a fresh namespace
//   partial     one endpoint of one service changed: render + apply (median of 5), and the
//               part of it spent in `nft -f` (partial nft; on kernel 6.18 any transaction
//               that adds a rule makes the kernel validate every chain reachable from the
//               base chains once, so it grows with the table for kube-proxy too)
//   delete      one service deleted (element deletions: nft 1.0.6 reads every chain first)
//   restart     a new renderer and applier with the same input: reads kpx-state, writes nothing
import { execa } from 'execa';
import { ClusterState, type Change } from '../src/model/state.js';
import { NftablesRenderer } from '../src/render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../src/render/nftables/config.js';
import { NftablesApplier } from '../src/apply/nftables.js';
import { execRunner, type CommandRunner } from '../src/apply/exec.js';
import { silentLogger } from '../src/util/log.js';
import { syntheticCluster } from './synthetic.js';

const scales = (process.argv[2] ?? '1000,5000,10000,30000').split(',').map(Number);
const mode = (process.argv[3] ?? 'rules') as 'rules' | 'vmap';

const cfg: NftablesRenderConfig = {
  family: 'IPv4',
  nodeName: 'node-0',
  zone: undefined,
  nodeIPs: ['198.18.0.10'],
  localDetector: { source: '198.18.0.0/15' },
  masqueradeAll: false,
  masqueradeMark: '0x4000',
  nodePortAddresses: 'all',
  randomFully: true,
  endpointSelection: mode,
};

/** time spent in `nft -f` since the last take() */
let nftMs = 0;
const takeNft = () => {
  const v = nftMs;
  nftMs = 0;
  return v;
};
const inNs = (ns: string): CommandRunner => ({
  run: async (c, a, o) => {
    const t = performance.now();
    const r = await execRunner.run('ip', ['netns', 'exec', ns, c, ...a], o);
    if (a[0] === '-f') nftMs += performance.now() - t;
    return r;
  },
});
const ms = (t0: number) => performance.now() - t0;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(0)} ms`);

async function withNs<T>(name: string, f: (ns: string) => Promise<T>): Promise<T> {
  await execa('ip', ['netns', 'add', name]);
  try {
    return await f(name);
  } finally {
    await execa('ip', ['netns', 'del', name], { reject: false });
  }
}

async function scale(n: number): Promise<Record<string, string>> {
  const cluster = syntheticCluster(n, 10);
  const state = new ClusterState('node-0', silentLogger);
  for (const c of cluster.changes()) state.apply(c);
  const row: Record<string, string> = { services: String(n), mode };
  return withNs(`kpxt-${process.pid}-nftbench`, async (ns) => {
    const runner = inNs(ns);
    const r = new NftablesRenderer();
    let t0 = performance.now();
    const full = r.render(state.view('IPv4'), cfg, 'all');
    row.render = fmt(ms(t0));
    const applier = new NftablesApplier('IPv4', runner, silentLogger);
    t0 = performance.now();
    const rep = await applier.apply(r, full);
    row['full sync'] = fmt(ms(t0));
    row.statements = String(rep.statements);
    row.MB = (Buffer.byteLength(rep.text) / 1e6).toFixed(1);
    const text = rep.text;
    row['nft floor'] = await withNs(`kpxt-${process.pid}-nftfloor`, async (ns2) => {
      const t = performance.now();
      const res = await execa('ip', ['netns', 'exec', ns2, 'nft', '-f', '-'], { input: text, reject: false });
      if (res.exitCode !== 0) throw new Error(res.stderr);
      return fmt(ms(t));
    });
    const partial: number[] = [];
    const partialNft: number[] = [];
    for (let k = 0; k < 5; k++) {
      state.apply({ kind: 'EndpointSlice', current: cluster.slice(7, k + 1) } as Change);
      takeNft();
      t0 = performance.now();
      const p = await applier.apply(r, r.render(state.view('IPv4'), cfg, [`${cluster.name(7).namespace}/${cluster.name(7).name}`]));
      partial.push(ms(t0));
      partialNft.push(takeNft());
      if (p.slowStatements) row.note = 'partial sync deleted';
    }
    row.partial = fmt(median(partial));
    row['partial nft'] = fmt(median(partialNft));
    state.apply({ kind: 'Service', previous: cluster.service(3) } as Change);
    t0 = performance.now();
    await applier.apply(r, r.render(state.view('IPv4'), cfg, [`${cluster.name(3).namespace}/${cluster.name(3).name}`]));
    row.delete = fmt(ms(t0));
    const r2 = new NftablesRenderer();
    t0 = performance.now();
    const again = await new NftablesApplier('IPv4', runner, silentLogger).apply(r2, r2.render(state.view('IPv4'), cfg, 'all'));
    row.restart = `${fmt(ms(t0))}${again.statements ? ` (${again.statements} statements!)` : ''}`;
    return row;
  });
}

const rows: Array<Record<string, string>> = [];
for (const n of scales) {
  rows.push(await scale(n));
  console.error(JSON.stringify(rows.at(-1)));
}
const cols = Object.keys(rows[0] ?? {});
console.log(cols.join('\t'));
for (const r of rows) console.log(cols.map((c) => r[c] ?? '').join('\t'));
