// An in-memory iptables with the command surface kpx uses (restore --noflush, save, -S,
// --version), for unit tests of sync decisions. Restore is atomic and checks what the
// kernel checks: jumps to missing chains, deleting a chain still referenced, deleting a
// rule that is not there.
import { inputText, type CommandInput, type CommandResult, type CommandRunner } from '../../src/apply/exec.js';
import { ruleTarget } from '../../src/render/iptables/restore.js';

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

function clone(k: Kernel): Kernel {
  return new Map([...k].map(([t, chains]) => [t, new Map([...chains].map(([c, r]) => [c, [...r]]))]));
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
  }

  private restore(family: 'IPv4' | 'IPv6', input: string): CommandResult {
    if (this.failNextRestore) {
      const msg = this.failNextRestore;
      this.failNextRestore = null;
      return { exitCode: 2, stdout: '', stderr: `${msg}\nError occurred at line: 2\n` };
    }
    const work = clone(this.kernels[family]);
    let table: Table | null = null;
    let tableName = '';
    const lines = input.split('\n');
    const fail = (i: number, why: string): CommandResult => ({ exitCode: 2, stdout: '', stderr: `fake iptables-restore: ${why}\nError occurred at line: ${i + 1}\n` });
    const pendingChecks: Array<[number, string]> = [];
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      if (line.startsWith('*')) {
        tableName = line.slice(1);
        table = work.get(tableName) ?? new Map();
        work.set(tableName, table);
        continue;
      }
      if (!table) return fail(i, 'no table');
      if (line === 'COMMIT') {
        for (const [li, target] of pendingChecks) if (!table.has(target) && !TARGETS.has(target)) return fail(li, `Chain '${target}' does not exist`);
        pendingChecks.length = 0;
        table = null;
        continue;
      }
      if (line.startsWith(':')) {
        table.set(line.slice(1).split(' ')[0]!, []);
        continue;
      }
      const m = /^-([AIDX]) (\S+)(?: 1)?(?: (.*))?$/.exec(line);
      if (!m) return fail(i, `cannot parse ${line}`);
      const [, op, chain, rest = ''] = m;
      const rules = table.get(chain!);
      if (op === 'X') {
        if (!rules) return fail(i, `no chain ${chain}`);
        for (const [c, rs] of table) if (c !== chain && rs.some((r) => ruleTarget(r) === chain)) return fail(i, `chain ${chain} is referenced by ${c}`);
        table.delete(chain!);
        continue;
      }
      if (!rules) return fail(i, `no chain ${chain}`);
      const rule = op === 'I' ? rest.replace(/^1 /, '') : rest;
      const target = ruleTarget(rule);
      if (target) pendingChecks.push([i, target]);
      if (op === 'A') rules.push(rule);
      else if (op === 'I') rules.unshift(rule);
      else {
        const at = rules.indexOf(rule);
        if (at === -1) return fail(i, `rule not found in ${chain}: ${rule}`);
        rules.splice(at, 1);
      }
    }
    this.kernels[family] = work;
    return { exitCode: 0, stdout: '', stderr: '' };
  }
}
