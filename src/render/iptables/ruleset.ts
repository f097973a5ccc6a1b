// Assembles a family's whole iptables state: fixed chains, per-service-port fragments
// and the dispatch trees that route packets to them. Pure: model + config -> ruleset.
import { servicePortId, type Endpoint, type FamilyModel, type ServicePort } from '../../model/types.js';
import type { IPFamily } from '../../util/ip.js';
import { hostCIDR, isLoopback } from '../../util/ip.js';
import type { IptablesRenderConfig } from './config.js';
import { addressDispatch, buildDispatch, DEFAULT_LEAF_SIZE, portDispatch, type DispatchEntry } from './dispatch.js';
import { CHAIN } from './names.js';
import { renderServicePort, type PortEntry, type ProtoName, type ServiceFragment } from './service.js';

export type TableName = 'filter' | 'nat';
export const TABLES: readonly TableName[] = ['filter', 'nat'];

/** A rule kpx keeps in a built-in chain (PREROUTING, INPUT, ...). */
export interface BuiltinJump {
  readonly table: TableName;
  readonly chain: string;
  readonly rule: string;
}

export interface IptablesRuleset {
  readonly family: IPFamily;
  /** chain name -> rules (arguments after "-A CHAIN"), per table */
  readonly tables: Readonly<Record<TableName, ReadonlyMap<string, readonly string[]>>>;
  /** jumps from built-in chains, top of chain, in this order */
  readonly jumps: readonly BuiltinJump[];
  /** per service port (servicePortId), what it rendered */
  readonly fragments: ReadonlyMap<string, ServiceFragment>;
}

const PROTOS: readonly ProtoName[] = ['tcp', 'udp', 'sctp'];

export function builtinJumps(cfg: IptablesRenderConfig): BuiltinJump[] {
  const c = (text: string) => `-m comment --comment "${text}"`;
  const isNew = '-m conntrack --ctstate NEW';
  const guard = localhostGuard(cfg);
  const fw = `${isNew} ${c('kpx load balancer firewall')} -j ${CHAIN.proxyFirewall}`;
  const svc = `${isNew} ${c('kpx service portals')} -j ${CHAIN.services}`;
  const ext = `${isNew} ${c('kpx externally-visible service portals')} -j ${CHAIN.externalServices}`;
  const localnet = `${c('kpx localhost nodeport guard')} -j ${CHAIN.firewall}`;
  const jumps: BuiltinJump[] = [
    { table: 'filter', chain: 'INPUT', rule: fw },
    { table: 'filter', chain: 'INPUT', rule: `${c('kpx health check service ports')} -j ${CHAIN.nodePorts}` },
    { table: 'filter', chain: 'INPUT', rule: ext },
    ...(guard ? [{ table: 'filter' as const, chain: 'INPUT', rule: localnet }] : []),
    { table: 'filter', chain: 'FORWARD', rule: fw },
    { table: 'filter', chain: 'FORWARD', rule: `${c('kpx forwarding rules')} -j ${CHAIN.forward}` },
    { table: 'filter', chain: 'FORWARD', rule: svc },
    { table: 'filter', chain: 'FORWARD', rule: ext },
    { table: 'filter', chain: 'OUTPUT', rule: fw },
    { table: 'filter', chain: 'OUTPUT', rule: svc },
    ...(guard ? [{ table: 'filter' as const, chain: 'OUTPUT', rule: localnet }] : []),
    { table: 'nat', chain: 'PREROUTING', rule: `${c('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'OUTPUT', rule: `${c('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'POSTROUTING', rule: `${c('kpx postrouting rules')} -j ${CHAIN.postrouting}` },
  ];
  return jumps;
}

/** The martian guard kube-proxy adds when NodePorts answer on 127.0.0.0/8. */
function localhostGuard(cfg: IptablesRenderConfig): string | null {
  if (cfg.family !== 'IPv4' || !cfg.localhostNodePorts) return null;
  return '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP';
}

function nodePortJumps(cfg: IptablesRenderConfig): string[] {
  const text = '-m comment --comment "kpx service nodeports; NOTE: this must be the last rule in this chain"';
  if (cfg.nodePortAddresses === 'all') {
    const exclude =
      cfg.family === 'IPv6' ? '! -d ::1/128 ' : cfg.localhostNodePorts ? '' : '! -d 127.0.0.0/8 ';
    return [`${exclude}${text} -m addrtype --dst-type LOCAL -j ${CHAIN.nodePorts}`];
  }
  return cfg.nodePortAddresses
    .filter((ip) => !isLoopback(ip) || (cfg.family === 'IPv4' && cfg.localhostNodePorts))
    .map((ip) => `-d ${hostCIDR(ip, cfg.family)} ${text} -j ${CHAIN.nodePorts}`);
}

/** Fixed chains whose content depends only on the node config. */
function fixedChains(cfg: IptablesRenderConfig) {
  const mark = cfg.masqueradeMark;
  const nat: Array<[string, string[]]> = [
    [
      CHAIN.postrouting,
      [
        `-m mark ! --mark ${mark}/${mark} -j RETURN`,
        `-j MARK --set-xmark ${mark}/0x0`,
        `-m comment --comment "kpx service traffic requiring SNAT" -j MASQUERADE${cfg.randomFully ? ' --random-fully' : ''}`,
      ],
    ],
    [CHAIN.markMasq, [`-j MARK --set-xmark ${mark}/${mark}`]],
    [CHAIN.canary, []],
  ];
  const forward = [
    ...(cfg.conntrackTCPLiberal ? [] : ['-m conntrack --ctstate INVALID -j DROP']),
    `-m comment --comment "kpx forwarding rules" -m mark --mark ${mark}/${mark} -j ACCEPT`,
    '-m comment --comment "kpx forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
  ];
  const guard = localhostGuard(cfg);
  const filter: Array<[string, string[]]> = [
    [CHAIN.forward, forward],
    ...(guard ? [[CHAIN.firewall, [guard]] as [string, string[]]] : []),
    [CHAIN.canary, []],
  ];
  return { nat, filter };
}

/** Renders rulesets, reusing a service port's fragment while its inputs are unchanged. */
export class IptablesRenderer {
  private cache = new WeakMap<ServicePort, { endpoints: readonly Endpoint[]; cfg: IptablesRenderConfig; fragment: ServiceFragment }>();
  /** fragments rendered (not reused) by the last render() */
  lastRendered = 0;

  render(model: FamilyModel, cfg: IptablesRenderConfig): IptablesRuleset {
    const leaf = cfg.leafSize ?? DEFAULT_LEAF_SIZE;
    const fragments = new Map<string, ServiceFragment>();
    const natChains = new Map<string, readonly string[]>();
    const natDst: DispatchEntry[] = [];
    const filterSvc: DispatchEntry[] = [];
    const filterExt: DispatchEntry[] = [];
    const filterFw: DispatchEntry[] = [];
    const natNP: PortEntry[] = [];
    const filterNP: PortEntry[] = [];
    const filterHC: PortEntry[] = [];
    let rendered = 0;

    for (const sp of model.servicePorts) {
      const id = servicePortId(sp);
      const endpoints = model.endpoints.get(id) ?? [];
      let hit = this.cache.get(sp);
      if (!hit || hit.endpoints !== endpoints || hit.cfg !== cfg) {
        hit = { endpoints, cfg, fragment: renderServicePort(sp, endpoints, cfg) };
        this.cache.set(sp, hit);
        rendered++;
      }
      const f = hit.fragment;
      fragments.set(id, f);
      for (const [name, rules] of f.natChains) natChains.set(name, rules);
      pushAll(natDst, f.natDestinations);
      pushAll(natNP, f.natNodePorts);
      pushAll(filterSvc, f.filterClusterIPs);
      pushAll(filterExt, f.filterExternalIPs);
      pushAll(filterNP, f.filterNodePorts);
      pushAll(filterFw, f.filterFirewall);
      pushAll(filterHC, f.filterHealthCheck);
    }
    this.lastRendered = rendered;

    const fixed = fixedChains(cfg);
    const tree = (table: Map<string, readonly string[]>, tag: string, entries: DispatchEntry[]) => {
      const out = buildDispatch(addressDispatch(tag, cfg.family, leaf), entries);
      for (const [name, rules] of out.chains) table.set(name, rules);
      return out.rootRules;
    };
    const portTrees = (table: Map<string, readonly string[]>, tag: string, entries: PortEntry[]) => {
      const rules: string[] = [];
      for (const p of PROTOS) {
        const mine = entries.filter((e) => e.protocol === p).map((e) => e.entry);
        if (mine.length === 0) continue;
        const out = buildDispatch(portDispatch(`${tag}${p[0]!.toUpperCase()}`, p, leaf), mine);
        for (const [name, r] of out.chains) table.set(name, r);
        rules.push(...out.rootRules);
      }
      return rules;
    };

    const nat = new Map<string, readonly string[]>();
    nat.set(CHAIN.services, [...tree(nat, 'DST', natDst), ...nodePortJumps(cfg)]);
    nat.set(CHAIN.nodePorts, portTrees(nat, 'NP', natNP));
    for (const [name, rules] of fixed.nat) nat.set(name, rules);
    for (const [name, rules] of natChains) nat.set(name, rules);

    const filter = new Map<string, readonly string[]>();
    filter.set(CHAIN.services, tree(filter, 'SVC', filterSvc));
    filter.set(CHAIN.externalServices, [
      ...tree(filter, 'EXT', filterExt),
      `-m addrtype --dst-type LOCAL -j ${CHAIN.externalNodePorts}`,
    ]);
    filter.set(CHAIN.externalNodePorts, portTrees(filter, 'XNP', filterNP));
    filter.set(CHAIN.proxyFirewall, tree(filter, 'FW', filterFw));
    filter.set(CHAIN.nodePorts, portTrees(filter, 'HC', filterHC));
    for (const [name, rules] of fixed.filter) filter.set(name, rules);

    return { family: cfg.family, tables: { filter, nat }, jumps: builtinJumps(cfg), fragments };
  }
}

function pushAll<T>(into: T[], from: readonly T[]): void {
  for (const x of from) into.push(x);
}

/** One-shot pure render (no cache). */
export function renderIptables(model: FamilyModel, cfg: IptablesRenderConfig): IptablesRuleset {
  return new IptablesRenderer().render(model, cfg);
}

export function countRules(table: ReadonlyMap<string, readonly string[]>): number {
  let n = 0;
  for (const rules of table.values()) n += rules.length;
  return n;
}
