// The differential suite (test/differential/suite.ts) with both twins in IPVS mode:
// upstream kube-proxy `mode: ipvs` and kpx `--proxy-mode ipvs`, the same configuration
// file, the same apiserver objects, real packets. This machine's kernel has no IPVS, so
// `npm run test:ipvs` runs this file in the qemu VM (hack/ipvs-vm); elsewhere it skips
// and says why.
//
// The catalogue subset, chosen for what IPVS mode does differently and for the time a
// run takes under software emulation (TCG):
// - every service type and address kind (ClusterIP with an undefined port and an
//   unallocated service-CIDR address, NodePort, LoadBalancer with and without
//   loadBalancerSourceRanges, externalIPs), ClientIP affinity (IPVS persistence), both
//   traffic policies with and without local endpoints, no endpoints, terminating
//   endpoints (Cluster and Local), hairpin, and the change sequence (scale up, terminating,
//   scale to zero, delete, recreate);
// - variants: masqueradeAll, detectLocalMode NodeCIDR and `nodePortAddresses: []` (which
//   addresses IPVS mode serves NodePorts on);
// - health: healthy, node tainted, node being deleted; metric families. Not the stalled
//   sync: its gate (test/substrate/kube-proxy.ts) holds iptables-restore and nft, which
//   kube-proxy's IPVS mode runs on every sync, but kpx's IPVS partial syncs run only
//   ipvsadm and ipset, so kpx never stalls and the case compares nothing (it failed so in
//   CI). Holding ipvsadm -R and ipset writes too would make it fair; not done yet.
// Left out:
// - the topology-hint cases (hints-*): the endpoint selection by hints is the same code
//   in every mode on both sides (kube-proxy's endpoint categorisation, kpx's
//   src/model selection), so the iptables and nftables runs prove it; here it would only
//   add ~45 probes of the same selection;
// - the InterfaceNamePrefix and BridgeInterface detect-local variants: each is a restart
//   of both proxies (~1 min under emulation) and tests the same masquerade decision as
//   NodeCIDR, from the same pods;
// - the dual-stack twins: IPv6 in IPVS mode is proven by test/ipvs/ipvs.test.ts; a second
//   pair of twins costs another apiserver and two more proxy starts;
// - SCTP: the probe client has no SCTP (the suite's SCTP case would only skip).
import { ipvsUnavailable } from '../substrate/cluster/plan.js';
import { describeDifferential } from '../differential/suite.js';

const emulated = process.env.KPX_IN_VM === '1';

describeDifferential(
  'ipvs',
  {
    cases: [
      'cluster-ip',
      'node-port',
      'load-balancer',
      'lb-source-ranges',
      'external-ips',
      'session-affinity',
      'etp-local',
      'etp-local-none-local',
      'itp-local',
      'itp-local-none-local',
      'no-endpoints',
      'terminating',
      'terminating-local',
      'hairpin',
    ],
    variants: ['masqueradeAll', 'detectLocalMode NodeCIDR', 'nodePortAddresses all (localhost NodePorts)'],
    health: ['node tainted', 'node being deleted'],
    sctp: false,
    // the VM runs everything 3-10x slower (hack/ipvs-vm/README.md): the bounds on syncs and
    // convergence scale, as in test/e2e/netns-ipvs.test.ts
    timeScale: emulated ? 4 : 1,
  },
  ipvsUnavailable(),
);
