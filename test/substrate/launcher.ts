// How kpx is started: `node`, the flags its launcher's shebang gives, the launcher.
// One home for that, so tests, benchmarks and the scale run start kpx as the image does.
import { readFileSync } from 'node:fs';

/** The node flags a launcher's shebang gives (`#!/usr/bin/env -S node FLAGS`). */
export function launcherNodeFlags(bin: string): string[] {
  const first = readFileSync(bin, 'utf8').split('\n', 1)[0]!;
  const m = /^#!\/usr\/bin\/env -S node(?:\s+(.*))?$/.exec(first);
  return m?.[1]?.split(/\s+/).filter(Boolean) ?? [];
}

/** node's argv for kpx started from this launcher: its shebang's flags, then the launcher. */
export function launcherArgv(bin: string): string[] {
  return [...launcherNodeFlags(bin), bin];
}
