// The netns cluster's EndpointSlice controller (pure part): what it writes for a Service
// and its pods, compared with what the Kubernetes controller writes.
import { describe, expect, it } from 'vitest';
import { desiredSlices, type PodLike, type ServiceLike } from '../substrate/cluster/endpointslices.js';

const pod = (name: string, ip: string, node: string, o: { ready?: boolean; deleting?: boolean; phase?: string; ports?: Array<{ name: string; containerPort: number; protocol?: string }> } = {}): PodLike => ({
  metadata: { name, namespace: 'default', uid: `uid-${name}`, ...(o.deleting ? { deletionTimestamp: '2026-12-01T00:00:00Z' } : {}) },
  spec: { nodeName: node, containers: [{ ports: o.ports ?? [{ name: 'echo', containerPort: 8080 }] }] },
  status: { phase: o.phase ?? 'Running', podIP: ip, conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }] },
});
const service = (spec: ServiceLike['spec']): ServiceLike => ({ metadata: { name: 'web', namespace: 'default', uid: 'svc' }, spec: { selector: { app: 'web' }, ...spec } });
const zones: Record<string, string> = { 'node-1': 'zone-a', 'node-2': 'zone-b' };
const zoneOf = (n: string) => zones[n];

describe('EndpointSlice controller of the netns cluster', () => {
  it('writes ready/serving/terminating as the controller does, with nodeName, zone and targetRef', () => {
    const pods = [
      pod('a', '198.18.1.2', 'node-1'),
      pod('b', '198.18.2.2', 'node-2', { deleting: true }),
      pod('c', '198.18.2.3', 'node-2', { ready: false }),
      pod('d', '198.18.1.3', 'node-1', { phase: 'Succeeded' }),
      { ...pod('e', '', 'node-1'), status: { phase: 'Pending' } },
    ];
    const [s, ...more] = desiredSlices(service({ ports: [{ name: 'http', port: 80, targetPort: 8080 }] }), pods, zoneOf);
    expect(more).toEqual([]);
    expect(s!.ports).toEqual([{ name: 'http', port: 8080, protocol: 'TCP' }]);
    expect(s!.endpoints.map((e) => [e.addresses[0], e.conditions, e.nodeName, e.zone, e.targetRef.name])).toEqual([
      ['198.18.1.2', { ready: true, serving: true, terminating: false }, 'node-1', 'zone-a', 'a'],
      ['198.18.2.2', { ready: false, serving: true, terminating: true }, 'node-2', 'zone-b', 'b'],
      ['198.18.2.3', { ready: false, serving: false, terminating: false }, 'node-2', 'zone-b', 'c'],
    ]);
    // publishNotReadyAddresses: ready regardless
    const [p] = desiredSlices(service({ publishNotReadyAddresses: true, ports: [{ port: 80 }] }), pods, zoneOf);
    expect(p!.endpoints.every((e) => e.conditions.ready)).toBe(true);
  });

  it('resolves named target ports per pod and splits pods that resolve differently', () => {
    const pods = [pod('a', '198.18.1.2', 'node-1'), pod('b', '198.18.1.3', 'node-1', { ports: [{ name: 'echo', containerPort: 9090 }] }), pod('c', '198.18.1.4', 'node-1', { ports: [] })];
    const slices = desiredSlices(service({ ports: [{ name: 'http', port: 80, targetPort: 'echo' }] }), pods, zoneOf);
    expect(slices.map((s) => [s.ports, s.endpoints.map((e) => e.targetRef.name)])).toEqual([
      [[{ name: 'http', port: 8080, protocol: 'TCP' }], ['a']],
      [[{ name: 'http', port: 9090, protocol: 'TCP' }], ['b']],
      [[], ['c']],
    ]);
  });

  it('hints from trafficDistribution: own zone for PreferClose, own node and zone for PreferSameNode, none otherwise', () => {
    const pods = [pod('a', '198.18.1.2', 'node-1'), pod('b', '198.18.3.2', 'node-3'), pod('c', '198.18.1.3', 'node-1', { deleting: true })];
    const hints = (td?: string) => desiredSlices(service({ trafficDistribution: td, ports: [{ port: 80 }] }), pods, zoneOf)[0]!.endpoints.map((e) => e.hints);
    // node-3 has no zone; the terminating (not ready) endpoint gets none
    expect(hints('PreferClose')).toEqual([{ forZones: [{ name: 'zone-a' }] }, undefined, undefined]);
    expect(hints('PreferSameZone')).toEqual(hints('PreferClose'));
    expect(hints('PreferSameNode')).toEqual([{ forZones: [{ name: 'zone-a' }], forNodes: [{ name: 'node-1' }] }, undefined, { forNodes: [{ name: 'node-3' }] }]);
    expect(hints(undefined)).toEqual([undefined, undefined, undefined]);
  });

  it('puts at most 100 endpoints in a slice', () => {
    const pods = Array.from({ length: 250 }, (_, i) => pod(`p${i}`, `198.18.${1 + Math.floor(i / 200)}.${2 + (i % 200)}`, 'node-1'));
    expect(desiredSlices(service({ ports: [{ port: 80 }] }), pods, zoneOf).map((s) => s.endpoints.length)).toEqual([100, 100, 50]);
  });
});
