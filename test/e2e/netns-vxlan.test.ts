// kpx (iptables mode) end to end on a 3-node netns cluster whose nodes carry pod traffic
// over VXLAN (flannel.1 style, static FDB; pod MTU 1450).
import { e2eSuite } from './scenarios.js';
import { netnsCluster, netnsClusterSkip } from './netns-env.js';

e2eSuite('netns cluster, vxlan, iptables', await netnsClusterSkip(), netnsCluster('vxlan', 'iptables', 'vx'));
