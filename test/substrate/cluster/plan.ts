// The netns cluster's address plan. Everything sits in 198.18.0.0/15 and the three ranges
// are disjoint:
//   pods      198.18.0.0/17    node i (1-based) owns 198.18.i.0/24; .1 is its cni0 bridge
//                              (vxlan: 198.18.i.0/32 is its flannel.1 address, as flannel does)
//   services  198.18.128.0/17  the apiserver's --service-cluster-ip-range (198.18.128.1 is
//                              the `kubernetes` Service)
//   underlay  198.19.0.0/24    .1 the control plane (the apiserver, relayed), node i at
//                              .(10+i), the external client at .100 (and .101)
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

export const POD_RANGE = '198.18.0.0/17';
export const SERVICE_RANGE = '198.18.128.0/17';
export const UNDERLAY_CIDR = '198.19.0.0/24';
export const UNDERLAY_PREFIX = 24;
export const CONTROL_PLANE_IP = '198.19.0.1';
export const EXTERNAL_IP = '198.19.0.100';
export const EXTERNAL_IP2 = '198.19.0.101';
export const MAX_NODES = 20;
export const VNI = 1;
export const VXLAN_PORT = 4789;
/** underlay MTU minus VXLAN's 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14) */
export const VXLAN_MTU = 1450;
export const UNDERLAY_MTU = 1500;

export type Network = 'vxlan' | 'routed';
export type ProxyMode = 'iptables' | 'ipvs';

export const nodeName = (i: number): string => `node-${i}`;
export const nodeIP = (i: number): string => `198.19.0.${10 + i}`;
export const podCIDR = (i: number): string => `198.18.${i}.0/24`;
export const bridgeIP = (i: number): string => `198.18.${i}.1`;
/** flannel's VTEP address for a node: the network address of its pod CIDR */
export const vtepIP = (i: number): string => `198.18.${i}.0`;
/** a fixed, locally administered unicast MAC per node for flannel.1 */
export const vtepMAC = (i: number): string => `0e:6b:70:00:00:${i.toString(16).padStart(2, '0')}`;
export const podIP = (node: number, host: number): string => `198.18.${node}.${host}`;
export const FIRST_POD_HOST = 2;
export const LAST_POD_HOST = 254;

export const podMTU = (network: Network): number => (network === 'vxlan' ? VXLAN_MTU : UNDERLAY_MTU);

/** zones cycle over the list: with the default, node-1 and node-3 share zone-a */
export const DEFAULT_ZONES = ['zone-a', 'zone-b'];

/** '' when kpx's IPVS mode can run here: ip_vs loaded (/proc/net/ip_vs) or available as a module (read-only checks) */
export function ipvsUnavailable(): string {
  if (existsSync('/proc/net/ip_vs')) return '';
  const r = spawnSync('modinfo', ['ip_vs'], { stdio: 'ignore' });
  if (r.status === 0) return '';
  return 'this kernel has no IP_VS (no /proc/net/ip_vs, no ip_vs module): IPVS mode runs in the qemu VM suite (npm run test:ipvs, hack/ipvs-vm)';
}
