// The cluster state and its change tracker: applies typed changes from any source,
// remembers what changed since the last sync (each sync checks it out once, with
// takePending(), like kube-proxy's change trackers' Update()), and gives each family's
// renderer its view of the model.
import type { Logger } from '../util/log.js';
import type { IPFamily } from '../util/ip.js';
import {
  ANNOTATION_TRIGGER_TIME,
  objectKey,
  type ResourceKind,
  type EndpointSliceObject,
  type NodeObject,
  type ServiceCIDRObject,
  type ServiceObject,
} from './kube.js';
import { parseCIDR } from '../util/ip.js';
import {
  convertEndpointSlice,
  convertNode,
  convertService,
  mergeEndpoints,
  slicePortKey,
  type Refusal,
  type SliceData,
} from './convert.js';
import type { Endpoint, ModelView, NodeFacts, ServicePort } from './types.js';
import { FrontendConflicts } from './conflicts.js';

/**
 * A change as every source emits it: add (no previous), update (both), delete (no
 * current). Objects have passed validateObject(); origin (e.g. a file) is for logs.
 * `previous` names what changed; the model never reads more of it than metadata (name,
 * namespace, labels), and the file source keeps no more than that of each object.
 */
export type Change =
  | { readonly kind: 'Service'; readonly previous?: ServiceObject; readonly current?: ServiceObject; readonly origin?: string }
  | {
      readonly kind: 'EndpointSlice';
      readonly previous?: EndpointSliceObject;
      readonly current?: EndpointSliceObject;
      readonly origin?: string;
    }
  | { readonly kind: 'Node'; readonly previous?: NodeObject; readonly current?: NodeObject; readonly origin?: string }
  | { readonly kind: 'ServiceCIDR'; readonly previous?: ServiceCIDRObject; readonly current?: ServiceCIDRObject; readonly origin?: string };

/** The object type of each kind. */
export interface ObjectOf {
  readonly Service: ServiceObject;
  readonly EndpointSlice: EndpointSliceObject;
  readonly Node: NodeObject;
  readonly ServiceCIDR: ServiceCIDRObject;
}

/**
 * A Change of a kind from objects validated as that kind (validateObject). The one place
 * a kind and its objects are paired; sources build their changes with it.
 */
export function changeOf<K extends ResourceKind>(kind: K, previous: ObjectOf[K] | undefined, current: ObjectOf[K] | undefined, origin?: string): Change {
  const c = { kind, ...(previous ? { previous } : {}), ...(current ? { current } : {}), ...(origin ? { origin } : {}) };
  return c as Change;
}

/** What changed since the last sync; the sync engine reads and resets it. */
export interface PendingChanges {
  /** services whose spec changed (keys "ns/name") */
  readonly services: ReadonlySet<string>;
  /** services whose endpoints changed */
  readonly endpoints: ReadonlySet<string>;
  /** this node's facts changed */
  readonly node: boolean;
  /** last-change-trigger-time of endpoint changes (ms), per family, for network programming latency */
  readonly triggerTimes: ReadonlyArray<{ readonly family: IPFamily; readonly time: number }>;
}

/** Services whose rules may differ: their spec or their endpoints changed. */
export function changedServices(p: PendingChanges): Set<string> {
  return new Set([...p.services, ...p.endpoints]);
}

interface SliceEntry extends SliceData {
  readonly name: string;
}

export class ClusterState {
  private readonly services = new Map<string, readonly ServicePort[]>();
  private readonly slices = new Map<string, SliceEntry>();
  private readonly slicesByService = new Map<string, Set<string>>();
  /** serviceKey -> merged endpoints per family and slice port, built on first use; dropped when a slice changes */
  private readonly endpointCache = new Map<string, MergedEndpoints[]>();
  private nodeFacts: NodeFacts | null = null;
  /** ServiceCIDR name -> its ranges (canonical text) */
  private readonly serviceCIDRObjects = new Map<string, readonly string[]>();
  /** which Service serves a frontend two of them claim */
  private readonly frontends = new FrontendConflicts();
  /** Services refused because an older one serves one of their frontends */
  private readonly conflicted = new Set<string>();
  /** where each Service that claims frontends came from (a file), for the conflict warnings */
  private readonly origins = new Map<string, string>();
  private pending = emptyPending();
  private readonly endpointTotals: Record<IPFamily, number> = { IPv4: 0, IPv6: 0 };
  /** trigger times before this are not observed (ms) */
  startedAt = Date.now();

  constructor(
    readonly nodeName: string,
    private readonly log: Logger,
  ) {}

  get node(): NodeFacts | null {
    return this.nodeFacts;
  }

  get serviceCount(): number {
    return this.services.size;
  }

  get sliceCount(): number {
    return this.slices.size;
  }

  /** Endpoint entries (per port) in slices of a family: decides large-cluster mode. */
  endpointCount(family: IPFamily): number {
    return this.endpointTotals[family];
  }

  apply(change: Change): void {
    switch (change.kind) {
      case 'Service':
        return this.applyService(change);
      case 'EndpointSlice':
        return this.applySlice(change);
      case 'Node':
        return this.applyNode(change);
      case 'ServiceCIDR':
        return this.applyServiceCIDR(change);
    }
  }

  private applyService(change: Extract<Change, { kind: 'Service' }>): void {
    const cur = change.current;
    const obj = cur ?? change.previous;
    if (!obj) return;
    const key = objectKey('Service', obj);
    let ports: readonly ServicePort[] = [];
    if (cur) {
      const conv = convertService(cur);
      if (conv.ok) {
        ports = conv.value;
        if (conv.skipped) this.log.warn({ kind: 'Service', object: key, origin: change.origin, reason: conv.skipped }, 'Service served without what it names');
      } else this.refused('Service', key, change.origin, conv);
    }
    if (ports.length === 0 && !this.services.has(key) && !this.conflicted.has(key)) return;
    const had = this.services.get(key);
    // an update that changes nothing kpx uses keeps the old ports (and their identity)
    if (had && samePorts(had, ports)) return;
    const created = cur?.metadata.creationTimestamp ? Date.parse(String(cur.metadata.creationTimestamp)) : NaN;
    this.setFrontends(key, ports, Number.isNaN(created) ? Infinity : created, change.origin);
  }

  /**
   * Hands a Service's ports to the frontend conflict bookkeeping and takes in the outcome:
   * the served ports of every Service that changed, and the Services skipped for a conflict
   * (warned about when they become conflicted, and on each change of their own).
   */
  private setFrontends(key: string, ports: readonly ServicePort[], created: number, origin: string | undefined): void {
    if (ports.length > 0 && origin) this.origins.set(key, origin);
    else this.origins.delete(key);
    const { changed, conflicts } = this.frontends.set(key, ports, created);
    for (const c of conflicts) {
      if (!this.conflicted.has(c.service) || c.service === key) {
        this.log.warn(
          { kind: 'Service', object: c.service, origin: this.origins.get(c.service), reason: `${c.frontend} is already served by Service ${c.servedBy} (the older object)` },
          'conflicting Service skipped',
        );
      }
    }
    this.conflicted.delete(key);
    for (const k of changed.keys()) this.conflicted.delete(k);
    for (const c of conflicts) this.conflicted.add(c.service);
    for (const [k, p] of changed) {
      if (p.length > 0) this.services.set(k, p);
      else this.services.delete(k);
      this.pending.services.add(k);
    }
  }

  private applySlice(change: Extract<Change, { kind: 'EndpointSlice' }>): void {
    const cur = change.current;
    const obj = cur ?? change.previous;
    if (!obj) return;
    const key = objectKey('EndpointSlice', obj);
    const old = this.slices.get(key);
    let next: SliceEntry | null = null;
    if (cur) {
      const conv = convertEndpointSlice(cur, this.nodeName);
      if (conv.ok) next = { ...conv.value, name: key };
      else this.refused('EndpointSlice', key, change.origin, conv);
    }
    if (!old && !next) return;
    if (old) {
      this.slicesByService.get(old.serviceKey)?.delete(key);
      this.invalidateEndpoints(old.serviceKey);
      this.endpointTotals[old.family] -= sliceEndpoints(old);
    }
    if (next) {
      this.endpointTotals[next.family] += sliceEndpoints(next);
      this.slices.set(key, next);
      let set = this.slicesByService.get(next.serviceKey);
      if (!set) this.slicesByService.set(next.serviceKey, (set = new Set()));
      set.add(key);
      this.invalidateEndpoints(next.serviceKey);
      const trigger = cur?.metadata.annotations?.[ANNOTATION_TRIGGER_TIME];
      const t = trigger ? Date.parse(trigger) : NaN;
      // like kube-proxy, only changes made after kpx started count (not old objects listed at start)
      if (!Number.isNaN(t) && t >= this.startedAt) this.pending.triggerTimes.push({ family: next.family, time: t });
    } else {
      this.slices.delete(key);
    }
  }

  /** An object kpx does not serve: invalid ones are errors, ignored ones (headless, ...) debug lines. */
  private refused(kind: Change['kind'], key: string, origin: string | undefined, r: Refusal): void {
    if (r.refusal === 'invalid') this.log.warn({ kind, object: key, origin, reason: r.reason }, `invalid ${kind} skipped`);
    else this.log.debug({ kind, object: key, reason: r.reason }, `${kind} ignored`);
  }

  private invalidateEndpoints(serviceKey: string): void {
    this.endpointCache.delete(serviceKey);
    this.pending.endpoints.add(serviceKey);
  }

  private applyNode(change: Extract<Change, { kind: 'Node' }>): void {
    const cur = change.current;
    const name = (cur ?? change.previous)?.metadata.name;
    if (name !== this.nodeName) return; // only this node's facts matter
    let next: NodeFacts | null = null;
    if (cur) {
      const conv = convertNode(cur);
      if (conv.ok) next = conv.value;
      else this.refused('Node', name, change.origin, conv);
    }
    if (JSON.stringify(next) === JSON.stringify(this.nodeFacts)) return;
    this.nodeFacts = next;
    this.pending.node = true;
  }

  private applyServiceCIDR(change: Extract<Change, { kind: 'ServiceCIDR' }>): void {
    const cur = change.current;
    const name = (cur ?? change.previous)!.metadata.name;
    if (!cur) {
      this.serviceCIDRObjects.delete(name);
      return;
    }
    const cidrs: string[] = [];
    for (const raw of cur.spec?.cidrs ?? []) {
      const c = parseCIDR(raw);
      if (c) cidrs.push(c.text);
      else this.refused('ServiceCIDR', name, change.origin, { ok: false, refusal: 'invalid', reason: `spec.cidrs: ${JSON.stringify(raw)} is not a CIDR` });
    }
    this.serviceCIDRObjects.set(name, cidrs);
  }

  /**
   * The ranges of every ServiceCIDR in a family, sorted: kube-proxy's nftables mode drops
   * traffic to an address in them that no Service holds. A change reaches the rules
   * through the mode's config (a new config means a full sync).
   */
  serviceCIDRs(family: IPFamily): string[] {
    const out = new Set<string>();
    for (const cidrs of this.serviceCIDRObjects.values()) for (const c of cidrs) if (parseCIDR(c)!.family === family) out.add(c);
    return [...out].sort();
  }

  view(family: IPFamily): ModelView {
    return {
      family,
      serviceKeys: () => [...this.services.keys()].sort(),
      portsOf: (key) => {
        const ports = this.services.get(key)?.filter((p) => p.family === family) ?? [];
        return ports.sort((a, b) => (a.name === b.name ? cmp(a.protocol, b.protocol) : cmp(a.name, b.name)));
      },
      endpointsOf: (sp) => this.endpointsOf(sp),
    };
  }

  /** Merged endpoints of one service port (cached until a slice of the service changes). */
  endpointsOf(sp: ServicePort): readonly Endpoint[] {
    let cached = this.endpointCache.get(sp.serviceKey);
    if (!cached) this.endpointCache.set(sp.serviceKey, (cached = []));
    // a short list (families x ports of one service), not a Map: 10k services, 10k fewer Maps
    let merged = cached.find((m) => m.family === sp.family);
    if (!merged) {
      const lists = new Map<string, (readonly Endpoint[])[]>();
      for (const sk of [...(this.slicesByService.get(sp.serviceKey) ?? [])].sort()) {
        const s = this.slices.get(sk)!;
        if (s.family !== sp.family) continue;
        for (const [pk, eps] of s.byPort) {
          let l = lists.get(pk);
          if (!l) lists.set(pk, (l = []));
          l.push(eps);
        }
      }
      merged = { family: sp.family, byPort: [...lists].map(([pk, l]) => [pk, mergeEndpoints(l)] as const) };
      cached.push(merged);
    }
    const pk = slicePortKey(sp.portName, sp.protocol);
    return merged.byPort.find(([k]) => k === pk)?.[1] ?? NO_ENDPOINTS;
  }

  /** Families that have at least one service port. */
  familiesInUse(): Set<IPFamily> {
    const out = new Set<IPFamily>();
    for (const list of this.services.values()) for (const sp of list) out.add(sp.family);
    return out;
  }

  peekPending(): PendingChanges {
    return this.pending;
  }

  takePending(): PendingChanges {
    const p = this.pending;
    this.pending = emptyPending();
    return p;
  }
}

const NO_ENDPOINTS: readonly Endpoint[] = [];

interface MergedEndpoints {
  readonly family: IPFamily;
  /** slice port key ("name/PROTO") -> endpoints */
  readonly byPort: ReadonlyArray<readonly [string, readonly Endpoint[]]>;
}

function sliceEndpoints(s: SliceData): number {
  let n = 0;
  for (const eps of s.byPort.values()) n += eps.length;
  return n;
}

/** Nothing pending (also what a report of no sync covers). */
export function emptyPending(): {
  services: Set<string>;
  endpoints: Set<string>;
  node: boolean;
  triggerTimes: Array<{ family: IPFamily; time: number }>;
} {
  return { services: new Set(), endpoints: new Set(), node: false, triggerTimes: [] };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function samePorts(a: readonly ServicePort[], b: readonly ServicePort[]): boolean {
  return a.length === b.length && JSON.stringify(a) === JSON.stringify(b);
}
