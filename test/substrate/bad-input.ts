// Bad input for kpx, and how to check what kpx made of it: run `kpx render` (the real CLI)
// on a manifests directory, read its log lines, and apply what it printed to a real kernel
// in a throwaway network namespace.
import { execa } from 'execa';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KPX_BIN } from './netns.js';

export interface Rendered {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly logs: Array<Record<string, unknown>>;
}

export type RenderMode = 'iptables' | 'ipvs' | 'nftables';

/** A manifest file's text, or a symbolic link to somewhere (a dangling one cannot be read). */
export type ManifestFile = string | { readonly symlinkTo: string };

/** `kpx render` on these files (name -> text), in iptables, IPVS or nftables mode. */
export async function renderFiles(files: Record<string, ManifestFile>, mode: RenderMode = 'iptables'): Promise<Rendered> {
  const dir = await mkdtemp(join(tmpdir(), 'kpx-bad-'));
  try {
    for (const [name, f] of Object.entries(files)) {
      if (typeof f === 'string') await writeFile(join(dir, name), f);
      else await symlink(f.symlinkTo, join(dir, name));
    }
    const r = await execa(process.execPath, [KPX_BIN, 'render', '--manifests', dir, '--hostname-override', 'node-a', '--proxy-mode', mode, '--log-level', 'info'], {
      reject: false,
      maxBuffer: 1 << 28,
    });
    const logs = r.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    return { exitCode: r.exitCode ?? -1, stdout: r.stdout, stderr: r.stderr, logs };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The render's output as [header, the lines under it], in order ("# ..." lines are headers). */
export function sections(stdout: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  let head = '';
  let lines: string[] = [];
  for (const line of stdout.split('\n')) {
    if (line.startsWith('# ')) {
      if (head) out.push([head, `${lines.join('\n')}\n`]);
      head = line;
      lines = [];
    } else lines.push(line);
  }
  if (head) out.push([head, `${lines.join('\n')}\n`]);
  return out;
}

/**
 * Applies a render (every family) to a fresh network namespace, for real (iptables
 * restore and ipset restore; nftables: checked with `nft -c -f`, the kernel validates the
 * whole transaction without committing it); the kernel's complaint, if any. The namespace
 * is deleted afterwards.
 */
export async function kernelAccepts(stdout: string, mode: RenderMode): Promise<string | null> {
  const ns = `kpxt-${process.pid}-${Math.floor(Math.random() * 1e9)}-bad`;
  await execa('ip', ['netns', 'add', ns]);
  try {
    for (const [head, text] of sections(stdout)) {
      const restore = /# kpx IPv(4|6) .*?: (ip6?tables-\w+-restore)/.exec(head)?.[2];
      const ipsetBefore = head.startsWith('# ipset restore (before');
      const ipsetAfter = head.startsWith('# ipset restore (after');
      const iptables = mode === 'ipvs' ? /^# (ip6?tables-\w+-restore)/.exec(head)?.[1] : restore;
      const nft = mode === 'nftables' && /^# kpx IPv(4|6) nftables mode: nft -f -/.test(head);
      const cmd = nft ? ['nft', '-c', '-f', '-'] : iptables ? [iptables, '-w', '5', '--noflush'] : ipsetBefore || ipsetAfter ? ['ipset', 'restore'] : null;
      if (!cmd || !text.trim()) continue;
      const r = await execa('ip', ['netns', 'exec', ns, ...cmd], { input: text, reject: false });
      if (r.exitCode !== 0) return `${cmd[0]}: ${r.stderr.trim()}`;
    }
    return null;
  } finally {
    // ipsets belong to the namespace; deleting it frees them
    await execa('ip', ['netns', 'del', ns], { reject: false });
  }
}

/** What a stack trace looks like in stderr. */
export const STACK_TRACE = /^\s+at .+\(.+:\d+:\d+\)$|^\s+at .+:\d+:\d+$/m;
