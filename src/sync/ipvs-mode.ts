// The IPVS mode as a backend of the driver: one sync = for each IP family, render the
// whole model to virtual servers, ipset members and dummy addresses, read the kernel, and
// apply the difference. The iptables side is small and fixed per node config; it is
// written only when it changes.
import type { IPFamily } from '../util/ip.js';
import { IPVS_DEVICE, renderIpvs, type IpvsRenderConfig } from '../render/ipvs/ipvs.js';
import { planIpvs } from '../render/ipvs/plan.js';
import { ipvsIptablesRuleset } from '../render/ipvs/rules.js';
import { fixedPlan, IptablesApplier } from '../apply/iptables.js';
import { IpvsApplier } from '../apply/ipvs.js';
import type { IptablesBackend } from '../apply/backend.js';
import { mustRun } from '../apply/exec.js';
import { ensureSysctl, readHostFacts, type HostFacts } from '../apply/host.js';
import { buildIpvsConfig, keepIfSame, type Capabilities } from './node-config.js';
import { Driver, NO_COUNTS, type FamilyBackend, type ModeBackend, type NodeContext, type ProxierOptions, type SyncCounts, type SyncStep } from './driver.js';
import { detectIptables } from './iptables-mode.js';
import { Families } from './modes.js';

export interface IpvsDetail {
  readonly mode: 'ipvs';
  /** virtual servers and real servers this sync added, deleted or set draining */
  readonly ipvsChanges: { readonly services: number; readonly realServers: number };
  /** the mode's fixed iptables rules were (re)written by this sync */
  readonly iptablesRulesWritten: boolean;
}

class IpvsFamily implements FamilyBackend<IpvsRenderConfig, IpvsDetail> {
  readonly ipt: IptablesApplier;
  readonly applier: IpvsApplier;

  constructor(
    readonly family: IPFamily,
    private readonly mode: IpvsMode,
  ) {
    const log = mode.opts.log.child({ family });
    this.ipt = new IptablesApplier(family, mode.backend, mode.opts.runner, log);
    this.applier = new IpvsApplier(family, this.ipt, mode.opts.runner, log, mode.opts.config.ipvs.drainTimeoutMs);
  }

  get trusted(): boolean {
    return this.ipt.isTrusted;
  }

  invalidate(): void {
    this.applier.invalidate();
  }

  canaryPresent(): Promise<boolean> {
    return this.ipt.canaryPresent();
  }

  nodePortAddresses(cfg: IpvsRenderConfig): readonly string[] {
    return cfg.nodePortIPs;
  }

  config(ctx: NodeContext, previous: IpvsRenderConfig | undefined): IpvsRenderConfig {
    return keepIfSame(previous, buildIpvsConfig(ctx.config, this.family, ctx.node, ctx.host, this.mode.caps));
  }

  async sync(step: SyncStep<IpvsRenderConfig>): Promise<SyncCounts & IpvsDetail> {
    const { config, log } = this.mode.opts;
    const cfg = step.config;
    const t0 = performance.now();
    step.stage('render');
    const desired = renderIpvs(step.view, cfg);
    const rules = ipvsIptablesRuleset(cfg);
    const t1 = performance.now();
    const base = {
      ...NO_COUNTS,
      mode: 'ipvs' as const,
      full: step.full,
      renderMs: t1 - t0,
      servicePorts: desired.ports.length,
      servicePortsRendered: desired.ports.length,
      noLocalEndpoints: desired.noLocalEndpoints,
      ports: () => desired.ports,
    };
    step.stage('reading the kernel');
    if (config.dryRun) {
      const againstEmpty = () => planIpvs(desired, { services: new Map(), sets: new Map(), addresses: new Set() }, cfg, { now: Date.now(), since: new Map(), boundMs: 0 });
      const plan = config.renderOnly
        ? againstEmpty()
        : await this.applier.plan(desired, cfg).catch((err: Error) => {
            log.warn({ family: this.family, err: err.message }, 'cannot read the IPVS state; planning against an empty one');
            return againstEmpty();
          });
      step.stage('plan');
      const iptPlan = config.renderOnly
        ? this.ipt.planAgainstEmpty(rules).plan
        : fixedPlan(await this.ipt.plan(rules, { kind: 'full', previous: null, servicePortsRendered: 0 }, true).catch(() => this.ipt.planAgainstEmpty(rules))).plan;
      this.mode.opts.print?.(
        `# kpx ${this.family} IPVS mode (${this.mode.backend} backend)\n# ip address add ... dev ${IPVS_DEVICE}: ${plan.addressesToAdd.join(' ')}\n` +
          `# ip address del ... dev ${IPVS_DEVICE}: ${plan.addressesToDelete.join(' ')}\n# ipset restore (before the rules)\n${plan.ipsetBefore}` +
          `# ${this.ipt.bins.restore} -w 5 --noflush\n${iptPlan.text}# ipvsadm -R\n${plan.ipvsadm}# ipset restore (after)\n${plan.ipsetAfter}`,
      );
      return { ...base, applyMs: performance.now() - t1, ipvsChanges: { services: 0, realServers: 0 }, iptablesRulesWritten: false };
    }
    const r = await this.applier.apply(desired, rules, cfg, (s) => step.stage(s));
    const c = r.plan.counts;
    if (c.servicesAdded + c.servicesDeleted + c.realsAdded + c.realsDeleted + c.realsDrained > 0) {
      log.debug({ family: this.family, ...c, draining: r.plan.draining.length }, 'ipvs changes');
    }
    return {
      ...base,
      applyMs: performance.now() - t1,
      chainsWritten: r.chainsWritten,
      chainsDeleted: r.chainsDeleted,
      ipvsChanges: { services: c.servicesAdded + c.servicesDeleted, realServers: c.realsAdded + c.realsDeleted + c.realsDrained },
      iptablesRulesWritten: r.rulesWritten,
    };
  }

  failed(): SyncCounts & IpvsDetail {
    return { ...NO_COUNTS, full: true, ports: () => [], mode: 'ipvs', ipvsChanges: { services: 0, realServers: 0 }, iptablesRulesWritten: false };
  }
}

export class IpvsMode extends Families<IpvsRenderConfig, IpvsDetail, IpvsFamily> implements ModeBackend<IpvsRenderConfig, IpvsDetail> {
  readonly mode = 'ipvs' as const;
  backend: IptablesBackend = 'nft';
  caps: Capabilities = { randomFully: false, conntrackTCPLiberal: false };

  async init(): Promise<void> {
    const { config, runner, log } = this.opts;
    ({ backend: this.backend, caps: this.caps } = await detectIptables(config, runner, log));
    if (config.dryRun) return;
    const probe = await runner.run('ipvsadm', ['-Ln']);
    if (probe.exitCode !== 0) throw new Error(`IPVS is not usable here (ipvsadm -Ln: ${probe.stderr.trim() || `exit ${probe.exitCode}`}); load ip_vs or use --proxy-mode iptables`);
    // what kube-proxy's IPVS mode sets: conntrack for the masquerade rules, expiry of
    // connections to removed real servers, and forwarding
    await ensureSysctl('net.ipv4.vs.conntrack', '1', log);
    await ensureSysctl('net.ipv4.vs.expire_nodest_conn', '1', log);
    await ensureSysctl('net.ipv4.vs.expire_quiescent_template', '1', log);
    await ensureSysctl('net.ipv4.ip_forward', '1', log);
    if (config.ipvs.strictARP) {
      await ensureSysctl('net.ipv4.conf.all.arp_ignore', '1', log);
      await ensureSysctl('net.ipv4.conf.all.arp_announce', '2', log);
    }
    if (config.conntrackTCPBeLiberal) await ensureSysctl('net.netfilter.nf_conntrack_tcp_be_liberal', '1', log);
    const { tcpTimeoutMs, tcpFinTimeoutMs, udpTimeoutMs } = config.ipvs;
    if (tcpTimeoutMs || tcpFinTimeoutMs || udpTimeoutMs) {
      const s = (ms: number) => String(Math.round(ms / 1000));
      // 0 leaves that timeout as it is
      await mustRun(runner, 'ipvsadm', ['--set', s(tcpTimeoutMs), s(tcpFinTimeoutMs), s(udpTimeoutMs)]);
    }
    await this.removeLeftovers('ipvs');
  }

  /** NodePorts answer on the node's addresses, never on the service addresses on kpx's dummy. */
  hostFacts(): HostFacts {
    return readHostFacts({ excludeDevice: IPVS_DEVICE });
  }

  protected create(family: IPFamily): IpvsFamily {
    return new IpvsFamily(family, this);
  }
}

export class IpvsProxier extends Driver<IpvsRenderConfig, IpvsDetail> {
  constructor(opts: ProxierOptions) {
    super(opts, new IpvsMode(opts));
  }
}
