// An in-memory iptables with the command surface kpx uses (restore --noflush, save, -S,
// --version), for unit tests of sync decisions. Restore commits each table section on its
// own, as the real tool does, and checks what the kernel checks: jumps to missing chains,
// deleting a chain still referenced, deleting a rule that is not there.
import { inputText, type CommandInput, type CommandResult, type CommandRunner } from '../../src/apply/exec.js';
import { ruleTarget } from '../../src/iptables/save.js';

type Table = Map<string, string[]>;
type Kernel = Map<string, Table>;

const BUILTIN: Record<string, string[]> = {
  filter: ['INPUT', 'FORWARD', 'OUTPUT'],
  nat: ['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING'],
  mangle: ['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING'],
};
const TARGETS = new Set(['ACCEPT', 'DROP', 'REJECT', 'RETURN', 'DNAT', 'SNAT', 'MASQUERADE', 'MARK', 'LOG']);

function newKernel(): Kernel {
  return new Map(Object.entries(BUILTIN).map(([t, chains]) => [t, new Map(chains.map((c) => [c, [] as string[]]))]));
}

export class FakeIptables implements CommandRunner {
  readonly kernels: Record<'IPv4' | 'IPv6', Kernel> = { IPv4: newKernel(), IPv6: newKernel() };
  /** every command run, for assertions */
  readonly calls: Array<{ command: string; args: readonly string[]; input?: string }> = [];
  /** make the next restore fail with this message */
  failNextRestore: string | null = null;

  async run(command: string, args: readonly string[], options: { input?: CommandInput } = {}): Promise<CommandResult> {
    // a generated input can be read once: read it here
    const opts = options.input === undefined ? {} : { input: inputText(options.input) };
    this.calls.push({ command, args, ...opts });
    const family = command.startsWith('ip6tables') ? 'IPv6' : 'IPv4';
    const ok = (stdout = ''): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
    if (args.includes('--version')) return ok('iptables v1.8.9 (nf_tables)\n');
    if (command === 'conntrack') return { exitCode: 0, stdout: '', stderr: '0 flow entries have been shown.\n' };
    if (/^ip6?tables-(nft|legacy)-save$/.test(command)) {
      const t = args.includes('-t') ? args[args.indexOf('-t') + 1] : undefined;
      return ok(this.save(family, t));
    }
    if (/^ip6?tables-(nft|legacy)-restore$/.test(command)) return this.restore(family, opts.input ?? '');
    if (/^ip6?tables-(nft|legacy)$/.test(command) && args.includes('-S')) {
      const t = args[args.indexOf('-t') + 1]!;
      const chain = args[args.indexOf('-S') + 1]!;
      return this.kernels[family].get(t)?.has(chain) ? ok() : { exitCode: 1, stdout: '', stderr: `iptables: No chain/target/match by that name.` };
    }
    return { exitCode: 127, stdout: '', stderr: `fake: unsupported ${command} ${args.join(' ')}` };
  }

  restores(): string[] {
    return this.calls.filter((c) => c.command.endsWith('-restore')).map((c) => c.input ?? '');
  }

  saves(): number {
    return this.calls.filter((c) => c.command.endsWith('-save')).length;
  }

  save(family: 'IPv4' | 'IPv6', only?: string): string {
    const out: string[] = [];
    for (const [t, chains] of this.kernels[family]) {
      if (only && t !== only) continue;
      out.push(`*${t}`);
      for (const c of chains.keys()) out.push(`:${c} ${BUILTIN[t]?.includes(c) ? 'ACCEPT' : '-'} [0:0]`);
      for (const [c, rules] of chains) for (const r of rules) out.push(`-A ${c} ${r}`);
      out.push('COMMIT');
    }
    return `${out.join('\n')}\n`;
  }

  /** Empties a table, as `iptables -t T -F; -X` (an external flush) would. */
  flush(family: 'IPv4' | 'IPv6', table: string): void {
    this.kernels[family].set(table, new Map((BUILTIN[table] ?? []).map((c) => [c, [] as string[]])));
    this.refs[family].delete(table);
  }

  /**
   * Like iptables-restore: each "*table ... COMMIT" section is one transaction, committed
   * on its own; the first section that fails stops the restore and leaves the sections
   * before it committed.
   */
  private restore(family: 'IPv4' | 'IPv6', input: string): CommandResult {
    if (this.failNextRestore) {
      const msg = this.failNextRestore;
      this.failNextRestore = null;
      return { exitCode: 2, stdout: '', stderr: `${msg}\nError occurred at line: 2\n` };
    }
    const kernel = this.kernels[family];
    const fail = (i: number, why: string): CommandResult => ({ exitCode: 2, stdout: '', stderr: `fake iptables-restore: ${why}\nError occurred at line: ${i + 1}\n` });
    let section: Section | null = null;
    const lines = input.split('\n');
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      if (line.startsWith('*')) {
        section = new Section(line.slice(1), kernel.get(line.slice(1)) ?? new Map(), this.refsOf(family, line.slice(1)));
        continue;
      }
      if (!section) return fail(i, 'no table');
      if (line === 'COMMIT') {
        const err = section.missingTarget();
        if (err) return fail(err[0], `Chain '${err[1]}' does not exist`);
        kernel.set(section.name, section.chains);
        this.refs[family].set(section.name, section.refs);
        section = null;
        continue;
      }
      const why = section.apply(i, line);
      if (why) return fail(i, why);
    }
    return { exitCode: 0, stdout: '', stderr: '' };
  }

  /** table -> chain -> rules jumping to it */
  private readonly refs: Record<'IPv4' | 'IPv6', Map<string, Map<string, number>>> = { IPv4: new Map(), IPv6: new Map() };

  private refsOf(family: 'IPv4' | 'IPv6', table: string): Map<string, number> {
    let r = this.refs[family].get(table);
    if (!r) {
      r = new Map();
      for (const rules of this.kernels[family].get(table)?.values() ?? []) for (const rule of rules) bump(r, ruleTarget(rule), 1);
      this.refs[family].set(table, r);
    }
    return r;
  }
}

function bump(refs: Map<string, number>, target: string | undefined, by: number): void {
  if (target && !TARGETS.has(target)) refs.set(target, (refs.get(target) ?? 0) + by);
}

/** One transaction: a copy of the table's chain map whose rule lists are copied on write. */
class Section {
  readonly chains: Table;
  readonly refs: Map<string, number>;
  private readonly copied = new Set<string>();
  private readonly pendingChecks: Array<[number, string]> = [];

  constructor(
    readonly name: string,
    committed: Table,
    refs: Map<string, number>,
  ) {
    this.chains = new Map(committed);
    this.refs = new Map(refs);
  }

  private setRules(chain: string, rules: string[]): void {
    for (const r of this.chains.get(chain) ?? []) bump(this.refs, ruleTarget(r), -1);
    this.chains.set(chain, rules);
    this.copied.add(chain);
  }

  private mutable(chain: string): string[] | undefined {
    const rules = this.chains.get(chain);
    if (!rules || this.copied.has(chain)) return rules;
    const own = [...rules];
    this.chains.set(chain, own);
    this.copied.add(chain);
    return own;
  }

  /** Applies one line; returns why it fails, if it does. */
  apply(i: number, line: string): string | null {
    if (line.startsWith(':')) {
      this.setRules(line.slice(1).split(' ')[0]!, []);
      return null;
    }
    const m = /^-([AIDX]) (\S+)(?: 1)?(?: (.*))?$/.exec(line);
    if (!m) return `cannot parse ${line}`;
    const [, op, chain, rest = ''] = m;
    if (op === 'X') {
      if (!this.chains.has(chain!)) return `no chain ${chain}`;
      if ((this.refs.get(chain!) ?? 0) > 0) return `chain ${chain} is still referenced`;
      this.chains.delete(chain!);
      return null;
    }
    const rules = this.mutable(chain!);
    if (!rules) return `no chain ${chain}`;
    const rule = op === 'I' ? rest.replace(/^1 /, '') : rest;
    const target = ruleTarget(rule);
    if (op === 'D') {
      const at = rules.indexOf(rule);
      if (at === -1) return `rule not found in ${chain}: ${rule}`;
      rules.splice(at, 1);
      bump(this.refs, target, -1);
      return null;
    }
    if (target) this.pendingChecks.push([i, target]);
    if (op === 'A') rules.push(rule);
    else rules.unshift(rule);
    bump(this.refs, target, 1);
    return null;
  }

  /** A jump written in this transaction to a chain that does not exist at its end. */
  missingTarget(): [number, string] | null {
    for (const [li, target] of this.pendingChecks) if (!this.chains.has(target) && !TARGETS.has(target)) return [li, target];
    return null;
  }
}
