// Two Services may not serve the same frontend: the same IP, port and protocol (cluster
// IP, external IP or load-balancer IP), or the same NodePort and protocol. The apiserver
// refuses most such pairs (it allocates ClusterIPs and NodePorts once); a file source, or
// external IPs and LB IPs that nobody allocates, can still bring them. kpx serves the
// older Service (creationTimestamp; on a tie, or with none, the first by namespace/name)
// and names the other. The outcome depends only on the set of Services, not on the order
// of events or of the files.
import type { ServicePort } from './types.js';
import { joinHostPort } from '../util/ip.js';

interface Wanted {
  readonly ports: readonly ServicePort[];
  /** creationTimestamp in ms (Infinity when unknown) */
  readonly created: number;
  readonly claims: readonly string[];
}

/** A Service refused because an older one serves one of its frontends. */
export interface Conflict {
  readonly service: string;
  readonly frontend: string;
  readonly servedBy: string;
}

/** The frontends a Service's ports claim. */
function claimsOf(ports: readonly ServicePort[]): string[] {
  const out = new Set<string>();
  for (const sp of ports) {
    const proto = sp.protocol;
    for (const ip of [sp.clusterIP, ...sp.externalIPs, ...sp.loadBalancerVIPs]) out.add(`${joinHostPort(ip, sp.port)}/${proto}`);
    if (sp.nodePort) out.add(`NodePort ${sp.nodePort}/${proto}`);
  }
  return [...out];
}

export class FrontendConflicts {
  private readonly wanted = new Map<string, Wanted>();
  /** frontend -> Services that want it */
  private readonly byClaim = new Map<string, Set<string>>();
  /** Services admitted, with their ports */
  private readonly admitted = new Map<string, readonly ServicePort[]>();

  /**
   * Records what a Service wants (no ports: it is gone) and works out again which of the
   * Services it shares frontends with are served. Returns the Services whose served ports
   * changed (with their ports now, empty when not served) and the conflicts found.
   */
  set(key: string, ports: readonly ServicePort[], created: number): { changed: Map<string, readonly ServicePort[]>; conflicts: Conflict[] } {
    const affected = this.component(key);
    const old = this.wanted.get(key);
    for (const c of old?.claims ?? []) this.byClaim.get(c)?.delete(key);
    if (ports.length) {
      const w: Wanted = { ports, created, claims: claimsOf(ports) };
      this.wanted.set(key, w);
      for (const c of w.claims) {
        let set = this.byClaim.get(c);
        if (!set) this.byClaim.set(c, (set = new Set()));
        set.add(key);
      }
    } else this.wanted.delete(key);
    for (const k of this.component(key)) affected.add(k);
    return this.resolve(affected);
  }

  /** The Services linked to `key` through shared frontends (key included). */
  private component(key: string): Set<string> {
    const out = new Set<string>([key]);
    const queue = [key];
    while (queue.length) {
      const k = queue.pop()!;
      for (const c of this.wanted.get(k)?.claims ?? []) {
        for (const other of this.byClaim.get(c) ?? []) {
          if (!out.has(other)) {
            out.add(other);
            queue.push(other);
          }
        }
      }
    }
    return out;
  }

  /** Admits the affected Services oldest first, each unless an admitted one holds one of its frontends. */
  private resolve(affected: Set<string>): { changed: Map<string, readonly ServicePort[]>; conflicts: Conflict[] } {
    const order = [...affected].filter((k) => this.wanted.has(k));
    order.sort((a, b) => {
      const x = this.wanted.get(a)!;
      const y = this.wanted.get(b)!;
      if (x.created !== y.created) return x.created < y.created ? -1 : 1;
      return a < b ? -1 : a > b ? 1 : 0;
    });
    const held = new Map<string, string>();
    const now = new Map<string, readonly ServicePort[]>();
    const conflicts: Conflict[] = [];
    for (const k of order) {
      const w = this.wanted.get(k)!;
      const taken = w.claims.find((c) => held.has(c));
      if (taken) {
        conflicts.push({ service: k, frontend: taken, servedBy: held.get(taken)! });
        continue;
      }
      for (const c of w.claims) held.set(c, k);
      now.set(k, w.ports);
    }
    const changed = new Map<string, readonly ServicePort[]>();
    for (const k of affected) {
      const before = this.admitted.get(k);
      const after = now.get(k);
      if (before === after) continue;
      changed.set(k, after ?? []);
      if (after) this.admitted.set(k, after);
      else this.admitted.delete(k);
    }
    return { changed, conflicts };
  }
}
