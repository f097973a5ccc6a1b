// kpx's configuration: KubeProxyConfiguration files and kube-proxy's flags, loaded the way
// kube-proxy loads them (test/unit/config-oracle.test.ts compares the result with
// upstream's field by field); what kpx does with what it cannot act on; the CLI's exits.
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { parse, parseAllDocuments } from 'yaml';
import { ConfigError, formatGoDuration, loadConfig, parseDuration, parseGoDuration, resolveConfig } from '../../src/config/config.js';
import { KUBE_PROXY_FLAGS } from '../../src/config/flags.js';
import { parseProxyFlags } from '../../src/cli/flags.js';
import { chooseAction } from '../../src/cli/main.js';
import { KPX_BIN, REPO } from '../substrate/netns.js';

const dir = await mkdtemp(join(tmpdir(), 'kpx-config-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

async function cfgFile(text: string): Promise<string> {
  const f = join(dir, `${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(f, text);
  return f;
}
const HEAD = 'apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n';
const FIXTURES = join(REPO, 'test/fixtures/kube-proxy-config');
const KUBEADM = join(FIXTURES, 'kubeadm-config.conf');
const kpx = (args: string[], opts: { cwd?: string } = {}) => execa(process.execPath, [KPX_BIN, ...args], { reject: false, ...opts });
const load = (argv: string[]) => loadConfig(parseProxyFlags(argv), 'Machine-Host');

describe('durations', () => {
  it('parses and prints Go durations as time.ParseDuration and Duration.String do', () => {
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseGoDuration('1.5h')).toBe(5400e9);
    expect(parseGoDuration('-2ms')).toBe(-2e6);
    expect(parseGoDuration('0')).toBe(0);
    for (const bad of ['30', '', '1x', 's', '1.s.']) expect(parseGoDuration(bad), bad).toBeNull();
    expect(() => parseDuration('30')).toThrow(ConfigError);
    const printed = ['0s', '1s', '30s', '15m0s', '1h0m0s', '24h0m0s', '1m30s', '1.5s', '250ms', '1.5µs', '100ns', '-2ms', '36h0m0s'];
    expect(['0s', '1s', '30s', '900s', '60m', '24h', '90s', '1500ms', '250ms', '1500ns', '100ns', '-2ms', '36h'].map((s) => formatGoDuration(parseGoDuration(s)!))).toEqual(printed);
  });

  it("kpx's own duration flags are milliseconds, given or defaulted", () => {
    const d = resolveConfig({}, 'h');
    expect([d.apiWatchIdleTimeoutMs, d.apiRelistPeriodMs, d.ipvs.drainTimeoutMs]).toEqual([150_000, 1_800_000, 900_000]);
    const g = resolveConfig({ apiWatchIdleTimeout: '1m', apiRelistPeriod: '10m', ipvsDrainTimeout: '5m' }, 'h');
    expect([g.apiWatchIdleTimeoutMs, g.apiRelistPeriodMs, g.ipvs.drainTimeoutMs]).toEqual([60_000, 600_000, 300_000]);
  });
});

describe('loading a KubeProxyConfiguration', () => {
  it("loads every fixture: kubeadm's ConfigMap, the inputs and kube-proxy's own outputs, and kpx's ConfigMap", async () => {
    const files = [join(FIXTURES, 'kubeadm-config.conf')];
    for (const d of [FIXTURES, join(FIXTURES, 'kpx-cases')]) {
      for (const f of await readdir(d)) if (f.endsWith('.yaml') && !f.startsWith('kubeadm-')) files.push(join(d, f));
    }
    const cm = parse(await readFile(join(FIXTURES, 'kubeadm-configmap.yaml'), 'utf8')) as { data: Record<string, string> };
    files.push(await cfgFile(cm.data['config.conf']!));
    const ours = parseAllDocuments(await readFile(join(REPO, 'manifests/configmap.yaml'), 'utf8')).map((d) => d.toJS() as { data?: Record<string, string> });
    const shipped = await cfgFile(ours.find((o) => o.data?.['config.yaml'])!.data!['config.yaml']!);
    expect(load([`--config=${shipped}`]).warnings).toEqual([]);
    files.push(shipped);
    expect(files.length).toBeGreaterThan(40);
    for (const f of files) expect(load([`--config=${f}`]).effective.mode, f).toMatch(/^(iptables|ipvs|nftables)$/);
  });

  it("gives kubeadm's empty and zero values kube-proxy's meaning, without a warning", () => {
    const r = load([`--config=${KUBEADM}`]);
    expect(r.warnings).toEqual([]);
    expect(r.unsupported).toBeNull();
    expect(r.kpx).toMatchObject({
      mode: 'iptables',
      hostname: 'machine-host',
      detectLocalMode: 'ClusterCIDR',
      healthzBindAddress: '0.0.0.0:10256',
      metricsBindAddress: '127.0.0.1:10249',
      syncPeriodMs: 30_000,
      minSyncPeriodMs: 1000,
      masqueradeBit: 14,
      localhostNodePorts: true,
      kubeconfig: '/var/lib/kube-proxy/kubeconfig.conf',
      nodePortAddresses: [],
    });
    expect(r.kpx!.clusterCIDRs.map((c) => c.text)).toEqual(['198.18.0.0/16']);
  });

  it('reads the sync periods from the section of the mode in use; ipvs.minSyncPeriod 0 stays 0', async () => {
    const f = await cfgFile(`${HEAD}mode: ipvs\niptables:\n  syncPeriod: 5s\nipvs:\n  syncPeriod: 0s\n  minSyncPeriod: 0s\n`);
    const r = load([`--config=${f}`]);
    expect(r.kpx).toMatchObject({ syncPeriodMs: 30_000, minSyncPeriodMs: 0 });
    expect(r.warnings).toEqual([`${f}: iptables.syncPeriod: "5s": no effect in ipvs mode (ipvs.syncPeriod applies)`]);
  });

  it('puts flags on top of the file, and says where kube-proxy would ignore them', async () => {
    const f = await cfgFile(`${HEAD}clusterCIDR: 198.18.0.0/16\niptables:\n  syncPeriod: 10s\n  minSyncPeriod: 2s\n  masqueradeAll: true\nnodePortAddresses: [198.18.0.0/24]\n`);
    const c = resolveConfig({ config: f, iptablesMinSyncPeriod: '500ms' }, 'Host-1');
    expect(c.hostname).toBe('host-1');
    expect(c.clusterCIDRs.map((x) => x.text)).toEqual(['198.18.0.0/16']);
    expect(c).toMatchObject({ syncPeriodMs: 10_000, minSyncPeriodMs: 500, masqueradeAll: true, nodePortAddresses: ['198.18.0.0/24'] });
    const r = load([`--config=${f}`, '--iptables-min-sync-period=500ms', '--hostname-override=n1', '--v=2']);
    expect(r.warnings).toEqual([`--iptables-min-sync-period: kube-proxy ignores this flag when --config is given; kpx applies it on top of ${f}`]);
  });

  it('names the file, the full path of the field and the value; never "(object)"', async () => {
    const nested = await cfgFile(`${HEAD}iptables:\n  masqueradeAlll: true\n`);
    expect(() => load([`--config=${nested}`])).toThrow(`${nested}: iptables.masqueradeAlll: unknown field`);
    const root = await cfgFile(`${HEAD}nftabless: {}\n`);
    expect(() => load([`--config=${root}`])).toThrow(`${root}: nftabless: unknown field`);
    const dur = await cfgFile(`${HEAD}iptables:\n  syncPeriod: fast\n`);
    expect(() => load([`--config=${dur}`])).toThrow(`${dur}: iptables.syncPeriod: "fast": invalid duration`);
    const bit = await cfgFile(`${HEAD}iptables:\n  masqueradeBit: 40\n`);
    expect(() => load([`--config=${bit}`])).toThrow(`${bit}: iptables.masqueradeBit: 40: must be within the range [0, 31]`);
    const kind = await cfgFile('apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n');
    expect(() => load([`--config=${kind}`])).toThrow(`${kind}: kind: "KubeletConfiguration": must be "KubeProxyConfiguration"`);
    for (const f of [nested, root, dur, bit]) expect(() => load([`--config=${f}`])).not.toThrow(/\(object\)/);
    expect(() => resolveConfig({ clusterCidr: '198.18.0.0/33' }, 'h')).toThrow('--cluster-cidr: "198.18.0.0/33": must be a valid CIDR');
  });

  it('runs every Linux mode of kube-proxy: mode nftables loads from the file and from the flag', async () => {
    const f = await cfgFile(`${HEAD}mode: nftables\n`);
    const r = load([`--config=${f}`]);
    expect(r.unsupported).toBeNull();
    expect(r.kpx?.mode).toBe('nftables');
    expect(resolveConfig({ proxyMode: 'nftables' }, 'h').mode).toBe('nftables');
  });

  it('marks for masquerade with the masqueradeBit of the mode: nftables.masqueradeBit in nftables mode, iptables.masqueradeBit in the others', async () => {
    const f = await cfgFile(`${HEAD}iptables:\n  masqueradeBit: 12\nnftables:\n  masqueradeBit: 3\n`);
    expect(load([`--config=${f}`, '--proxy-mode=nftables']).kpx?.masqueradeBit).toBe(3);
    expect(load([`--config=${f}`, '--proxy-mode=iptables']).kpx?.masqueradeBit).toBe(12);
    expect(load([`--config=${f}`, '--proxy-mode=ipvs']).kpx?.masqueradeBit).toBe(12);
    expect(load([`--config=${f}`, '--proxy-mode=nftables']).warnings).toContain(`${f}: iptables.masqueradeBit: 12: no effect in nftables mode (the nftables mode reads nftables.masqueradeBit)`);
    expect(load([`--config=${f}`, '--proxy-mode=iptables']).warnings).toContain(`${f}: nftables.masqueradeBit: 3: no effect in iptables mode (nftables mode only)`);
  });
});

describe('what kpx accepts but does not act on', () => {
  it('warns once per field, naming it (and the file), only for a value other than the default', async () => {
    const f = await cfgFile(`${HEAD}conntrack:\n  maxPerCore: 0\n  min: 131072\nwinkernel:\n  enableDSR: true\nfeatureGates:\n  SomeGate: true\n`);
    const r = load([`--config=${f}`]);
    expect(r.warnings).toEqual([
      `${f}: conntrack.maxPerCore: 0: accepted, no effect in kpx (kpx does not write conntrack sysctls)`,
      `${f}: featureGates: {"SomeGate":true}: accepted, no effect in kpx (kpx has no feature gates)`,
      `${f}: winkernel.enableDSR: true: accepted, no effect in kpx (Windows only: kube-proxy's winkernel mode)`,
    ]);
    expect(load(['--conntrack-max-per-core=0', '--boot-id-file=/x']).warnings).toEqual([
      '--conntrack-max-per-core: 0: accepted, no effect in kpx (kpx does not write conntrack sysctls)',
      '--boot-id-file=/x: accepted, no effect in kpx (kpx does not read the boot id)',
    ]);
    expect(load(['--conntrack-max-per-core=32768', '--ipvs-scheduler=rr', '--proxy-mode=ipvs']).warnings).toEqual([]);
    expect(load(['--ipvs-sync-period=5s']).warnings).toEqual(['--ipvs-sync-period: no effect in iptables mode']);
  });

  it('maps logging.verbosity 4 and up to debug logging, --log-level first', () => {
    expect(load(['--v=3']).kpx!.logLevel).toBeUndefined();
    expect(load(['-v=4']).kpx!.logLevel).toBe('debug');
    expect(load(['-v', '5', '--log-level', 'warn']).kpx!.logLevel).toBe('warn');
  });
});

describe("kube-proxy's command line", () => {
  it('takes kube-proxy flag syntax: bool=true/false, --v, maps, lists, pflag spellings', () => {
    const c = (argv: string[]) => load(argv).kpx!;
    expect(c(['--masquerade-all']).masqueradeAll).toBe(true);
    expect(c(['--masquerade-all=true']).masqueradeAll).toBe(true);
    expect(c(['--masquerade-all=false']).masqueradeAll).toBe(false);
    expect(c(['--masquerade_all=t']).masqueradeAll).toBe(true);
    expect(c(['--iptables-localhost-nodeports=false']).localhostNodePorts).toBe(false);
    expect(c(['--once=false', '--dry-run=true'])).toMatchObject({ once: false, dryRun: true });
    expect(c(['--bind-address-hard-fail=1', '--conntrack-tcp-be-liberal=True'])).toMatchObject({ bindAddressHardFail: true, conntrackTCPBeLiberal: true });
    expect(load(['--v=2']).effective.logging.verbosity).toBe(2);
    expect(load(['--feature-gates=A=true,B=false', '--feature-gates=C=true']).effective.featureGates).toEqual({ A: true, B: false, C: true });
    expect(c(['--nodeport-addresses=198.18.0.0/24', '--nodeport-addresses', '2001:2::/64']).nodePortAddresses).toEqual(['198.18.0.0/24', '2001:2::/64']);
    expect(c(['--proxy-mode=ipvs', '--ipvs-sync-period=20s', '--iptables-sync-period=5s'])).toMatchObject({ mode: 'ipvs', syncPeriodMs: 20_000 });
    expect(() => load(['--proxy-mode=IPVS'])).toThrow('--proxy-mode: "IPVS": is not a proxy mode');
    expect(() => load(['--masquerade-all=yes'])).toThrow('--masquerade-all=yes: invalid boolean');
  });

  it('healthz and metrics: "" switches a server off, a bare IP gets the default port, --*-port 0 switches it off', () => {
    expect(load(['--metrics-bind-address=', '--healthz-bind-address=']).kpx).toMatchObject({ metricsBindAddress: '', healthzBindAddress: '' });
    expect(load(['--metrics-bind-address=0.0.0.0', '--healthz-bind-address=::']).kpx).toMatchObject({ metricsBindAddress: '0.0.0.0:10249', healthzBindAddress: '[::]:10256' });
    expect(load(['--healthz-port=0', '--metrics-bind-address=0.0.0.0', '--metrics-port=9999']).kpx).toMatchObject({ healthzBindAddress: '', metricsBindAddress: '0.0.0.0:9999' });
    // as in kube-proxy, a port flag does not replace the port of an address that has one
    expect(load(['--metrics-port=9999']).kpx!.metricsBindAddress).toBe('127.0.0.1:10249');
  });

  it("knows every flag of kube-proxy v1.36.3's --help (and the deprecated ones)", () => {
    // `kube-proxy --help` of v1.36.3 on Linux, plus hidden --healthz-port/--metrics-port and v1.29-v1.30's --proxy-port-range
    const upstream =
      'bind-address bind-address-hard-fail boot-id-file cleanup cluster-cidr config config-sync-period conntrack-max-per-core conntrack-min conntrack-tcp-be-liberal conntrack-tcp-timeout-close-wait conntrack-tcp-timeout-established conntrack-udp-timeout conntrack-udp-timeout-stream detect-local-mode feature-gates healthz-bind-address hostname-override init-only iptables-localhost-nodeports iptables-masquerade-bit iptables-min-sync-period iptables-sync-period ipvs-exclude-cidrs ipvs-min-sync-period ipvs-scheduler ipvs-strict-arp ipvs-sync-period ipvs-tcp-timeout ipvs-tcpfin-timeout ipvs-udp-timeout kube-api-burst kube-api-content-type kube-api-qps kubeconfig log-flush-frequency log-json-info-buffer-size log-json-split-stream log-text-info-buffer-size log-text-split-stream logging-format machine-id-file masquerade-all master metrics-bind-address nodeport-addresses oom-score-adj pod-bridge-interface pod-interface-name-prefix profiling proxy-mode show-hidden-metrics-for-version v vmodule write-config-to healthz-port metrics-port proxy-port-range';
    expect(KUBE_PROXY_FLAGS.map((f) => f.name).sort()).toEqual(upstream.split(' ').sort());
  });

  it('chooses the action as kube-proxy does: --write-config-to, then --cleanup, then --init-only', () => {
    expect(chooseAction(parseProxyFlags(['--cleanup']))).toBe('cleanup');
    expect(chooseAction(parseProxyFlags(['--cleanup=false']))).toBe('run');
    expect(chooseAction(parseProxyFlags(['--cleanup', '--write-config-to=/tmp/x']))).toBe('write-config');
    expect(chooseAction(parseProxyFlags(['--init-only=true']))).toBe('init-only');
    expect(chooseAction(parseProxyFlags([]))).toBe('run');
  });
});

describe('the CLI', () => {
  it("runs on kubeadm's ConfigMap", async () => {
    const r = await kpx(['render', '--config', KUBEADM, '--manifests', join(REPO, 'examples'), '--hostname-override', 'node-a', '--log-level', 'error']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toContain('*nat');
  });

  it('prints one line naming the file, field and value and exits 2 on a bad or unsupported configuration', async () => {
    const cases: Array<[string[], string]> = [
      [['--config', await cfgFile(`${HEAD}conntrack:\n  tcpBeLiberl: true\n`)], 'conntrack.tcpBeLiberl: unknown field'],
      [['--config', await cfgFile(`${HEAD}mode: kernelspace\n`)], `mode: "kernelspace": is kube-proxy's Windows mode`],
      [['--proxy-mode=IPVS'], '--proxy-mode: "IPVS": is not a proxy mode'],
      [['--bogus-flag=1'], "unknown option '--bogus-flag=1'"],
      [['--masquerade-all=maybe'], '--masquerade-all=maybe: invalid boolean'],
      [['--cleanup'], 'render: --cleanup is for `kpx run`'],
    ];
    for (const [args, message] of cases) {
      const r = await kpx(['render', '--manifests', dir, ...args]);
      expect(r.exitCode, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr).toContain(message);
    }
    // kube-proxy's own nftables-mode config runs as it is
    const nft = await kpx(['render', '--manifests', dir, '--config', join(FIXTURES, 'config-nftables.input.yaml'), '--log-level', 'error']);
    expect([nft.exitCode, nft.stderr]).toEqual([0, '']);
    expect(nft.stdout).toContain('nftables mode: nft -f -');
    const top = await kpx(['--unknown']);
    expect([top.exitCode, top.stderr]).toEqual([2, "kpx: unknown option '--unknown'"]);
  });

  it('--write-config-to writes what `config --print` prints and exits; the same as kube-proxy wrote for no flags', async () => {
    const out = join(dir, 'written.yaml');
    const w = await kpx(['--write-config-to', out]);
    expect(w.exitCode).toBe(0);
    const p = await kpx(['config', '--print']);
    expect(p.exitCode).toBe(0);
    expect((await readFile(out, 'utf8')).trimEnd()).toBe(p.stdout);
    expect(parse(p.stdout)).toEqual(parse(await readFile(join(FIXTURES, 'defaults.yaml'), 'utf8')));
    const n = await kpx(['config', '--print', '--proxy-mode=nftables']);
    expect(n.exitCode).toBe(0);
    expect(parse(n.stdout)).toEqual(parse(await readFile(join(FIXTURES, 'kpx-cases/only-mode-nftables.yaml'), 'utf8')));
    expect((await kpx(['config'])).exitCode).toBe(2);
    const init = await kpx(['--init-only', '--config', KUBEADM]);
    expect([init.exitCode, init.stderr]).toEqual([0, 'kpx: --init-only: kpx has no separate privileged initialisation; the configuration is valid, nothing else to do']);
  });

  it("--help says what each of kube-proxy's flags does in kpx", async () => {
    const r = await kpx(['run', '--help']);
    for (const f of KUBE_PROXY_FLAGS) expect(r.stdout).toContain(`--${f.name} `);
    for (const group of ["kube-proxy's flags, honoured:", "kube-proxy's flags accepted without effect in kpx", "kpx's own flags:"]) expect(r.stdout).toContain(group);
    expect(r.stdout).toContain('(default: 127.0.0.1:10249)');
    expect(r.stdout).toMatch(/--conntrack-max-per-core <int32>\s+kpx does not write conntrack sysctls/);
    const top = await kpx(['--help']);
    expect(top.exitCode).toBe(0);
    for (const cmd of ['run', 'render', 'config', 'cleanup']) expect(top.stdout).toContain(cmd);
    expect(top.stdout).toContain('--masquerade-all [bool]');
  });
});
