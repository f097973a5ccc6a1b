// The nftables mode as a backend of the driver: per family, an incremental renderer of
// kpx's own table (`ip kpx`, `ip6 kpx`) and a thin applier that runs one `nft -f -`
// transaction per sync. A partial sync writes the renderer's delta; a full one diffs the
// whole render against what the applier remembers (or, when it cannot trust its memory,
// against the digest the table records) and replaces the table atomically when needed.
import type { IPFamily } from '../util/ip.js';
import { NftablesRenderer } from '../render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../render/nftables/config.js';
import { checkNftables, NftablesApplier } from '../apply/nftables.js';
import { ensureSysctl, readHostFacts, type HostFacts } from '../apply/host.js';
import { buildIptablesConfig, keepIfSame } from './node-config.js';
import { Driver, NO_COUNTS, type FamilyBackend, type FamilySyncReport, type ModeBackend, type NodeContext, type ProxierOptions, type SyncCounts, type SyncStep } from './driver.js';
import { Families } from './modes.js';

export interface NftablesDetail {
  readonly mode: 'nftables';
  /** statements of the `nft -f` transaction this sync ran (0: none was run) */
  readonly written: { readonly statementsWritten: number };
  /** map and set elements this sync added and removed */
  readonly elementsChanged: { readonly added: number; readonly removed: number };
  /** the table was deleted and re-created (start with a table kpx cannot trust) */
  readonly recreated: boolean;
  /** the family's renderer after this sync (tools and tests) */
  readonly renderer: NftablesRenderer;
}

export function isNftablesReport(r: FamilySyncReport): r is FamilySyncReport<NftablesDetail> {
  return r.mode === 'nftables';
}

class NftablesFamily implements FamilyBackend<NftablesRenderConfig, NftablesDetail> {
  readonly renderer = new NftablesRenderer();
  readonly applier: NftablesApplier;

  constructor(
    readonly family: IPFamily,
    private readonly mode: NftablesMode,
  ) {
    this.applier = new NftablesApplier(family, mode.opts.runner, mode.opts.log.child({ family }));
  }

  get trusted(): boolean {
    return this.applier.isTrusted;
  }

  invalidate(): void {
    this.applier.invalidate();
  }

  /** kpx's table records its own state in kpx-state: gone means someone deleted the table. */
  async canaryPresent(): Promise<boolean> {
    return (await this.applier.readDigest()) !== null;
  }

  nodePortAddresses(cfg: NftablesRenderConfig): 'all' | readonly string[] {
    return cfg.nodePortAddresses;
  }

  config(ctx: NodeContext, previous: NftablesRenderConfig | undefined): NftablesRenderConfig {
    const c = buildIptablesConfig(ctx.config, this.family, ctx.node, ctx.host, this.mode.caps);
    // kube-proxy's nftables mode has no localhost NodePorts (route_localnet), and neither has kpx's
    return keepIfSame(previous, {
      family: c.family,
      nodeName: c.nodeName,
      zone: c.zone,
      nodeIPs: c.nodeIPs,
      localDetector: c.localDetector,
      masqueradeAll: c.masqueradeAll,
      masqueradeMark: c.masqueradeMark,
      nodePortAddresses: c.nodePortAddresses,
      randomFully: c.randomFully,
      serviceCIDRs: ctx.serviceCIDRs,
    });
  }

  async sync(step: SyncStep<NftablesRenderConfig>): Promise<SyncCounts & NftablesDetail> {
    const { config } = this.mode.opts;
    const r = this.renderer;
    const t0 = performance.now();
    step.stage('render');
    const result = r.render(step.view, step.config, step.full ? 'all' : step.changed);
    const t1 = performance.now();
    const base = this.counts(t1 - t0, result.servicePortsRendered);
    if (config.dryRun) {
      step.stage('plan');
      // kpx render prints the whole table as one transaction from nothing; a dry run what
      // it would send this kernel (nothing when the kernel holds this ruleset already)
      const text = config.renderOnly ? this.applier.textFromEmpty(r) : await this.applier.textAgainstKernel(r);
      this.mode.opts.print?.(`# kpx ${this.family} nftables mode: nft -f -\n${text || '# nothing to apply: the kernel holds this ruleset\n'}`);
      return { ...base, full: true, applyMs: performance.now() - t1 };
    }
    const a = await this.applier.apply(r, result, { full: step.full, stage: (s) => step.stage(s) });
    return {
      ...base,
      full: a.full,
      applyMs: performance.now() - t1,
      chainsWritten: a.chainsWritten,
      chainsDeleted: a.chainsDeleted,
      written: { statementsWritten: a.statements },
      elementsChanged: { added: a.elementsAdded, removed: a.elementsRemoved },
      recreated: a.recreated,
    };
  }

  failed(): SyncCounts & NftablesDetail {
    return { ...this.counts(0, 0), full: true };
  }

  private counts(renderMs: number, rendered: number): Omit<SyncCounts, 'full'> & NftablesDetail {
    const r = this.renderer;
    return {
      ...NO_COUNTS,
      mode: 'nftables',
      renderMs,
      servicePorts: r.servicePortCount,
      servicePortsRendered: rendered,
      noLocalEndpoints: r.noLocalEndpoints(),
      ports: () => r.fragments(),
      written: { statementsWritten: 0 },
      elementsChanged: { added: 0, removed: 0 },
      recreated: false,
      renderer: r,
    };
  }
}

export class NftablesMode extends Families<NftablesRenderConfig, NftablesDetail, NftablesFamily> implements ModeBackend<NftablesRenderConfig, NftablesDetail> {
  readonly mode = 'nftables' as const;
  /** nft's masquerade always supports fully-random; conntrack liberal is a sysctl here */
  readonly caps = { randomFully: true, conntrackTCPLiberal: false };

  async init(): Promise<void> {
    const { config, runner, log } = this.opts;
    if (config.dryRun) return;
    const { version } = await checkNftables(runner);
    log.info({ nft: version }, 'nftables mode');
    if (config.conntrackTCPBeLiberal) await ensureSysctl('net.netfilter.nf_conntrack_tcp_be_liberal', '1', log);
    await this.removeLeftovers('nftables');
  }

  hostFacts(): HostFacts {
    return readHostFacts();
  }

  protected create(family: IPFamily): NftablesFamily {
    return new NftablesFamily(family, this);
  }
}

export class NftablesProxier extends Driver<NftablesRenderConfig, NftablesDetail> {
  constructor(opts: ProxierOptions) {
    super(opts, new NftablesMode(opts));
  }

  applier(family: IPFamily): NftablesApplier {
    return (this.mode as NftablesMode).family(family).applier;
  }
}
