// The nftables mode's half of `npm run bench`: kpx's nftables sync against its floor (a
// bare `nft -f` of the same transaction), measured in the namespace the bench process runs
// in. Asserts nothing.
//
//   full sync     kpx's first sync (render + plan + ONE `nft -f` transaction) into an empty
//                 namespace (median of 3: the first in the process, then two fresh proxiers)
//   full floor    a bare `nft -f` of exactly that transaction (median of 3, alternating)
//   restart       a new kpx's full sync into a kernel that holds the same table: it reads
//                 kpx-state's digest and writes nothing
//   partial sync  kpx's sync after one service's EndpointSlice changed (median of 5), and
//                 the part of it spent in `nft -f`. Any transaction that adds a rule with a
//                 verdict or a nat statement makes kernel 6.18 validate every chain
//                 reachable from the base chains at commit (nft_table_validate), so this
//                 grows with the table whatever writes it (kube-proxy's too)
//   delete        one service deleted (nft 1.0.6 reads every chain of the table before a
//                 deletion)
import { execa } from 'execa';
import { ClusterState, type Change } from '../src/model/state.js';
import { NftablesProxier } from '../src/sync/nftables-mode.js';
import { resolveConfig } from '../src/config/config.js';
import { silentLogger } from '../src/util/log.js';
import type { SyntheticCluster } from './synthetic.js';
import { median, Recorder, timed } from './common.js';

export interface NftablesResult {
  services: number;
  statements: number;
  payloadMB: number;
  renderColdMs: number;
  fullSyncMs: number;
  fullFloorMs: number;
  fullSyncRuns: number[];
  fullFloorRuns: number[];
  restartMs: number;
  restartWrote: boolean;
  partialSyncMs: number[];
  partialNftMs: number[];
  deleteMs: number;
  rssMiB?: number;
  settledMiB?: number;
  peakMiB?: number;
}

const HOST = () => ({ addresses: { IPv4: ['198.18.0.10'], IPv6: [] } });

async function nftFloor(text: string): Promise<number> {
  const [r, t] = await timed(() => execa('nft', ['-f', '-'], { input: text, reject: false }));
  if (r.exitCode !== 0) throw new Error(`nft -f failed: ${r.stderr.slice(0, 500)}`);
  return t;
}

const dropTable = () => execa('nft', ['delete', 'table', 'ip', 'kpx'], { reject: false });

/** Runs in a fresh network namespace (the caller's child process). */
export async function nftablesInner(cluster: SyntheticCluster): Promise<NftablesResult> {
  const services = cluster.size;
  const state = new ClusterState('node-a', silentLogger);
  for (const c of cluster.changes()) state.apply(c);
  const config = resolveConfig({ hostnameOverride: 'node-a', clusterCidr: '198.18.0.0/16', proxyMode: 'nftables' }, 'node-a');
  const proxier = async (runner: Recorder) => {
    const p = new NftablesProxier({ config, state, runner, log: silentLogger, hostFacts: HOST });
    await p.init();
    return p;
  };
  const rec = new Recorder('nftables');
  const first = await proxier(rec);
  const [r1, fullSyncMs] = await timed(() => first.sync(state.takePending()));
  const f = r1.families.find((x) => x.family === 'IPv4')!;
  if (f.error) throw f.error;
  const payload = rec.inputs.join('');
  const fullSyncs = [fullSyncMs];
  await dropTable();
  const fullFloors = [await nftFloor(payload)];
  for (let round = 0; round < 2; round++) {
    await dropTable();
    const again = await proxier(new Recorder('nftables'));
    const [r, t] = await timed(() => again.sync(state.takePending()));
    if (!r.ok) throw new Error('full sync failed');
    fullSyncs.push(t);
    await dropTable();
    fullFloors.push(await nftFloor(payload));
  }

  // the floor left the same table (its digest included): a restart writes nothing
  const restartRec = new Recorder('nftables');
  const restarted = await proxier(restartRec);
  const [rr, restartMs] = await timed(() => restarted.sync(state.takePending()));
  if (!rr.ok) throw new Error(`restart sync failed: ${rr.families[0]?.error?.message}`);
  const restartWrote = restartRec.inputs.length > 0;

  const partialSyncMs: number[] = [];
  const partialNftMs: number[] = [];
  for (let k = 0; k < 5; k++) {
    const i = (k * 7919) % services;
    state.apply({ kind: 'EndpointSlice', previous: cluster.slice(i), current: cluster.slice(i, 700_000 + k) } as Change);
    restartRec.reset();
    const [r, t] = await timed(() => restarted.sync(state.takePending()));
    const rf = r.families.find((x) => x.family === 'IPv4')!;
    if (rf.error || rf.full) throw new Error(`partial sync expected: ${rf.error?.message ?? 'it was full'}`);
    partialSyncMs.push(t);
    partialNftMs.push(restartRec.applyMs);
  }
  state.apply({ kind: 'Service', previous: cluster.service(3) } as Change);
  const [rd, deleteMs] = await timed(() => restarted.sync(state.takePending()));
  if (!rd.ok) throw new Error(`delete sync failed: ${rd.families[0]?.error?.message}`);
  await dropTable();
  return {
    services,
    statements: payload.split('\n').filter(Boolean).length,
    payloadMB: payload.length / 1048576,
    renderColdMs: f.renderMs,
    fullSyncMs: median(fullSyncs),
    fullFloorMs: median(fullFloors),
    fullSyncRuns: fullSyncs,
    fullFloorRuns: fullFloors,
    restartMs,
    restartWrote,
    partialSyncMs,
    partialNftMs,
    deleteMs,
  };
}
