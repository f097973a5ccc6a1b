// Bad input never takes down other services. A catalogue of named nasty cases (each once
// broke kpx or slipped past it), and a seeded fuzz test that mixes valid and invalid
// objects and shrinks a failure to a minimal reproducer. For every input: kpx render exits
// 0 with no stack trace, every refused object is named with the rule it broke, every
// valid service's rules are there, and a real kernel (in a throwaway namespace) accepts
// everything kpx printed, in iptables and IPVS modes.
import { describe, expect, it } from 'vitest';
import { dataplaneEnv } from '../substrate/netns.js';
import { endpointSlice, service, yamlDocs } from '../substrate/manifests.js';
import { kernelAccepts, renderFiles, STACK_TRACE, type Rendered } from '../substrate/bad-input.js';
import { seededRandom } from '../../bench/synthetic.js';

const env = await dataplaneEnv();
const GOOD_IP = '198.19.50.1';
const good = yamlDocs(
  service({ name: 'good', clusterIP: GOOD_IP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
  endpointSlice({ service: 'good', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.11' }] }),
);
const svc = (name: string, ip: string, more: Partial<Parameters<typeof service>[0]> = {}) =>
  service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }], ...more });
const slice = (svcName: string, ip = '198.18.1.12', name?: string) =>
  endpointSlice({ service: svcName, ...(name ? { name } : {}), ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip }] });

/** A log line of warn or error level that names this object (or file) and says why. */
function named(r: Rendered, what: string | RegExp, reason?: RegExp): boolean {
  return r.logs.some((l) => {
    if ((l.level as number) < 40) return false;
    const subject = `${String(l.object ?? '')} ${String(l.file ?? '')}`;
    const hit = typeof what === 'string' ? subject.includes(what) : what.test(subject);
    return hit && (!reason || reason.test(String(l.reason ?? '')));
  });
}

async function check(r: Rendered, mode: 'iptables' | 'ipvs'): Promise<void> {
  expect(r.exitCode, r.stderr.slice(-2000)).toBe(0);
  expect(r.stderr).not.toMatch(STACK_TRACE);
  // the valid service is there
  expect(r.stdout).toContain(mode === 'iptables' ? `-d ${GOOD_IP}/32` : `${GOOD_IP},tcp:80`);
  if (env.ok) expect(await kernelAccepts(r.stdout, mode)).toBeNull();
}

interface Case {
  readonly name: string;
  readonly files: Record<string, string>;
  /** who must be named, and (optionally) why */
  readonly refused: Array<[string | RegExp, RegExp?]>;
  /** also true of the output */
  readonly also?: (r: Rendered) => void;
  readonly modes?: ReadonlyArray<'iptables' | 'ipvs'>;
}

const CASES: Case[] = [
  { name: 'a quote in a Service name', files: { 'q.yaml': yamlDocs(svc('q"uote', '198.19.50.2')) }, refused: [['default/q"uote', /metadata\.name: must be a DNS-1123 label/]] },
  { name: 'a newline in a name', files: { 'n.yaml': yamlDocs(svc('a\nb', '198.19.50.3')) }, refused: [['default/a\nb', /metadata\.name/]] },
  {
    name: 'a quote in a port name',
    files: { 'p.yaml': yamlDocs(service({ name: 'port', clusterIP: '198.19.50.4', ports: [{ name: 'h"t', port: 80 }] })) },
    refused: [['default/port', /spec\.ports\[0\]\.name/]],
  },
  {
    name: 'spaces, $(x), ;, backslash and non-ASCII in names',
    files: { 'w.yaml': yamlDocs(svc('a b', '198.19.50.5'), svc('$(x)', '198.19.50.6'), svc('a;b', '198.19.50.7'), svc('a\\b', '198.19.50.8'), svc('café', '198.19.50.9')) },
    refused: [['default/a b'], ['default/$(x)'], ['default/a;b'], ['default/a\\b'], ['default/café']],
  },
  {
    name: 'a name of 253 characters (a Service name is at most 63)',
    files: { 'long.yaml': yamlDocs(svc('a'.repeat(253), '198.19.50.10')) },
    refused: [[`default/${'a'.repeat(253)}`, /metadata\.name: Too big/]],
  },
  {
    name: 'x with port a:b and x:a with port b (once one chain for both)',
    files: {
      'x.yaml': yamlDocs(
        service({ name: 'x', clusterIP: '198.19.50.11', ports: [{ name: 'a:b', port: 80 }] }),
        service({ name: 'x:a', clusterIP: '198.19.50.12', ports: [{ name: 'b', port: 80 }] }),
      ),
    },
    refused: [['default/x', /spec\.ports\[0\]\.name/], ['default/x:a', /metadata\.name/]],
  },
  { name: 'an IPv4-mapped IPv6 ClusterIP', files: { 'm.yaml': yamlDocs(svc('mapped', '::ffff:198.19.50.13')) }, refused: [['default/mapped', /invalid IP/]] },
  {
    name: 'two Services on one ClusterIP and port: the older one is served, wherever it is listed',
    files: {
      'dup.yaml': yamlDocs(
        svc('younger', '198.19.50.14', { spec: {} }),
        svc('older', '198.19.50.14'),
        slice('younger', '198.18.1.13'),
        slice('older', '198.18.1.14'),
      ).replace('"name": "younger",', '"name": "younger", "creationTimestamp": "2026-02-01T00:00:00Z",').replace('"name": "older",', '"name": "older", "creationTimestamp": "2025-02-01T00:00:00Z",'),
    },
    refused: [['default/younger', /198\.19\.50\.14:80\/TCP is already served by Service default\/older/]],
    also: (r) => {
      expect(r.stdout).toContain('--to-destination 198.18.1.14:8080');
      expect(r.stdout).not.toContain('--to-destination 198.18.1.13:8080');
    },
  },
  {
    name: 'two Services on one NodePort',
    files: {
      'np.yaml': yamlDocs(
        service({ name: 'np-a', type: 'NodePort', clusterIP: '198.19.50.15', ports: [{ name: 'http', port: 80, nodePort: 31500 }] }),
        service({ name: 'np-b', type: 'NodePort', clusterIP: '198.19.50.16', ports: [{ name: 'http', port: 80, nodePort: 31500 }] }),
      ),
    },
    refused: [['default/np-b', /NodePort 31500\/TCP is already served by Service default\/np-a/]],
  },
  { name: 'kind: service (kinds are case-sensitive)', files: { 'k.yaml': 'apiVersion: v1\nkind: service\nmetadata: {name: lower}\nspec: {clusterIP: 198.19.50.17, ports: [{port: 80}]}\n' }, refused: [[/k\.yaml/, /did you mean Service/]] },
  { name: 'a JSON file whose top level is an array', files: { 'a.json': JSON.stringify([JSON.parse(JSON.stringify(svc('arr', '198.19.50.18')))]) }, refused: [[/a\.json/, /a list, not an object/]] },
  {
    name: 'a List inside a List',
    files: { 'l.json': JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'v1', kind: 'List', items: [svc('inner', '198.19.50.19')] }] }) },
    refused: [[/l\.json/, /a List inside a List/]],
  },
  { name: 'a YAML document that is a list', files: { 'y.yaml': '- apiVersion: v1\n  kind: Service\n  metadata: {name: listed}\n' }, refused: [[/y\.yaml/, /a list, not an object/]] },
  { name: 'a wrong apiVersion names the object', files: { 'v.yaml': yamlDocs({ ...(svc('versioned', '198.19.50.20')), apiVersion: 'v2' }) }, refused: [['default/versioned', /apiVersion "v2"/]] },
  {
    name: 'a numeric metadata.name is named as it is',
    files: { 'num.json': JSON.stringify({ apiVersion: 'v1', kind: 'Service', metadata: { name: 12345 }, spec: { clusterIP: '198.19.50.21', ports: [{ port: 80 }] } }) },
    refused: [['default/12345', /metadata\.name/]],
  },
  {
    name: 'a YAML file with more aliases than YAML allows (the other files are served)',
    files: { 'aliases.yaml': `a: &a [x]\nb: [${Array.from({ length: 150 }, () => '*a').join(', ')}]\n` },
    refused: [[/aliases\.yaml/, /alias/i]],
  },
  { name: "an EndpointSlice whose service-name label is not a Service name", files: { 's.yaml': yamlDocs({ ...(slice('Bad_Name')) }) }, refused: [[/Bad_Name|bad_name/i, /not a Service name|DNS-1123/]] },
  {
    name: 'loadBalancerSourceRanges 0.0.0.0/0 and ::/0 mean everyone (an ipset cannot hold a /0)',
    files: {
      'lb.yaml': yamlDocs(
        service({
          name: 'lb0',
          type: 'LoadBalancer',
          clusterIP: '198.19.50.22',
          ports: [{ name: 'http', port: 80, nodePort: 31501 }],
          spec: { loadBalancerSourceRanges: ['0.0.0.0/0', '::/0'] },
          status: { loadBalancer: { ingress: [{ ip: '198.19.60.1' }] } },
        }),
        slice('lb0', '198.18.1.15'),
      ),
    },
    refused: [],
    also: (r) => {
      expect(r.stdout).not.toContain('0.0.0.0/0');
      expect(r.stdout).toMatch(/198\.19\.60\.1/);
    },
    modes: ['iptables', 'ipvs'],
  },
];

describe(`bad input: named nasty cases${env.ok ? '' : ` (kernel checks skipped: ${env.reason})`}`, () => {
  for (const c of CASES) {
    for (const mode of c.modes ?? ['iptables']) {
      it(`${c.name} (${mode})`, async () => {
        const r = await renderFiles({ 'good.yaml': good, ...c.files }, mode);
        await check(r, mode);
        for (const [who, why] of c.refused) expect(named(r, who, why), `${String(who)} named${why ? ` with ${String(why)}` : ''}:\n${r.stderr.slice(-3000)}`).toBe(true);
        c.also?.(r);
      });
    }
  }
});

// ---- fuzzing ----

/** A generated object, and whether the apiserver would take it. */
interface Gen {
  readonly file: string;
  readonly object: unknown;
  readonly valid: boolean;
  /** what names it in a log line, when it is refused */
  readonly name: string;
}

/** Ways to break a valid Service (each one the apiserver refuses). */
const BREAK_SERVICE: Array<(o: Record<string, any>, r: (n: number) => number) => void> = [
  (o) => (o.metadata.name = `${o.metadata.name}"q`),
  (o) => (o.metadata.name = `${o.metadata.name} x`),
  (o) => (o.metadata.name = o.metadata.name.toUpperCase()),
  (o) => (o.metadata.name = 'n'.repeat(64)),
  (o) => (o.metadata.namespace = 'Not-A-Label'),
  (o) => (o.spec.ports[0].port = 0),
  (o) => (o.spec.ports[0].port = 70000),
  (o) => (o.spec.ports[0].name = 'a"b'),
  (o) => (o.spec.ports[0].protocol = 'ICMP'),
  (o) => (o.spec.clusterIP = o.spec.clusterIPs[0] = '198.19.999.1'),
  (o) => (o.spec.clusterIP = o.spec.clusterIPs[0] = '::ffff:198.19.1.1'),
  (o) => (o.spec.externalIPs = ['not-an-ip']),
  (o) => (o.spec.loadBalancerSourceRanges = ['198.18.0.0/33']),
  (o) => (o.spec.ipFamilies = ['IPv6']),
  (o) => o.spec.ports.push({ ...o.spec.ports[0] }),
  (o) => (o.spec.ports = [{ port: 80 }, { port: 81 }]),
  (o, r) => (o.spec.type = ['Bogus', 'nodeport', 7][r(3)]),
  (o) => (o.spec.sessionAffinityConfig = { clientIP: { timeoutSeconds: 0 } }),
];

/** Harmless variations of a valid Service. */
const VARY_SERVICE: Array<(o: Record<string, any>, r: (n: number) => number) => void> = [
  (o) => (o.metadata.annotations = { 'x"y': 'a"b\nc' }),
  (o) => (o.metadata.labels = { app: 'quote"d' }),
  (o, r) => (o.spec.ports[0].appProtocol = ['http', 'kubernetes.io/h2c', 'weird"one'][r(3)]),
  (o) => (o.spec.sessionAffinity = 'ClientIP'),
  (o, r) => (o.spec.ports[0].protocol = ['TCP', 'UDP', 'SCTP'][r(3)]),
  (o) => (o.spec.unknownField = { nested: [1, 2, 3] }),
];

function generate(seed: number, count: number): Gen[] {
  const r = seededRandom(seed);
  const out: Gen[] = [];
  for (let i = 0; i < count; i++) {
    const name = `f${seed}-${i}`;
    const ip = `198.19.${100 + (i >> 8)}.${i & 255}`;
    const o = JSON.parse(JSON.stringify(svc(name, ip))) as Record<string, any>;
    const file = `f${i % 7}.yaml`;
    const broken = r(3) === 0;
    if (broken) BREAK_SERVICE[r(BREAK_SERVICE.length)]!(o, r);
    else if (r(2) === 0) VARY_SERVICE[r(VARY_SERVICE.length)]!(o, r);
    out.push({ file, object: o, valid: !broken, name: `${typeof o.metadata.namespace === 'string' ? o.metadata.namespace : 'default'}/${o.metadata.name}` });
    if (!broken) out.push({ file, object: slice(name, `198.18.${1 + (i % 3)}.${10 + (i % 200)}`), valid: true, name: `default/${name}-ipv4` });
    else if (r(4) === 0) out.push({ file, object: { ...(slice(name)), addressType: 'IPv5' }, valid: false, name: `default/${name}-ipv4` });
  }
  return out;
}

function filesOf(gens: readonly Gen[]): Record<string, string> {
  const byFile = new Map<string, unknown[]>();
  for (const g of gens) {
    const l = byFile.get(g.file) ?? [];
    l.push(g.object);
    byFile.set(g.file, l);
  }
  return { 'good.yaml': good, ...Object.fromEntries([...byFile].map(([f, objs]) => [f, yamlDocs(...(objs as object[]))])) };
}

/** What is wrong with kpx's handling of this input (null: nothing). */
async function problem(gens: readonly Gen[], mode: 'iptables' | 'ipvs'): Promise<string | null> {
  const r = await renderFiles(filesOf(gens), mode);
  if (r.exitCode !== 0) return `exit ${r.exitCode}: ${r.stderr.slice(-500)}`;
  if (STACK_TRACE.test(r.stderr)) return `stack trace: ${r.stderr.slice(-500)}`;
  for (const g of gens) {
    if (g.valid) {
      const ip = ((g.object as { spec?: { clusterIP?: string } }).spec?.clusterIP ?? '');
      if (ip && !r.stdout.includes(mode === 'iptables' ? `-d ${ip}/32` : `${ip},`)) return `valid ${g.name} (${ip}) has no rules`;
    } else if (!r.logs.some((l) => (l.level as number) >= 40 && String(l.object ?? '') === g.name)) return `invalid ${g.name} not named`;
  }
  if (env.ok) {
    const k = await kernelAccepts(r.stdout, mode);
    if (k) return `kernel refused: ${k}`;
  }
  return null;
}

/** Removes objects while the problem persists: a minimal reproducer (delta debugging, one at a time). */
async function shrink(gens: Gen[], mode: 'iptables' | 'ipvs'): Promise<Gen[]> {
  let cur = gens;
  for (let i = 0; i < cur.length; ) {
    const fewer = [...cur.slice(0, i), ...cur.slice(i + 1)];
    if (await problem(fewer, mode)) cur = fewer;
    else i++;
  }
  return cur;
}

describe(`bad input: seeded fuzzing${env.ok ? '' : ` (kernel checks skipped: ${env.reason})`}`, () => {
  for (const mode of ['iptables', 'ipvs'] as const) {
    for (const seed of [1, 2, 3]) {
      it(`seed ${seed}, ${mode}: 120 objects, valid and invalid mixed`, async () => {
        const gens = generate(seed, 120);
        const p = await problem(gens, mode);
        if (p) {
          const minimal = await shrink(gens, mode);
          throw new Error(`${p}\nminimal reproducer (${minimal.length} objects): ${JSON.stringify(minimal.map((g) => ({ file: g.file, valid: g.valid, object: g.object })))}`);
        }
        console.log(`fuzz seed ${seed} ${mode}: ${gens.filter((g) => g.valid).length} valid, ${gens.filter((g) => !g.valid).length} invalid: all handled`);
      }, 300_000);
    }
  }
});
