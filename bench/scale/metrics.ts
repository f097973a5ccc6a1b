// Pure helpers of the scale run: Prometheus text, histogram deltas and quantiles,
// percentiles of samples, /proc/PID/stat and status. No I/O here (test/unit/scale.test.ts).

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (comments and blank lines skipped). */
export function parsePrometheus(text: string): Sample[] {
  const out: Sample[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    let name: string;
    let rest: string;
    const labels: Record<string, string> = {};
    const brace = line.indexOf('{');
    const space = line.indexOf(' ');
    if (brace !== -1 && (space === -1 || brace < space)) {
      name = line.slice(0, brace);
      // label values may hold '}' or ',' inside quotes: walk the string
      let i = brace + 1;
      for (;;) {
        while (line[i] === ' ' || line[i] === ',') i++;
        if (line[i] === '}') {
          i++;
          break;
        }
        const eq = line.indexOf('=', i);
        if (eq === -1) throw new Error(`bad metric line: ${line}`);
        const key = line.slice(i, eq).trim();
        if (line[eq + 1] !== '"') throw new Error(`bad metric line: ${line}`);
        let j = eq + 2;
        let value = '';
        while (j < line.length && line[j] !== '"') {
          if (line[j] === '\\') {
            const n = line[j + 1];
            value += n === 'n' ? '\n' : (n ?? '');
            j += 2;
          } else value += line[j++];
        }
        labels[key] = value;
        i = j + 1;
      }
      rest = line.slice(i).trim();
    } else {
      if (space === -1) throw new Error(`bad metric line: ${line}`);
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const v = rest.split(/\s+/)[0] ?? '';
    const value = v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    out.push({ name, labels, value });
  }
  return out;
}

export interface Histogram {
  /** cumulative counts per upper bound, ascending; the last is +Inf */
  buckets: Array<[number, number]>;
  sum: number;
  count: number;
}

const matches = (labels: Record<string, string>, filter: Record<string, string>) =>
  Object.entries(filter).every(([k, v]) => labels[k] === undefined || labels[k] === v);

/**
 * The histogram NAME, summed over the label sets that pass `filter` (a label the series
 * does not have passes: kube-proxy and kpx label sync metrics with ip_family, older
 * kube-proxy did not). Undefined when no series of that name exists.
 */
export function histogram(samples: Sample[], name: string, filter: Record<string, string> = {}): Histogram | undefined {
  const byLe = new Map<number, number>();
  let sum = 0;
  let count = 0;
  let seen = false;
  for (const s of samples) {
    if (!matches(s.labels, filter)) continue;
    if (s.name === `${name}_bucket`) {
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      byLe.set(le, (byLe.get(le) ?? 0) + s.value);
      seen = true;
    } else if (s.name === `${name}_sum`) {
      sum += s.value;
      seen = true;
    } else if (s.name === `${name}_count`) {
      count += s.value;
      seen = true;
    }
  }
  if (!seen) return undefined;
  return { buckets: [...byLe].sort((a, b) => a[0] - b[0]), sum, count };
}

/** after - before (the observations made in between). */
export function histogramDelta(after: Histogram, before: Histogram | undefined): Histogram {
  if (!before) return after;
  const prev = new Map(before.buckets);
  return {
    buckets: after.buckets.map(([le, c]) => [le, c - (prev.get(le) ?? 0)] as [number, number]),
    sum: after.sum - before.sum,
    count: after.count - before.count,
  };
}

export interface Quantile {
  /** seconds, interpolated linearly inside its bucket as Prometheus' histogram_quantile does */
  value: number;
  /** the bucket's bounds: the true quantile lies in (lower, upper] */
  lower: number;
  upper: number;
  /** true when the quantile falls in the +Inf bucket: value is the largest finite bound, a lower bound */
  aboveLastBucket: boolean;
}

/** The q-quantile (0..1) of a histogram, or undefined when it has no observations. */
export function histogramQuantile(q: number, h: Histogram): Quantile | undefined {
  if (h.count <= 0 || h.buckets.length === 0) return undefined;
  const total = h.buckets.at(-1)![1];
  if (total <= 0) return undefined;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, c] of h.buckets) {
    if (c >= rank && c > prevCount) {
      if (le === Infinity) return { value: prevLe, lower: prevLe, upper: Infinity, aboveLastBucket: true };
      const value = prevLe + (le - prevLe) * ((rank - prevCount) / (c - prevCount));
      return { value, lower: prevLe, upper: le, aboveLastBucket: false };
    }
    if (le !== Infinity) prevLe = le;
    prevCount = c;
  }
  return { value: prevLe, lower: prevLe, upper: Infinity, aboveLastBucket: true };
}

/** Value of the first sample NAME passing filter, or undefined. */
export function gauge(samples: Sample[], name: string, filter: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && matches(s.labels, filter))?.value;
}

/** Nearest-rank percentile (p in 0..100) of numbers; undefined for none. */
export function percentile(xs: readonly number[], p: number): number | undefined {
  if (xs.length === 0) return undefined;
  const sorted = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export function median(xs: readonly number[]): number | undefined {
  return percentile(xs, 50);
}

export interface ProcStat {
  /** seconds of CPU in user and kernel mode, this process */
  utime: number;
  stime: number;
  /** seconds of CPU of children it has waited for (iptables-restore, ipset, ...) */
  cutime: number;
  cstime: number;
  /** clock ticks since boot at process start */
  starttimeTicks: number;
}

/** /proc/PID/stat (comm may contain spaces and parentheses). */
export function parseProcStat(text: string, ticksPerSecond = 100): ProcStat {
  const close = text.lastIndexOf(')');
  if (close === -1) throw new Error('bad /proc/PID/stat');
  // fields after comm start at field 3 (state); utime is field 14
  const f = text.slice(close + 2).trim().split(/\s+/);
  const field = (n: number) => Number(f[n - 3]);
  return {
    utime: field(14) / ticksPerSecond,
    stime: field(15) / ticksPerSecond,
    cutime: field(16) / ticksPerSecond,
    cstime: field(17) / ticksPerSecond,
    starttimeTicks: field(22),
  };
}

/** VmRSS and VmHWM (peak) from /proc/PID/status, in MiB. */
export function parseProcStatus(text: string): { rssMiB: number; hwmMiB: number } {
  const kb = (k: string) => {
    const m = new RegExp(`^${k}:\\s+(\\d+)\\s*kB`, 'm').exec(text);
    if (!m) throw new Error(`no ${k} in /proc/PID/status`);
    return Number(m[1]) / 1024;
  };
  return { rssMiB: kb('VmRSS'), hwmMiB: kb('VmHWM') };
}

/** "60m", "90s", "1h", "500ms", or a plain number of seconds -> milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new Error(`bad duration "${text}" (examples: 500ms, 90s, 60m, 1h)`);
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  return n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]!;
}
