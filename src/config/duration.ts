// Go's time.Duration text form, as KubeProxyConfiguration uses it (metav1.Duration):
// parsed like time.ParseDuration and printed like Duration.String(), in nanoseconds.

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, μs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
const TERM = /(\d*)(?:\.(\d*))?(ns|us|µs|μs|ms|s|m|h)/y;

function termNs(intPart: string, fracPart: string | undefined, unit: number): number | null {
  if (intPart === '' && (fracPart === undefined || fracPart === '')) return null;
  let ns = Number(intPart || '0') * unit;
  if (fracPart) ns += Math.trunc(Number(`0.${fracPart}`) * unit);
  return ns;
}

/** time.ParseDuration: "30s", "1m30s", "1.5h", "-2ms", "0". Null when invalid. */
export function parseGoDuration(text: string): number | null {
  let s = text;
  let sign = 1;
  if (s.startsWith('-') || s.startsWith('+')) {
    sign = s.startsWith('-') ? -1 : 1;
    s = s.slice(1);
  }
  if (s === '0') return 0;
  if (s === '') return null;
  TERM.lastIndex = 0;
  let total = 0;
  let pos = 0;
  while (pos < s.length) {
    TERM.lastIndex = pos;
    const m = TERM.exec(s);
    if (!m) return null;
    const ns = termNs(m[1]!, m[2], UNIT_NS[m[3]!]!);
    if (ns === null) return null;
    total += ns;
    pos = TERM.lastIndex;
  }
  // int64 nanoseconds, as Go
  if (total > 2 ** 63 - 1) return null;
  return sign * total;
}

function trimFraction(digits: string): string {
  const t = digits.replace(/0+$/, '');
  return t ? `.${t}` : '';
}

function subSecond(ns: number): string {
  if (ns < 1e3) return `${ns}ns`;
  if (ns < 1e6) return `${Math.trunc(ns / 1e3)}${trimFraction(String(ns % 1e3).padStart(3, '0'))}µs`;
  return `${Math.trunc(ns / 1e6)}${trimFraction(String(ns % 1e6).padStart(6, '0'))}ms`;
}

/** Duration.String(): 0 -> "0s", 900s -> "15m0s", 24h -> "24h0m0s", 1.5s -> "1.5s", 250ms -> "250ms". */
export function formatGoDuration(nanoseconds: number): string {
  const neg = nanoseconds < 0;
  const ns = Math.abs(Math.trunc(nanoseconds));
  if (ns === 0) return '0s';
  let out: string;
  if (ns < 1e9) {
    out = subSecond(ns);
  } else {
    const totalSeconds = Math.trunc(ns / 1e9);
    const frac = trimFraction(String(ns % 1e9).padStart(9, '0'));
    const h = Math.trunc(totalSeconds / 3600);
    const m = Math.trunc((totalSeconds % 3600) / 60);
    const sec = `${totalSeconds % 60}${frac}s`;
    out = h > 0 ? `${h}h${m}m${sec}` : m > 0 ? `${m}m${sec}` : sec;
  }
  return neg ? `-${out}` : out;
}
