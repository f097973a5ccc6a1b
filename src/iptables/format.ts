// The iptables-restore text format: kpx's one place for writing chain blocks and reading
// them back. A "block" is a chain's rules as restore lines ("-A NAME rule") joined by "\n".

/** The kernel keeps at most 255 bytes of a comment (XT_MAX_COMMENT_LEN, NUL included). */
export const MAX_COMMENT = 240;

/**
 * A comment match. The text is reduced to characters that need no escaping inside
 * iptables-restore's double quotes and print back the same (object names can carry
 * anything the apiserver accepts, and a file source anything at all), and bounded below
 * the kernel's limit, so no name can break a ruleset or be cut silently.
 */
export function comment(text: string): string {
  let safe = text.replace(/[^A-Za-z0-9 ._:;/>=,()[\]@+*-]/g, '?');
  if (safe.length > MAX_COMMENT) safe = `${safe.slice(0, MAX_COMMENT - 3)}...`;
  return `-m comment --comment "${safe}"`;
}

/** A chain's rules as one restore-format block: "-A NAME rule" lines joined by "\n". */
export function block(name: string, rules: readonly string[]): string {
  if (rules.length === 0) return '';
  // one join: a flat string (a template around the join would keep a tree of pieces)
  const parts = rules.slice();
  parts[0] = `-A ${name} ${parts[0]}`;
  return parts.join(`\n-A ${name} `);
}

/** Lines in a block (0 for an empty chain). */
export function countLines(b: string | undefined): number {
  if (!b) return 0;
  let n = 1;
  for (let i = b.indexOf('\n'); i !== -1; i = b.indexOf('\n', i + 1)) n++;
  return n;
}

/** The rules of a block (inverse of block()). */
export function rulesOf(name: string, text: string | undefined): string[] {
  if (!text) return [];
  const prefix = `-A ${name} `;
  return text.split('\n').map((l) => (l.startsWith(prefix) ? l.slice(prefix.length) : l));
}

/**
 * A rule as the kernel keeps it: iptables stores a statistic probability as
 * round(p * 2^31) and prints it back with 11 decimals ("0.1000000000" comes back as
 * "0.10000000009"); everything else kpx writes comes back as written.
 */
export function canonicalRule(rule: string): string {
  return rule.includes('--probability ')
    ? rule.replace(/--probability (\S+)/, (_, p: string) => `--probability ${Math.round(Number(p) * 2 ** 31)}`)
    : rule;
}

/** Whether a chain block holds exactly the rules the kernel has for that chain. */
export function sameChain(name: string, text: string, kernelRules: readonly string[]): boolean {
  if (countLines(text) !== kernelRules.length) return false;
  const mine = rulesOf(name, text);
  return mine.every((r, i) => r === kernelRules[i] || canonicalRule(r) === canonicalRule(kernelRules[i]!));
}
