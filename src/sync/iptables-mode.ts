// The iptables mode as a backend of the driver: per family, an incremental renderer and a
// thin applier. A partial sync applies the renderer's delta; a full one starts from the
// name set the kernel serves (only changed chains are written) or, when too much changed,
// writes the other set and switches (see planFull in render/iptables/restore.ts).
import type { KpxConfig } from '../config/config.js';
import type { IPFamily } from '../util/ip.js';
import type { Logger } from '../util/log.js';
import { IptablesRenderer, type RenderResult } from '../render/iptables/ruleset.js';
import type { IptablesRenderConfig } from '../render/iptables/config.js';
import type { Generation } from '../render/iptables/names.js';
import { fixedPlan, IptablesApplier, otherGeneration, type Planned } from '../apply/iptables.js';
import { detectBackend, supportsRandomFully, type IptablesBackend } from '../apply/backend.js';
import type { CommandRunner } from '../apply/exec.js';
import { ensureSysctl, readHostFacts, readSysctl, type HostFacts } from '../apply/host.js';
import { buildIptablesConfig, keepIfSame, type Capabilities } from './node-config.js';
import { Driver, NO_COUNTS, type FamilyBackend, type FamilySyncReport, type ModeBackend, type NodeContext, type ProxierOptions, type SyncCounts, type SyncStep } from './driver.js';
import { Families } from './modes.js';

/** kube-proxy's large-cluster threshold: above it, per-endpoint comments are dropped. */
export const LARGE_CLUSTER_ENDPOINTS = 1000;

export interface IptablesDetail {
  readonly mode: 'iptables';
  /** the family's renderer: its tables, jumps and fragments after this sync */
  readonly ruleset: IptablesRenderer;
  /** what it rendered from (with the name set of each table); null if it never rendered */
  readonly config: IptablesRenderConfig | null;
}

export function isIptablesReport(r: FamilySyncReport): r is FamilySyncReport<IptablesDetail> {
  return r.mode === 'iptables';
}

/** The iptables backend (configured or detected) and what it and the kernel support; both iptables-based modes. */
export async function detectIptables(config: KpxConfig, runner: CommandRunner, log: Logger): Promise<{ backend: IptablesBackend; caps: Capabilities }> {
  // kpx render runs no binary and reads no setting: what it prints depends on its inputs only
  if (config.renderOnly) {
    return { backend: config.iptablesBackend === 'legacy' ? 'legacy' : 'nft', caps: { randomFully: true, conntrackTCPLiberal: config.conntrackTCPBeLiberal } };
  }
  let backend = config.iptablesBackend === 'auto' ? null : config.iptablesBackend;
  if (!backend) {
    const d = await detectBackend(runner);
    backend = d.backend;
    log.info({ backend, reason: d.reason }, 'iptables backend detected');
  }
  const liberal = config.conntrackTCPBeLiberal || (await readSysctl('net.netfilter.nf_conntrack_tcp_be_liberal')) === '1';
  return { backend, caps: { randomFully: await supportsRandomFully(runner, 'IPv4', backend), conntrackTCPLiberal: liberal } };
}

const GENERATION_0: Record<'nat' | 'filter', Generation> = { nat: 0, filter: 0 };

class IptablesFamily implements FamilyBackend<IptablesRenderConfig, IptablesDetail> {
  readonly renderer = new IptablesRenderer();
  readonly applier: IptablesApplier;
  private sysctlsDone = false;

  constructor(
    readonly family: IPFamily,
    private readonly mode: IptablesMode,
  ) {
    this.applier = new IptablesApplier(family, mode.backend, mode.opts.runner, mode.opts.log.child({ family }));
  }

  get trusted(): boolean {
    return this.applier.isTrusted;
  }

  invalidate(): void {
    this.applier.invalidate();
  }

  canaryPresent(): Promise<boolean> {
    return this.applier.canaryPresent();
  }

  nodePortAddresses(cfg: IptablesRenderConfig): 'all' | readonly string[] {
    return cfg.nodePortAddresses;
  }

  config(ctx: NodeContext, previous: IptablesRenderConfig | undefined): IptablesRenderConfig {
    // large clusters drop per-endpoint comments, with hysteresis so the mode does not flap
    const endpoints = this.mode.opts.state.endpointCount(this.family);
    const reduced = previous?.reducedComments ? endpoints > LARGE_CLUSTER_ENDPOINTS * 0.8 : endpoints > LARGE_CLUSTER_ENDPOINTS;
    return keepIfSame(previous, { ...buildIptablesConfig(ctx.config, this.family, ctx.node, ctx.host, this.mode.caps), reducedComments: reduced });
  }

  async sync(step: SyncStep<IptablesRenderConfig>): Promise<SyncCounts & IptablesDetail> {
    const { config } = this.mode.opts;
    const r = this.renderer;
    const t0 = performance.now();
    let cfg = step.full ? { ...step.config, generation: await this.startingGeneration(step) } : (r.config ?? step.config);
    step.stage('render');
    let result = r.render(step.view, cfg, step.changed);
    let rendered = result.servicePortsRendered;
    step.stage('plan');
    let planned = await this.plan(result, step.full);
    if ('switchNeeded' in planned) {
      // too many serving chains changed to rewrite them in one transaction: write the
      // other name set and switch over
      this.mode.opts.log.info({ family: this.family, changedLines: planned.switchNeeded }, 'full sync writes the other name set');
      step.stage('render');
      cfg = { ...step.config, generation: otherGeneration(cfg.generation ?? GENERATION_0) };
      result = r.render(step.view, cfg, 'all');
      rendered += result.servicePortsRendered;
      step.stage('plan');
      planned = await this.plan(result, step.full);
    }
    const applied = fixedPlan(planned);
    const t1 = performance.now();
    step.stage('apply');
    if (config.dryRun) {
      this.mode.opts.print?.(`# kpx ${this.family} (${this.mode.backend} backend): ${this.applier.bins.restore} -w 5 --noflush\n${applied.plan.text}`);
    } else {
      await this.ensureSysctls(cfg);
      await this.applier.apply(r, applied);
    }
    const kernelNat = this.applier.takeKernelNat();
    return {
      ...this.counts(cfg, t1 - t0, rendered),
      ...(kernelNat ? { kernelNatBefore: kernelNat } : {}),
      full: applied.full,
      applyMs: performance.now() - t1,
      chainsWritten: applied.plan.chainsWritten,
      rulesWritten: applied.plan.rulesWritten,
      rulesWrittenByTable: applied.plan.rulesWrittenByTable,
      chainsDeleted: applied.plan.chainsDeleted,
    };
  }

  failed(): SyncCounts & IptablesDetail {
    return { ...this.counts(this.renderer.config, 0, 0), full: true };
  }

  private counts(cfg: IptablesRenderConfig | null, renderMs: number, rendered: number): Omit<SyncCounts, 'full'> & IptablesDetail {
    const r = this.renderer;
    return {
      ...NO_COUNTS,
      mode: 'iptables',
      servicePorts: r.servicePortCount,
      servicePortsRendered: rendered,
      ruleCounts: r.ruleCounts,
      noLocalEndpoints: r.noLocalEndpoints(),
      ruleset: r,
      config: cfg,
      ports: () => r.fragments(),
      renderMs,
    };
  }

  /** The name set a full sync starts from (kpx render: 0, as for an empty kernel). */
  private async startingGeneration(step: SyncStep<IptablesRenderConfig>): Promise<Record<'nat' | 'filter', Generation>> {
    const { config } = this.mode.opts;
    if (config.renderOnly) return GENERATION_0;
    step.stage('reading the kernel');
    if (!config.dryRun) return this.applier.fullSyncGeneration();
    return this.applier.fullSyncGeneration().catch(() => GENERATION_0);
  }

  /** The applier's plan; a dry run that cannot read the kernel plans against an empty one. */
  private async plan(result: RenderResult, full: boolean): Promise<Planned> {
    const { config, log } = this.mode.opts;
    if (config.renderOnly) return this.applier.planAgainstEmpty(this.renderer);
    if (!config.dryRun) return this.applier.plan(this.renderer, result, full);
    return this.applier.plan(this.renderer, result, full).catch((err: Error) => {
      log.warn({ family: this.family, err: err.message }, 'cannot read the kernel rules; planning against an empty table');
      return this.applier.planAgainstEmpty(this.renderer);
    });
  }

  private async ensureSysctls(cfg: IptablesRenderConfig): Promise<void> {
    const log = this.mode.opts.log;
    if (cfg.family === 'IPv4' && cfg.localhostNodePorts) await ensureSysctl('net.ipv4.conf.all.route_localnet', '1', log);
    if (!this.sysctlsDone && this.mode.opts.config.conntrackTCPBeLiberal) await ensureSysctl('net.netfilter.nf_conntrack_tcp_be_liberal', '1', log);
    this.sysctlsDone = true;
  }
}

export class IptablesMode extends Families<IptablesRenderConfig, IptablesDetail, IptablesFamily> implements ModeBackend<IptablesRenderConfig, IptablesDetail> {
  readonly mode = 'iptables' as const;
  backend: IptablesBackend = 'nft';
  caps: Capabilities = { randomFully: false, conntrackTCPLiberal: false };

  async init(): Promise<void> {
    const { config, runner, log } = this.opts;
    ({ backend: this.backend, caps: this.caps } = await detectIptables(config, runner, log));
    await this.removeLeftovers('iptables');
  }

  hostFacts(): HostFacts {
    return readHostFacts();
  }

  protected create(family: IPFamily): IptablesFamily {
    return new IptablesFamily(family, this);
  }
}

/** The iptables mode's proxier (what `kpx run` drives, and what tests construct). */
export class IptablesProxier extends Driver<IptablesRenderConfig, IptablesDetail> {
  constructor(opts: ProxierOptions) {
    super(opts, new IptablesMode(opts));
  }

  get iptablesBackend(): IptablesBackend {
    return (this.mode as IptablesMode).backend;
  }

  applier(family: IPFamily): IptablesApplier {
    return (this.mode as IptablesMode).family(family).applier;
  }
}
