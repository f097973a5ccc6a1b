// kpx's command line. `kpx run` is the proxy; `render` prints what it would apply;
// `cleanup` removes what it installed.
import { hostname } from 'node:os';
import { Command, Option } from 'commander';
import { exitAfterOutput, out } from './output.js';
import { ConfigError, resolveConfig, type CliFlags, type KpxConfig } from '../config/config.js';
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
import { removeIpvsState } from '../apply/ipvs.js';
import { Controller, type SyncObserver } from '../sync/controller.js';
import { PostSync } from '../sync/post-sync.js';
import { ProxyHealth } from '../server/health.js';
import { ServiceHealthServers } from '../server/service-health.js';
import { ConntrackCleaner } from '../apply/conntrack.js';
import { KpxMetrics } from '../server/metrics.js';
import { healthServer, metricsServer, startServers } from '../server/http.js';
import { traceCommand, addTraceFlags } from './trace.js';

export const VERSION = '0.1.0';

export function addProxyFlags(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags given here override it')
    .option('--hostname-override <name>', 'this node\'s name (default: the hostname)')
    .addOption(new Option('--proxy-mode <mode>', 'iptables or ipvs (default: iptables)').choices(['iptables', 'ipvs']))
    .option('--cluster-cidr <cidrs>', 'pod CIDRs, comma separated (one per family); traffic from outside them to a ClusterIP is masqueraded (default: none)')
    .option('--masquerade-all', 'masquerade all traffic sent to a ClusterIP (default: false)')
    .option('--nodeport-addresses <list>', 'CIDRs (or "primary") of node addresses NodePorts answer on (default: all local addresses)')
    .option('--metrics-bind-address <addr>', 'metrics server address, "" to disable (default: 127.0.0.1:10249)')
    .option('--healthz-bind-address <addr>', 'health server address, "" to disable (default: 0.0.0.0:10256)')
    .option('--kubeconfig <file>', 'kubeconfig for the Kubernetes API source (default: in-cluster config)')
    .option('--master <url>', 'apiserver URL, overriding the kubeconfig (default: none)')
    .option('--api-watch-idle-timeout <duration>', 'restart a watch that has been silent this long (default: 150s)')
    .option('--api-relist-period <duration>', 'relist everything this often as a safety net; 0 = never (default: 30m)')
    .option('--bind-address <ip>', 'overrides this node\'s primary IP when the Node has none (default: none)')
    .addOption(
      new Option('--detect-local-mode <mode>', 'how pod traffic is recognised (default: ClusterCIDR)').choices([
        'ClusterCIDR',
        'NodeCIDR',
        'BridgeInterface',
        'InterfaceNamePrefix',
      ]),
    )
    .option('--pod-bridge-interface <name>', 'bridge of local pods, for --detect-local-mode BridgeInterface')
    .option('--pod-interface-name-prefix <prefix>', 'interface prefix of local pods, for InterfaceNamePrefix')
    .option('--iptables-masquerade-bit <bit>', 'fwmark bit for masquerade, 0-31 (default: 14)')
    .option('--iptables-localhost-nodeports <bool>', 'NodePorts answer on 127.0.0.1 (IPv4) (default: true)')
    .option('--iptables-sync-period <duration>', 'longest time between syncs (default: 30s)')
    .option('--iptables-min-sync-period <duration>', 'shortest time between syncs (default: 1s)')
    .option('--conntrack-tcp-be-liberal', 'set nf_conntrack_tcp_be_liberal and skip the INVALID drop rule (default: false)')
    .option('--ipvs-scheduler <name>', 'IPVS scheduler (default: rr)')
    .option('--ipvs-sync-period <duration>', 'IPVS mode: longest time between syncs (default: 30s)')
    .option('--ipvs-min-sync-period <duration>', 'IPVS mode: shortest time between syncs (default: 1s)')
    .option('--ipvs-strict-arp', 'IPVS mode: arp_ignore=1, arp_announce=2 (default: false)')
    .option('--ipvs-exclude-cidrs <cidrs>', 'IPVS mode: virtual servers kpx must not touch (default: none)')
    .option('--ipvs-tcp-timeout <duration>', 'IPVS TCP session timeout (default: 0, kernel value)')
    .option('--ipvs-tcpfin-timeout <duration>', 'IPVS TCP FIN_WAIT timeout (default: 0, kernel value)')
    .option('--ipvs-udp-timeout <duration>', 'IPVS UDP timeout (default: 0, kernel value)')
    .option('--ipvs-drain-timeout <duration>', 'IPVS mode: a removed TCP endpoint keeps weight 0 until its connections end, at most this long (default: 15m)')
    .addOption(new Option('--iptables-backend <backend>', 'iptables backend (default: auto)').choices(['auto', 'nft', 'legacy']))
    .option('--manifests <dir>', 'read Services, EndpointSlices and Nodes from YAML/JSON files in this directory (instead of the API)')
    .option('--once', 'wait for the initial state, sync once, exit 0 on success and 1 on failure (default: false)')
    .option('--dry-run', 'print what would be applied to stdout and change nothing (default: false)')
    .addOption(new Option('--log-level <level>', 'log level (default: info)').choices(['debug', 'info', 'warn', 'error', 'silent']));
}

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

export async function build(flags: CliFlags & { logLevel?: string }, print: (text: string) => void = out): Promise<Built> {
  const log = createLogger({ level: flags.logLevel });
  const config = resolveConfig(flags, hostname());
  let metricsRef: KpxMetrics | null = null;
  const source = await makeSource(config, log, {
    onRelist: (kind, reason) => metricsRef?.apiRelists.inc({ resource: kind, reason }),
    onWatchEnd: (kind, reason) => metricsRef?.apiWatchEnds.inc({ resource: kind, reason }),
  });
  const state = new ClusterState(config.hostname, log);
  const proxier: Proxier =
    config.mode === 'ipvs'
      ? new IpvsProxier({ config, state, runner: execRunner, log, print })
      : new IptablesProxier({ config, state, runner: execRunner, log, print });
  const health = new ProxyHealth(2 * config.syncPeriodMs);
  const live = !config.dryRun;
  const healthServers = live
    ? new ServiceHealthServers(log.child({ component: 'service-health' }), () => proxier.nodePortAddresses(), () => health.status().healthy)
    : null;
  const metrics = new KpxMetrics(() => state.peekPending(), () => proxier.knownFamilies());
  metricsRef = metrics;
  const conntrack = live
    ? new ConntrackCleaner(execRunner, log.child({ component: 'conntrack' }), (family, n) => metrics.conntrackDeleted.inc({ ip_family: family }, n))
    : null;
  const observers: SyncObserver[] = [new PostSync(log, health, () => proxier.knownFamilies(), conntrack, healthServers), metrics];
  const controller = new Controller({ config, log, source, state, proxier, observers });
  return { config, log, state, source, controller, proxier, health, metrics, healthServers };
}

/** The API source is imported only when used: @kubernetes/client-node alone costs ~70 MiB of RSS. */
async function makeSource(config: KpxConfig, log: Logger, observer: ApiSourceOptions['observer']): Promise<Source> {
  if (config.manifests) return new FileSource(config.manifests, log.child({ source: 'file' }));
  const { ApiSource, DEFAULT_REFLECTOR_OPTIONS, loadKubeConfig } = await import('../source/kube/api-source.js');
  let kubeConfig;
  try {
    kubeConfig = loadKubeConfig({ kubeconfig: config.kubeconfig, master: config.master });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  return new ApiSource(
    {
      kubeConfig,
      nodeName: config.hostname,
      reflector: { ...DEFAULT_REFLECTOR_OPTIONS, watchIdleTimeoutMs: config.apiWatchIdleTimeoutMs, relistPeriodMs: config.apiRelistPeriodMs },
      observer,
    },
    log.child({ source: 'api' }),
  );
}

async function runCommand(flags: CliFlags & { logLevel?: string }): Promise<number> {
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

export async function main(argv: string[]): Promise<void> {
  const program = new Command('kpx')
    .description('A kube-proxy replacement: programs iptables (or IPVS) so Kubernetes Services work on this node.')
    .version(VERSION)
    .showHelpAfterError()
    .exitOverride();

  let exitCode = 0;
  addProxyFlags(program.command('run', { isDefault: true }).description('run the proxy (default command)')).action(
    async (flags) => {
      exitCode = await runCommand(flags);
    },
  );
  addProxyFlags(program.command('render').description('print the whole ruleset kpx wants, as restore input for an empty kernel, and exit (reads no rules; run --once --dry-run prints what it would apply here)')).action(
    async (flags) => {
      exitCode = await runCommand({ ...flags, once: true, dryRun: true, renderOnly: true });
    },
  );
  addTraceFlags(addProxyFlags(program.command('trace').description('walk a packet through the rules kpx renders (or the live ones) and print the outcomes'))).action(
    async (flags) => {
      exitCode = await traceCommand(flags);
    },
  );
  program
    .command('cleanup')
    .description('remove every chain, rule and jump kpx installed (both iptables backends, both families), and the IPVS mode\'s virtual servers, dummy interface and ipsets')
    .option(
      '--kube-proxy',
      "instead remove what kube-proxy left behind (its KUBE-* service chains and jumps, IPVS-mode ipsets and kube-ipvs0; not kubelet's chains); kpx's own rules stay and keep serving (default: false)",
    )
    .addOption(new Option('--log-level <level>', 'log level (default: info)').choices(['debug', 'info', 'warn', 'error', 'silent']))
    .action(async (flags: { logLevel?: string; kubeProxy?: boolean }) => {
      const log = createLogger({ level: flags.logLevel });
      if (flags.kubeProxy) {
        exitCode = (await cleanupKubeProxy(execRunner, log)).errors.length ? 1 : 0;
        return;
      }
      // IPVS mode's virtual servers and dummy, then the rules, then the sets they used
      const errors = (await removeIpvsState(execRunner, log, { sets: false })).errors;
      errors.push(...(await cleanupIptables(execRunner, log, isKpxChain)).errors);
      errors.push(...(await removeIpvsState(execRunner, log, { sets: true })).errors);
      exitCode = errors.length ? 1 : 0;
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') process.exit(0);
    if (e.code?.startsWith('commander.')) process.exit(2);
    if (err instanceof ConfigError) {
      process.stderr.write(`kpx: ${err.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`kpx: ${e.message ?? String(err)}\n`);
    await exitAfterOutput(1);
  }
  await exitAfterOutput(exitCode);
}
