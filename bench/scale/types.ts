// The results file of a scale run (results.json): what was measured, where, and what was
// skipped. The report, the CSV and the charts are generated from it alone.

export type Status = 'ok' | 'dnf' | 'skipped' | 'failed';

export interface Figure {
  /** null unless status is ok (for dnf: the limit it passed, in `limit`) */
  value: number | null;
  unit: 's' | 'ms' | 'MiB' | 'count' | 'writes/s' | 'cpu-s';
  status: Status;
  /** seconds the step was allowed (for dnf: "did not finish in `limit` s") */
  limit?: number;
  note?: string;
  /** for a quantile read from a histogram: the bucket it lies in, (lower, upper]; upper null = +Inf */
  bounds?: [number, number | null];
  /** the individual measurements a value summarises (e.g. repeats) */
  samples?: number[];
}

export interface RunResult {
  proxy: string;
  impl: 'kpx' | 'kube-proxy';
  mode: 'iptables' | 'ipvs' | 'nftables';
  services: number;
  endpoints: number;
  /** measured in the qemu VM under software emulation (TCG): not comparable with host figures */
  emulated: boolean;
  status: Status;
  reason?: string;
  /** wall time of this run, s */
  seconds?: number;
  figures: Record<string, Figure>;
}

export interface Environment {
  where: 'host' | 'vm';
  machine: string;
  cpus: number;
  memGiB: number;
  kernel: string;
  node: string;
  iptables: string;
  ipset: string;
  ipvsadm: string;
  nft: string;
  kubernetes: string;
  kubeProxy: string;
  kpx: string;
  ipvsKernel: boolean;
}

export interface RunConfig {
  services: number[];
  endpoints: number;
  proxies: string[];
  churnRates: number[];
  churnSeconds: number;
  connections: number;
  repeats: number;
  minSyncPeriod: string;
  syncPeriod: string;
  settleSeconds: number;
  fullSyncTimeoutS: number;
  stepTimeoutS: number;
  budgetS: number;
  endpointPool: number;
}

export interface ScaleResults {
  version: 1;
  startedAt: string;
  finishedAt: string;
  command: string;
  environment: Environment;
  /** present when the VM part ran */
  vmEnvironment?: Environment;
  config: RunConfig;
  vmConfig?: RunConfig;
  runs: RunResult[];
  /** what the run skipped and why, one line each */
  skipped: string[];
  notes: string[];
}

/** Labels and units of the figures (churn keys are churn.<rate>.<what>). */
export const FIGURES: Record<string, { label: string; unit: Figure['unit'] }> = {
  'fullSync.metric': { label: 'full sync, proxy metric (first sync after start)', unit: 's' },
  'fullSync.outside': { label: 'full sync, outside: process start to first answer of the last service', unit: 's' },
  'endpointChange.sync': { label: 'one endpoint changed: the sync it caused (proxy metric)', unit: 's' },
  'endpointChange.packet': { label: 'one endpoint changed: API write to first connection at the new endpoint', unit: 's' },
  'serviceAdd.sync': { label: 'one service added: the sync it caused (proxy metric)', unit: 's' },
  'serviceAdd.packet': { label: 'one service added: API write to first answered connection', unit: 's' },
  'firstPacket.clusterIP.p50': { label: 'connect() to a random ClusterIP, p50', unit: 'ms' },
  'firstPacket.clusterIP.p99': { label: 'connect() to a random ClusterIP, p99', unit: 'ms' },
  'firstPacket.nodePort.p50': { label: 'connect() to a random NodePort, p50', unit: 'ms' },
  'firstPacket.nodePort.p99': { label: 'connect() to a random NodePort, p99', unit: 'ms' },
  'counts.iptablesRules': { label: 'iptables rules (IPv4)', unit: 'count' },
  'counts.ipvsVirtualServers': { label: 'IPVS virtual servers', unit: 'count' },
  'counts.ipvsRealServers': { label: 'IPVS real servers', unit: 'count' },
  'counts.ipsetEntries': { label: 'ipset entries', unit: 'count' },
  'counts.nftRules': { label: 'nftables rules (kube-proxy tables)', unit: 'count' },
  'counts.nftSetElements': { label: 'nftables set/map elements', unit: 'count' },
  'rss.settled': { label: 'RSS after settling (VmRSS)', unit: 'MiB' },
  'rss.peak': { label: 'peak RSS since start (VmHWM)', unit: 'MiB' },
};

const CHURN: Record<string, { label: string; unit: Figure['unit'] }> = {
  'prog.p50': { label: 'network programming latency p50 (proxy metric)', unit: 's' },
  'prog.p99': { label: 'network programming latency p99 (proxy metric)', unit: 's' },
  'packet.p50': { label: 'API write to new endpoint answering, p50 (packets)', unit: 's' },
  'packet.p99': { label: 'API write to new endpoint answering, p99 (packets)', unit: 's' },
  'packet.lost': { label: 'probed changes never seen answering within the limit', unit: 'count' },
  rate: { label: 'writes per second achieved', unit: 'writes/s' },
  cpu: { label: 'proxy CPU over the churn (own)', unit: 'cpu-s' },
  cpuChildren: { label: 'CPU of its finished children over the churn (iptables-restore, ...)', unit: 'cpu-s' },
  peakRss: { label: 'peak RSS during the churn (VmRSS sampled)', unit: 'MiB' },
};

export function figureInfo(key: string): { label: string; unit: Figure['unit'] } {
  const f = FIGURES[key];
  if (f) return f;
  const m = /^churn\.(\d+(?:\.\d+)?)\.(.+)$/.exec(key);
  if (m && CHURN[m[2]!]) return { label: `${m[1]} writes/s: ${CHURN[m[2]!]!.label}`, unit: CHURN[m[2]!]!.unit };
  return { label: key, unit: 'count' };
}
