// One pino logger for the process; modules take child loggers (per service key where useful).
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level?: string; destination?: number } = {}): Logger {
  return pino(
    {
      name: 'kpx',
      level: opts.level ?? process.env.KPX_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    // Logs go to stderr so that `--dry-run` output on stdout stays clean.
    pino.destination({ fd: opts.destination ?? 2, sync: true }),
  );
}

/** A logger that drops everything, for tests and pure code. */
export const silentLogger: Logger = pino({ level: 'silent' });
