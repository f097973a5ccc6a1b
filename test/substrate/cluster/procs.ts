// Long-running processes of the netns cluster (apiserver, relays, kpx, echo servers). They
// are started detached, so they outlive the command that started them, and recorded by pid
// and kernel start time: a process is only ever signalled if it is still the one we
// started (a recycled pid has another start time).
import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ProcRecord {
  /** "apiserver", "relay-root", "relay-underlay", "kpx/<node>", "pod/<namespace>/<name>" */
  role: string;
  pid: number;
  /** field 22 of /proc/<pid>/stat: clock ticks since boot when it started */
  start: string;
  log: string;
}

function procStat(pid: number): { start: string; state: string } | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) is in parentheses and may contain spaces
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: rest[0]!, start: rest[19]! };
  } catch {
    return null;
  }
}

/** A running process we did not start ourselves (found in a namespace), recorded so that alive() can follow it. */
export function procRecordOf(pid: number, role: string): ProcRecord | null {
  const st = procStat(pid);
  return st ? { role, pid, start: st.start, log: '' } : null;
}

/** Starts cmd detached with stdout and stderr appended to log. */
export function spawnDetached(role: string, cmd: string, args: string[], opts: { log: string; env?: NodeJS.ProcessEnv; cwd?: string }): ProcRecord {
  const fd = openSync(opts.log, 'a');
  try {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd], env: opts.env ?? process.env, cwd: opts.cwd });
    if (child.pid === undefined) throw new Error(`cannot start ${cmd} for ${role}`);
    child.unref();
    // the child is ours until it execs: its start time does not change with exec
    const st = procStat(child.pid);
    return { role, pid: child.pid, start: st?.start ?? '', log: opts.log };
  } finally {
    closeSync(fd);
  }
}

/** True while the recorded process runs (not exited, not a zombie, not a recycled pid). */
export function alive(p: ProcRecord): boolean {
  const st = procStat(p.pid);
  return !!st && st.start === p.start && st.state !== 'Z' && st.state !== 'X';
}

/** SIGTERM (or the given signal), then SIGKILL after graceMs; resolves once it is gone. */
export async function stopProc(p: ProcRecord, opts: { signal?: NodeJS.Signals; graceMs?: number } = {}): Promise<void> {
  if (!alive(p)) return;
  try {
    process.kill(p.pid, opts.signal ?? 'SIGTERM');
  } catch {
    return;
  }
  const end = Date.now() + (opts.graceMs ?? 5000);
  while (alive(p) && Date.now() < end) await sleep(20);
  if (alive(p)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    while (alive(p)) await sleep(20);
  }
}

/** Waits until the log contains a match (from offset on); fails early when the process dies. */
export async function waitForLog(p: ProcRecord, re: RegExp, ms: number, offset = 0): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const text = (await readFile(p.log).catch(() => Buffer.alloc(0))).subarray(offset).toString('utf8');
    const m = re.exec(text);
    if (m) return m[0];
    if (!alive(p)) throw new Error(`${p.role} exited before it was ready; last log lines:\n${text.split('\n').slice(-15).join('\n')}`);
    if (Date.now() > end) throw new Error(`${p.role} not ready after ${ms} ms (waiting for ${re}); last log lines:\n${text.split('\n').slice(-15).join('\n')}`);
    await sleep(30);
  }
}

export function logSize(file: string): number {
  try {
    return readFileSync(file).length;
  } catch {
    return 0;
  }
}
