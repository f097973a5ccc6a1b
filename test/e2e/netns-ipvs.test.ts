// The same scenarios with kpx in IPVS mode. They need a kernel with IP_VS; this machine's
// has none (no /proc/net/ip_vs, no loadable modules), so here they skip; `npm run
// test:ipvs` runs them in the qemu VM (hack/ipvs-vm), figures in hack/netns-cluster.md.
import { ipvsUnavailable } from '../substrate/cluster/plan.js';
import { e2eSuite } from './scenarios.js';
import { netnsCluster, netnsClusterSkip } from './netns-env.js';

const base = await netnsClusterSkip();
const skip = base || ipvsUnavailable();
// In the VM (software emulation) kpx takes 2-9 s to program a change (measured there), so
// the waits are scaled and the rolling replacement's pods get a grace period longer than
// that: with 3 s, pods were killed before their endpoints' terminating state was programmed.
const emulated = process.env.KPX_IN_VM === '1';
e2eSuite('netns cluster, vxlan, ipvs', skip, netnsCluster('vxlan', 'ipvs', 'ipvs'), emulated ? { timeoutScale: 3, graceSeconds: 15 } : {});
