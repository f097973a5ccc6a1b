// What the nftables renderer needs to know about this node, for one IP family: the same
// node facts as the iptables renderer (an IptablesRenderConfig from
// src/sync/node-config.ts fits as it is), plus how endpoints are picked.
import type { IptablesRenderConfig } from '../iptables/config.js';

export type NftablesRenderConfig = Pick<
  IptablesRenderConfig,
  'family' | 'nodeName' | 'zone' | 'nodeIPs' | 'localDetector' | 'masqueradeAll' | 'masqueradeMark' | 'nodePortAddresses' | 'randomFully'
> & {
  /** see selectEndpoint() in service.ts; 'rules' when absent */
  readonly endpointSelection?: 'rules' | 'vmap';
  /** the family's ServiceCIDR ranges: an address in them that no Service holds is dropped (none when absent) */
  readonly serviceCIDRs?: readonly string[];
};
