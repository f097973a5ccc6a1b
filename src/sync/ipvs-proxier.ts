// The IPVS proxier: one sync = for each IP family, render the whole model to virtual
// servers, ipset members and dummy addresses, read the kernel, and apply the difference.
// The iptables side is small and fixed per node config; it is written only when it changes.
import { isLoopback, type IPFamily } from '../util/ip.js';
import { IPVS_DEVICE, renderIpvs, type IpvsRenderConfig } from '../render/ipvs/ipvs.js';
import { planIpvs } from '../render/ipvs/plan.js';
import { ipvsIptablesRuleset } from '../render/ipvs/rules.js';
import { masqueradeMark } from '../render/iptables/config.js';
import { fullRender } from '../render/iptables/ruleset.js';
import { fixedPlan, IptablesApplier } from '../apply/iptables.js';
import { IpvsApplier } from '../apply/ipvs.js';
import type { IptablesBackend } from '../apply/backend.js';
import { mustRun } from '../apply/exec.js';
import { ensureSysctl, readHostFacts, type HostFacts } from '../apply/host.js';
import { keepIfSame, localDetector, nodePortAddresses, type Capabilities } from './node-config.js';
import { detectIptables, familiesToSync, type FamilySyncReport, type Proxier, type ProxierOptions, type SyncReport } from './proxier.js';

export class IpvsProxier implements Proxier {
  private backend: IptablesBackend = 'nft';
  private caps: Capabilities = { randomFully: false, conntrackTCPLiberal: false };
  private readonly appliers = new Map<IPFamily, IpvsApplier>();
  private readonly iptables = new Map<IPFamily, IptablesApplier>();
  private readonly configs = new Map<IPFamily, IpvsRenderConfig>();
  private readonly programmed = new Set<IPFamily>();

  constructor(private readonly opts: ProxierOptions) {}

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
  }

  private applier(family: IPFamily): IpvsApplier {
    let a = this.appliers.get(family);
    if (!a) {
      const log = this.opts.log.child({ family });
      const ipt = new IptablesApplier(family, this.backend, this.opts.runner, log);
      this.iptables.set(family, ipt);
      a = new IpvsApplier(family, ipt, this.opts.runner, log, this.opts.config.ipvs.drainTimeoutMs);
      this.appliers.set(family, a);
    }
    return a;
  }

  requestFullSync(): void {
    for (const a of this.appliers.values()) a.invalidate();
  }

  async checkCanaries(): Promise<IPFamily[]> {
    const flushed: IPFamily[] = [];
    for (const family of this.programmed) {
      if (!(await this.iptables.get(family)!.canaryPresent())) {
        flushed.push(family);
        this.applier(family).invalidate();
      }
    }
    return flushed;
  }

  nodePortAddresses(): 'all' | string[] {
    const out = new Set<string>();
    for (const c of this.configs.values()) for (const ip of c.nodePortIPs) out.add(ip);
    return this.configs.size ? [...out] : 'all';
  }

  knownFamilies(): IPFamily[] {
    return [...this.configs.keys()];
  }

  private config(family: IPFamily, host: HostFacts): IpvsRenderConfig {
    const { config, state } = this.opts;
    const npa = nodePortAddresses(config, family, state.node, host);
    const candidates = npa === 'all' ? host.addresses[family] : npa;
    const next: IpvsRenderConfig = {
      family,
      nodeName: config.hostname,
      zone: state.node?.zone,
      scheduler: config.ipvs.scheduler,
      nodePortIPs: candidates.filter((ip) => !isLoopback(ip)),
      localDetector: localDetector(config, family, state.node),
      masqueradeAll: config.masqueradeAll,
      masqueradeMark: masqueradeMark(config.masqueradeBit),
      randomFully: this.caps.randomFully,
      conntrackTCPLiberal: this.caps.conntrackTCPLiberal,
      excludeCIDRs: config.ipvs.excludeCIDRs.filter((c) => c.family === family),
    };
    const cfg = keepIfSame(this.configs.get(family), next);
    this.configs.set(family, cfg);
    return cfg;
  }

  async sync(): Promise<SyncReport> {
    const { config, state, log } = this.opts;
    // NodePorts answer on the node's addresses, never on the service addresses on kpx's dummy
    const host = this.opts.hostFacts?.() ?? readHostFacts({ excludeDevice: IPVS_DEVICE });
    const reports: FamilySyncReport[] = [];
    for (const family of familiesToSync(state, host, this.programmed)) {
      const t0 = performance.now();
      const cfg = this.config(family, host);
      const desired = renderIpvs(state.view(family), cfg);
      const rules = ipvsIptablesRuleset(cfg);
      const t1 = performance.now();
      const applier = this.applier(family);
      const base = {
        family,
        full: false,
        renderMs: t1 - t0,
        servicePorts: desired.ports.length,
        servicePortsRendered: desired.ports.length,
        ruleCounts: { filter: 0, nat: 0 },
        noLocalEndpoints: desired.noLocalEndpoints,
        ports: () => desired.ports,
        rulesWrittenByTable: { filter: 0, nat: 0 },
      };
      try {
        if (config.dryRun) {
          const plan = await applier.plan(desired, cfg).catch((err: Error) => {
            log.warn({ family, err: err.message }, 'cannot read the IPVS state; planning against an empty one');
            return planIpvs(desired, { services: new Map(), sets: new Map(), addresses: new Set() }, cfg, { now: Date.now(), since: new Map(), boundMs: 0 });
          });
          const ipt = this.iptables.get(family)!;
          const iptPlan = fixedPlan(await ipt.plan(rules, fullRender(null), true).catch(() => ipt.planAgainstEmpty(rules))).plan;
          this.opts.print?.(
            `# kpx ${family} IPVS mode (${this.backend} backend)
# ip address add ... dev ${IPVS_DEVICE}: ${plan.addressesToAdd.join(' ')}
` +
              `# ip address del ... dev ${IPVS_DEVICE}: ${plan.addressesToDelete.join(' ')}
# ipset restore (before the rules)
${plan.ipsetBefore}` +
              `# ${ipt.bins.restore} -w 5 --noflush
${iptPlan.text}# ipvsadm -R
${plan.ipvsadm}# ipset restore (after)
${plan.ipsetAfter}`,
          );
          reports.push({ ...base, applyMs: performance.now() - t1, chainsWritten: 0, rulesWritten: 0, chainsDeleted: 0 });
          continue;
        }
        const r = await applier.apply(desired, rules, cfg);
        this.programmed.add(family);
        const c = r.plan.counts;
        if (c.servicesAdded + c.servicesDeleted + c.realsAdded + c.realsDeleted + c.realsDrained > 0) {
          log.debug({ family, ...c, draining: r.plan.draining.length }, 'ipvs changes');
        }
        reports.push({
          ...base,
          full: r.rulesWritten,
          applyMs: performance.now() - t1,
          chainsWritten: r.chainsWritten,
          rulesWritten: c.servicesAdded + c.realsAdded + c.realsDeleted + c.servicesDeleted + c.realsDrained,
          chainsDeleted: r.chainsDeleted,
        });
      } catch (err) {
        applier.invalidate();
        log.error({ family, err: (err as Error).message }, 'sync failed; the previous rules stay in place');
        reports.push({ ...base, applyMs: performance.now() - t1, chainsWritten: 0, rulesWritten: 0, chainsDeleted: 0, error: err as Error });
      }
    }
    return { families: reports, ok: reports.every((r) => !r.error) };
  }
}

