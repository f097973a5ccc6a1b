// Whether the netns cluster can run here, and a factory for the e2e scenarios.
import { existsSync } from 'node:fs';
import { dataplaneEnv } from '../substrate/netns.js';
import { TEST_APISERVER_BIN } from '../substrate/apiserver.js';
import { NetnsCluster } from '../substrate/cluster/netns-cluster.js';
import type { Network, ProxyMode } from '../substrate/cluster/plan.js';

export async function netnsClusterSkip(): Promise<string> {
  const env = await dataplaneEnv();
  if (!env.ok) return env.reason;
  if (!existsSync(TEST_APISERVER_BIN)) return `no test apiserver at ${TEST_APISERVER_BIN} (build it with hack/test-apiserver/build.sh, which hack/test.sh runs)`;
  if (!existsSync('/proc/sys/net/bridge')) return 'no br_netfilter (net.bridge.bridge-nf-call-iptables): bridged pod traffic would bypass the rules';
  return '';
}

export const netnsCluster = (network: Network, proxyMode: ProxyMode, tag: string) => () =>
  NetnsCluster.up({ name: `t${process.pid}-${tag}`, nodes: 3, network, proxyMode, owner: process.pid });
