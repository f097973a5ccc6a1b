// `hack/netns-cluster down` after an `up` that died midway. `up` runs as the real command,
// is SIGKILLed at a point where it has made namespaces and started detached processes
// (the apiserver; kpx on a node; echo pods), so it cannot clean up after itself; then
// `down` must leave no namespace of the cluster, no process it started (recorded or found
// in its namespaces, or naming its state directory on its command line) and no directory.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { netnsClusterSkip } from './netns-env.js';
import { NetnsCluster } from '../substrate/cluster/netns-cluster.js';
import { alive, type ProcRecord } from '../substrate/cluster/procs.js';
import { REPO } from '../substrate/netns.js';

const skip = await netnsClusterSkip();
const HACK = join(REPO, 'hack/netns-cluster');

interface Recorded {
  namespaces: string[];
  procs: ProcRecord[];
}

/** Processes by pid and start time (field 22 of /proc/PID/stat), so a recycled pid is not mistaken for ours. */
async function startOf(pid: number): Promise<string | null> {
  const s = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
  return s ? s.slice(s.lastIndexOf(')') + 2).split(' ')[19]! : null;
}

async function netnsWithPrefix(prefix: string): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list'], { reject: false });
  return r.stdout.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n.startsWith(prefix));
}

/** Processes whose command line names this directory (the apiserver's data dir, kpx's config, ...). */
async function procsNaming(dir: string): Promise<number[]> {
  const out: number[] = [];
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    const cmd = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(dir)) out.push(Number(e));
  }
  return out;
}

describe.skipIf(!!skip)(`hack/netns-cluster down after a crashed up${skip ? ` — skipped: ${skip}` : ''}`, () => {
  const made: string[] = [];
  afterAll(async () => {
    // a safety net if an assertion failed before down ran
    for (const d of made) await NetnsCluster.downDir(d).catch(() => []);
    for (const d of made) await rm(join(d, '..'), { recursive: true, force: true });
  }, 60_000);

  const points: Array<[string, (s: Recorded) => boolean]> = [
    ['the apiserver started, nodes being built', (s) => s.procs.some((p) => p.role === 'apiserver') && s.namespaces.length >= 3],
    ['kpx started on a node', (s) => s.procs.some((p) => p.role.startsWith('kpx/'))],
    ['echo pods being added', (s) => s.procs.some((p) => p.role.startsWith('pod/'))],
  ];
  points.forEach(([point, reached], i) => {
    it(`killed when ${point}: down removes every namespace, process and file`, async () => {
      const base = await mkdtemp(join(tmpdir(), 'kpx-crash-'));
      const name = `t${process.pid}-cr${i}`;
      const dir = join(base, name);
      made.push(dir);
      const up = execa(HACK, ['--name', name, '--base-dir', base, 'up', '--nodes', '2', '--pods-per-node', '2'], { reject: false });
      let state: Recorded | null = null;
      const end = Date.now() + 120_000;
      while (Date.now() < end && up.exitCode === null) {
        const text = await readFile(join(dir, 'state.json'), 'utf8').catch(() => null);
        const s = text ? (JSON.parse(text) as Recorded) : null;
        if (s && reached(s)) {
          state = s;
          break;
        }
        await sleep(10);
      }
      up.kill('SIGKILL');
      const r = await up;
      expect(state, `up never reached "${point}" (it exited ${r.exitCode}): ${r.stderr}`).not.toBeNull();
      // up died mid-way and left things behind: namespaces, live processes, the state directory
      const prefix = `kpxc-${name}-`;
      const namespaces = await netnsWithPrefix(prefix);
      expect(namespaces.length).toBeGreaterThan(0);
      const recorded = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8')) as Recorded;
      expect(recorded.procs.some((p) => alive(p))).toBe(true);
      const inside: Array<{ pid: number; start: string | null }> = [];
      for (const ns of namespaces) {
        const pids = (await execa('ip', ['netns', 'pids', ns], { reject: false })).stdout.split('\n').filter(Boolean).map(Number);
        for (const pid of pids) inside.push({ pid, start: await startOf(pid) });
      }
      const naming = await Promise.all((await procsNaming(dir)).map(async (pid) => ({ pid, start: await startOf(pid) })));
      console.log(
        `[netns-crash] killed up when ${point}: ${namespaces.length} namespaces, ${recorded.procs.filter((p) => alive(p)).length} recorded processes alive (${recorded.procs.map((p) => p.role).join(', ')}), ${inside.length} processes inside its namespaces`,
      );

      const down = await execa(HACK, ['--name', name, '--base-dir', base, 'down'], { reject: false });
      expect(down.exitCode, down.stderr).toBe(0);
      expect(await netnsWithPrefix(prefix)).toEqual([]);
      expect(recorded.procs.filter((p) => alive(p)).map((p) => p.role)).toEqual([]);
      // still running: the same pid and start time, and not a zombie (an orphan's exit status may wait for a reaper that never comes)
      const still = (ps: Array<{ pid: number; start: string | null }>) => ps.filter((p) => p.start !== null && alive({ role: '', pid: p.pid, start: p.start, log: '' })).map((p) => p.pid);
      expect(still(inside)).toEqual([]);
      expect(still(naming)).toEqual([]);
      expect(still(await Promise.all((await procsNaming(dir)).map(async (pid) => ({ pid, start: await startOf(pid) }))))).toEqual([]);
      expect(await readdir(base)).toEqual([]);
    }, 180_000);
  });
});
