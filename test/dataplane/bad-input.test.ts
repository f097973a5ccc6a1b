// Bad input never takes down other services. A catalogue of named nasty cases (each once
// broke kpx or slipped past it), and a seeded fuzz test that mixes valid and invalid
// objects and shrinks a failure to a minimal reproducer. For every input: kpx render exits
// 0 with no stack trace, every refused object is named with the rule it broke, every
// valid service's rules are there, and a real kernel (in a throwaway namespace) accepts
// everything kpx printed, in iptables, IPVS and nftables modes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataplaneEnv, KPX_BIN } from '../substrate/netns.js';
import { endpointSlice, node, service, yamlDocs } from '../substrate/manifests.js';
import { kernelAccepts, renderFiles, STACK_TRACE, type ManifestFile, type RenderMode, type Rendered } from '../substrate/bad-input.js';
import { seededRandom } from '../../bench/synthetic.js';

const env = await dataplaneEnv();
const GOOD_IP = '198.19.50.1';
const good = yamlDocs(
  node({ ips: ['198.18.0.2'] }),
  service({ name: 'good', clusterIP: GOOD_IP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
  endpointSlice({ service: 'good', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: '198.18.1.11' }] }),
);
const svc = (name: string, ip: string | string[], more: Partial<Parameters<typeof service>[0]> = {}) =>
  service({ name, clusterIP: ip, ports: [{ name: 'http', port: 80, targetPort: 8080 }], ...more });
const slice = (svcName: string, ip = '198.18.1.12', name?: string, protocol: 'TCP' | 'UDP' | 'SCTP' = 'TCP') =>
  endpointSlice({ service: svcName, ...(name ? { name } : {}), ports: [{ name: 'http', port: 8080, protocol }], endpoints: [{ ip }] });

/** A log line of warn or error level that names this object (or file) and says why. */
function named(r: Rendered, what: string | RegExp, reason?: RegExp): boolean {
  return r.logs.some((l) => {
    if ((l.level as number) < 40) return false;
    const subject = `${String(l.object ?? '')} ${String(l.file ?? '')}`;
    const hit = typeof what === 'string' ? subject.includes(what) : what.test(subject);
    return hit && (!reason || reason.test(String(l.reason ?? '')));
  });
}

/** A frontend a service port must have rules for. */
type Frontend = { readonly ip: string; readonly port: number; readonly proto: string } | { readonly nodePort: number; readonly proto: string };

/** Whether a render has rules for a frontend (a rule, a set element or a map element, by mode). */
function hasFrontend(stdout: string, mode: RenderMode, f: Frontend): boolean {
  if ('nodePort' in f) {
    // with endpoints a jump in KPX-NODEPORTS, without a REJECT in KPX-EXTERNAL-SERVICES
    if (mode === 'iptables') return new RegExp(`^-A KPX-(NODEPORTS|EXTERNAL-SERVICES) -p ${f.proto} .*--dport ${f.nodePort} -j `, 'm').test(stdout);
    return stdout.includes(mode === 'ipvs' ? `KPX-NODE-PORT-${f.proto.toUpperCase()} ${f.nodePort} -exist` : `${f.proto} . ${f.nodePort} :`);
  }
  const v6 = f.ip.includes(':');
  if (mode === 'iptables') return stdout.includes(`-d ${f.ip}/${v6 ? 128 : 32} -p ${f.proto} `);
  return stdout.includes(mode === 'ipvs' ? `${f.ip},${f.proto}:${f.port} -exist` : `${f.ip} . ${f.proto} . ${f.port} :`);
}

async function check(r: Rendered, mode: RenderMode): Promise<void> {
  expect(r.exitCode, r.stderr.slice(-2000)).toBe(0);
  expect(r.stderr).not.toMatch(STACK_TRACE);
  // the valid service is there
  expect(hasFrontend(r.stdout, mode, { ip: GOOD_IP, port: 80, proto: 'tcp' }), `${GOOD_IP}:80 in the ${mode} render`).toBe(true);
  if (env.ok) expect(await kernelAccepts(r.stdout, mode)).toBeNull();
}

interface Case {
  readonly name: string;
  readonly files: Record<string, ManifestFile>;
  /** who must be named, and (optionally) why */
  readonly refused: Array<[string | RegExp, RegExp?]>;
  /** also true of the output */
  readonly also?: (r: Rendered) => void;
  readonly modes?: readonly RenderMode[];
}

const ALL_MODES: readonly RenderMode[] = ['iptables', 'ipvs', 'nftables'];

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
  {
    name: 'external IPs the apiserver refuses: unspecified, loopback, link-local, link-local multicast',
    files: {
      'ext.yaml': yamlDocs(
        svc('ext-zero', '198.19.50.30', { spec: { externalIPs: ['0.0.0.0'] } }),
        svc('ext-lo', '198.19.50.31', { spec: { externalIPs: ['198.19.61.1', '127.0.0.1'] } }),
        svc('ext-ll', '198.19.50.32', { spec: { externalIPs: ['169.254.169.254'] } }),
        svc('ext-mc', '198.19.50.33', { spec: { externalIPs: ['224.0.0.251'] } }),
        svc('ext-v6', ['198.19.50.34', '2001:2::34'], { spec: { ipFamilies: ['IPv4', 'IPv6'], externalIPs: ['::1'] } }),
      ),
    },
    refused: [
      ['default/ext-zero', /spec\.externalIPs\[0\]: 0\.0\.0\.0 may not be unspecified/],
      ['default/ext-lo', /spec\.externalIPs\[1\]: 127\.0\.0\.1 may not be in the loopback range/],
      ['default/ext-ll', /spec\.externalIPs\[0\]: 169\.254\.169\.254 may not be in the link-local range/],
      ['default/ext-mc', /spec\.externalIPs\[0\]: 224\.0\.0\.251 may not be in the link-local multicast range/],
      ['default/ext-v6', /spec\.externalIPs\[0\]: ::1 may not be in the loopback range/],
    ],
    also: (r) => {
      for (const ip of ['198.19.50.30', '198.19.50.31', '198.19.61.1', '0.0.0.0', '127.0.0.1', '169.254.169.254', '224.0.0.251']) expect(r.stdout).not.toContain(ip);
    },
    modes: ALL_MODES,
  },
  {
    name: 'cluster IPs no apiserver allocates: 0.0.0.0, 127.0.0.1, fe80::1',
    files: { 'cip.yaml': yamlDocs(svc('cip-zero', '0.0.0.0'), svc('cip-lo', '127.0.0.1'), svc('cip-ll', ['198.19.50.35', 'fe80::1'])) },
    refused: [
      ['default/cip-zero', /spec\.clusterIPs\[0\]: 0\.0\.0\.0 may not be unspecified/],
      ['default/cip-lo', /spec\.clusterIPs\[0\]: 127\.0\.0\.1 may not be in the loopback range/],
      ['default/cip-ll', /spec\.clusterIPs\[1\]: fe80::1 may not be in the link-local range/],
    ],
    also: (r) => expect(r.stdout).not.toContain('198.19.50.35'),
    modes: ALL_MODES,
  },
  {
    name: 'EndpointSlice addresses the apiserver refuses (any endpoint, any address)',
    files: {
      'eps.yaml': yamlDocs(
        svc('eps', '198.19.50.36'),
        slice('eps', '0.0.0.0', 'eps-zero'),
        slice('eps', '127.0.0.1', 'eps-lo'),
        { ...(slice('eps', '198.18.1.16', 'eps-second') as Record<string, any>), endpoints: [{ addresses: ['198.18.1.16', '169.254.0.7'] }] },
        slice('eps', '198.18.1.17', 'eps-ok'),
        endpointSlice({ service: 'eps', name: 'eps-v6', family: 'IPv6', ports: [{ name: 'http', port: 8080 }], endpoints: [{ ip: 'ff02::1' }] }),
      ),
    },
    refused: [
      ['default/eps-zero', /endpoints\[0\]\.addresses\[0\]: 0\.0\.0\.0 may not be unspecified/],
      ['default/eps-lo', /endpoints\[0\]\.addresses\[0\]: 127\.0\.0\.1 may not be in the loopback range/],
      ['default/eps-second', /endpoints\[0\]\.addresses\[1\]: 169\.254\.0\.7 may not be in the link-local range/],
      ['default/eps-v6', /endpoints\[0\]\.addresses\[0\]: ff02::1 may not be in the link-local multicast range/],
    ],
    also: (r) => {
      // the Service is served by its one valid slice
      expect(r.stdout).toMatch(/198\.18\.1\.17:8080/);
      for (const ip of ['0.0.0.0', '127.0.0.1', '198.18.1.16', '169.254.0.7']) expect(r.stdout).not.toContain(ip);
    },
    modes: ALL_MODES,
  },
  {
    name: 'LoadBalancer ingress IPs 0.0.0.0, 127.0.0.1 and 169.254.1.1 are skipped (and named); the Service and its other LB IP are served',
    files: {
      'lbs.yaml': yamlDocs(
        service({
          name: 'lbs',
          type: 'LoadBalancer',
          clusterIP: '198.19.50.37',
          ports: [{ name: 'http', port: 80, nodePort: 31502 }],
          status: { loadBalancer: { ingress: [{ ip: '0.0.0.0' }, { ip: '198.19.60.2' }, { ip: '127.0.0.1' }, { ip: '169.254.1.1' }] } },
        }),
        slice('lbs', '198.18.1.18'),
      ),
    },
    refused: [[/default\/lbs/, /ingress\[0\]\.ip: 0\.0\.0\.0 may not be unspecified.*ingress\[2\]\.ip: 127\.0\.0\.1 .*loopback.*ingress\[3\]\.ip: 169\.254\.1\.1 .*link-local/]],
    also: (r) => {
      expect(r.stdout).toMatch(/198\.19\.60\.2/);
      expect(r.stdout).toMatch(/198\.19\.50\.37/);
      for (const ip of ['0.0.0.0', '127.0.0.1', '169.254.1.1']) expect(r.stdout).not.toContain(ip);
    },
    modes: ALL_MODES,
  },
  {
    name: 'a multicast external IP outside the link-local block (the apiserver takes it): served, and every kernel payload accepted',
    files: { 'mc.yaml': yamlDocs(svc('mc', '198.19.50.38', { spec: { externalIPs: ['239.1.2.3'] } }), slice('mc', '198.18.1.19')) },
    refused: [],
    also: (r) => expect(r.stdout).toContain('239.1.2.3'),
    modes: ALL_MODES,
  },
  {
    name: 'a file that cannot be read (a dangling link) and one that does not parse are named; the rest is served',
    files: {
      'dead.yaml': { symlinkTo: '/nonexistent/kpx-bad-input.yaml' },
      'broken.yaml': 'apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n',
      'broken.json': '{"apiVersion": "v1", "kind": "Service",',
    },
    refused: [[/dead\.yaml/, /ENOENT/], [/broken\.yaml/], [/broken\.json/]],
  },
];

describe(`bad input: named nasty cases${env.ok ? '' : ` (kernel checks skipped: ${env.reason})`}`, () => {
  for (const c of CASES) {
    for (const mode of c.modes ?? (['iptables'] as const)) {
      it(`${c.name} (${mode})`, async () => {
        const r = await renderFiles({ 'good.yaml': good, ...c.files }, mode);
        await check(r, mode);
        for (const [who, why] of c.refused) expect(named(r, who, why), `${String(who)} named${why ? ` with ${String(why)}` : ''}:\n${r.stderr.slice(-3000)}`).toBe(true);
        c.also?.(r);
      });
    }
  }
});

// ---- purity ----

/** `kpx render` or `kpx run --once --dry-run`, in the root namespace or a test one, as root or nobody. */
async function kpxText(dir: string, mode: RenderMode, how: { cmd: 'render' | 'dry-run'; ns?: string; user?: string }): Promise<string> {
  const args = [KPX_BIN, ...(how.cmd === 'render' ? ['render'] : ['run', '--once', '--dry-run']), '--manifests', dir, '--hostname-override', 'node-a', '--proxy-mode', mode, '--log-level', 'error'];
  const argv = [...(how.ns ? ['ip', 'netns', 'exec', how.ns] : []), ...(how.user ? ['runuser', '-u', how.user, '--'] : []), process.execPath, ...args];
  const r = await execa(argv[0]!, argv.slice(1), { reject: false });
  expect(r.exitCode, r.stderr).toBe(0);
  return r.stdout;
}

/** The lines a plan would send (not its "# ..." headers and notes). */
const payloadLines = (text: string) => text.split('\n').filter((l) => l.trim() && !l.startsWith('#'));

describe.skipIf(!env.ok)('kpx render is a pure function of its inputs; run --once --dry-run plans against this kernel', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kpx-pure-'));
    await writeFile(join(dir, 'good.yaml'), good);
    // readable by nobody too
    await chmod(dir, 0o755);
    await chmod(join(dir, 'good.yaml'), 0o644);
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  for (const mode of ['iptables', 'nftables'] as const) {
    it(`${mode}: render is the same in any namespace, as any user, before and after the rules are there; the dry run is the plan`, async () => {
      const ns = `kpxt-${process.pid}-pure-${mode}`;
      await execa('ip', ['netns', 'add', ns]);
      try {
        const render = await kpxText(dir, mode, { cmd: 'render' });
        expect(payloadLines(render).length).toBeGreaterThan(10);
        expect(await kpxText(dir, mode, { cmd: 'render', user: 'nobody' })).toBe(render);
        expect(await kpxText(dir, mode, { cmd: 'render', ns })).toBe(render);
        const before = await kpxText(dir, mode, { cmd: 'dry-run', ns });
        if (mode === 'iptables') expect(before).toBe(render);
        else {
          // what a first sync sends: the table replaced (it may be there, from anyone)
          expect(before).toContain('delete table ip kpx');
          expect(render).not.toContain('delete table');
          expect(payloadLines(before).filter((l) => !/^(add|delete) table ip kpx$/.test(l))).toEqual(payloadLines(render).filter((l) => l !== 'add table ip kpx'));
        }
        const run = await execa('ip', ['netns', 'exec', ns, process.execPath, KPX_BIN, 'run', '--once', '--manifests', dir, '--hostname-override', 'node-a', '--proxy-mode', mode, '--log-level', 'error'], { reject: false });
        expect(run.exitCode, run.stderr).toBe(0);
        expect(await kpxText(dir, mode, { cmd: 'render', ns })).toBe(render);
        // the kernel holds what kpx wants: nothing left to apply
        expect(payloadLines(await kpxText(dir, mode, { cmd: 'dry-run', ns }))).toEqual([]);
      } finally {
        await execa('ip', ['netns', 'del', ns], { reject: false });
      }
    }, 120_000);
  }
});

// ---- fuzzing ----

/** A generated object (or a whole file), and whether the apiserver would take it. */
interface Gen {
  readonly file: string;
  /** an object, or (kind File) the file itself */
  readonly object: unknown;
  readonly kind: 'Service' | 'EndpointSlice' | 'Node' | 'File';
  readonly valid: boolean;
  /** what names it in a log line (the object, or the file), when it is refused */
  readonly name: string;
  /** what the refusal must say, where the generator knows */
  readonly why?: RegExp;
  /** a valid Service's frontends, each with rules in every mode */
  readonly frontends?: readonly Frontend[];
  /** addresses that must appear nowhere in the output (skipped LB IPs) */
  readonly absent?: readonly string[];
}

type Mutation = (o: Record<string, any>, r: (n: number) => number) => void;

/** Ways to break a valid Service (each one the apiserver refuses). */
const BREAK_SERVICE: Mutation[] = [
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
  (o, r) => (o.spec.clusterIP = o.spec.clusterIPs[0] = ['0.0.0.0', '127.0.0.9', '169.254.3.3'][r(3)]),
  (o) => (o.spec.externalIPs = ['not-an-ip']),
  (o, r) => (o.spec.externalIPs = [['0.0.0.0', '127.0.0.1', '169.254.169.254', '224.0.0.1', '::1', 'fe80::2', 'ff02::2'][r(7)]]),
  (o) => (o.spec.loadBalancerSourceRanges = ['198.18.0.0/33']),
  (o) => (o.spec.ipFamilies = ['IPv6']),
  (o) => o.spec.ports.push({ ...o.spec.ports[0] }),
  (o) => (o.spec.ports = [{ port: 80 }, { port: 81 }]),
  (o, r) => (o.spec.type = ['Bogus', 'nodeport', 7][r(3)]),
  (o) => (o.spec.sessionAffinityConfig = { clientIP: { timeoutSeconds: 0 } }),
];

/** Harmless variations of a valid Service. */
const VARY_SERVICE: Mutation[] = [
  (o) => (o.metadata.annotations = { 'x"y': 'a"b\nc' }),
  (o) => (o.metadata.labels = { app: 'quote"d' }),
  (o, r) => (o.spec.ports[0].appProtocol = ['http', 'kubernetes.io/h2c', 'weird"one'][r(3)]),
  (o) => (o.spec.sessionAffinity = 'ClientIP'),
  (o, r) => (o.spec.ports[0].protocol = ['TCP', 'UDP', 'SCTP'][r(3)]),
  (o) => (o.spec.unknownField = { nested: [1, 2, 3] }),
];

/** Ways to break a Node (the apiserver refuses each; kpx names it whichever node it is). */
const BREAK_NODE: Mutation[] = [
  (o) => (o.metadata.name = `${o.metadata.name}_X`),
  (o) => (o.metadata.name = `${o.metadata.name} x`),
  (o) => (o.metadata.name = `${o.metadata.name}"`),
  (o) => (o.status.addresses = 'nope'),
  (o) => (o.spec.podCIDRs = '198.18.0.0/16'),
];

/** Files that cannot be read or parsed; each must be named, and cost nothing else. */
const BAD_FILES: Array<[string, ManifestFile]> = [
  ['dead.yaml', { symlinkTo: '/nonexistent/kpx-fuzz.yaml' }],
  ['syntax.yaml', 'apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n'],
  ['truncated.json', '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cut"'],
  ['aliases.yaml', `a: &a [x]\nb: [${Array.from({ length: 150 }, () => '*a').join(', ')}]\n`],
];

/** What a Service object serves: its cluster IP, NodePort, external IPs and LB IPs, on its first port. */
function frontendsOf(o: Record<string, any>, skippedLB: readonly string[]): Frontend[] {
  const p = o.spec.ports[0];
  const proto = String(p.protocol ?? 'TCP').toLowerCase();
  const out: Frontend[] = [{ ip: o.spec.clusterIP, port: p.port, proto }];
  if (p.nodePort) out.push({ nodePort: p.nodePort, proto });
  for (const ip of o.spec.externalIPs ?? []) out.push({ ip, port: p.port, proto });
  for (const ing of o.status?.loadBalancer?.ingress ?? []) if (!skippedLB.includes(ing.ip)) out.push({ ip: ing.ip, port: p.port, proto });
  return out;
}

function generate(seed: number, count: number): Gen[] {
  const r = seededRandom(seed);
  const out: Gen[] = [];
  const fileOf = () => `f${r(7)}.yaml`;
  for (let i = 0; i < count; i++) {
    const name = `f${seed}-${i}`;
    const ip = `198.19.${100 + (i >> 8)}.${i & 255}`;
    const o = JSON.parse(JSON.stringify(svc(name, ip))) as Record<string, any>;
    const file = fileOf();
    const skippedLB: string[] = [];
    // the shape: ClusterIP, NodePort, with external IPs, LoadBalancer (sometimes with a special ingress IP)
    const shape = r(5);
    if (shape === 1 || shape === 3) {
      o.spec.type = shape === 1 ? 'NodePort' : 'LoadBalancer';
      o.spec.ports[0].nodePort = 30000 + i;
    }
    if (shape === 2) o.spec.externalIPs = [`198.19.${150 + (i >> 8)}.${i & 255}`];
    if (shape === 3) {
      o.status = { loadBalancer: { ingress: [{ ip: `198.19.${170 + (i >> 8)}.${i & 255}` }] } };
      if (r(3) === 0) {
        const special = ['0.0.0.0', '127.0.0.1', '169.254.9.9'][r(3)]!;
        o.status.loadBalancer.ingress.push({ ip: special });
        skippedLB.push(special);
      }
    }
    const broken = r(3) === 0;
    if (broken) BREAK_SERVICE[r(BREAK_SERVICE.length)]!(o, r);
    else if (r(2) === 0) VARY_SERVICE[r(VARY_SERVICE.length)]!(o, r);
    const key = `${typeof o.metadata.namespace === 'string' ? o.metadata.namespace : 'default'}/${o.metadata.name}`;
    if (broken) {
      out.push({ file, kind: 'Service', object: o, valid: false, name: key });
      if (r(4) === 0) out.push({ file, kind: 'EndpointSlice', object: { ...(slice(name)), addressType: 'IPv5' }, valid: false, name: `default/${name}-ipv4` });
      continue;
    }
    // a younger twin on the same cluster IP and port, in any file: named, and the older served
    const twin = r(8) === 0;
    if (twin) o.metadata.creationTimestamp = '2025-06-01T00:00:00Z';
    out.push({
      file,
      kind: 'Service',
      object: o,
      valid: true,
      name: key,
      frontends: frontendsOf(o, skippedLB),
      absent: skippedLB,
      ...(skippedLB.length ? { why: /may not be/ } : {}),
    });
    if (twin) {
      const t = JSON.parse(JSON.stringify(o)) as Record<string, any>;
      t.metadata.name = `${name}-twin`;
      t.metadata.creationTimestamp = '2026-06-01T00:00:00Z';
      t.spec.type = 'ClusterIP';
      delete t.spec.ports[0].nodePort;
      delete t.spec.externalIPs;
      delete t.status;
      out.push({ file: fileOf(), kind: 'Service', object: t, valid: false, name: `default/${name}-twin`, why: new RegExp(`already served by Service default/${name} `) });
    }
    const sliceIP = `198.18.${1 + (i % 3)}.${10 + (i % 200)}`;
    const proto = (o.spec.ports[0].protocol ?? 'TCP') as 'TCP' | 'UDP' | 'SCTP';
    if (r(10) === 0) {
      // a special address in one of its slices: that slice is named, the Service keeps the other
      const bad = ['0.0.0.0', '127.0.0.2', '169.254.0.1', '224.0.0.9'][r(4)]!;
      out.push({ file, kind: 'EndpointSlice', object: slice(name, bad, `${name}-bad`, proto), valid: false, name: `default/${name}-bad`, why: new RegExp(`${bad.replace(/\./g, '\\.')} may not be`) });
    }
    out.push({ file, kind: 'EndpointSlice', object: slice(name, sliceIP, undefined, proto), valid: true, name: `default/${name}-ipv4` });
  }
  // Nodes: this node (in good.yaml) and others, valid and broken
  for (let i = 0; i < Math.max(3, count >> 4); i++) {
    const n = node({ name: `node-${seed}-${i}`, ips: [`198.18.${10 + i}.1`], podCIDRs: [`198.18.${100 + i}.0/24`] }) as Record<string, any>;
    const broken = r(2) === 0;
    if (broken) BREAK_NODE[r(BREAK_NODE.length)]!(n, r);
    out.push({ file: fileOf(), kind: 'Node', object: n, valid: !broken, name: String(n.metadata.name) });
  }
  // a bad file or two
  for (const [f, content] of BAD_FILES) if (r(2) === 0) out.push({ file: f, kind: 'File', object: content, valid: false, name: f });
  return out;
}

function filesOf(gens: readonly Gen[]): Record<string, ManifestFile> {
  const byFile = new Map<string, object[]>();
  const whole: Record<string, ManifestFile> = {};
  for (const g of gens) {
    if (g.kind === 'File') {
      whole[g.file] = g.object as ManifestFile;
      continue;
    }
    const l = byFile.get(g.file) ?? [];
    l.push(g.object as object);
    byFile.set(g.file, l);
  }
  return { 'good.yaml': good, ...Object.fromEntries([...byFile].map(([f, objs]) => [f, yamlDocs(...objs)])), ...whole };
}

/**
 * What is wrong with kpx's handling of this input (null: nothing): the problem, then after
 * ": " details that may change while shrinking (the kernel's line numbers, say).
 */
async function problem(gens: readonly Gen[], mode: RenderMode): Promise<string | null> {
  const r = await renderFiles(filesOf(gens), mode);
  if (r.exitCode !== 0) return `exit ${r.exitCode}: ${r.stderr.slice(-500)}`;
  if (STACK_TRACE.test(r.stderr)) return `stack trace: ${r.stderr.slice(-500)}`;
  const warned = (g: Gen) =>
    r.logs.some((l) => (l.level as number) >= 40 && (g.kind === 'File' ? String(l.file ?? '').endsWith(`/${g.name}`) : String(l.object ?? '') === g.name) && (!g.why || g.why.test(String(l.reason ?? ''))));
  if (!hasFrontend(r.stdout, mode, { ip: GOOD_IP, port: 80, proto: 'tcp' })) return 'the good service has no rules';
  for (const g of gens) {
    if (g.valid) {
      for (const f of g.frontends ?? []) if (!hasFrontend(r.stdout, mode, f)) return `valid ${g.name} has no rules for ${JSON.stringify(f)}`;
      for (const ip of g.absent ?? []) if (r.stdout.includes(ip)) return `${g.name}: skipped ${ip} is in the output`;
      if (g.why && !warned(g)) return `${g.name}: what was skipped of it is not named`;
    } else if (!warned(g)) return `invalid ${g.kind} ${g.name} not named${g.why ? ` with ${String(g.why)}` : ''}`;
  }
  if (env.ok) {
    const k = await kernelAccepts(r.stdout, mode);
    if (k) return `kernel refused: ${k}`;
  }
  return null;
}

/** The part of a problem that must stay the same while shrinking. */
const problemKind = (p: string | null) => p?.split(': ')[0] ?? null;

/**
 * Removes objects while the same problem persists: a minimal reproducer (delta debugging:
 * chunks of half the objects, then quarters, ... then one at a time).
 */
async function shrink(gens: Gen[], mode: RenderMode, found: string): Promise<Gen[]> {
  const want = problemKind(found);
  let cur = gens;
  for (let size = Math.max(1, cur.length >> 1); ; size = Math.max(1, size >> 1)) {
    for (let i = 0; i < cur.length; ) {
      const fewer = [...cur.slice(0, i), ...cur.slice(i + size)];
      if (problemKind(await problem(fewer, mode)) === want) cur = fewer;
      else i += size;
    }
    if (size === 1) return cur;
  }
}

/** KPX_FUZZ_SEED=n runs that seed only (a failure prints its seed and the shrunk reproducer). */
const SEEDS = process.env.KPX_FUZZ_SEED ? [Number(process.env.KPX_FUZZ_SEED)] : [1, 2, 3];
const COUNT = 120;

describe(`bad input: seeded fuzzing${env.ok ? '' : ` (kernel checks skipped: ${env.reason})`}`, () => {
  for (const mode of ALL_MODES) {
    for (const seed of SEEDS) {
      it(`seed ${seed}, ${mode}: ${COUNT} Services with slices, Nodes, conflicts and bad files, valid and invalid mixed`, async () => {
        const gens = generate(seed, COUNT);
        const p = await problem(gens, mode);
        if (p) {
          const minimal = await shrink(gens, mode, p);
          const again = await problem(minimal, mode);
          throw new Error(
            `seed ${seed} (${mode}): ${p}\nrerun: KPX_FUZZ_SEED=${seed} npx vitest run test/dataplane/bad-input.test.ts -t 'seed ${seed}, ${mode}'\n` +
              `minimal reproducer (${minimal.length} of ${gens.length} objects; ${again}): ${JSON.stringify(minimal.map((g) => ({ file: g.file, kind: g.kind, valid: g.valid, object: g.object })))}`,
          );
        }
        const count = (k: Gen['kind'], valid: boolean) => gens.filter((g) => g.kind === k && g.valid === valid).length;
        console.log(
          `fuzz seed ${seed} ${mode}: Services ${count('Service', true)} valid / ${count('Service', false)} refused, slices ${count('EndpointSlice', true)} / ${count('EndpointSlice', false)}, ` +
            `Nodes ${count('Node', true)} / ${count('Node', false)}, bad files ${count('File', false)}: all handled`,
        );
      }, 300_000);
    }
  }
});
