// IPVS mode for `kpx trace`: what a packet meets is the mode's fixed iptables rules (with
// ipsets), then, when it is delivered to a service address on the dummy, the virtual
// server for its address, port and protocol. Rendered (from the model and config, like a
// sync) or live (ipvsadm -Sn, ipset save, iptables-save).
import type { CommandRunner } from '../apply/exec.js';
import type { KpxConfig } from '../config/config.js';
import { readHostFacts } from '../apply/host.js';
import { parseIpsetSave, parseIpvsSave } from '../ipvs/format.js';
import type { ModelView, NodeFacts } from '../model/types.js';
import { IPVS_DEVICE, renderIpvs, vsKey, type IpvsProto, type IpvsRenderConfig, type VirtualServer } from '../render/ipvs/ipvs.js';
import { ipvsIptablesRuleset } from '../render/ipvs/rules.js';
import { buildIpvsConfig } from '../sync/node-config.js';
import { joinHostPort, parseIP, type IPFamily } from '../util/ip.js';
import { tablesFromRuleset, tablesFromSave, type IpsetContent, type Tables } from './tracer.js';
import type { IpvsMatch } from './journey.js';

export interface IpvsState {
  readonly tables: Tables;
  readonly ipsets: ReadonlyMap<string, IpsetContent>;
  readonly services: ReadonlyMap<string, VirtualServer>;
  /** addresses local to the node: its own and the service addresses on the dummy */
  readonly local: readonly string[];
  readonly masqueradeMark: number;
}

/** The IPVS render config a sync would use (what IpvsFamily.config computes), for tracing. */
export function ipvsTraceConfig(config: KpxConfig, family: IPFamily, node: NodeFacts | null): IpvsRenderConfig {
  const host = readHostFacts({ excludeDevice: IPVS_DEVICE });
  // a trace may render for another node (--manifests): its Node addresses count as its own
  return buildIpvsConfig(config, family, node, host, { randomFully: false, conntrackTCPLiberal: false }, node?.ips[family] ?? []);
}

export function renderedIpvs(view: ModelView, cfg: IpvsRenderConfig, nodeIPs: readonly string[]): IpvsState {
  const desired = renderIpvs(view, cfg);
  return {
    tables: tablesFromRuleset(ipvsIptablesRuleset(cfg)),
    ipsets: desired.sets,
    services: desired.services,
    local: [...nodeIPs, ...cfg.nodePortIPs, ...desired.addresses],
    masqueradeMark: Number(cfg.masqueradeMark),
  };
}

async function must(runner: CommandRunner, cmd: string, args: string[]): Promise<string> {
  const r = await runner.run(cmd, args);
  if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
  return r.stdout;
}

export async function liveIpvs(runner: CommandRunner, saveBin: string, family: IPFamily, masqueradeBit: number): Promise<IpvsState> {
  const [save, ipvs, sets] = [await must(runner, saveBin, []), await must(runner, 'ipvsadm', ['-Sn']), await must(runner, 'ipset', ['save'])];
  return {
    tables: tablesFromSave(save),
    ipsets: parseIpsetSave(sets),
    services: parseIpvsSave(ipvs),
    // the dummy's addresses included: IPVS serves what is local
    local: readHostFacts().addresses[family],
    masqueradeMark: 1 << masqueradeBit,
  };
}

export function matchVirtualServer(services: ReadonlyMap<string, VirtualServer>, proto: IpvsProto, dst: string, dport: number): IpvsMatch | null {
  const ip = parseIP(dst)?.text ?? dst;
  const vs = services.get(vsKey(proto, ip, dport));
  if (!vs) return null;
  return {
    virtualServer: `${proto.toUpperCase()} ${joinHostPort(vs.ip, vs.port)}`,
    scheduler: vs.scheduler,
    persistence: vs.persistence,
    realServers: [...vs.reals.values()].map((r) => ({ addr: joinHostPort(r.ip, r.port), weight: r.weight })).sort((a, b) => a.addr.localeCompare(b.addr)),
  };
}
