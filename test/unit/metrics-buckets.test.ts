// kube-proxy users' dashboards and alerts pick histogram buckets by `le`: kpx's exposition
// must have every bound kube-proxy v1.36's has (pkg/proxy/metrics/metrics.go), written out
// here from that file's bucket definitions, not from kpx's.
import { describe, expect, it } from 'vitest';
import { KpxMetrics } from '../../src/server/metrics.js';

const KUBE_PROXY_SYNC = ['0.001', '0.002', '0.004', '0.008', '0.016', '0.032', '0.064', '0.128', '0.256', '0.512', '1.024', '2.048', '4.096', '8.192', '16.384'];
const KUBE_PROXY_PROGRAMMING = [
  '0.25', '0.5',
  ...Array.from({ length: 59 }, (_, i) => String(1 + i)),
  ...Array.from({ length: 12 }, (_, i) => String(60 + 5 * i)),
  ...Array.from({ length: 7 }, (_, i) => String(120 + 30 * i)),
];

async function bucketBounds(m: KpxMetrics, name: string): Promise<string[]> {
  const text = await m.registry.metrics();
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const hit = new RegExp(`^${name}_bucket\\{(?:[^}]*,)?le="([^"]+)"`).exec(line);
    if (hit) out.add(hit[1]!);
  }
  return [...out];
}

describe('histogram buckets: a superset of kube-proxy\'s', () => {
  it.each([
    ['kubeproxy_sync_proxy_rules_duration_seconds', KUBE_PROXY_SYNC, (m: KpxMetrics) => m.syncDuration],
    ['kubeproxy_sync_full_proxy_rules_duration_seconds', KUBE_PROXY_SYNC, (m: KpxMetrics) => m.fullSyncDuration],
    ['kubeproxy_sync_partial_proxy_rules_duration_seconds', KUBE_PROXY_SYNC, (m: KpxMetrics) => m.partialSyncDuration],
    ['kubeproxy_conntrack_reconciler_sync_duration_seconds', KUBE_PROXY_SYNC, (m: KpxMetrics) => m.conntrackDuration],
    ['kubeproxy_network_programming_duration_seconds', KUBE_PROXY_PROGRAMMING, (m: KpxMetrics) => m.programming],
  ] as const)('%s has every le kube-proxy exposes', async (name, expected, histogram) => {
    const m = new KpxMetrics(() => ({ services: new Set(), endpoints: new Set(), node: false, triggerTimes: [] }), () => ['IPv4']);
    // a labelled histogram shows its buckets once it has a child
    histogram(m).observe({ ip_family: 'IPv4' }, 0.05);
    const have = await bucketBounds(m, name);
    expect(expected.filter((le) => !have.includes(le))).toEqual([]);
    // and they are in increasing order, with +Inf last
    const finite = have.filter((le) => le !== '+Inf').map(Number);
    expect(finite).toEqual([...finite].sort((a, b) => a - b));
    expect(have.at(-1)).toBe('+Inf');
  });
});
