// `kpx trace --mode nftables` against the kernel. kpx programs its nftables table in a node
// namespace; `kpx trace --live` (nft -j list table ip kpx, inside the namespace) predicts
// each packet's paths; then real connections run while `nft monitor trace` watches them
// (a `meta nftrace set 1` rule in a table of the test's own, at priority -150: after
// conntrack, before kpx's hooks at -110), and every traced first packet must have taken one
// of the predicted paths, rule by rule (chain and verdict), with as many connections per
// endpoint in the kernel's trace as answered from that endpoint; verdicts, masquerade (the
// client address the pod saw) and refusals are checked against the real connections.
// Before that, in a namespace of its own: every rule and element the renderer writes, in
// several configurations, reads from `nft -j` into the same rule model as from kpx's text.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa, type ResultPromise } from 'execa';
import { isDeepStrictEqual } from 'node:util';
import { NET, Topology, dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';
import type { Journey } from '../../src/trace/journey.js';
import type { Outcome } from '../../src/trace/tracer.js';
import { ClusterState, type Change } from '../../src/model/state.js';
import { renderNftables } from '../../src/render/nftables/ruleset.js';
import type { NftablesRenderConfig } from '../../src/render/nftables/config.js';
import { NftablesApplier } from '../../src/apply/nftables.js';
import { execRunner } from '../../src/apply/exec.js';
import { nftFamily, parseListing } from '../../src/nftables/format.js';
import { parseRule, ruleText, tableFromListing, type NftRule } from '../../src/nftables/rules.js';
import { tableFromRenderer } from '../../src/trace/nftables.js';
import { silentLogger } from '../../src/util/log.js';
import { baseConfig } from '../substrate/render-config.js';

const env = await dataplaneEnv();

const pods = { 'web-a': '198.18.1.11', 'web-b': '198.18.1.12', 'web-r': '198.18.2.21', client: '198.18.1.50' } as const;
const byIP = new Map<string, string>(Object.entries(pods).map(([n, ip]) => [ip, n]));
const IP = { web: '198.19.0.10', np: '198.19.0.20', local: '198.19.0.30', empty: '198.19.0.40', sticky: '198.19.0.50', fw: '198.19.0.60' };
const VIP = '198.19.100.60';
const flags = (dir: string) => ['--manifests', dir, '--hostname-override', 'node-a', '--cluster-cidr', NET.podCIDR];

/** One rule a packet matched: its chain, its verdict, and the rule (as nft printed it, read into the rule model). */
interface KernelEvent {
  readonly chain: string;
  readonly verdict: string;
  readonly rule: NftRule;
}

/** One traced packet: the kpx-table rules it matched, in order. */
interface KernelTrace {
  /** "ip id/source port": a packet's trace id may change between hooks (bridged packets), these do not */
  readonly key: string;
  readonly events: readonly KernelEvent[];
}

/** `nft monitor trace` lines of kpx's table, by packet. */
function parseMonitorTrace(text: string): KernelTrace[] {
  const keyOf = new Map<string, string>();
  const byKey = new Map<string, KernelEvent[]>();
  for (const line of text.split('\n')) {
    const pkt = /^trace id (\w+) ip \S+ \S+ packet: (.*)$/.exec(line);
    if (pkt) {
      const id = /\bip id (\d+)/.exec(pkt[2]!)?.[1];
      const sport = /\b(?:tcp|udp) sport (\d+)/.exec(pkt[2]!)?.[1];
      if (id && sport) keyOf.set(pkt[1]!, `${id}/${sport}`);
      continue;
    }
    const m = /^trace id (\w+) ip kpx (\S+) rule (.*) \(verdict ([^)]*)\)\s*$/.exec(line);
    if (!m) continue;
    const key = keyOf.get(m[1]!) ?? m[1]!;
    const list = byKey.get(key) ?? [];
    list.push({ chain: m[2]!, verdict: m[4]!, rule: parseRule(m[3]!.trim()) });
    byKey.set(key, list);
  }
  return [...byKey].map(([key, events]) => ({ key, events }));
}

/** A journey outcome's path in the same terms; a verdict map step's element annotation is not part of the rule. */
const pathOf = (o: Outcome): KernelEvent[] => o.steps.map((s) => ({ chain: s.chain, verdict: s.verdict ?? '', rule: parseRule(s.rule.replace(/ {3}\[[^\]]*\]$/, '')) }));
const endpointOf = (o: Outcome) => (o.dnat ? (byIP.get(o.dnat.split(':')[0]!) ?? o.dnat) : '-');
const show = (events: readonly KernelEvent[]) => events.map((e) => `${e.chain}: ${ruleText(e.rule)} (${e.verdict})`).join('\n    ');

describe.skipIf(!env.ok)(`kpx trace --mode nftables against the kernel${env.ok ? '' : ` — skipped: ${env.reason}`}`, () => {
  describe('nft -j and kpx\'s rule text read into one rule model', () => {
    const ns = `kpxt-${process.pid}-nftjson`;
    beforeAll(async () => {
      await execa('ip', ['netns', 'add', ns]);
    });
    afterAll(async () => {
      await execa('ip', ['netns', 'del', ns], { reject: false });
    });

    function catalogue(family: 'IPv4' | 'IPv6'): ClusterState {
      const v6 = family === 'IPv6';
      const s = new ClusterState('node-a', silentLogger);
      const add = (kind: Change['kind'], current: object) => s.apply({ kind, current } as Change);
      const ip = (n: number) => (v6 ? `2001:2:0:ff::${n}` : `198.19.0.${n}`);
      const ep = (n: number) => (v6 ? `2001:2:1::${n}` : `198.18.1.${n}`);
      const fam = { ipFamilies: [family] };
      add('Node', node({ ips: [v6 ? NET.nodeIP6 : NET.nodeIP], podCIDRs: [v6 ? NET.podCIDR6 : NET.podCIDR] }));
      const lb = { loadBalancerSourceRanges: [v6 ? '2001:2::/64' : '198.18.0.0/24'], externalIPs: [ip(99)], externalTrafficPolicy: 'Local', healthCheckNodePort: 32000, sessionAffinity: 'ClientIP', ...fam };
      add('Service', service({ name: 'web', clusterIP: ip(10), type: 'LoadBalancer', ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30080 }], spec: lb, status: { loadBalancer: { ingress: [{ ip: ip(100) }] } } }));
      add('EndpointSlice', endpointSlice({ service: 'web', family, ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: ep(11) }, { ip: ep(12) }, { ip: ep(13), node: 'node-b' }] }));
      const ports = [
        { name: 'dns', port: 53, protocol: 'UDP' as const, nodePort: 30053 },
        { name: 's', port: 53, protocol: 'SCTP' as const },
      ];
      add('Service', service({ name: 'u', clusterIP: ip(20), type: 'NodePort', ports, spec: fam }));
      add('EndpointSlice', endpointSlice({ service: 'u', family, ports: ports.map(({ name, port, protocol }) => ({ name, port, protocol })), endpoints: [{ ip: ep(11) }, { ip: ep(12) }, { ip: ep(14) }] }));
      add('Service', service({ name: 'empty', clusterIP: ip(30), type: 'NodePort', ports: [{ name: 'http', port: 80, nodePort: 30030 }], spec: fam }));
      return s;
    }

    const variants: Array<[string, 'IPv4' | 'IPv6', Partial<NftablesRenderConfig>]> = [
      ['IPv4, numgen rules, detect-local by CIDR', 'IPv4', {}],
      ['IPv4, numgen vmaps, detect-local by interface, NodePort addresses listed', 'IPv4', { endpointSelection: 'vmap', localDetector: { inInterface: 'veth+' }, nodePortAddresses: [NET.nodeIP] }],
      ['IPv6, numgen rules, masqueradeAll', 'IPv6', { nodeIPs: [NET.nodeIP6], localDetector: { source: NET.podCIDR6 }, masqueradeAll: true }],
      ['IPv6, numgen vmaps, no random-fully', 'IPv6', { nodeIPs: [NET.nodeIP6], localDetector: { source: NET.podCIDR6 }, endpointSelection: 'vmap', randomFully: false }],
    ];
    for (const [name, family, extra] of variants) {
      it(name, async () => {
        const cfg: NftablesRenderConfig = { ...baseConfig, family, ...extra };
        const r = renderNftables(catalogue(family).view(family), cfg);
        const fam = nftFamily(family);
        const text = new NftablesApplier(family, execRunner, silentLogger).textFromEmpty(r);
        await execa('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: text });
        try {
          const listed = await execa('ip', ['netns', 'exec', ns, 'nft', '-j', 'list', 'table', fam, 'kpx']);
          const live = tableFromListing(parseListing(listed.stdout).get(`${fam} kpx`)!);
          const rendered = tableFromRenderer(r);
          const strip = ({ handle: _h, ...rule }: NftRule) => rule;
          let rules = 0;
          for (const c of rendered.chains.values()) {
            const l = live.chains.get(c.name);
            expect(l, c.name).toBeDefined();
            expect(l!.base, c.name).toEqual(c.base);
            expect(l!.rules.map(strip), c.name).toEqual(c.rules);
            for (const rule of l!.rules) expect(rule.unsupported).toBeUndefined();
            rules += c.rules.length;
          }
          let elements = 0;
          for (const s of rendered.sets.values()) {
            const l = live.sets.get(s.name)!;
            expect(l.elems.length, s.name).toBe(s.elems.length);
            for (const e of s.elems) expect(l.elems.some((x) => isDeepStrictEqual(x, e)), `${s.name}: ${JSON.stringify(e)}`).toBe(true);
            elements += s.elems.length;
          }
          expect(rules).toBeGreaterThan(40);
          expect(elements).toBeGreaterThan(5);
          console.log(`[trace-nftables] ${name}: ${rules} rules and ${elements} elements read alike from nft -j and from kpx's text`);
        } finally {
          await execa('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', fam, 'kpx'], { reject: false });
        }
      });
    }
  });

  describe('kpx trace --live against nft monitor trace and real connections', () => {
    let t: Topology;
    let dir: string;

    const trace = async (src: string, dst: string, from: 'pod' | 'node' | 'external', live = true): Promise<Journey> => {
      const iface = from === 'pod' ? ['--in-interface', 'kpxbr0'] : from === 'external' ? ['--in-interface', 'eth0'] : [];
      const r = await t.kpx(['trace', '--mode', 'nftables', ...(live ? ['--live'] : []), ...flags(dir), '--src', src, '--dst', dst, '--from', from, ...iface, '--json', '--log-level', 'silent']);
      return JSON.parse(r.stdout) as Journey;
    };

    /** Runs `probe` while the kernel traces new connections to dst:port; returns its result and the traces. */
    const watched = async <T>(dst: string, port: number, probe: () => Promise<T>): Promise<{ result: T; traces: KernelTrace[] }> => {
      const rule = `ct state new ip daddr ${dst} tcp dport ${port} meta nftrace set 1`;
      await t.exec('node', 'nft', ['-f', '-'], { input: `flush chain ip kpxt-trace pre\nflush chain ip kpxt-trace out\nadd rule ip kpxt-trace pre ${rule}\nadd rule ip kpxt-trace out ${rule}\n` });
      let out = '';
      const mon: ResultPromise = t.spawn('node', 'nft', ['monitor', 'trace']);
      mon.stdout?.on('data', (d: Buffer) => (out += d.toString()));
      // nft subscribes to the trace group before it prints anything: wait for that
      await new Promise((r) => setTimeout(r, 400));
      try {
        const result = await probe();
        await new Promise((r) => setTimeout(r, 400));
        return { result, traces: parseMonitorTrace(out) };
      } finally {
        mon.kill('SIGTERM');
        await Promise.race([mon, new Promise((r) => setTimeout(r, 2000))]);
      }
    };

    /**
     * Every traced first packet (the one the nat chains see: retransmitted SYNs of a
     * connection kpx already translated skip them) took one of the journey's paths; the
     * count per endpoint of those paths is the count per endpoint that answered.
     */
    const check = (j: Journey, traces: KernelTrace[], answered: Record<string, number>) => {
      const firsts = traces.filter((k) => k.events.some((e) => e.chain === 'nat-prerouting' || e.chain === 'nat-output'));
      const perEndpoint: Record<string, number> = {};
      for (const k of firsts) {
        const o = j.outcomes.find((x) => isDeepStrictEqual(pathOf(x), k.events));
        expect(o, `the kernel's path\n    ${show(k.events)}\nis none of the predicted ones:\n${j.outcomes.map((x) => `    ${show(pathOf(x))}`).join('\n  or\n')}`).toBeDefined();
        perEndpoint[endpointOf(o!)] = (perEndpoint[endpointOf(o!)] ?? 0) + 1;
      }
      expect(perEndpoint).toEqual(answered);
      return { firsts: firsts.length, retransmits: traces.length - firsts.length };
    };

    const predicted = (j: Journey): Record<string, number> => {
      const out: Record<string, number> = {};
      for (const o of j.outcomes) if (o.verdict === 'ACCEPT' && o.dnat) out[endpointOf(o)] = (out[endpointOf(o)] ?? 0) + o.probability;
      return out;
    };

    beforeAll(async () => {
      t = await Topology.create({
        pods: [
          { name: 'web-a', ip: pods['web-a'], ports: [8080] },
          { name: 'web-b', ip: pods['web-b'], ports: [8080] },
          { name: 'web-r', ip: pods['web-r'], ports: [8080], remote: true },
          { name: 'client', ip: pods.client },
        ],
      });
      dir = await t.manifestsDir();
      await t.writeManifest(dir, 'node.yaml', yamlDocs(node({ ips: [NET.nodeIP], podCIDRs: [NET.podCIDR] })));
      const http = [{ name: 'http', port: 80, targetPort: 8080 }];
      const slice = (svc: string, eps: Array<{ ip: string; node?: string }>) => endpointSlice({ service: svc, ports: [{ name: 'http', port: 8080 }], endpoints: eps });
      await t.writeManifest(
        dir,
        'svc.yaml',
        yamlDocs(
          service({ name: 'web', clusterIP: IP.web, ports: http }),
          slice('web', [{ ip: pods['web-a'] }, { ip: pods['web-b'] }]),
          service({ name: 'np', type: 'NodePort', clusterIP: IP.np, ports: [{ ...http[0]!, nodePort: 30080 }] }),
          slice('np', [{ ip: pods['web-b'] }]),
          service({ name: 'local', type: 'NodePort', clusterIP: IP.local, ports: [{ ...http[0]!, nodePort: 30081 }], spec: { externalTrafficPolicy: 'Local' } }),
          slice('local', [{ ip: pods['web-a'] }, { ip: pods['web-r'], node: 'node-b' }]),
          service({ name: 'empty', clusterIP: IP.empty, ports: http }),
          service({ name: 'sticky', clusterIP: IP.sticky, ports: http, spec: { sessionAffinity: 'ClientIP' } }),
          slice('sticky', [{ ip: pods['web-a'] }, { ip: pods['web-b'] }]),
          service({ name: 'fw', type: 'LoadBalancer', clusterIP: IP.fw, ports: [{ ...http[0]!, nodePort: 30090 }], spec: { loadBalancerSourceRanges: [`${NET.extIP}/32`] }, status: { loadBalancer: { ingress: [{ ip: VIP }] } } }),
          slice('fw', [{ ip: pods['web-a'] }]),
        ),
      );
      await t.sync(['--proxy-mode', 'nftables', ...flags(dir), '--metrics-bind-address', '', '--healthz-bind-address', '']);
      // the test's own table, in the node namespace only: marks the packets to watch for `nft monitor trace`
      await t.exec('node', 'nft', ['-f', '-'], {
        input: 'add table ip kpxt-trace\nadd chain ip kpxt-trace pre { type filter hook prerouting priority -150 ; }\nadd chain ip kpxt-trace out { type filter hook output priority -150 ; }\n',
      });
    });
    afterAll(async () => {
      await t?.destroy();
    });

    it('the rendered table and the kernel\'s give the same journeys', async () => {
      const packets: Array<[string, string, 'pod' | 'node' | 'external']> = [
        [pods.client, `${IP.web}:80`, 'pod'],
        [NET.nodeIP, `${IP.web}:80`, 'node'],
        [NET.extIP, `${NET.nodeIP}:30080`, 'external'],
        [NET.extIP, `${NET.nodeIP}:30081`, 'external'],
        [NET.extIP2, `${VIP}:80`, 'external'],
        [pods.client, `${IP.empty}:80`, 'pod'],
      ];
      for (const [src, dst, from] of packets) {
        const [live, rendered] = [await trace(src, dst, from), await trace(src, dst, from, false)];
        expect(live.mode).toBe('nftables');
        expect(live.rules).toBe('live');
        const strip = (j: Journey) => j.outcomes.map(({ route: _r, ...o }) => o);
        expect(strip(live), `${src} -> ${dst}`).toEqual(strip(rendered));
      }
    });

    it('ClusterIP with 2 endpoints from a pod: the kernel takes the predicted paths, the endpoints answer as often as it says', async () => {
      const j = await trace(pods.client, `${IP.web}:80/tcp`, 'pod');
      expect(predicted(j)).toEqual({ 'web-a': 0.5, 'web-b': 0.5 });
      expect(j.mismatches).toEqual([]);
      const { result: r, traces } = await watched(IP.web, 80, () => t.probe('client', 'tcp', IP.web, 80, { count: 30 }));
      expect(r.ok).toBe(30);
      expect(Object.keys(r.clients)).toEqual([pods.client]);
      const seen = check(j, traces, r.names);
      expect(seen.firsts).toBe(30);
      console.log(`[trace-nftables] ClusterIP: predicted ${JSON.stringify(predicted(j))}; kernel traced ${seen.firsts} first packets (+${seen.retransmits} retransmits) on the predicted paths; answered ${JSON.stringify(r.names)}`);
    });

    it('ClusterIP from the node itself: output hooks, masqueraded', async () => {
      const j = await trace(NET.nodeIP, `${IP.web}:80`, 'node');
      expect(j.outcomes.every((o) => o.masquerade && o.steps.some((s) => s.hook === 'output'))).toBe(true);
      const { result: r, traces } = await watched(IP.web, 80, () => t.probe('node', 'tcp', IP.web, 80, { count: 10 }));
      expect(r.ok).toBe(10);
      expect(Object.keys(r.clients)).toEqual([NET.bridgeIP]);
      check(j, traces, r.names);
    });

    it('NodePort from an external client, and externalTrafficPolicy Local: paths, masquerade and endpoints as predicted', async () => {
      const np = await trace(NET.extIP, `${NET.nodeIP}:30080`, 'external');
      expect(predicted(np)).toEqual({ 'web-b': 1 });
      expect(np.outcomes[0]!.steps.some((s) => s.target === 'MASQUERADE' && s.chain === 'masquerading')).toBe(true);
      const a = await watched(NET.nodeIP, 30080, () => t.probe('ext', 'tcp', NET.nodeIP, 30080, { count: 10 }));
      expect(a.result.names).toEqual({ 'web-b': 10 });
      expect(Object.keys(a.result.clients)).toEqual([NET.bridgeIP]);
      check(np, a.traces, a.result.names);

      const local = await trace(NET.extIP, `${NET.nodeIP}:30081`, 'external');
      expect(predicted(local)).toEqual({ 'web-a': 1 });
      expect(local.outcomes[0]!.masquerade).toBe(false);
      expect(local.endpoints?.excluded).toEqual([expect.objectContaining({ addr: `${pods['web-r']}:8080`, reason: expect.stringContaining('traffic policy Local') as unknown })]);
      const b = await watched(NET.nodeIP, 30081, () => t.probe('ext', 'tcp', NET.nodeIP, 30081, { count: 10 }));
      expect(b.result.names).toEqual({ 'web-a': 10 });
      expect(Object.keys(b.result.clients)).toEqual([NET.extIP]);
      check(local, b.traces, b.result.names);
    });

    it('a service without endpoints: REJECT predicted and traced (reject-chain), connections refused', async () => {
      const j = await trace(pods.client, `${IP.empty}:80`, 'pod');
      expect(j.outcomes.map((o) => [o.verdict, o.probability])).toEqual([['REJECT', 1]]);
      expect(j.outcomes[0]!.chains).toContain('reject-chain');
      const { result: r, traces } = await watched(IP.empty, 80, () => t.probe('client', 'tcp', IP.empty, 80, { count: 3, timeoutMs: 3000 }));
      expect(r.errors).toEqual({ ECONNREFUSED: 3 });
      // nat-prerouting saw each first packet (no service IP matched), filter-forward rejected it
      check(j, traces, { '-': 3 });
    });

    it('loadBalancerSourceRanges: another source is dropped by the firewall chain (the kernel agrees, the connection times out); the listed one gets in', async () => {
      const dropped = await trace(NET.extIP2, `${VIP}:80`, 'external');
      expect(dropped.outcomes.map((o) => o.verdict)).toEqual(['DROP']);
      const d = await watched(VIP, 80, () => t.probe('ext', 'tcp', VIP, 80, { count: 1, timeoutMs: 1500, bind: NET.extIP2 }));
      expect(d.result.errors).toEqual({ TIMEOUT: 1 });
      // dropped before the nat chains: every attempt (SYN and retransmits) is a first packet
      expect(d.traces.length).toBeGreaterThanOrEqual(1);
      for (const k of d.traces) expect(k.events).toEqual(pathOf(dropped.outcomes[0]!));
      const allowed = await trace(NET.extIP, `${VIP}:80`, 'external');
      const a = await watched(VIP, 80, () => t.probe('ext', 'tcp', VIP, 80, { count: 5, bind: NET.extIP }));
      expect(a.result.names).toEqual({ 'web-a': 5 });
      check(allowed, a.traces, a.result.names);
    });

    it('session affinity: a bound client is predicted (from the kernel\'s affinity set) and traced to its endpoint only', async () => {
      const before = await trace(pods.client, `${IP.sticky}:80`, 'pod');
      expect(predicted(before)).toEqual({ 'web-a': 0.5, 'web-b': 0.5 });
      const first = await watched(IP.sticky, 80, () => t.probe('client', 'tcp', IP.sticky, 80, { count: 1 }));
      check(before, first.traces, first.result.names);
      const [bound] = Object.keys(first.result.names);
      const after = await trace(pods.client, `${IP.sticky}:80`, 'pod');
      expect(predicted(after)).toEqual({ [bound!]: 1 });
      expect(after.notes.join(' ')).toContain('affinity set');
      expect(after.endpoints?.excluded.some((e) => e.reason.includes('session affinity') && e.reason.includes('nft set'))).toBe(true);
      const again = await watched(IP.sticky, 80, () => t.probe('client', 'tcp', IP.sticky, 80, { count: 10 }));
      expect(again.result.names).toEqual({ [bound!]: 10 });
      check(after, again.traces, again.result.names);
    });

    it('the text journey names nftables hooks, chains and the verdict map element', async () => {
      const r = await t.kpx(['trace', '--mode', 'nftables', '--live', ...flags(dir), '--src', NET.extIP, '--dst', `${NET.nodeIP}:30081`, '--in-interface', 'eth0', '--log-level', 'silent']);
      expect(r.stdout).toContain('nftables mode, the kernel\'s rules');
      expect(r.stdout).toMatch(/nat\/prerouting +services +.*vmap @service-nodeports +\[tcp \. 30081 : goto external-/);
      expect(r.stdout).toMatch(/dnat to 198\.18\.1\.11:8080/);
      expect(r.stdout).toContain(`next hop for ${pods['web-a']}: on link dev kpxbr0`);
    });
  });
});
