// Registers kube-proxy's flags (and kpx's own) on a commander command, from the table in
// src/config/flags.ts, grouped in --help by what they do in kpx; and normalises argv to
// pflag's spellings commander does not know.
import { Command, Option } from 'commander';
import { KPX_FLAGS, KUBE_PROXY_FLAGS, type CliFlags, type FlagSpec } from '../config/flags.js';

export const HELP_GROUPS = {
  honoured: "kube-proxy's flags, honoured:",
  action: "kube-proxy's flags that act and exit:",
  'no-effect': "kube-proxy's flags accepted without effect in kpx (one warning each when set):",
  kpx: "kpx's own flags:",
} as const;

function optionFor(spec: FlagSpec, group: string): Option {
  const names = spec.short ? `-${spec.short}, --${spec.name}` : `--${spec.name}`;
  const o = new Option(`${names} ${spec.arg}`, spec.help).helpGroup(group);
  if (spec.accumulate) o.argParser((v: string, prev: unknown) => (typeof prev === 'string' && prev !== '' ? `${prev},${v}` : v));
  return o;
}

/** `only`: register just these flags (a command that uses a few of them, e.g. kpx trace). */
export function addProxyFlags(cmd: Command, only?: ReadonlySet<string>): Command {
  const wanted = (spec: FlagSpec) => !only || only.has(spec.name);
  for (const spec of KUBE_PROXY_FLAGS as readonly FlagSpec[]) if (wanted(spec)) cmd.addOption(optionFor(spec, only ? 'proxy flags that change what a trace sees:' : HELP_GROUPS[spec.effect]));
  for (const spec of KPX_FLAGS as readonly FlagSpec[]) if (wanted(spec)) cmd.addOption(optionFor(spec, only ? 'proxy flags that change what a trace sees:' : HELP_GROUPS.kpx));
  return cmd;
}

/** pflag spellings: "--masquerade_all" is --masquerade-all, "-v=2" is -v 2. Stops at "--". */
export function normaliseArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let done = false;
  for (const a of argv) {
    if (done || a === '--') {
      done = true;
      out.push(a);
      continue;
    }
    const long = /^--([A-Za-z0-9_-]+)(=.*)?$/s.exec(a);
    if (long) out.push(`--${long[1]!.replaceAll('_', '-')}${long[2] ?? ''}`);
    else out.push(a.startsWith('-v=') ? `-v${a.slice(3)}` : a);
  }
  return out;
}

/** kube-proxy's (and kpx's) flags parsed from argv (no command name), as `kpx run` would see them. */
export function parseProxyFlags(argv: readonly string[]): CliFlags {
  const cmd = addProxyFlags(new Command('kpx').exitOverride().configureOutput({ writeErr: () => {}, writeOut: () => {} }));
  cmd.parse(normaliseArgv(argv), { from: 'user' });
  return cmd.opts<CliFlags>();
}
