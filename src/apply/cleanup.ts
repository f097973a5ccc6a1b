// `kpx cleanup`: removes every chain and jump kpx owns, in both iptables backends and both
// families, in one atomic restore per table set. Idempotent; other rules stay untouched.
import type { Logger } from '../util/log.js';
import { FAMILIES } from '../util/ip.js';
import { parseSave, planCleanup } from '../render/iptables/restore.js';
import { isKpxChain } from '../render/iptables/names.js';
import { binaries, type IptablesBackend } from './backend.js';
import type { CommandRunner } from './exec.js';

export interface CleanupReport {
  chainsDeleted: number;
  jumpsDeleted: number;
  errors: string[];
}

export async function cleanupIptables(
  runner: CommandRunner,
  log: Logger,
  owns: (chain: string) => boolean = isKpxChain,
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
      const plan = planCleanup(parseSave(saved.stdout), owns);
      if (!plan.text) continue;
      const r = await runner.run(bins.restore, ['-w', '5', '--noflush'], { input: plan.text });
      if (r.exitCode !== 0) {
        const msg = `${bins.restore}: ${r.stderr.trim().split('\n')[0]}`;
        report.errors.push(msg);
        log.error({ backend, family, err: msg }, 'cleanup failed');
        continue;
      }
      report.chainsDeleted += plan.chainsDeleted;
      report.jumpsDeleted += plan.jumpsChanged;
      log.info({ backend, family, chains: plan.chainsDeleted, jumps: plan.jumpsChanged }, 'removed kpx rules');
    }
  }
  return report;
}
