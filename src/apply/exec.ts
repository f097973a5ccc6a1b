// Runs the binaries kpx drives. Always argv arrays (and stdin for payloads), never a shell.
import { Readable } from 'node:stream';
import { execa } from 'execa';

/** stdin: a string, or strings written one after another as they are generated */
export type CommandInput = string | Iterable<string>;

/** The whole input as one string (fakes and recorders). */
export function inputText(input: CommandInput | undefined): string {
  if (input === undefined) return '';
  return typeof input === 'string' ? input : [...input].join('');
}

export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** The parts of an apply a failure can belong to (an applier names each as it starts it). */
export type ApplyStage = 'reading the kernel' | 'plan' | 'apply';

export interface CommandRunner {
  run(command: string, args: readonly string[], opts?: { input?: CommandInput; timeoutMs?: number }): Promise<CommandResult>;
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly result: CommandResult,
    detail?: string,
  ) {
    super(`${command} ${args.join(' ')} exited ${result.exitCode}: ${detail ?? (result.stderr.trim() || result.stdout.trim())}`);
  }
}

export const execRunner: CommandRunner = {
  async run(command, args, opts = {}) {
    const r = await execa(command, [...args], {
      // a generated input streams: only the part being written exists as text
      input: typeof opts.input === 'string' || opts.input === undefined ? (opts.input ?? '') : Readable.from(opts.input, { highWaterMark: 1 }),
      reject: false,
      stripFinalNewline: false,
      timeout: opts.timeoutMs ?? 120_000,
      maxBuffer: 1024 * 1024 * 1024,
      env: { LC_ALL: 'C' },
    });
    const exitCode = r.exitCode ?? (r.failed ? 1 : 0);
    return { exitCode, stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? r.message ?? '') };
  },
};

/** Runs and throws CommandError on a non-zero exit. */
export async function mustRun(
  runner: CommandRunner,
  command: string,
  args: readonly string[],
  opts?: { input?: CommandInput; timeoutMs?: number },
): Promise<CommandResult> {
  const r = await runner.run(command, args, opts);
  if (r.exitCode !== 0) throw new CommandError(command, args, r);
  return r;
}
