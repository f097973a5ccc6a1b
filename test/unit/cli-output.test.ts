// kpx's output survives a pipe: a slow reader gets every byte (a 30 MB render, compared
// with the same render written to a file), and a reader that goes away ends kpx quietly
// with the status of a process killed by SIGPIPE, and no stack trace. The CLI's other exits
// (--help, --version, errors) drain as well: through a 4 KiB pipe read late, their output
// arrives whole (it was cut at 4096 bytes).
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

/**
 * Runs a command with stdout and stderr on one pipe of the smallest size (4 KiB, set with
 * F_SETPIPE_SZ) that nobody reads for a while: what does not fit waits in kpx's queue, and
 * an exit that does not drain it loses it. Python does the fcntl Node has not got.
 */
const SMALL_PIPE = `
import fcntl, os, subprocess, sys, time
r, w = os.pipe()
fcntl.fcntl(w, 1031, 4096)
p = subprocess.Popen(sys.argv[1:], stdout=w, stderr=w)
os.close(w)
time.sleep(0.5)
data = b''
while True:
    chunk = os.read(r, 65536)
    if not chunk: break
    data += chunk
    time.sleep(0.005)
sys.stdout.buffer.write(data)
sys.exit(p.wait())
`;

describe('kpx --help, --version and errors through a small pipe read late', () => {
  it.each([
    ['run --help', ['run', '--help'], 0],
    ['--help', ['--help'], 0],
    ['--version', ['--version'], 0],
    ['an unknown flag', ['render', '--bogus'], 2],
    ['a configuration error', ['render', '--proxy-mode', 'kernelspace'], 2],
  ])('%s: every byte, the same exit status', async (_what, argv, status) => {
    const direct = await execa(process.execPath, [KPX_BIN, ...argv], { reject: false, all: true, stripFinalNewline: false });
    expect(direct.exitCode).toBe(status);
    const piped = await execa('python3', ['-c', SMALL_PIPE, process.execPath, KPX_BIN, ...argv], { reject: false, stripFinalNewline: false });
    expect(piped.exitCode).toBe(status);
    expect(piped.stdout.length).toBe(direct.all.length);
    expect(piped.stdout).toBe(direct.all);
  }, 60_000);

  it('the help is longer than the pipe (so a cut would show)', async () => {
    const r = await execa(process.execPath, [KPX_BIN, '--help']);
    expect(r.stdout.length).toBeGreaterThan(4096);
  });
});
