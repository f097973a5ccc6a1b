// The same scenarios with kpx in IPVS mode. They need a kernel with IP_VS; this one has
// none (no /proc/net/ip_vs, no loadable modules), so here they skip. kpx's IPVS mode is
// proven in a qemu VM (test/ipvs, hack/ipvs-vm); this suite has not run anywhere yet.
import { ipvsUnavailable } from '../substrate/cluster/plan.js';
import { e2eSuite } from './scenarios.js';
import { netnsCluster, netnsClusterSkip } from './netns-env.js';

const base = await netnsClusterSkip();
const skip = base || ipvsUnavailable();
e2eSuite('netns cluster, vxlan, ipvs', skip, netnsCluster('vxlan', 'ipvs', 'ipvs'));
