// The differential suites (test/differential/suite.ts) in iptables and nftables mode, the
// whole catalogue each; IPVS mode runs in the qemu VM (test/ipvs/differential.test.ts).
import { describeDifferential, describeDualStackDifferential } from './suite.js';

for (const mode of ['iptables', 'nftables'] as const) describeDifferential(mode);
for (const mode of ['iptables', 'nftables'] as const) describeDualStackDifferential(mode);
