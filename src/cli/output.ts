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

/** Writes to stdout (nothing once the reader is gone). */
export function out(text: string): void {
  if (!closed) process.stdout.write(text);
}

/** Resolves once everything written has left the process. */
export function drained(): Promise<void> {
  if (closed || process.stdout.writableLength === 0) return Promise.resolve();
  return new Promise((resolve) => process.stdout.write('', () => resolve()));
}

/** Exits with `code` once stdout has drained. */
export async function exitAfterOutput(code: number): Promise<never> {
  await drained();
  process.exit(code);
}
