// IPVS mode, iptables side: the few rules kube-proxy's IPVS mode keeps, matching ipsets
// instead of one rule per service, so they depend on the node config only. IPVS itself
// does the DNAT (in LOCAL_IN / LOCAL_OUT); these rules decide masquerade, NodePort and
// LB source-range filtering, and reject traffic to service addresses on ports that are
// not services (the addresses are local to the node through the dummy interface).
import { comment } from '../../iptables/format.js';
import { baseMatch } from '../iptables/config.js';
import { CHAIN } from '../iptables/names.js';
import type { BuiltinJump, IptablesRuleset, TableName } from '../iptables/ruleset.js';
import { setName, type IpvsRenderConfig } from './ipvs.js';

/** Chains of the IPVS mode beyond the shared fixed ones (names mirror kube-proxy's). */
export const IPVS_CHAIN = {
  loadBalancer: 'KPX-LOAD-BALANCER',
  externalIP: 'KPX-EXTERNAL-IP',
  nodePort: 'KPX-NODE-PORT',
  ipvsFilter: 'KPX-IPVS-FILTER',
} as const;


export function ipvsIptablesRuleset(cfg: IpvsRenderConfig): IptablesRuleset {
  const s = (k: Parameters<typeof setName>[1]) => setName(cfg.family, k);
  const mark = cfg.masqueradeMark;
  const toMasq = `-j ${CHAIN.markMasq}`;
  const clusterMasq = cfg.masqueradeAll
    ? [`${comment('kpx service cluster ip + port for masquerade purpose')} -m set --match-set ${s('clusterIP')} dst,dst ${toMasq}`]
    : cfg.localDetector
      ? [`${baseMatch({ local: cfg.localDetector, negate: true })} ${comment('kpx service traffic from outside the cluster')} -m set --match-set ${s('clusterIP')} dst,dst ${toMasq}`]
      : [];
  const nodePortRules = (['TCP', 'UDP', 'SCTP'] as const).flatMap((P) => {
    const p = P.toLowerCase();
    return [
      `-p ${p} ${comment(`kpx nodeport ${p} with externalTrafficPolicy=Local`)} -m set --match-set ${s(`nodePortLocal${P}`)} dst -j RETURN`,
      `-p ${p} ${comment(`kpx nodeport ${p}`)} -m set --match-set ${s(`nodePort${P}`)} dst ${toMasq}`,
    ];
  });
  const nat: Array<[string, string[]]> = [
    [
      CHAIN.services,
      [
        `${comment('kpx load balancer ip + port')} -m set --match-set ${s('loadBalancer')} dst,dst -j ${IPVS_CHAIN.loadBalancer}`,
        ...clusterMasq,
        `${comment('kpx external ip + port')} -m set --match-set ${s('externalIP')} dst,dst -j ${IPVS_CHAIN.externalIP}`,
        `${comment('kpx service nodeports')} -m addrtype --dst-type LOCAL -j ${IPVS_CHAIN.nodePort}`,
      ],
    ],
    [IPVS_CHAIN.loadBalancer, [`-m set --match-set ${s('loadBalancerLocal')} dst,dst -j RETURN`, toMasq]],
    [IPVS_CHAIN.externalIP, [`-m set --match-set ${s('externalIPLocal')} dst,dst -j RETURN`, toMasq]],
    [IPVS_CHAIN.nodePort, nodePortRules],
    [
      CHAIN.postrouting,
      [
        `${comment('kpx endpoint reaching itself through its service')} -m set --match-set ${s('loopBack')} dst,dst,src -j MASQUERADE`,
        `-m mark ! --mark ${mark}/${mark} -j RETURN`,
        `-j MARK --set-xmark ${mark}/0x0`,
        `${comment('kpx service traffic requiring SNAT')} -j MASQUERADE${cfg.randomFully ? ' --random-fully' : ''}`,
      ],
    ],
    [CHAIN.markMasq, [`-j MARK --set-xmark ${mark}/${mark}`]],
    [CHAIN.canary, []],
  ];
  const filter: Array<[string, string[]]> = [
    [
      CHAIN.forward,
      [
        ...(cfg.conntrackTCPLiberal ? [] : ['-m conntrack --ctstate INVALID -j DROP']),
        `${comment('kpx forwarding rules')} -m mark --mark ${mark}/${mark} -j ACCEPT`,
        `${comment('kpx forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      ],
    ],
    [
      CHAIN.proxyFirewall,
      [
        `${comment('kpx load balancer source ranges')} -m set --match-set ${s('loadBalancerFW')} dst,dst -m set ! --match-set ${s('loadBalancerSourceCIDR')} dst,dst,src -j DROP`,
      ],
    ],
    [CHAIN.nodePorts, [`${comment('kpx health check node port')} -m set --match-set ${s('healthCheckNodePort')} dst -j ACCEPT`]],
    [
      IPVS_CHAIN.ipvsFilter,
      [
        `-m set --match-set ${s('loadBalancer')} dst,dst -j RETURN`,
        `-m set --match-set ${s('clusterIP')} dst,dst -j RETURN`,
        `-m set --match-set ${s('externalIP')} dst,dst -j RETURN`,
        `${comment('kpx service addresses on ports that are not services')} -m conntrack --ctstate NEW -m set --match-set ${s('ipvsIPs')} dst -j REJECT`,
      ],
    ],
    [CHAIN.canary, []],
  ];
  const isNew = '-m conntrack --ctstate NEW';
  const fw = `${isNew} ${comment('kpx load balancer firewall')} -j ${CHAIN.proxyFirewall}`;
  const jumps: BuiltinJump[] = [
    { table: 'filter', chain: 'INPUT', rule: fw },
    { table: 'filter', chain: 'INPUT', rule: `${comment('kpx health check service ports')} -j ${CHAIN.nodePorts}` },
    { table: 'filter', chain: 'INPUT', rule: `${comment('kpx ipvs access filter')} -j ${IPVS_CHAIN.ipvsFilter}` },
    { table: 'filter', chain: 'FORWARD', rule: fw },
    { table: 'filter', chain: 'FORWARD', rule: `${comment('kpx forwarding rules')} -j ${CHAIN.forward}` },
    { table: 'filter', chain: 'OUTPUT', rule: fw },
    { table: 'filter', chain: 'OUTPUT', rule: `${comment('kpx ipvs access filter')} -j ${IPVS_CHAIN.ipvsFilter}` },
    { table: 'nat', chain: 'PREROUTING', rule: `${comment('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'OUTPUT', rule: `${comment('kpx service portals')} -j ${CHAIN.services}` },
    { table: 'nat', chain: 'POSTROUTING', rule: `${comment('kpx postrouting rules')} -j ${CHAIN.postrouting}` },
  ];
  const blocks = (list: Array<[string, string[]]>) => list.map(([n, rules]) => [n, rules.map((r) => `-A ${n} ${r}`).join('\n')] as const);
  const tables: Record<TableName, ReadonlyArray<readonly [string, string]>> = { nat: blocks(nat), filter: blocks(filter) };
  return { family: cfg.family, chains: (t) => tables[t], jumps };
}
