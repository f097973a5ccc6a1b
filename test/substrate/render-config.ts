// A node config for renderer and tracer unit tests (the dataplane topology's addresses).
import type { IptablesRenderConfig } from '../../src/render/iptables/config.js';

export const baseConfig: IptablesRenderConfig = {
  family: 'IPv4',
  nodeName: 'node-a',
  zone: 'z1',
  nodeIPs: ['198.18.0.10'],
  localDetector: { source: '198.18.1.0/24' },
  masqueradeAll: false,
  masqueradeMark: '0x4000',
  nodePortAddresses: 'all',
  localhostNodePorts: true,
  randomFully: true,
  conntrackTCPLiberal: false,
};

export const NODE_LOCAL_ADDRESSES = ['198.18.0.10', '198.18.1.1', '127.0.0.1'];
