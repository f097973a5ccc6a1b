// The iptables proxier: one sync = for each IP family, render the model and apply the
// difference. Decides full vs partial: full at start, after a failure, when the node's
// facts (or kpx's view of the host) change, and after an external flush.
import type { KpxConfig } from '../config/config.js';
import type { ChangeTracker, ClusterState } from '../model/state.js';
import type { ServicePortState } from '../model/types.js';
import type { Logger } from '../util/log.js';
import { isLoopback, type IPFamily } from '../util/ip.js';
import { IptablesRenderer, type RenderResult } from '../render/iptables/ruleset.js';
import type { IptablesRenderConfig } from '../render/iptables/config.js';
import { fixedPlan, IptablesApplier, otherGeneration, type Planned } from '../apply/iptables.js';
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
  /** null when the sync failed before it had a config */
  readonly config: IptablesRenderConfig | null;
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
  /** a failure before any family was synced */
  readonly error?: Error;
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
  /** what the renderer was last given (with the generation of the last full sync) */
  private readonly configs = new Map<IPFamily, IptablesRenderConfig>();
  /** the node-derived part of it, to notice a change of the node's facts */
  private readonly bases = new Map<IPFamily, IptablesRenderConfig>();
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
    const { config, log } = this.opts;
    const reports: IptablesFamilySyncReport[] = [];
    let host: HostFacts;
    try {
      host = (this.opts.hostFacts ?? readHostFacts)();
    } catch (err) {
      // nothing was taken from the trackers: the next sync sees every change
      for (const f of this.appliers.keys()) this.needFull.add(f);
      log.error({ err: (err as Error).message, stage: 'host facts' }, 'sync failed; the previous rules stay in place');
      return { families: [], ok: false, error: err as Error };
    }
    for (const family of this.families(host)) reports.push(await this.syncFamily(family, host));
    if (this.ipvsSetsLeft && reports.every((r) => !r.error) && !config.dryRun) {
      this.ipvsSetsLeft = false;
      await removeIpvsState(this.opts.runner, log, { sets: true });
    }
    return { families: reports, ok: reports.every((r) => !r.error) };
  }

  /**
   * One family. Any failure, at any stage, is logged once with its cause and forces the
   * next sync of the family to be full (re-rendered from the model, so no change taken
   * from the tracker is lost), as kube-proxy's deferred needFullSync does.
   */
  private async syncFamily(family: IPFamily, host: HostFacts): Promise<IptablesFamilySyncReport> {
    const { config, state, log } = this.opts;
    const applier = this.applier(family);
    let renderer = this.renderers.get(family);
    if (!renderer) this.renderers.set(family, (renderer = new IptablesRenderer()));
    const r = renderer;
    let stage = 'config';
    let cfg = this.configs.get(family) ?? null;
    let full = true;
    let renderMs = 0;
    let rendered = 0;
    const t0 = performance.now();
    let t1 = t0;
    try {
      let tracker = this.trackers.get(family);
      const first = !tracker;
      if (!tracker) this.trackers.set(family, (tracker = state.tracker()));
      // Large clusters drop per-endpoint comments (hysteresis so the mode does not flap).
      const endpoints = state.endpointCount(family);
      const wasReduced = this.reduced.get(family) ?? false;
      const reduced = wasReduced ? endpoints > LARGE_CLUSTER_ENDPOINTS * 0.8 : endpoints > LARGE_CLUSTER_ENDPOINTS;
      const prevBase = this.bases.get(family);
      const base = keepIfSame(prevBase, { ...buildIptablesConfig(config, family, state.node, host, this.caps), reducedComments: reduced });
      full = first || this.needFull.has(family) || base !== prevBase || !applier.isTrusted;
      if (full) {
        stage = 'reading the kernel';
        const generation = config.renderOnly
          ? { nat: 0 as const, filter: 0 as const }
          : config.dryRun
            ? await applier.fullSyncGeneration().catch(() => ({ nat: 0 as const, filter: 0 as const }))
            : await applier.fullSyncGeneration();
        cfg = { ...base, generation };
      } else cfg = this.configs.get(family)!;
      this.bases.set(family, base);
      this.reduced.set(family, reduced);
      stage = 'render';
      const changes = tracker.take();
      let result = r.render(state.view(family), cfg, full ? 'all' : changes.services);
      this.configs.set(family, cfg);
      rendered = result.servicePortsRendered;
      t1 = performance.now();
      renderMs = t1 - t0;
      stage = 'plan';
      let planned = await this.plan(applier, r, result, full);
      if ('switchNeeded' in planned) {
        // too many serving chains changed to rewrite them in one transaction: write the
        // other name set and switch over (see planFull)
        log.info({ family, changedLines: planned.switchNeeded }, 'full sync writes the other name set');
        stage = 'render';
        cfg = { ...base, generation: otherGeneration(cfg.generation ?? { nat: 0, filter: 0 }) };
        result = r.render(state.view(family), cfg, 'all');
        this.configs.set(family, cfg);
        rendered = result.servicePortsRendered;
        t1 = performance.now();
        renderMs = t1 - t0;
        stage = 'plan';
        planned = await this.plan(applier, r, result, full);
      }
      const applied = fixedPlan(planned);
      stage = 'apply';
      if (config.dryRun) {
        this.opts.print?.(`# kpx ${family} (${this.backend} backend): ${applier.bins.restore} -w 5 --noflush\n${applied.plan.text}`);
      } else {
        await this.ensureSysctls(cfg);
        await applier.apply(r, applied);
        this.programmed.add(family);
      }
      this.needFull.delete(family);
      const kernelNat = applier.takeKernelNat();
      return {
        ...this.baseReport(family, r, cfg, renderMs, rendered),
        ...(kernelNat ? { kernelNatBefore: kernelNat } : {}),
        full: applied.full,
        applyMs: performance.now() - t1,
        chainsWritten: applied.plan.chainsWritten,
        rulesWritten: applied.plan.rulesWritten,
        rulesWrittenByTable: applied.plan.rulesWrittenByTable,
        chainsDeleted: applied.plan.chainsDeleted,
      };
    } catch (err) {
      this.needFull.add(family);
      applier.invalidate();
      log.error({ family, stage, full, err: (err as Error).message }, 'sync failed; the previous rules stay in place');
      return {
        ...this.baseReport(family, r, cfg, renderMs, rendered),
        full,
        applyMs: performance.now() - t1,
        chainsWritten: 0,
        rulesWritten: 0,
        rulesWrittenByTable: { filter: 0, nat: 0 },
        chainsDeleted: 0,
        error: err as Error,
      };
    }
  }

  /** The applier's plan; a dry run that cannot read the kernel plans against an empty one. */
  private async plan(applier: IptablesApplier, r: IptablesRenderer, result: RenderResult, full: boolean): Promise<Planned> {
    if (this.opts.config.renderOnly) return applier.planAgainstEmpty(r);
    if (!this.opts.config.dryRun) return applier.plan(r, result, full);
    return applier.plan(r, result, full).catch((err: Error) => {
      this.opts.log.warn({ family: applier.family, err: err.message }, 'cannot read the kernel rules; planning against an empty table');
      return applier.planAgainstEmpty(r);
    });
  }

  private baseReport(family: IPFamily, r: IptablesRenderer, cfg: IptablesRenderConfig | null, renderMs: number, rendered: number) {
    return {
      family,
      servicePorts: r.servicePortCount,
      servicePortsRendered: rendered,
      ruleCounts: r.ruleCounts,
      noLocalEndpoints: r.noLocalEndpoints(),
      ruleset: r,
      config: cfg ?? r.config,
      ports: () => r.fragments(),
      renderMs,
    };
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
