// The proxy modes and what each leaves in the kernel. When a mode starts, what belongs
// only to other modes goes: first what cannot be in the new mode's way, the rest once the
// new mode's first sync is in place (kube-proxy's CleanupLeftovers, per mode). A new mode
// adds a row to MODES and, if it owns something new, to RESOURCES.
import type { Logger } from '../util/log.js';
import type { CommandRunner } from '../apply/exec.js';
import { removeIpvsState } from '../apply/ipvs.js';
import { cleanupIptables } from '../apply/cleanup.js';
import { removeNftablesTables } from '../apply/nftables.js';
import type { IPFamily } from '../util/ip.js';
import type { FamilyBackend, ModeDetail, ProxierOptions, ProxyMode } from './driver.js';

/** Kernel state a mode programs. */
type Resource = 'iptables chains' | 'ipvs state' | 'nftables tables';

interface ResourceCleanup {
  /**
   * Removes what can go before the new mode's first sync, and returns what must wait
   * until that sync is in place (rules still refer to it until then), if anything.
   */
  remove(runner: CommandRunner, log: Logger): Promise<(() => Promise<void>) | null>;
}

const RESOURCES: Record<Resource, ResourceCleanup> = {
  // KPX- chains and jumps: the iptables-based modes share them (each one's full sync
  // replaces the other's). A mode without them removes them once its own rules serve: until
  // then they keep serving established and new connections
  'iptables chains': {
    remove(runner, log) {
      return Promise.resolve(async () => {
        const { errors } = await cleanupIptables(runner, log);
        if (errors.length) throw new Error(`removing kpx's iptables rules: ${errors.join('; ')}`);
      });
    },
  },
  // kpx's own tables (ip kpx, ip6 kpx): nothing refers to them from outside, but both
  // would DNAT the same traffic, so they go once the new mode's first sync is in place
  'nftables tables': {
    remove(runner, log) {
      return Promise.resolve(async () => void (await removeNftablesTables(runner, log)));
    },
  },
  // virtual servers and the dummy now; the ipsets after the first sync, when no rule
  // refers to them any more
  'ipvs state': {
    async remove(runner, log) {
      const { setsLeft } = await removeIpvsState(runner, log, { sets: false });
      return setsLeft ? async () => void (await removeIpvsState(runner, log, { sets: true })) : null;
    },
  },
};

/** What each mode programs. */
export const MODES: Record<ProxyMode, { readonly owns: readonly Resource[] }> = {
  iptables: { owns: ['iptables chains'] },
  ipvs: { owns: ['iptables chains', 'ipvs state'] },
  nftables: { owns: ['nftables tables'] },
};

/**
 * Starts removing what other modes left and `mode` does not own. Returns what to run
 * after `mode`'s first successful sync.
 */
export async function removeLeftovers(mode: ProxyMode, runner: CommandRunner, log: Logger): Promise<(() => Promise<void>) | null> {
  const later: Array<() => Promise<void>> = [];
  for (const [resource, cleanup] of Object.entries(RESOURCES) as Array<[Resource, ResourceCleanup]>) {
    if (MODES[mode].owns.includes(resource)) continue;
    const rest = await cleanup.remove(runner, log);
    if (rest) later.push(rest);
  }
  return later.length ? async () => void (await Promise.all(later.map((f) => f()))) : null;
}

/** What every mode does alike: one backend per family, made on first use, and the other modes' leftovers. */
export abstract class Families<C, D extends ModeDetail, F extends FamilyBackend<C, D>> {
  private readonly families = new Map<IPFamily, F>();
  private leftovers: (() => Promise<void>) | null = null;

  constructor(readonly opts: ProxierOptions) {}

  protected abstract create(family: IPFamily): F;

  family(family: IPFamily): F {
    let f = this.families.get(family);
    if (!f) this.families.set(family, (f = this.create(family)));
    return f;
  }

  /** Removes what other modes left that `mode` does not own; the rest after the first good sync. */
  protected async removeLeftovers(mode: ProxyMode): Promise<void> {
    if (!this.opts.config.dryRun) this.leftovers = await removeLeftovers(mode, this.opts.runner, this.opts.log);
  }

  async afterSuccess(): Promise<void> {
    const rest = this.leftovers;
    this.leftovers = null;
    // the new mode serves already: a leftover that cannot go is worth an error, not a failed sync
    await rest?.().catch((err: Error) => this.opts.log.error({ err: err.message }, "cannot remove another proxy mode's leftovers; `kpx cleanup` removes them"));
  }
}
