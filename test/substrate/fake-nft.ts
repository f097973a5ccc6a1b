// An in-memory nft with the command surface kpx uses (`nft -f -`, `nft --check -f -`,
// `nft -j list table|chain|chains|sets|maps ...`, `nft list tables`, `nft --version`), in
// the spirit of knftables' Fake. A transaction is parsed (src/nftables/format.ts), applied
// to a copy and committed only when every statement succeeded, like the kernel. It checks
// what the kernel checks, and a little more:
// - a jump, goto or verdict to a chain that does not exist (also inside anonymous vmaps);
// - a reference to a set or map that does not exist;
// - deleting a chain that is missing, still has rules, or is still referred to (by a rule
//   or a map element); deleting a set that is missing or still referred to;
// - flushing a missing chain or set; deleting a missing element;
// - adding an element whose key is already there, even with the same value (the kernel
//   accepts that one; kpx never needs it, so the fake calls it a bug);
// - re-declaring a base chain, set or map with another type, hook, priority or flags.
import { inputText, type CommandInput, type CommandResult, type CommandRunner } from '../../src/apply/exec.js';
import {
  elementText,
  nftFamily,
  parseTransaction,
  ruleSets,
  ruleTargets,
  setDeclaration,
  verdictTarget,
  type BaseChainSpec,
  type SetSpec,
  type Statement,
} from '../../src/nftables/format.js';
import type { NftTableModel } from '../../src/nftables/rules.js';
import { tableFromText } from '../../src/trace/nftables.js';
import type { IPFamily } from '../../src/util/ip.js';

interface FakeChain {
  base?: BaseChainSpec;
  rules: string[];
}

interface FakeSet {
  spec: SetSpec;
  elements: Map<string, string | undefined>;
}

interface FakeTable {
  comment?: string;
  chains: Map<string, FakeChain>;
  sets: Map<string, FakeSet>;
}

class TxError extends Error {}

interface Tables {
  get(key: string, create: boolean): FakeTable | undefined;
  drop(key: string): void;
}

const cloneTable = (t: FakeTable): FakeTable => ({
  ...(t.comment !== undefined ? { comment: t.comment } : {}),
  chains: new Map([...t.chains].map(([n, c]) => [n, { ...(c.base ? { base: c.base } : {}), rules: [...c.rules] }])),
  sets: new Map([...t.sets].map(([n, s]) => [n, { spec: s.spec, elements: new Map(s.elements) }])),
});

const VERSION = 'nftables v1.0.6 (Lester Gooch #5)';

export class FakeNft implements CommandRunner {
  /** "family name" -> table */
  tables = new Map<string, FakeTable>();
  readonly calls: Array<{ command: string; args: readonly string[]; input?: string }> = [];
  /** make the next `nft -f` fail with this message (nothing is applied) */
  failNext: string | null = null;
  /** how `nft --version` answers (tests of the capability check) */
  version = VERSION;
  /** make `nft --check` fail with this message */
  checkFailure: string | null = null;

  async run(command: string, args: readonly string[], options: { input?: CommandInput } = {}): Promise<CommandResult> {
    const input = options.input === undefined ? undefined : inputText(options.input);
    this.calls.push({ command, args, ...(input !== undefined ? { input } : {}) });
    if (command !== 'nft') return fail(127, `fake: unsupported command ${command}`);
    const a = [...args];
    if (a[0] === '--version') return ok(`${this.version}\n`);
    if ((a[0] === '--check' || a[0] === '-c') && a[1] === '-f' && a[2] === '-') {
      if (this.checkFailure) return fail(1, `/dev/stdin:1:1-1: Error: ${this.checkFailure}\n`);
      return this.transaction(input ?? '', false);
    }
    if (a[0] === '-f' && a[1] === '-') {
      if (this.failNext) {
        const msg = this.failNext;
        this.failNext = null;
        return fail(1, `/dev/stdin:1:1-1: Error: ${msg}\n`);
      }
      return this.transaction(input ?? '', true);
    }
    const json = a[0] === '-j';
    if (json) a.shift();
    if (a[0] === 'list') return this.list(a.slice(1), json);
    return fail(1, `fake: unsupported nft ${args.join(' ')}`);
  }

  /** `nft -f` inputs, in order. */
  transactions(): string[] {
    return this.calls.filter((c) => c.command === 'nft' && c.args[0] === '-f').map((c) => c.input ?? '');
  }

  /** A stable text form of one table (or ''), for equality checks. */
  dump(family = 'ip', name = 'kpx', opts: { without?: (chain: string) => boolean } = {}): string {
    const t = this.tables.get(`${family} ${name}`);
    if (!t) return '';
    const out: string[] = [`table ${family} ${name}`];
    for (const [n, s] of [...t.sets].sort(([a], [b]) => (a < b ? -1 : 1))) {
      out.push(`${s.spec.kind} ${n} { ${setDeclaration(s.spec)} }`);
      for (const k of [...s.elements.keys()].sort()) out.push(`  ${elementText({ key: k, ...(s.elements.get(k) !== undefined ? { value: s.elements.get(k)! } : {}) })}`);
    }
    for (const [n, c] of [...t.chains].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (opts.without?.(n)) continue;
      out.push(`chain ${n}${c.base ? ` { type ${c.base.type} hook ${c.base.hook} priority ${c.base.priority} }` : ''}`);
      for (const r of c.rules) out.push(`  ${r}`);
    }
    return `${out.join('\n')}\n`;
  }

  table(family = 'ip', name = 'kpx'): FakeTable | undefined {
    return this.tables.get(`${family} ${name}`);
  }

  /** kpx's table of a family as it stands, in the tracer's form (what packets meet). */
  model(family: IPFamily): NftTableModel {
    const t = this.table(nftFamily(family));
    if (!t) throw new Error(`fake nft: no table ${nftFamily(family)} kpx`);
    const elements = [...t.sets].flatMap(([set, s]) => [...s.elements].map(([key, value]) => [set, key, value] as const));
    return tableFromText(family, [...t.chains].map(([name, c]) => ({ name, ...c })), [...t.sets.values()].map((s) => s.spec), elements);
  }

  private transaction(text: string, commit: boolean): CommandResult {
    let statements: Statement[];
    try {
      statements = parseTransaction(text);
    } catch (err) {
      return fail(1, `/dev/stdin: Error: syntax error: ${(err as Error).message}\n`);
    }
    const work = new Map(this.tables);
    const copied = new Set<string>();
    const tables: Tables = {
      get: (key, create) => {
        let t = work.get(key);
        if (!t) {
          if (!create) return undefined;
          t = { chains: new Map(), sets: new Map() };
          work.set(key, t);
          copied.add(key);
          return t;
        }
        if (!copied.has(key)) {
          t = cloneTable(t);
          work.set(key, t);
          copied.add(key);
        }
        return t;
      },
      drop: (key) => {
        work.delete(key);
        copied.delete(key);
      },
    };
    // statements are one per non-empty, non-comment line
    const lines = text.split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));
    const lineNo = text.split('\n').map((l, i) => [l, i + 1] as const).filter(([l]) => l.trim() && !l.trim().startsWith('#')).map(([, i]) => i);
    for (const [i, st] of statements.entries()) {
      try {
        this.apply(st, tables);
      } catch (err) {
        return fail(1, `/dev/stdin:${lineNo[i]}:1-1: Error: Could not process rule: ${(err as Error).message}\n${lines[i] ?? ''}\n`);
      }
    }
    if (commit) this.tables = work;
    return ok('');
  }

  private apply(st: Statement, tables: Tables): void {
    const key = `${st.family} ${st.table}`;
    if (st.obj === 'table') {
      if (st.op === 'add') {
        const t = tables.get(key, true)!;
        if (st.comment !== undefined) t.comment = st.comment;
        return;
      }
      const t = tables.get(key, false);
      if (!t) throw new TxError(`No such file or directory: table ${key}`);
      if (st.op === 'delete') tables.drop(key);
      else for (const c of t.chains.values()) c.rules = [];
      return;
    }
    const t = tables.get(key, false);
    if (!t) throw new TxError(`No such file or directory: table ${key}`);
    switch (st.obj) {
      case 'chain': {
        const c = t.chains.get(st.name);
        if (st.op === 'add') {
          if (c && st.base && JSON.stringify(c.base) !== JSON.stringify(st.base)) throw new TxError(`Operation not supported: chain ${st.name} exists with another hook`);
          const chain = c ?? { ...(st.base ? { base: st.base } : {}), rules: [] };
          t.chains.set(st.name, chain);
          for (const r of st.rules) this.addRule(t, st.name, r);
          return;
        }
        if (!c) throw new TxError(`No such file or directory: chain ${st.name}`);
        if (st.op === 'flush') {
          c.rules = [];
          return;
        }
        if (c.rules.length) throw new TxError(`Device or resource busy: chain ${st.name} has rules`);
        const user = this.chainUser(t, st.name);
        if (user) throw new TxError(`Device or resource busy: chain ${st.name} is used by ${user}`);
        t.chains.delete(st.name);
        return;
      }
      case 'rule':
        if (!t.chains.has(st.chain)) throw new TxError(`No such file or directory: chain ${st.chain}`);
        this.addRule(t, st.chain, st.rule);
        return;
      case 'set': {
        if (st.op === 'add') {
          const s = t.sets.get(st.spec.name);
          if (s && setDeclaration(s.spec) !== setDeclaration(st.spec)) throw new TxError(`File exists: ${st.spec.kind} ${st.spec.name} exists with another declaration`);
          if (s && s.spec.kind !== st.spec.kind) throw new TxError(`File exists: ${st.spec.name} is a ${s.spec.kind}`);
          const set = s ?? { spec: st.spec, elements: new Map() };
          t.sets.set(st.spec.name, set);
          for (const e of st.elements) this.addElement(t, set, e.key, e.value);
          return;
        }
        const s = t.sets.get(st.name);
        if (!s || s.spec.kind !== st.kind) throw new TxError(`No such file or directory: ${st.kind} ${st.name}`);
        if (st.op === 'flush') {
          s.elements.clear();
          return;
        }
        for (const [cn, c] of t.chains) {
          if (c.rules.some((r) => ruleSets(r).includes(st.name))) throw new TxError(`Device or resource busy: ${st.kind} ${st.name} is used by chain ${cn}`);
        }
        t.sets.delete(st.name);
        return;
      }
      case 'element': {
        const s = t.sets.get(st.name);
        if (!s) throw new TxError(`No such file or directory: set ${st.name}`);
        for (const e of st.elements) {
          if (st.op === 'add') this.addElement(t, s, e.key, e.value);
          else if (!s.elements.delete(e.key)) throw new TxError(`No such file or directory: element ${e.key} in ${st.name}`);
        }
        return;
      }
    }
  }

  private addRule(t: FakeTable, chain: string, rule: string): void {
    for (const target of ruleTargets(rule)) if (!t.chains.has(target)) throw new TxError(`No such file or directory: jump to missing chain ${target}`);
    for (const set of ruleSets(rule)) if (!t.sets.has(set)) throw new TxError(`No such file or directory: set ${set}`);
    t.chains.get(chain)!.rules.push(rule);
  }

  private addElement(t: FakeTable, s: FakeSet, key: string, value: string | undefined): void {
    if ((s.spec.kind === 'map') !== (value !== undefined)) throw new TxError(`Invalid argument: element ${key} of ${s.spec.name}`);
    if (s.elements.has(key)) throw new TxError(`File exists: element ${key} is already in ${s.spec.name}`);
    const target = verdictTarget(value);
    if (target && !t.chains.has(target)) throw new TxError(`No such file or directory: verdict to missing chain ${target}`);
    s.elements.set(key, value);
  }

  /** Who refers to a chain: "chain X" or "map M", or null. */
  private chainUser(t: FakeTable, name: string): string | null {
    for (const [cn, c] of t.chains) if (c.rules.some((r) => ruleTargets(r).includes(name))) return `chain ${cn}`;
    for (const [sn, s] of t.sets) for (const v of s.elements.values()) if (verdictTarget(v) === name) return `map ${sn}`;
    return null;
  }

  private list(args: string[], json: boolean): CommandResult {
    const [what, family, table, name] = args;
    const tables = [...this.tables].filter(([k]) => !family || k.startsWith(`${family} `));
    if (what === 'tables') {
      if (json) return ok(JSON.stringify({ nftables: [META, ...tables.map(([k]) => ({ table: tableJson(k) }))] }));
      return ok(tables.map(([k]) => `table ${k}\n`).join(''));
    }
    if (!json) return fail(1, 'fake: only JSON listings (besides tables)');
    const items: object[] = [META];
    if (what === 'table' || what === 'chain') {
      const t = this.tables.get(`${family} ${table}`);
      if (!t) return fail(1, `Error: No such file or directory\nlist ${what} ${family} ${table}\n`);
      if (what === 'table') {
        items.push({ table: tableJson(`${family} ${table}`) });
        for (const [n, s] of t.sets) items.push(setJson(family!, table!, n, s));
        for (const [n, c] of t.chains) items.push(chainJson(family!, table!, n, c));
        for (const [n, c] of t.chains) items.push(...rulesJson(family!, table!, n, c));
      } else {
        const c = t.chains.get(name ?? '');
        if (!c) return fail(1, `Error: No such file or directory\nlist chain ${family} ${table} ${name}\n`);
        items.push(chainJson(family!, table!, name!, c), ...rulesJson(family!, table!, name!, c));
      }
      return ok(JSON.stringify({ nftables: items }));
    }
    for (const [k, t] of tables) {
      const [f, tn] = k.split(' ') as [string, string];
      if (what === 'chains') for (const [n, c] of t.chains) items.push(chainJson(f, tn, n, c));
      else if (what === 'sets' || what === 'maps') {
        for (const [n, s] of t.sets) if ((what === 'maps') === (s.spec.kind === 'map')) items.push(setJson(f, tn, n, s));
      } else return fail(1, `fake: unsupported list ${what}`);
    }
    return ok(JSON.stringify({ nftables: items }));
  }
}

const META = { metainfo: { version: '1.0.6', release_name: 'Lester Gooch #5', json_schema_version: 1 } };
const ok = (stdout: string): CommandResult => ({ exitCode: 0, stdout, stderr: '' });
const fail = (code: number, stderr: string): CommandResult => ({ exitCode: code, stdout: '', stderr });

function tableJson(key: string) {
  const [family, name] = key.split(' ');
  return { family, name, handle: 1 };
}

function chainJson(family: string, table: string, name: string, c: FakeChain) {
  return { chain: { family, table, name, handle: 1, ...(c.base ? { type: c.base.type, hook: c.base.hook, prio: c.base.priority, policy: 'accept' } : {}) } };
}

function rulesJson(family: string, table: string, chain: string, c: FakeChain) {
  return c.rules.map((r, i) => {
    const m = /\bcomment "([^"]*)"$/.exec(r);
    // the fake keeps rules as text: its expressions are not nft's
    return { rule: { family, table, chain, handle: i + 2, ...(m ? { comment: m[1] } : {}), expr: [{ 'kpx-fake-rule': r }] } };
  });
}

/** A key component as nft's JSON gives it: numbers for ports, strings for the rest. */
const component = (p: string): string | number => (/^\d+$/.test(p) ? Number(p) : p);
function keyJson(key: string): unknown {
  const parts = key.split(' . ');
  return parts.length > 1 ? { concat: parts.map(component) } : component(key);
}
function verdictJson(v: string): unknown {
  const m = /^(goto|jump) (\S+)$/.exec(v);
  return m ? { [m[1]!]: { target: m[2] } } : { [v]: null };
}

function setJson(family: string, table: string, name: string, s: FakeSet) {
  const type = s.spec.type.includes(' . ') ? s.spec.type.split(' . ') : s.spec.type;
  const elem = [...s.elements].map(([k, v]) => (v === undefined ? keyJson(k) : [keyJson(k), verdictJson(v)]));
  return {
    [s.spec.kind]: {
      family,
      name,
      table,
      type,
      handle: 1,
      ...(s.spec.kind === 'map' ? { map: s.spec.data ?? 'verdict' } : {}),
      ...(s.spec.flags ? { flags: s.spec.flags } : {}),
      ...(s.spec.timeout !== undefined ? { timeout: s.spec.timeout } : {}),
      ...(s.spec.comment ? { comment: s.spec.comment } : {}),
      ...(elem.length ? { elem } : {}),
    },
  };
}
