// What happens after a sync, as kube-proxy does it: mark families updated for health,
// delete stale UDP/SCTP conntrack flows, and serve healthCheckNodePorts with the local
// endpoint counts the sync just programmed.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import { frontendsFromRules, type ConntrackCleaner } from '../apply/conntrack.js';
import type { ServiceHealthServers, HealthCheckService } from '../server/service-health.js';
import type { ProxyHealth } from '../server/health.js';
import type { ServicePortState } from '../model/types.js';
import type { SyncObserver } from './controller.js';
import { familiesFailedBy, type SyncReport } from './driver.js';

/** healthCheckNodePort services and their local ready endpoint count (distinct IPs). */
export function healthCheckServices(fragmentsByFamily: Iterable<Iterable<ServicePortState>>): Map<string, HealthCheckService> {
  const out = new Map<string, HealthCheckService>();
  const ips = new Map<string, Map<IPFamily, Set<string>>>();
  for (const fragments of fragmentsByFamily) {
    for (const f of fragments) {
      const sp = f.servicePort;
      if (!sp.healthCheckNodePort) continue;
      const [namespace, name] = sp.serviceKey.split('/') as [string, string];
      let byFam = ips.get(sp.serviceKey);
      if (!byFam) ips.set(sp.serviceKey, (byFam = new Map<IPFamily, Set<string>>()));
      let set = byFam.get(sp.family);
      if (!set) byFam.set(sp.family, (set = new Set()));
      for (const e of f.endpoints) if (e.isLocal && e.ready) set.add(e.ip);
      // a dual-stack pod has one IP per family: count the larger family, not both
      const count = Math.max(...[...byFam.values()].map((s) => s.size));
      out.set(sp.serviceKey, { namespace, name, port: sp.healthCheckNodePort, localEndpoints: count });
    }
  }
  return out;
}

export class PostSync implements SyncObserver {
  constructor(
    private readonly log: Logger,
    private readonly health: ProxyHealth,
    private readonly families: () => IPFamily[],
    private readonly conntrack: ConntrackCleaner | null,
    private readonly healthServers: ServiceHealthServers | null,
  ) {}

  onQueued(): void {
    // before the first sync no family is known; IPv4 is always programmed
    const known = this.families();
    this.health.queued(known.length ? known : ['IPv4']);
  }

  async onSync(report: SyncReport, pending: { services: ReadonlySet<string>; endpoints: ReadonlySet<string> }): Promise<void> {
    const changed = pending.services.size > 0 || pending.endpoints.size > 0;
    const reason = report.error?.message ?? '';
    for (const fam of familiesFailedBy(report, this.families())) this.health.failed(fam, reason);
    for (const f of report.families) {
      if (f.error) {
        this.health.failed(f.family, f.error.message);
        continue;
      }
      this.health.updated(f.family);
      if (this.conntrack && f.kernelNatBefore) {
        this.conntrack.seed(f.family, frontendsFromRules(f.kernelNatBefore));
        this.conntrack.seedTcp(f.family, f.kernelNatBefore);
      }
      if (this.conntrack && changed) {
        await this.conntrack.clean(f.family, f.ports()).catch((err: Error) => {
          this.log.warn({ family: f.family, err: err.message }, 'conntrack cleanup failed');
        });
      }
    }
    if (this.healthServers && report.families.some((f) => !f.error)) {
      await this.healthServers.sync(healthCheckServices(report.families.map((f) => f.ports())));
    }
  }
}
