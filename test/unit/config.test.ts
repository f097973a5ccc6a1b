import { afterAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { ConfigError, parseDuration, resolveConfig } from '../../src/config/config.js';
import { KPX_BIN } from '../substrate/netns.js';

const dir = await mkdtemp(join(tmpdir(), 'kpx-config-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

async function cfgFile(text: string): Promise<string> {
  const f = join(dir, `${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(f, text);
  return f;
}
const HEAD = 'apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n';

describe('configuration', () => {
  it('parses Go durations', () => {
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(() => parseDuration('30')).toThrow(ConfigError);
  });

  it('reads a KubeProxyConfiguration and lets flags override it', async () => {
    const f = await cfgFile(`${HEAD}clusterCIDR: 198.18.0.0/16\niptables:\n  syncPeriod: 10s\n  minSyncPeriod: 2s\n  masqueradeAll: true\nnodePortAddresses: [198.18.0.0/24]\n`);
    const c = resolveConfig({ config: f, iptablesMinSyncPeriod: '500ms' }, 'Host-1');
    expect(c.hostname).toBe('host-1');
    expect(c.clusterCIDRs.map((x) => x.text)).toEqual(['198.18.0.0/16']);
    expect(c.syncPeriodMs).toBe(10_000);
    expect(c.minSyncPeriodMs).toBe(500);
    expect(c.masqueradeAll).toBe(true);
    expect(c.nodePortAddresses).toEqual(['198.18.0.0/24']);
  });

  it('names an unknown or invalid field', async () => {
    await expect(async () => resolveConfig({ config: await cfgFile(`${HEAD}iptables:\n  masqueradeAlll: true\n`) }, 'h')).rejects.toThrow(
      /iptables: Unrecognized key: "masqueradeAlll"/,
    );
    await expect(async () => resolveConfig({ config: await cfgFile(`${HEAD}iptables:\n  syncPeriod: fast\n`) }, 'h')).rejects.toThrow(
      /iptables\.syncPeriod: invalid duration/,
    );
    expect(() => resolveConfig({ clusterCidr: '198.18.0.0/33' }, 'h')).toThrow(/--cluster-cidr: invalid CIDR/);
  });

  it('the CLI prints one line naming the field and exits 2 on a bad config', async () => {
    const f = await cfgFile(`${HEAD}conntrack:\n  tcpBeLiberl: true\n`);
    const r = await execa(process.execPath, [KPX_BIN, 'render', '--config', f, '--manifests', dir], { reject: false });
    expect(r.exitCode).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/conntrack: Unrecognized key: "tcpBeLiberl"/);
  });

  it('lists every flag with its default in --help', async () => {
    const r = await execa(process.execPath, [KPX_BIN, 'run', '--help']);
    for (const flag of ['--config', '--hostname-override', '--proxy-mode', '--cluster-cidr', '--masquerade-all', '--nodeport-addresses', '--metrics-bind-address', '--healthz-bind-address', '--kubeconfig', '--manifests', '--once', '--dry-run']) {
      expect(r.stdout).toContain(flag);
    }
    expect(r.stdout).toContain('(default: 127.0.0.1:10249)');
    const top = await execa(process.execPath, [KPX_BIN, '--help']);
    for (const cmd of ['run', 'render', 'cleanup']) expect(top.stdout).toContain(cmd);
  });
});
