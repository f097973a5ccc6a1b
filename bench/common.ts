// What both modes' benchmarks share: timing, medians, formatting, and a runner that
// records (and times) every restore and `nft -f` input while running the real binaries.
import { execa } from 'execa';
import { execRunner, type CommandInput, type CommandRunner } from '../src/apply/exec.js';

export const median = (xs: readonly number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
export const ms = (x: number): string => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(x < 10 ? 1 : 0)} ms`);
export const ratio = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;

export async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const v = await fn();
  return [v, performance.now() - t];
}

/** A mode's payload command: iptables-restore (any backend), or `nft -f -`. */
const PAYLOAD = {
  iptables: (command: string) => command.endsWith('-restore'),
  nftables: (command: string, args: readonly string[]) => command === 'nft' && args[0] === '-f',
};

/**
 * Records one mode's payload inputs (since the last reset) and the time spent applying
 * them. Only that mode's: an iptables-mode start also runs `nft -f` (to remove nftables-
 * mode leftovers), which is no part of its payload.
 */
export class Recorder implements CommandRunner {
  inputs: string[] = [];
  applyMs = 0;

  constructor(private readonly mode: keyof typeof PAYLOAD) {}

  reset(): void {
    this.inputs = [];
    this.applyMs = 0;
  }

  async run(command: string, args: readonly string[], opts?: { input?: CommandInput; timeoutMs?: number }) {
    if (!PAYLOAD[this.mode](command, args) || opts?.input === undefined) return execRunner.run(command, args, opts);
    const t = performance.now();
    try {
      if (typeof opts.input === 'string') {
        this.inputs.push(opts.input);
        return await execRunner.run(command, args, opts);
      }
      // record a streamed input as it goes, so the sync streams as it does in production
      const chunks: string[] = [];
      const source = opts.input;
      const tee = function* () {
        for (const c of source) {
          chunks.push(c);
          yield c;
        }
      };
      const r = await execRunner.run(command, args, { ...opts, input: tee() });
      this.inputs.push(chunks.join(''));
      return r;
    } finally {
      this.applyMs += performance.now() - t;
    }
  }
}

/** Runs `fn` with a fresh network namespace of this name (deleted afterwards, also on failure). */
export async function withNetns<T>(name: string, fn: () => Promise<T>): Promise<T> {
  await execa('ip', ['netns', 'add', name]);
  try {
    await execa('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    return await fn();
  } finally {
    await execa('ip', ['netns', 'del', name], { reject: false });
  }
}
