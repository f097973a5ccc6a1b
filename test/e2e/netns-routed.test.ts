// kpx (iptables mode) end to end on a 3-node netns cluster whose nodes route pod CIDRs
// via each other's underlay address (host-gw style; pod MTU 1500).
import { e2eSuite } from './scenarios.js';
import { netnsCluster, netnsClusterSkip } from './netns-env.js';

e2eSuite('netns cluster, routed, iptables', await netnsClusterSkip(), netnsCluster('routed', 'iptables', 'rt'));
