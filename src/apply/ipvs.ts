// The thin IPVS applier: reads what the kernel has (ipvsadm -Sn, ipset save, the dummy's
// addresses), applies the planned difference with one `ipset restore` before and one after
// the iptables rules, one `ip -batch` per direction and one `ipvsadm -R`. Never flushes.
import type { Logger } from '../util/log.js';
import { parseIP, type IPFamily } from '../util/ip.js';
import { IPVS_DEVICE, setPrefix, type IpvsDesired, type IpvsRenderConfig } from '../render/ipvs/ipvs.js';
import { planIpvs, type IpvsKernelState, type IpvsPlan } from '../render/ipvs/plan.js';
import { parseIpsetSave, parseIpvsConnections, parseIpvsSave, vsLine } from '../ipvs/format.js';
import type { IptablesRuleset, TableName } from '../render/iptables/ruleset.js';
import type { IptablesApplier } from './iptables.js';
import { mustRun, type ApplyStage, type CommandRunner } from './exec.js';
import { Teardown } from './teardown.js';

export interface IpvsApplyResult {
  readonly plan: IpvsPlan;
  /** the iptables rules were (re)written by this apply */
  readonly rulesWritten: boolean;
  readonly chainsWritten: number;
  readonly chainsDeleted: number;
}

/** Reads kpx's dummy interface addresses of one family; null when the interface does not exist. */
export async function readDeviceAddresses(runner: CommandRunner, family: IPFamily): Promise<Set<string> | null> {
  const r = await runner.run('ip', ['-o', family === 'IPv4' ? '-4' : '-6', 'addr', 'show', 'dev', IPVS_DEVICE]);
  if (r.exitCode !== 0) return null;
  const out = new Set<string>();
  for (const m of r.stdout.matchAll(/\binet6? (\S+?)\/\d+/g)) {
    const ip = parseIP(m[1]!);
    if (ip) out.add(ip.text);
  }
  return out;
}

export class IpvsApplier {
  /** when each draining real server started draining (kpx's memory; a restart starts over) */
  private readonly drainingSince = new Map<string, number>();
  /** the iptables rules last applied (text); null = unknown, write them */
  private appliedRules: string | null = null;
  private appliedChains: Record<TableName, Set<string>> | null = null;

  constructor(
    readonly family: IPFamily,
    private readonly iptables: IptablesApplier,
    private readonly runner: CommandRunner,
    private readonly log: Logger,
    private readonly gracefulBoundMs: number,
  ) {}

  /** After a failure or a flush: write the iptables rules again on the next apply. */
  invalidate(): void {
    this.appliedRules = null;
    this.iptables.invalidate();
  }

  /** `create`: make the dummy interface when it is missing (never in dry runs). */
  async readKernel(desired: IpvsDesired, create = true): Promise<IpvsKernelState> {
    const family = this.family;
    const saved = await mustRun(this.runner, 'ipvsadm', ['-Sn']);
    const services = new Map([...parseIpvsSave(saved.stdout)].filter(([, vs]) => parseIP(vs.ip)?.family === family));
    // connection counts only matter for real servers that are leaving
    const leaving = [...desired.services].some(([k, want]) => [...(services.get(k)?.reals.keys() ?? [])].some((a) => !want.reals.has(a)));
    const connections = leaving ? parseIpvsConnections((await mustRun(this.runner, 'ipvsadm', ['-Ln'])).stdout) : undefined;
    const sets = new Map([...parseIpsetSave((await mustRun(this.runner, 'ipset', ['save'])).stdout)].filter(([n]) => n.startsWith(setPrefix(family))));
    let addresses = await readDeviceAddresses(this.runner, family);
    if (!addresses && !create) addresses = new Set();
    if (!addresses) {
      // a dummy interface, left down like kube-proxy's: its addresses are local all the same
      await mustRun(this.runner, 'ip', ['link', 'add', IPVS_DEVICE, 'type', 'dummy']);
      this.log.info({ device: IPVS_DEVICE }, 'created the IPVS dummy interface');
      addresses = new Set();
    }
    return { services, ...(connections ? { connections } : {}), sets, addresses };
  }

  /** Plans against the kernel without changing anything (dry runs). */
  async plan(desired: IpvsDesired, cfg: IpvsRenderConfig): Promise<IpvsPlan> {
    return planIpvs(desired, await this.readKernel(desired, false), cfg, { now: Date.now(), since: this.drainingSince, boundMs: this.gracefulBoundMs });
  }

  /** `stage` is told which part (read, plan, apply) runs from then on. */
  async apply(desired: IpvsDesired, rules: IptablesRuleset, cfg: IpvsRenderConfig, stage: (s: ApplyStage) => void = () => {}): Promise<IpvsApplyResult> {
    const now = Date.now();
    stage('reading the kernel');
    const kernel = await this.readKernel(desired);
    stage('plan');
    const plan = planIpvs(desired, kernel, cfg, { now, since: this.drainingSince, boundMs: this.gracefulBoundMs });
    stage('apply');
    const bits = this.family === 'IPv4' ? 32 : 128;
    // sets and addresses first: the rules and virtual servers refer to them
    if (plan.ipsetBefore) await mustRun(this.runner, 'ipset', ['restore'], { input: plan.ipsetBefore });
    const written = await this.applyRules(rules);
    if (plan.addressesToAdd.length) {
      const extra = this.family === 'IPv6' ? ' nodad' : '';
      const input = plan.addressesToAdd.map((a) => `address add ${a}/${bits} dev ${IPVS_DEVICE}${extra}`).join('\n');
      await mustRun(this.runner, 'ip', ['-force', '-batch', '-'], { input: `${input}\n` });
    }
    if (plan.ipvsadm) await mustRun(this.runner, 'ipvsadm', ['-R'], { input: plan.ipvsadm });
    // then what is gone: addresses no service uses, set members, sets
    if (plan.addressesToDelete.length) {
      const input = plan.addressesToDelete.map((a) => `address del ${a}/${bits} dev ${IPVS_DEVICE}`).join('\n');
      await mustRun(this.runner, 'ip', ['-force', '-batch', '-'], { input: `${input}\n` });
    }
    if (plan.ipsetAfter) await mustRun(this.runner, 'ipset', ['restore'], { input: plan.ipsetAfter });
    for (const id of [...this.drainingSince.keys()]) if (!plan.draining.includes(id)) this.drainingSince.delete(id);
    for (const id of plan.draining) if (!this.drainingSince.has(id)) this.drainingSince.set(id, now);
    return { plan, ...written };
  }

  /** The iptables rules of the IPVS mode change only with the node config: write them when they did. */
  private async applyRules(rules: IptablesRuleset): Promise<Omit<IpvsApplyResult, 'plan'>> {
    const text = (['filter', 'nat'] as const).map((t) => [...rules.chains(t)].map(([n, b]) => `${n}\n${b}`).join('\n')).join('\n') + JSON.stringify(rules.jumps);
    if (text === this.appliedRules && this.iptables.isTrusted) return { rulesWritten: false, chainsWritten: 0, chainsDeleted: 0 };
    const previous = this.iptables.isTrusted ? this.appliedChains : null;
    const r = await this.iptables.planAndApply(rules, { kind: 'full', previous, servicePortsRendered: 0 }, true);
    this.appliedRules = text;
    this.appliedChains = { filter: new Set([...rules.chains('filter')].map(([n]) => n)), nat: new Set([...rules.chains('nat')].map(([n]) => n)) };
    return { rulesWritten: true, chainsWritten: r.plan.chainsWritten, chainsDeleted: r.plan.chainsDeleted };
  }
}

/**
 * Removes what kpx's IPVS mode leaves (on a switch to iptables mode, and `kpx cleanup`):
 * virtual servers on the dummy's addresses or on a NodePort kpx's sets list, the dummy,
 * and, once no rule refers to them (`sets`), kpx's ipsets. Missing tools: nothing to do.
 */
export async function removeIpvsState(runner: CommandRunner, log: Logger, opts: { sets: boolean }): Promise<{ errors: string[]; setsLeft: boolean }> {
  const td = new Teardown(runner, log);
  const savedSets = await runner.run('ipset', ['save']);
  const sets = savedSets.exitCode === 0 ? parseIpsetSave(savedSets.stdout) : new Map<string, never>();
  const v4 = await readDeviceAddresses(runner, 'IPv4');
  if (v4) {
    const addresses = new Set([...v4, ...((await readDeviceAddresses(runner, 'IPv6')) ?? [])]);
    const nodePorts = new Set<string>();
    for (const s of sets.values()) if (/-NODE-PORT-(LOCAL-)?(TCP|UDP|SCTP)$/.test(s.name)) for (const m of s.members) nodePorts.add(`${s.name.split('-').at(-1)!.toLowerCase()}|${m}`);
    const saved = await runner.run('ipvsadm', ['-Sn']);
    if (saved.exitCode === 0) {
      const ops = [...parseIpvsSave(saved.stdout).values()]
        .filter((vs) => addresses.has(vs.ip) || nodePorts.has(`${vs.proto}|${vs.port}`))
        .map((vs) => vsLine('-D', vs));
      if (ops.length && (await td.step('ipvsadm', ['-R'], `${ops.join('\n')}\n`))) log.info({ virtualServers: ops.length }, 'removed kpx IPVS virtual servers');
    }
    await td.deleteLink(IPVS_DEVICE, 'kpx');
  }
  if (opts.sets) await td.destroySets(sets.keys(), 'kpx');
  return { errors: td.errors, setsLeft: !opts.sets && sets.size > 0 };
}
