// `kpx cleanup`: removes every chain and jump kpx owns, in both iptables backends and both
// families (batched on nft, like full syncs). Idempotent; other rules stay untouched.
// `kpx cleanup --kube-proxy` removes kube-proxy's leftovers the same way.
import type { Logger } from '../util/log.js';
import { FAMILIES } from '../util/ip.js';
import { planCleanup } from '../render/iptables/restore.js';
import { parseSave } from '../iptables/save.js';
import { isKpxChain } from '../render/iptables/names.js';
import { binaries, type IptablesBackend } from './backend.js';
import type { CommandRunner } from './exec.js';
import { Teardown } from './teardown.js';
import { FULL_SYNC_BATCH_LINES } from './iptables.js';

/** kube-proxy's fixed chains: iptables mode, then the extra ones of its IPVS mode. */
const KUBE_PROXY_CHAINS = new Set([
  'KUBE-SERVICES',
  'KUBE-NODEPORTS',
  'KUBE-POSTROUTING',
  'KUBE-MARK-MASQ',
  'KUBE-EXTERNAL-SERVICES',
  'KUBE-FORWARD',
  'KUBE-PROXY-FIREWALL',
  'KUBE-PROXY-CANARY',
  'KUBE-NODE-PORT',
  'KUBE-LOAD-BALANCER',
  'KUBE-SOURCE-RANGES-FIREWALL',
  'KUBE-IPVS-FILTER',
  'KUBE-IPVS-OUT-FILTER',
]);

/**
 * For `kpx cleanup --kube-proxy`: chains kube-proxy's iptables mode creates. kubelet's
 * chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-MARK-DROP) stay.
 */
export function isKubeProxyChain(name: string): boolean {
  return KUBE_PROXY_CHAINS.has(name) || /^KUBE-(SVC|SVL|SEP|EXT|FW|XLB)-[A-Z0-9]{16}$/.test(name);
}

export interface CleanupReport {
  chainsDeleted: number;
  jumpsDeleted: number;
  errors: string[];
}

export async function cleanupIptables(
  runner: CommandRunner,
  log: Logger,
  owns: (chain: string) => boolean = isKpxChain,
  whose = 'kpx',
): Promise<CleanupReport> {
  const report: CleanupReport = { chainsDeleted: 0, jumpsDeleted: 0, errors: [] };
  for (const backend of ['nft', 'legacy'] as IptablesBackend[]) {
    for (const family of FAMILIES) {
      const bins = binaries(family, backend);
      // All tables at once (no -t): asking legacy for a table would create it.
      const saved = await runner.run(bins.save, []).catch(() => null);
      if (!saved || saved.exitCode !== 0) {
        log.debug({ backend, family, err: saved?.stderr.trim() }, 'backend not usable; skipped');
        continue;
      }
      const plan = planCleanup(parseSave(saved.stdout), owns, backend === 'nft' ? FULL_SYNC_BATCH_LINES : Infinity);
      if (plan.empty) continue;
      const r = await runner.run(bins.restore, ['-w', '5', '--noflush'], { input: plan.batches(), timeoutMs: 600_000 });
      if (r.exitCode !== 0) {
        const msg = `${bins.restore}: ${r.stderr.trim().split('\n')[0]}`;
        report.errors.push(msg);
        log.error({ backend, family, err: msg }, 'cleanup failed');
        continue;
      }
      report.chainsDeleted += plan.chainsDeleted;
      report.jumpsDeleted += plan.jumpsChanged;
      log.info({ backend, family, chains: plan.chainsDeleted, jumps: plan.jumpsChanged }, `removed ${whose} rules`);
    }
  }
  return report;
}

/** kube-proxy's IPVS-mode dummy interface; it holds every service address on the node. */
const KUBE_IPVS_DEVICE = 'kube-ipvs0';

/**
 * `kpx cleanup --kube-proxy`: what kube-proxy leaves behind when it is removed. Its iptables
 * chains and jumps (both modes), then its IPVS-mode ipsets (only once no rule references them)
 * and its dummy interface. kubelet's chains and kpx's own rules stay. IPVS virtual servers
 * are left alone: they may be kpx's own (see docs/migrate.md).
 */
export async function cleanupKubeProxy(runner: CommandRunner, log: Logger): Promise<CleanupReport> {
  const report = await cleanupIptables(runner, log, isKubeProxyChain, 'kube-proxy');
  const td = new Teardown(runner, log);
  const sets = await runner.run('ipset', ['list', '-n']);
  if (sets.exitCode === 0) await td.destroySets(sets.stdout.split('\n').filter((n) => n.startsWith('KUBE-')), 'kube-proxy');
  else log.debug({ err: sets.stderr.trim() }, 'ipset not usable; skipped');
  await td.deleteLink(KUBE_IPVS_DEVICE, 'kube-proxy');
  report.errors.push(...td.errors);
  return report;
}
