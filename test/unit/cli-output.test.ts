// kpx's output survives a pipe: a slow reader gets every byte (a 30 MB render, compared
// with the same render written to a file), and a reader that goes away ends kpx quietly
// with the status of a process killed by SIGPIPE, and no stack trace.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { syntheticCluster } from '../../bench/synthetic.js';
import { KPX_BIN } from '../substrate/netns.js';
import { STACK_TRACE } from '../substrate/bad-input.js';

let dir: string;
const args = () => [KPX_BIN, 'render', '--manifests', dir, '--hostname-override', 'node-a', '--log-level', 'warn'];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'kpx-pipe-'));
  const cluster = syntheticCluster(10_000, 10);
  await writeFile(join(dir, 'all.json'), JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [...cluster.objects()] }));
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('kpx output through a pipe', () => {
  it('a slow reader gets exactly what a file gets', async () => {
    const file = join(dir, 'out.txt');
    const direct = await execa(process.execPath, args(), { stdout: { file }, reject: false });
    expect(direct.exitCode).toBe(0);
    const want = await readFile(file);
    expect(want.length).toBeGreaterThan(20 * 2 ** 20);

    // read through a pipe, pausing after every 64 KiB so kpx's writes queue up
    const child = spawn(process.execPath, args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    const hash = createHash('sha256');
    let got = 0;
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      hash.update(d);
      got += d.length;
      child.stdout.pause();
      setTimeout(() => child.stdout.resume(), 2);
    });
    const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
    expect(stderr).not.toMatch(STACK_TRACE);
    expect(code).toBe(0);
    expect(got).toBe(want.length);
    expect(hash.digest('hex')).toBe(createHash('sha256').update(want).digest('hex'));
  }, 180_000);

  it('a reader that goes away (head -c) ends kpx quietly with status 141', async () => {
    const child = spawn(process.execPath, args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let got = 0;
    child.stdout.on('data', (d: Buffer) => {
      got += d.length;
      if (got > 1000) child.stdout.destroy();
    });
    const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
    expect(code).toBe(141);
    expect(stderr).not.toMatch(STACK_TRACE);
    expect(stderr).not.toContain('EPIPE');
  }, 180_000);
});
