// hack/netns-cluster: a Kubernetes cluster of network namespaces running kpx on every node
// (see hack/netns-cluster.md). Each command is one process; the cluster lives in its state
// directory and its detached processes between commands.
import { closeSync, existsSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnSync } from 'node:child_process';
import { Command, Option } from 'commander';
import { CoreV1Api } from '@kubernetes/client-node';
import { parseAllDocuments } from 'yaml';
import { DEFAULT_BASE_DIR, NetnsCluster } from './netns-cluster.js';
import { ECHO_PORT, HOLD_PORT, type Where } from './types.js';
import * as plan from './plan.js';

const out = (line = '') => process.stdout.write(`${line}\n`);
const progress = (line: string) => process.stderr.write(`netns-cluster: ${line}\n`);

interface Common {
  name: string;
  baseDir: string;
}
const dirOf = (o: Common) => join(o.baseDir, o.name);

/** One command at a time per cluster (a lock file holding the pid; a dead holder's lock is taken over). */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lock = join(dir, 'lock');
  const end = Date.now() + 120_000;
  for (;;) {
    try {
      const fd = openSync(lock, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(readFileSync(lock, 'utf8').trim());
      let holderAlive = false;
      try {
        process.kill(holder, 0);
        holderAlive = holder !== process.pid;
      } catch {
        /* dead */
      }
      if (!holderAlive) {
        unlinkSync(lock);
        continue;
      }
      if (Date.now() > end) throw new Error(`another netns-cluster command (pid ${holder}) holds ${lock}`);
      await sleep(100);
    }
  }
  try {
    return await fn();
  } finally {
    if (existsSync(lock)) unlinkSync(lock);
  }
}

async function open(o: Common): Promise<NetnsCluster> {
  const dir = dirOf(o);
  if (!existsSync(join(dir, 'state.json'))) throw new Error(`no cluster "${o.name}" in ${o.baseDir} (start one with \`hack/netns-cluster up\`)`);
  return NetnsCluster.open(dir, progress);
}

function printSummary(c: NetnsCluster): void {
  const s = c.summary();
  out(`cluster "${s.name}" (${s.phase}${s.upSeconds !== undefined ? `, up in ${s.upSeconds} s` : ''}): ${s.nodes.length} nodes, ${s.network} network (pod MTU ${plan.podMTU(s.network)}), kpx ${s.proxyMode} mode`);
  out(`  export KUBECONFIG=${s.kubeconfig}`);
  out(`  apiserver ${s.apiserver.alive ? 'running' : 'NOT RUNNING'}: ${s.apiserver.server}`);
  out(`  address plan: pods ${plan.POD_RANGE} (node-i: 198.18.i.0/24), services ${plan.SERVICE_RANGE}, underlay ${plan.UNDERLAY_CIDR}`);
  out('');
  out('  nodes (ip netns exec NETNS CMD, or: hack/netns-cluster exec NODE -- CMD)');
  for (const n of s.nodes) {
    const st = n.lost ? 'LOST' : n.kpx ? 'kpx running' : 'kpx NOT RUNNING';
    out(`    ${n.name}  ${n.zone}  ${n.internalIP}  pods ${n.podCIDR}  ${st}`);
    out(`      ip netns exec ${n.netns} bash        kpx log: ${n.kpxLog}`);
  }
  out(`  external client ${plan.EXTERNAL_IP}: ip netns exec ${s.namespaces.external} bash`);
  out(`  underlay switch and control plane ${plan.CONTROL_PLANE_IP}: ip netns exec ${s.namespaces.underlay} bash`);
  if (s.pods.length) {
    out('');
    out(`  pods (echo server: TCP+UDP ${ECHO_PORT}, long-lived TCP ${HOLD_PORT})`);
    for (const p of s.pods) out(`    ${p.namespace}/${p.name}  ${p.node}  ${p.ip}  ${p.running ? '' : 'NOT RUNNING  '}ip netns exec ${p.netns} bash`);
  }
}

const whereOf = (c: NetnsCluster, who: string, namespace?: string): Where => {
  if (who === 'ext' || who === 'external') return 'external';
  if (c.nodes.some((n) => n.name === who)) return { node: who };
  return { pod: who, namespace };
};

async function main(argv: string[]): Promise<void> {
  const program = new Command('netns-cluster')
    .description('A Kubernetes cluster of network namespaces with kpx on every node (hack/netns-cluster.md)')
    .option('--name <name>', 'cluster name (several clusters can run side by side)', 'kpx')
    .option('--base-dir <dir>', 'where clusters keep their state', DEFAULT_BASE_DIR)
    .showHelpAfterError();
  const common = () => program.opts<Common>();

  program
    .command('up')
    .description('create the cluster: apiserver, nodes, kpx on each node, echo pods and Service default/echo')
    .option('--nodes <n>', 'number of nodes', '3')
    .addOption(new Option('--network <type>', 'how nodes carry pod traffic').choices(['vxlan', 'routed']).default('vxlan'))
    .addOption(new Option('--proxy-mode <mode>', 'kpx mode (in the ConfigMap)').choices(['iptables', 'ipvs']).default('iptables'))
    .option('--pods-per-node <n>', 'echo pods per node (label app=echo), 0 for none', '3')
    .option('--zones <list>', 'zones assigned to nodes in turn', plan.DEFAULT_ZONES.join(','))
    .action(async (o: { nodes: string; network: plan.Network; proxyMode: plan.ProxyMode; podsPerNode: string; zones: string }) => {
      const t0 = Date.now();
      if (o.proxyMode === 'ipvs' && plan.ipvsUnavailable()) throw new Error(`--proxy-mode ipvs: ${plan.ipvsUnavailable()}`);
      const c = await NetnsCluster.up({
        name: common().name,
        baseDir: common().baseDir,
        nodes: Number(o.nodes),
        network: o.network,
        proxyMode: o.proxyMode,
        podsPerNode: Number(o.podsPerNode),
        zones: o.zones.split(',').filter(Boolean),
        log: progress,
      });
      printSummary(c);
      const echo = c.pods.length ? await c.admin.makeApiClient(CoreV1Api).readNamespacedService({ name: 'echo', namespace: 'default' }).catch(() => null) : null;
      if (echo) {
        const ports = (echo.spec?.ports ?? []).map((p) => `${p.port}/${p.protocol}${p.nodePort ? ` (NodePort ${p.nodePort})` : ''}`).join(', ');
        out('');
        out(`  Service default/echo: ClusterIP ${echo.spec?.clusterIP}, ports ${ports}`);
        const pod = c.pods[0]!;
        const np = echo.spec?.ports?.[0]?.nodePort;
        out(`    from a pod:      hack/netns-cluster probe ${pod.name} tcp ${echo.spec?.clusterIP} 80 --count 6`);
        out(`                     ip netns exec ${c.summary().pods[0]!.netns} bash -c 'cat </dev/tcp/${echo.spec?.clusterIP}/80'`);
        out(`    from outside:    hack/netns-cluster probe ext udp ${c.nodes[0]!.internalIP} ${np} --count 6`);
      }
      out('');
      out(`up in ${((Date.now() - t0) / 1000).toFixed(1)} s; remove it all with: hack/netns-cluster down${common().name === 'kpx' ? '' : ` --name ${common().name}`}`);
    });

  program
    .command('status')
    .description('what runs: nodes, kpx, pods, how to reach them')
    .option('--json', 'as JSON')
    .action(async (o: { json?: boolean }) => {
      const c = await open(common());
      if (o.json) out(JSON.stringify(c.summary(), null, 2));
      else printSummary(c);
    });

  program
    .command('down')
    .description('remove everything the cluster made (also after a crashed up)')
    .action(async () => {
      const dir = dirOf(common());
      const done = await NetnsCluster.downDir(dir);
      for (const d of done) progress(d);
      out(`cluster "${common().name}" removed (${done.length} steps)`);
    });

  const pod = program.command('pod').description('pods: namespaces on a node running the echo server, with Pod objects and EndpointSlices');
  pod
    .command('add <name>')
    .description('start a pod on a node (Ready once its echo server listens)')
    .requiredOption('--node <node>', 'the node')
    .option('--labels <k=v,...>', 'labels (Services select pods by them)', '')
    .option('-n, --namespace <ns>', 'Kubernetes namespace', 'default')
    .action(async (name: string, o: { node: string; labels: string; namespace: string }) => {
      const labels = Object.fromEntries(
        o.labels
          .split(',')
          .filter(Boolean)
          .map((kv) => {
            const i = kv.indexOf('=');
            if (i <= 0) throw new Error(`--labels ${kv}: expected key=value`);
            return [kv.slice(0, i), kv.slice(i + 1)];
          }),
      );
      const c = await open(common());
      const p = await withLock(c.dir, () => c.addPod({ name, node: o.node, labels, namespace: o.namespace }));
      out(`pod ${p.namespace}/${p.name} on ${p.node}: ${p.ip}   ip netns exec ${c.nsOf({ pod: p.name, namespace: p.namespace })} bash`);
    });
  pod
    .command('del <name>')
    .description('delete a pod: terminating (still serving) for the grace period, then killed and gone')
    .option('--grace-period <s>', 'seconds', '5')
    .option('-n, --namespace <ns>', 'Kubernetes namespace', 'default')
    .action(async (name: string, o: { gracePeriod: string; namespace: string }) => {
      const c = await open(common());
      const d = await withLock(c.dir, () => c.deletePod(name, { gracePeriodSeconds: Number(o.gracePeriod), namespace: o.namespace }));
      out(`pod ${o.namespace}/${name}: terminating for ${((d.killedAt - d.terminatingAt) / 1000).toFixed(1)} s, gone after ${((d.goneAt - d.terminatingAt) / 1000).toFixed(1)} s`);
    });

  const svc = program.command('service').description('Services (real YAML); the harness writes their EndpointSlices');
  svc
    .command('apply <file>')
    .description('create or update the Services in a YAML file ("-" for stdin), server-side apply')
    .action(async (file: string) => {
      const text = file === '-' ? readFileSync(0, 'utf8') : await readFile(file, 'utf8');
      const c = await open(common());
      const docs = parseAllDocuments(text)
        .map((d) => d.toJS() as { kind?: string } | null)
        .filter((d): d is { kind?: string } => !!d);
      if (!docs.length) throw new Error(`${file}: no objects`);
      await withLock(c.dir, async () => {
        for (const d of docs) {
          if (d.kind !== 'Service') throw new Error(`${file}: ${d.kind} objects are not handled here (Services only; use kubectl for the rest)`);
          const s = await c.applyService(d);
          const ports = s.ports.map((p) => `${p.port}/${p.protocol}${p.nodePort ? ` NodePort ${p.nodePort}` : ''}`).join(', ');
          out(`service ${s.namespace}/${s.name}: ClusterIP ${s.clusterIP}, ${ports}${s.healthCheckNodePort ? `, health check node port ${s.healthCheckNodePort}` : ''}`);
        }
      });
    });
  svc
    .command('del <name>')
    .option('-n, --namespace <ns>', 'Kubernetes namespace', 'default')
    .action(async (name: string, o: { namespace: string }) => {
      const c = await open(common());
      await withLock(c.dir, () => c.deleteService(name, o.namespace));
      out(`service ${o.namespace}/${name} deleted`);
    });

  const node = program.command('node').description('node failures');
  node
    .command('lose <node>')
    .description('the node and its pods vanish (kpx killed, namespaces deleted); the API is not told')
    .action(async (n: string) => {
      const c = await open(common());
      await withLock(c.dir, () => c.loseNode(n));
      out(`${n} is gone; \`hack/netns-cluster node mark-lost ${n}\` does what the node lifecycle controller does later`);
    });
  node
    .command('mark-lost <node>')
    .description('Node Ready=Unknown with unreachable taints, its pods not Ready (their endpoints leave)')
    .action(async (n: string) => {
      const c = await open(common());
      await withLock(c.dir, () => c.markNodeLost(n));
      out(`${n} marked not ready`);
    });
  node
    .command('restore <node>')
    .description('bring a lost node back empty: network, Node Ready, lost pods deleted, kpx started')
    .action(async (n: string) => {
      const c = await open(common());
      await withLock(c.dir, () => c.restoreNode(n));
      out(`${n} is back`);
    });

  program
    .command('kpx-restart <node>')
    .description('restart kpx on a node (SIGTERM, as a DaemonSet rollout does); returns after its first sync')
    .action(async (n: string) => {
      const c = await open(common());
      await withLock(c.dir, () => c.restartProxy(n));
      out(`kpx on ${n} restarted`);
    });

  program
    .command('probe <where> <proto> <host> <port>')
    .description('connections (tcp) or datagrams (udp) from a pod, a node or "ext"; prints who answered and which client address they saw')
    .option('--count <n>', 'how many', '1')
    .option('--timeout <ms>', 'per attempt', '2000')
    .option('-n, --namespace <ns>', 'namespace of the pod', 'default')
    .action(async (where: string, proto: string, host: string, port: string, o: { count: string; timeout: string; namespace: string }) => {
      if (proto !== 'tcp' && proto !== 'udp') throw new Error('proto: tcp or udp');
      const c = await open(common());
      const r = await c.probe(whereOf(c, where, o.namespace), proto, host, Number(port), { count: Number(o.count), timeoutMs: Number(o.timeout) });
      out(JSON.stringify(r));
    });

  program
    .command('exec <where> [cmd...]')
    .description('run a command in a pod, a node, "ext" or "underlay" (default: bash)')
    .option('-n, --namespace <ns>', 'namespace of the pod', 'default')
    .action(async (where: string, cmd: string[], o: { namespace: string }) => {
      const c = await open(common());
      const ns = where === 'underlay' ? c.underlayNs : c.nsOf(whereOf(c, where, o.namespace));
      const r = spawnSync('ip', ['netns', 'exec', ns, ...(cmd.length ? cmd : ['bash'])], { stdio: 'inherit' });
      process.exitCode = r.status ?? 1;
    });

  await program.parseAsync(argv);
}

// `hack/netns-cluster status | head` is fine
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
main(process.argv).catch((err: Error) => {
  process.stderr.write(`netns-cluster: ${err.message}\n`);
  process.exit(1);
});
