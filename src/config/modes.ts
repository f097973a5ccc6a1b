// Proxy modes: the values kube-proxy knows, and which of them kpx can run. A new kpx
// backend is one `kpx: true` here (and its proxier in src/sync).

interface ModeInfo {
  /** kube-proxy on Linux accepts this value */
  readonly linux: boolean;
  /** kpx runs it */
  readonly kpx: boolean;
  /** why kpx cannot run it (when kpx is false) */
  readonly why?: string;
}

export const PROXY_MODES = {
  iptables: { linux: true, kpx: true },
  ipvs: { linux: true, kpx: true },
  nftables: { linux: true, kpx: true },
  kernelspace: { linux: false, kpx: false, why: "is kube-proxy's Windows mode (on Linux kube-proxy accepts iptables, ipvs and nftables)" },
} as const satisfies Record<string, ModeInfo>;

type Modes = typeof PROXY_MODES;
/** The modes kpx runs. */
export type KpxMode = { [K in keyof Modes]: Modes[K]['kpx'] extends true ? K : never }[keyof Modes];

export const KPX_MODES = (Object.keys(PROXY_MODES) as Array<keyof Modes>).filter((m) => PROXY_MODES[m].kpx) as KpxMode[];

export type ModeCheck = { ok: true; mode: KpxMode } | { ok: false; kind: 'invalid' | 'unsupported'; message: string };

function lookup(mode: string): ModeInfo | undefined {
  return Object.hasOwn(PROXY_MODES, mode) ? PROXY_MODES[mode as keyof Modes] : undefined;
}

/** A resolved mode (after "" became iptables): runnable by kpx, a mode kpx lacks, or no mode at all. */
export function checkMode(mode: string): ModeCheck {
  const info = lookup(mode);
  if (info?.kpx) return { ok: true, mode: mode as KpxMode };
  if (info?.why) return { ok: false, kind: info.linux ? 'unsupported' : 'invalid', message: info.why };
  const lower = lookup(mode.toLowerCase());
  const hint = lower?.linux ? ` (modes are case-sensitive: did you mean ${JSON.stringify(mode.toLowerCase())}?)` : '';
  return { ok: false, kind: 'invalid', message: `is not a proxy mode: use iptables, ipvs or nftables, or leave it empty for iptables${hint}` };
}
