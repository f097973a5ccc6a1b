// kpx's command line. `kpx run` is the proxy, and takes kube-proxy's flags in kube-proxy's
// syntax (`kpx --config F --v=2` is `kpx run ...`); `render` prints what it would apply;
// `config --print` prints the effective configuration; `cleanup` removes what it installed.
import { writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { Command, Option } from 'commander';
import { exitAfterOutput, out } from './output.js';
import { ConfigError, effectiveYAML, loadConfig, type CliFlags, type KpxConfig, type LoadedConfig } from '../config/config.js';
import { given, parseBool } from '../config/flags.js';
import { createLogger, type Logger } from '../util/log.js';
import { ClusterState } from '../model/state.js';
import { FileSource } from '../source/file.js';
import type { Source } from '../source/types.js';
import type { ApiSourceOptions } from '../source/kube/api-source.js';
import { execRunner } from '../apply/exec.js';
import { cleanupIptables, cleanupKubeProxy } from '../apply/cleanup.js';
import { isKpxChain } from '../render/iptables/names.js';
import type { Proxier } from '../sync/driver.js';
import { IptablesProxier } from '../sync/iptables-mode.js';
import { IpvsProxier } from '../sync/ipvs-mode.js';
import { NftablesProxier } from '../sync/nftables-mode.js';
import { removeNftablesTables } from '../apply/nftables.js';
import type { KpxMode } from '../config/modes.js';
import type { ProxierOptions } from '../sync/driver.js';

import { removeIpvsState } from '../apply/ipvs.js';
import { Controller, type SyncObserver } from '../sync/controller.js';
import { PostSync } from '../sync/post-sync.js';
import { ProxyHealth } from '../server/health.js';
import { ServiceHealthServers } from '../server/service-health.js';
import { ConntrackCleaner } from '../apply/conntrack.js';
import { KpxMetrics } from '../server/metrics.js';
import { healthServer, metricsServer, startServers } from '../server/http.js';
import { traceCommand, addTraceFlags, type TraceFlags } from './trace.js';
import { addProxyFlags, normaliseArgv } from './flags.js';

export const VERSION = '0.1.0';

export { addProxyFlags };

export interface Built {
  config: KpxConfig;
  log: Logger;
  state: ClusterState;
  source: Source;
  controller: Controller;
  proxier: Proxier;
  health: ProxyHealth;
  metrics: KpxMetrics;
  healthServers: ServiceHealthServers | null;
}

/** `renderOnly`: kpx render (no kernel read, no binary run); not a command-line flag. */
type Flags = CliFlags & { logLevel?: string; renderOnly?: boolean };

/** The configuration kpx runs with, or a ConfigError naming what it cannot run. */
function runnable(flags: Flags): { config: KpxConfig; loaded: LoadedConfig } {
  const loaded = loadConfig(flags, hostname());
  if (!loaded.kpx) throw new ConfigError(loaded.unsupported ?? 'unsupported configuration');
  return { config: { ...loaded.kpx, renderOnly: flags.renderOnly === true }, loaded };
}

/** One proxier per mode kpx runs. */
const PROXIERS: Record<KpxMode, new (opts: ProxierOptions) => Proxier> = { iptables: IptablesProxier, ipvs: IpvsProxier, nftables: NftablesProxier };

export async function build(flags: Flags, print: (text: string) => void = out): Promise<Built> {
  const { config, loaded } = runnable(flags);
  const log = createLogger({ level: config.logLevel });
  for (const w of loaded.warnings) log.warn(w);
  let metricsRef: KpxMetrics | null = null;
  const source = await makeSource(config, log, {
    onRelist: (kind, reason) => metricsRef?.apiRelists.inc({ resource: kind, reason }),
    onWatchEnd: (kind, reason) => metricsRef?.apiWatchEnds.inc({ resource: kind, reason }),
  });
  const state = new ClusterState(config.hostname, log);
  const proxier: Proxier = new PROXIERS[config.mode]({ config, state, runner: execRunner, log, print });
  const health = new ProxyHealth(2 * config.syncPeriodMs);
  const live = !config.dryRun;
  const healthServers = live
    ? new ServiceHealthServers(log.child({ component: 'service-health' }), () => proxier.nodePortAddresses(), () => health.status().healthy)
    : null;
  const metrics = new KpxMetrics(() => state.peekPending(), () => proxier.knownFamilies());
  metricsRef = metrics;
  const conntrack = live
    ? new ConntrackCleaner(execRunner, log.child({ component: 'conntrack' }), (family, n) => metrics.conntrackDeleted.inc({ ip_family: family }, n), (family, s) => metrics.conntrackDuration.observe({ ip_family: family }, s))
    : null;
  const observers: SyncObserver[] = [new PostSync(log, health, () => proxier.knownFamilies(), conntrack, healthServers), metrics];
  const controller = new Controller({ config, log, source, state, proxier, observers });
  return { config, log, state, source, controller, proxier, health, metrics, healthServers };
}

/**
 * The API source is imported only when used; so is @kubernetes/client-node (~70 MiB of
 * RSS), which only a kubeconfig with a credential plugin, auth-provider or proxy-url loads.
 */
async function makeSource(config: KpxConfig, log: Logger, observer: ApiSourceOptions['observer']): Promise<Source> {
  if (config.manifests) return new FileSource(config.manifests, log.child({ source: 'file' }));
  const { ApiSource, DEFAULT_REFLECTOR_OPTIONS } = await import('../source/kube/api-source.js');
  const { loadApiConnection } = await import('../source/kube/kubeconfig.js');
  const apiLog = log.child({ source: 'api' });
  let connection;
  try {
    connection = await loadApiConnection({ kubeconfig: config.kubeconfig, master: config.master }, { log: apiLog });
  } catch (err) {
    throw err instanceof ConfigError ? err : new ConfigError((err as Error).message);
  }
  return new ApiSource(
    {
      connection,
      nodeName: config.hostname,
      serviceCIDRs: config.mode === 'nftables',
      reflector: { ...DEFAULT_REFLECTOR_OPTIONS, watchIdleTimeoutMs: config.apiWatchIdleTimeoutMs, relistPeriodMs: config.apiRelistPeriodMs },
      observer,
    },
    apiLog,
  );
}

async function runCommand(flags: Flags): Promise<number> {
  const { config, log, state, source, controller, proxier, health, metrics, healthServers } = await build(flags);
  await proxier.init();
  if (config.once) {
    const ok = await controller.runOnce();
    await healthServers?.stop();
    return ok ? 0 : 1;
  }
  const servers = await startServers(
    log,
    [
      { name: 'metrics', addr: config.metricsBindAddress, server: () => metricsServer(metrics, source.inventory?.bind(source)) },
      { name: 'healthz', addr: config.healthzBindAddress, server: () => healthServer(health, () => state.node, metrics) },
    ],
    config.bindAddressHardFail,
  );
  await controller.start();
  log.info({ node: config.hostname, mode: config.mode }, 'kpx running');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  log.info('stopping; programmed rules stay in place');
  await controller.stop();
  await healthServers?.stop();
  for (const s of servers) s.close();
  return 0;
}

/** What `kpx run` does with kube-proxy's action flags, in kube-proxy's order. */
export type RunAction = 'write-config' | 'cleanup' | 'init-only' | 'run';

export function chooseAction(flags: CliFlags): RunAction {
  const on = (name: string) => {
    const v = given(flags, name);
    return v !== undefined && parseBool(v, name);
  };
  if (typeof flags.writeConfigTo === 'string' && flags.writeConfigTo !== '') return 'write-config';
  if (on('cleanup')) return 'cleanup';
  if (on('init-only')) return 'init-only';
  return 'run';
}

/** `kpx cleanup`: IPVS mode's virtual servers and dummy, then the rules, then the sets they used, then kpx's nftables tables. */
async function cleanupKpx(logLevel: string | undefined): Promise<number> {
  const log = createLogger({ level: logLevel });
  const errors = (await removeIpvsState(execRunner, log, { sets: false })).errors;
  errors.push(...(await cleanupIptables(execRunner, log, isKpxChain)).errors);
  errors.push(...(await removeIpvsState(execRunner, log, { sets: true })).errors);
  const nft = await removeNftablesTables(execRunner, log).catch((err: Error) => {
    errors.push(err.message);
    log.error({ err: err.message }, 'cleanup failed');
    return { removed: [] };
  });
  if (nft.removed.length) log.info({ tables: nft.removed.map((f) => `${f} kpx`) }, 'removed kpx nftables tables');
  return errors.length ? 1 : 0;
}

/** --write-config-to, --cleanup and --init-only are `kpx run`'s (kube-proxy's command line). */
function onlyRun<T extends CliFlags>(flags: T, command: string): T {
  const action = chooseAction(flags);
  if (action !== 'run') throw new ConfigError(`${command}: --${action === 'write-config' ? 'write-config-to' : action} is for \`kpx run\` (kube-proxy's command line)`);
  return flags;
}

const stderrLine = (line: string) => process.stderr.write(`kpx: ${line}\n`);

/** Prints (or writes) the effective configuration; a mode kpx cannot run still prints, then exits 2. */
function printConfig(flags: Flags, write: (yaml: string) => void): number {
  const loaded = loadConfig(flags, hostname());
  write(effectiveYAML(loaded.effective));
  for (const w of loaded.warnings) stderrLine(`warning: ${w}`);
  if (loaded.unsupported) {
    stderrLine(loaded.unsupported);
    return 2;
  }
  return 0;
}

async function runAction(flags: Flags): Promise<number> {
  switch (chooseAction(flags)) {
    case 'write-config':
      return printConfig(flags, (yaml) => writeFileSync(String(flags.writeConfigTo), yaml));
    case 'cleanup':
      loadConfig(flags, hostname());
      return cleanupKpx(typeof flags.logLevel === 'string' ? flags.logLevel : undefined);
    case 'init-only': {
      const { loaded } = runnable(flags);
      for (const w of loaded.warnings) stderrLine(`warning: ${w}`);
      stderrLine('--init-only: kpx has no separate privileged initialisation; the configuration is valid, nothing else to do');
      return 0;
    }
    default:
      return runCommand(flags);
  }
}

function oneLine(text: string): string {
  return text.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim();
}

function program(setExit: (code: number) => void): Command {
  const p = new Command('kpx')
    .description('A kube-proxy replacement: programs iptables (or IPVS) so Kubernetes Services work on this node.')
    .version(VERSION)
    .configureOutput({ outputError: (str, write) => write(`kpx: ${oneLine(str)}\n`) })
    .exitOverride();
  const run = addProxyFlags(p.command('run', { isDefault: true }).description('run the proxy (default command; takes kube-proxy\'s flags)')).action(
    async (flags: Flags) => setExit(await runAction(flags)),
  );
  addProxyFlags(p.command('render').description('print the whole ruleset kpx wants, as restore input for an empty kernel, and exit (reads no rules, runs no binary; run --once --dry-run prints what it would apply here)')).action(async (flags: Flags) =>
    setExit(await runCommand({ ...onlyRun(flags, 'render'), once: true, dryRun: true, renderOnly: true })),
  );
  addProxyFlags(p.command('config').description('print the effective configuration as a KubeProxyConfiguration (the fields and defaults of kube-proxy\'s --write-config-to)'))
    .option('--print', 'print it to stdout (warnings and what kpx cannot run go to stderr; exit 2 for a mode kpx has not got)')
    .action((flags: Flags & { print?: boolean }) => {
      if (!flags.print) throw new ConfigError('config: nothing to do (use --print)');
      setExit(printConfig(onlyRun(flags, 'config'), out));
    });
  addTraceFlags(
    p
      .command('trace')
      .description('the journey of one packet on this node: the rules it meets, the endpoints it may reach and why others are excluded, where the kernel sends it next (--live)'),
  ).action(
    async (flags: TraceFlags) => setExit(await traceCommand(flags)),
  );
  p.command('cleanup')
    .description('remove every chain, rule and jump kpx installed (both iptables backends, both families), and the IPVS mode\'s virtual servers, dummy interface and ipsets')
    .option(
      '--kube-proxy [bool]',
      "instead remove what kube-proxy left behind (its KUBE-* service chains and jumps, IPVS-mode ipsets and kube-ipvs0; not kubelet's chains); kpx's own rules stay and keep serving (default: false)",
    )
    .addOption(new Option('--log-level <level>', 'log level (default: info)').choices(['debug', 'info', 'warn', 'error', 'silent']))
    .action(async (flags: { logLevel?: string; kubeProxy?: string | boolean }) => {
      if (!parseBool(flags.kubeProxy ?? false, 'kube-proxy')) return setExit(await cleanupKpx(flags.logLevel));
      const log = createLogger({ level: flags.logLevel });
      setExit((await cleanupKubeProxy(execRunner, log)).errors.length ? 1 : 0);
    });
  p.addHelpText('after', () => `\nkpx run (the default command) takes kube-proxy's flags:\n\n${run.helpInformation()}`);
  return p;
}

export async function main(argv: string[]): Promise<void> {
  let exitCode = 0;
  try {
    await program((code) => (exitCode = code)).parseAsync(normaliseArgv(argv));
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    // help, version and errors drain stdout and stderr before the exit, as render does
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') await exitAfterOutput(0);
    if (e.code?.startsWith('commander.')) await exitAfterOutput(2);
    if (err instanceof ConfigError) {
      process.stderr.write(`kpx: ${oneLine(err.message)}\n`);
      await exitAfterOutput(2);
    }
    process.stderr.write(`kpx: ${e.message ?? String(err)}\n`);
    await exitAfterOutput(1);
  }
  await exitAfterOutput(exitCode);
}
