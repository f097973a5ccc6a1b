// iptables-save text: the one parser of what the kernel holds, and of the jump targets in
// rules (kube-proxy's ParseIPTablesDump plays this part for it).

/** The chains every table may have that nobody creates (their rules are what kpx adds to). */
export const BUILTIN_CHAINS: ReadonlySet<string> = new Set(['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING']);

export interface SavedChain {
  /** policy for built-in chains ("ACCEPT"), "-" for user chains */
  readonly policy: string;
  readonly rules: string[];
}

/** table -> chain -> rules, from iptables-save output. */
export type SavedTables = Map<string, Map<string, SavedChain>>;

export function parseSave(text: string): SavedTables {
  const tables: SavedTables = new Map();
  let current: Map<string, SavedChain> | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trimEnd();
    if (line === '' || line.startsWith('#')) continue;
    if (line.startsWith('*')) {
      current = new Map();
      tables.set(line.slice(1), current);
    } else if (line === 'COMMIT') {
      current = null;
    } else if (current && line.startsWith(':')) {
      const [name, policy] = line.slice(1).split(' ');
      if (name) current.set(name, { policy: policy ?? '-', rules: [] });
    } else if (current && line.startsWith('-A ')) {
      const sp = line.indexOf(' ', 3);
      const chain = line.slice(3, sp === -1 ? undefined : sp);
      const rule = sp === -1 ? '' : line.slice(sp + 1);
      let c = current.get(chain);
      if (!c) current.set(chain, (c = { policy: '-', rules: [] }));
      c.rules.push(rule);
    }
  }
  return tables;
}

/** "-j X" or "-g X": where a rule sends a packet (a chain or a target). */
const JUMP = / -[jg] (\S+)/g;

/** The chains (or targets) a block of "-A NAME rule" lines jumps to, in order. */
export function jumpTargets(block: string): string[] {
  const out: string[] = [];
  for (const m of block.matchAll(JUMP)) out.push(m[1]!);
  return out;
}

/** The target of one rule, if any. */
export function ruleTarget(rule: string): string | undefined {
  return jumpTargets(` ${rule}`)[0];
}
