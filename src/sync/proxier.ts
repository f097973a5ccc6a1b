// The iptables proxier: one sync = for each IP family, render the model and apply the
// difference. Decides full vs partial: full at start, after a failure, when the node's
// facts (or kpx's view of the host) change, and after an external flush.
import type { KpxConfig } from '../config/config.js';
import type { ChangeTracker, ClusterState } from '../model/state.js';
import type { ServicePortState } from '../model/types.js';
import type { Logger } from '../util/log.js';
import { isLoopback, type IPFamily } from '../util/ip.js';
import { IptablesRenderer } from '../render/iptables/ruleset.js';
import type { IptablesRenderConfig } from '../render/iptables/config.js';
import { IptablesApplier } from '../apply/iptables.js';
import { removeIpvsState } from '../apply/ipvs.js';
import type { SavedChain } from '../render/iptables/restore.js';
import { detectBackend, supportsRandomFully, type IptablesBackend } from '../apply/backend.js';
import type { CommandRunner } from '../apply/exec.js';
import { ensureSysctl, readHostFacts, readSysctl, type HostFacts } from '../apply/host.js';
import { buildIptablesConfig, keepIfSame, type Capabilities } from './node-config.js';

export interface FamilySyncReport {
  readonly family: IPFamily;
  readonly full: boolean;
  readonly renderMs: number;
  readonly applyMs: number;
  readonly servicePorts: number;
  /** service ports whose rules were rendered anew (not reused from the cache) */
  readonly servicePortsRendered: number;
  readonly chainsWritten: number;
  readonly rulesWritten: number;
  readonly rulesWrittenByTable: { readonly filter: number; readonly nat: number };
  readonly chainsDeleted: number;
  readonly ruleCounts: { readonly filter: number; readonly nat: number };
  readonly noLocalEndpoints: { readonly internal: number; readonly external: number };
  /** every service port and its endpoints after this sync */
  ports(): Iterable<ServicePortState>;

  /** the nat rules found in the kernel when this (full) sync read it */
  readonly kernelNatBefore?: ReadonlyMap<string, SavedChain>;
  readonly error?: Error;
}

export interface IptablesFamilySyncReport extends FamilySyncReport {
  /** the family's renderer: its tables, jumps and fragments after this sync */
  readonly ruleset: IptablesRenderer;
  readonly config: IptablesRenderConfig;
}

/** What the controller drives: one proxier per mode (iptables, ipvs). */
export interface Proxier {
  init(): Promise<void>;
  sync(): Promise<SyncReport>;
  /** the next sync reads the kernel and writes everything (failure, flush, node change) */
  requestFullSync(): void;
  /** families whose canary chains are gone (an external flush); they resync in full */
  checkCanaries(): Promise<IPFamily[]>;
  /** addresses NodePorts and health check ports answer on */
  nodePortAddresses(): 'all' | string[];
  /** families synced so far */
  knownFamilies(): IPFamily[];
}

export interface SyncReport<F extends FamilySyncReport = FamilySyncReport> {
  readonly families: readonly F[];
  readonly ok: boolean;
}

/** IPv4 always; IPv6 once the node, the host or a service uses it (and from then on). */
export function familiesToSync(state: ClusterState, host: HostFacts, programmed: Iterable<IPFamily>): IPFamily[] {
  const out = new Set<IPFamily>(['IPv4', ...programmed]);
  if (
    (state.node?.ips.IPv6.length ?? 0) > 0 ||
    host.addresses.IPv6.some((ip) => !isLoopback(ip)) ||
    state.familiesInUse().has('IPv6')
  ) {
    out.add('IPv6');
  }
  return [...out].sort();
}

/** The iptables backend (configured or detected) and what it and the kernel support; both modes. */
export async function detectIptables(config: KpxConfig, runner: CommandRunner, log: Logger): Promise<{ backend: IptablesBackend; caps: Capabilities }> {
  let backend = config.iptablesBackend === 'auto' ? null : config.iptablesBackend;
  if (!backend) {
    const d = await detectBackend(runner);
    backend = d.backend;
    log.info({ backend, reason: d.reason }, 'iptables backend detected');
  }
  const liberal = config.conntrackTCPBeLiberal || (await readSysctl('net.netfilter.nf_conntrack_tcp_be_liberal')) === '1';
  return { backend, caps: { randomFully: await supportsRandomFully(runner, 'IPv4', backend), conntrackTCPLiberal: liberal } };
}

/** kube-proxy's large-cluster threshold: above it, per-endpoint comments are dropped. */
export const LARGE_CLUSTER_ENDPOINTS = 1000;

export interface ProxierOptions {
  readonly config: KpxConfig;
  readonly state: ClusterState;
  readonly runner: CommandRunner;
  readonly log: Logger;
  /** where --dry-run prints what would be applied */
  readonly print?: (text: string) => void;
  readonly hostFacts?: () => HostFacts;
}

export class IptablesProxier implements Proxier {
  private backend: IptablesBackend = 'nft';
  private caps: Capabilities = { randomFully: false, conntrackTCPLiberal: false };
  private readonly appliers = new Map<IPFamily, IptablesApplier>();
  private readonly renderers = new Map<IPFamily, IptablesRenderer>();
  private readonly trackers = new Map<IPFamily, ChangeTracker>();
  private readonly reduced = new Map<IPFamily, boolean>();
  private readonly configs = new Map<IPFamily, IptablesRenderConfig>();
  private readonly needFull = new Set<IPFamily>();
  private readonly programmed = new Set<IPFamily>();
  private sysctlsDone = false;
  private ipvsSetsLeft = false;

  constructor(private readonly opts: ProxierOptions) {}

  get iptablesBackend(): IptablesBackend {
    return this.backend;
  }

  async init(): Promise<void> {
    const { config, runner, log } = this.opts;
    // switching from IPVS mode: its virtual servers and dummy go now; its ipsets once the
    // first full sync has replaced the rules that refer to them
    if (!config.dryRun) this.ipvsSetsLeft = (await removeIpvsState(runner, log, { sets: false })).setsLeft;
    ({ backend: this.backend, caps: this.caps } = await detectIptables(config, runner, log));
  }

  applier(family: IPFamily): IptablesApplier {
    let a = this.appliers.get(family);
    if (!a) {
      a = new IptablesApplier(family, this.backend, this.opts.runner, this.opts.log.child({ family }));
      this.appliers.set(family, a);
      this.needFull.add(family);
    }
    return a;
  }

  /** Force the next sync to be full in every family (failure, flush, node change). */
  requestFullSync(): void {
    for (const f of this.appliers.keys()) this.needFull.add(f);
    for (const a of this.appliers.values()) a.invalidate();
  }

  families(host: HostFacts): IPFamily[] {
    return familiesToSync(this.opts.state, host, this.programmed);
  }

  /** Addresses NodePorts (and health check ports) answer on, over all families. */
  nodePortAddresses(): 'all' | string[] {
    const out: string[] = [];
    for (const cfg of this.configs.values()) {
      if (cfg.nodePortAddresses === 'all') return 'all';
      out.push(...cfg.nodePortAddresses);
    }
    return this.configs.size ? out : 'all';
  }

  /** Families synced so far (for health). */
  knownFamilies(): IPFamily[] {
    return [...this.configs.keys()];
  }

  /** Checks the canary chains; on a flush, forgets programmed state so the next sync is full. */
  async checkCanaries(): Promise<IPFamily[]> {
    const flushed: IPFamily[] = [];
    for (const family of this.programmed) {
      const a = this.applier(family);
      if (!(await a.canaryPresent())) {
        flushed.push(family);
        a.invalidate();
        this.needFull.add(family);
      }
    }
    return flushed;
  }

  async sync(): Promise<SyncReport<IptablesFamilySyncReport>> {
    const { config, state, log } = this.opts;
    const host = (this.opts.hostFacts ?? readHostFacts)();
    const reports: IptablesFamilySyncReport[] = [];
    for (const family of this.families(host)) {
      // Large clusters drop per-endpoint comments (hysteresis so the mode does not flap).
      const endpoints = state.endpointCount(family);
      const wasReduced = this.reduced.get(family) ?? false;
      const reduced = wasReduced ? endpoints > LARGE_CLUSTER_ENDPOINTS * 0.8 : endpoints > LARGE_CLUSTER_ENDPOINTS;
      this.reduced.set(family, reduced);
      const prevCfg = this.configs.get(family);
      const cfg = keepIfSame(prevCfg, { ...buildIptablesConfig(config, family, state.node, host, this.caps), reducedComments: reduced });
      this.configs.set(family, cfg);
      const applier = this.applier(family);
      let renderer = this.renderers.get(family);
      let tracker = this.trackers.get(family);
      const first = !renderer || !tracker;
      if (!renderer) this.renderers.set(family, (renderer = new IptablesRenderer()));
      if (!tracker) this.trackers.set(family, (tracker = state.tracker()));
      const changes = tracker.take();

      const t0 = performance.now();
      const result = renderer.render(state.view(family), cfg, first ? 'all' : changes.services);
      const t1 = performance.now();
      // a full apply after a re-render from scratch, a failure, or an external flush
      const full = result.full || this.needFull.has(family);
      const base = {
        family,
        servicePorts: renderer.servicePortCount,
        servicePortsRendered: result.servicePortsRendered,
        ruleCounts: renderer.ruleCounts,
        noLocalEndpoints: renderer.noLocalEndpoints(),
        ruleset: renderer,
        config: cfg,
        ports: () => renderer.fragments(),
        renderMs: t1 - t0,
      };
      try {
        let applied;
        if (config.dryRun) {
          applied = await applier.plan(renderer, result, full).catch(async (err: Error) => {
            log.warn({ family, err: err.message }, 'cannot read the kernel rules; planning against an empty table');
            return applier.planAgainstEmpty(renderer);
          });
          this.opts.print?.(`# kpx ${family} (${this.backend} backend): ${applier.bins.restore} -w 5 --noflush\n${applied.plan.text}`);
        } else {
          await this.ensureSysctls(cfg);
          applied = await applier.apply(renderer, result, full);
          this.programmed.add(family);
        }
        this.needFull.delete(family);
        const kernelNat = applier.takeKernelNat();
        reports.push({
          ...base,
          ...(kernelNat ? { kernelNatBefore: kernelNat } : {}),
          full: applied.full,
          applyMs: performance.now() - t1,
          chainsWritten: applied.plan.chainsWritten,
          rulesWritten: applied.plan.rulesWritten,
          rulesWrittenByTable: applied.plan.rulesWrittenByTable,
          chainsDeleted: applied.plan.chainsDeleted,
        });
      } catch (err) {
        this.needFull.add(family);
        applier.invalidate();
        log.error({ family, err: (err as Error).message }, 'sync failed; the previous rules stay in place');
        reports.push({
          ...base,
          full,
          applyMs: performance.now() - t1,
          chainsWritten: 0,
          rulesWritten: 0,
          rulesWrittenByTable: { filter: 0, nat: 0 },
          chainsDeleted: 0,
          error: err as Error,
        });
      }
    }
    if (this.ipvsSetsLeft && reports.every((r) => !r.error) && !config.dryRun) {
      this.ipvsSetsLeft = false;
      await removeIpvsState(this.opts.runner, log, { sets: true });
    }
    return { families: reports, ok: reports.every((r) => !r.error) };
  }

  private async ensureSysctls(cfg: IptablesRenderConfig): Promise<void> {
    if (cfg.family === 'IPv4' && cfg.localhostNodePorts) {
      await ensureSysctl('net.ipv4.conf.all.route_localnet', '1', this.opts.log);
    }
    if (!this.sysctlsDone && this.opts.config.conntrackTCPBeLiberal) {
      await ensureSysctl('net.netfilter.nf_conntrack_tcp_be_liberal', '1', this.opts.log);
    }
    this.sysctlsDone = true;
  }
}
