// A pino logger whose lines tests can read.
import pino, { type Logger } from 'pino';
import { Writable } from 'node:stream';

export function captureLogger(level = 'debug'): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l.trim()) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { log: pino({ level }, stream), lines };
}
