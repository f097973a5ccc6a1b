// The metrics server (/metrics) and the health server (/healthz, /livez), with
// kube-proxy's semantics and bodies.
import { createServer, type Server } from 'node:http';
import type { Logger } from '../util/log.js';
import { splitHostPort } from '../util/ip.js';
import type { NodeFacts } from '../model/types.js';
import type { KpxMetrics } from './metrics.js';
import type { ProxyHealth } from './health.js';

/** A listen address: host (empty means every address) and port. */
export function listenAddress(addr: string): { host: string; port: number } {
  const hp = splitHostPort(addr);
  if (!hp) throw new Error(`bad address ${JSON.stringify(addr)} (want host:port)`);
  return { host: hp.host || '0.0.0.0', port: hp.port };
}

function listen(server: Server, addr: string): Promise<Server> {
  const { host, port } = listenAddress(addr);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, ipv6Only: false }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * /metrics, and /debug/inventory: what the source has handed to the model (kind -> key ->
 * resourceVersion), so an operator or a test can compare it with the apiserver.
 */
export function metricsServer(metrics: KpxMetrics, inventory?: () => unknown): Server {
  return createServer((req, res) => {
    const path = req.url?.split('?')[0];
    if (path === '/debug/inventory' && inventory) {
      res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify(inventory()));
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404).end('not found\n');
      return;
    }
    metrics.registry
      .metrics()
      .then((text) => res.writeHead(200, { 'Content-Type': metrics.registry.contentType }).end(text))
      .catch((err: Error) => res.writeHead(500).end(err.message));
  });
}

/** kube-proxy's node eligibility for /healthz: the Node is known and not going away. */
export function nodeEligible(node: NodeFacts | null): boolean {
  return !!node && !node.deleting && !node.toBeDeleted;
}

export function healthServer(health: ProxyHealth, node: () => NodeFacts | null, metrics: KpxMetrics | null): Server {
  return createServer((req, res) => {
    const path = req.url?.split('?')[0];
    if (path !== '/healthz' && path !== '/livez') {
      res.writeHead(404).end('not found\n');
      return;
    }
    const st = health.status();
    const now = new Date();
    const eligible = nodeEligible(node());
    const healthy = path === '/healthz' ? st.healthy && eligible : st.healthy;
    const code = healthy ? 200 : 503;
    const iso = (ms: number) => (ms ? new Date(ms).toISOString() : new Date(0).toISOString());
    const body = {
      // kube-proxy reports "now" as lastUpdated when healthy (backward compatibility)
      lastUpdated: healthy ? now.toISOString() : iso(st.lastUpdated),
      currentTime: now.toISOString(),
      ...(path === '/healthz' ? { nodeEligible: eligible } : {}),
      // the proxy's own health, as kube-proxy reports it: an ineligible node makes the
      // status 503 but leaves "healthy" alone (nodeEligible says why)
      healthy: st.healthy,
      ...(Object.keys(st.families).length
        ? {
            status: Object.fromEntries(
              Object.entries(st.families).map(([f, v]) => [
                f,
                {
                  lastUpdated: iso(v.lastUpdated),
                  healthy: v.healthy,
                  ...(v.error ? { lastError: { reason: v.error.reason, since: iso(v.error.since), failures: v.error.failures } } : {}),
                },
              ]),
            ),
          }
        : {}),
    };
    (path === '/healthz' ? metrics?.healthz : metrics?.livez)?.inc({ code: String(code) });
    const text = JSON.stringify(body);
    res.writeHead(code, { 'Content-Type': 'application/json', 'X-Content-Type-Options': 'nosniff', 'Content-Length': Buffer.byteLength(text) }).end(text);
  });
}

/** Starts the servers that have an address; a bind failure is logged (fatal with hardFail). */
export async function startServers(
  log: Logger,
  servers: Array<{ name: string; addr: string; server: () => Server }>,
  hardFail: boolean,
): Promise<Server[]> {
  const out: Server[] = [];
  for (const s of servers) {
    if (!s.addr) continue;
    try {
      out.push(await listen(s.server(), s.addr));
      log.info({ server: s.name, address: s.addr }, 'listening');
    } catch (err) {
      log.error({ server: s.name, address: s.addr, err: (err as Error).message }, 'cannot listen');
      if (hardFail) throw err;
    }
  }
  return out;
}
