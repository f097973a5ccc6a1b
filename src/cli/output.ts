// Standard output that survives a pipe. A pipe to a slow reader fills, and Node queues
// what it cannot write yet; exiting then would cut the output short. So kpx waits for the
// queue to drain before it exits, and a reader that goes away (`kpx render | head -1`)
// ends kpx quietly with the status of a process killed by SIGPIPE, as other tools do.
const SIGPIPE_STATUS = 128 + 13;

let closed = false;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') {
    closed = true;
    process.exit(SIGPIPE_STATUS);
  }
  throw err;
});

// stderr gone too (`kpx ... 2>&1 | head -1`): nothing more can be said; exit as planned
let stderrClosed = false;
process.stderr.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') stderrClosed = true;
  else throw err;
});

/** Writes to stdout (nothing once the reader is gone). */
export function out(text: string): void {
  if (!closed) process.stdout.write(text);
}

/** Resolves once everything written to stdout and stderr has left the process. */
export async function drained(): Promise<void> {
  const flush = (stream: NodeJS.WriteStream, gone: boolean) =>
    gone || stream.writableLength === 0 || stream.destroyed ? Promise.resolve() : new Promise<void>((resolve) => stream.write('', () => resolve()));
  await Promise.all([flush(process.stdout, closed), flush(process.stderr, stderrClosed)]);
}

/** Exits with `code` once stdout and stderr have drained (every exit of the CLI goes through here). */
export async function exitAfterOutput(code: number): Promise<never> {
  await drained();
  process.exit(code);
}
