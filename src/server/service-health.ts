// healthCheckNodePort servers: one HTTP listener per Service with externalTrafficPolicy
// Local, on every node, answering 200 while this node has local ready endpoints (and the
// proxy is healthy) and 503 otherwise, so the cloud LB only sends traffic where it stays.
import { createServer, type Server } from 'node:http';
import type { Logger } from '../util/log.js';

export interface HealthCheckService {
  readonly namespace: string;
  readonly name: string;
  readonly port: number;
  /** distinct IPs of local, ready endpoints */
  readonly localEndpoints: number;
}

interface Listener {
  port: number;
  servers: Server[];
  state: HealthCheckService;
}

export class ServiceHealthServers {
  private readonly listeners = new Map<string, Listener>();

  constructor(
    private readonly log: Logger,
    /** addresses to bind; "all" binds the wildcard */
    private readonly addresses: () => 'all' | readonly string[],
    private readonly proxyHealthy: () => boolean,
  ) {}

  /** Opens, updates and closes listeners to match `services` (keyed "ns/name"). */
  async sync(services: ReadonlyMap<string, HealthCheckService>): Promise<void> {
    for (const [key, l] of this.listeners) {
      const want = services.get(key);
      if (!want || want.port !== l.port) {
        await closeAll(l.servers);
        this.listeners.delete(key);
        this.log.info({ service: key, port: l.port }, 'closed health check node port');
      }
    }
    for (const [key, svc] of services) {
      const l = this.listeners.get(key);
      if (l) {
        l.state = svc;
        continue;
      }
      const entry: Listener = { port: svc.port, servers: [], state: svc };
      try {
        const addrs = this.addresses();
        for (const host of addrs === 'all' ? ['::'] : addrs) entry.servers.push(await this.listen(entry, host));
        this.listeners.set(key, entry);
        this.log.info({ service: key, port: svc.port }, 'opened health check node port');
      } catch (err) {
        await closeAll(entry.servers);
        // retried on the next sync, like kube-proxy
        this.log.error({ service: key, port: svc.port, err: (err as Error).message }, 'failed to start service health check');
      }
    }
  }

  private listen(entry: Listener, host: string): Promise<Server> {
    const server = createServer((_req, res) => {
      const s = entry.state;
      const healthy = this.proxyHealthy();
      const body = JSON.stringify(
        { service: { namespace: s.namespace, name: s.name }, localEndpoints: s.localEndpoints, serviceProxyHealthy: healthy },
        null,
        '\t',
      );
      res.writeHead(s.localEndpoints > 0 && healthy ? 200 : 503, {
        'Content-Type': 'application/json',
        'X-Content-Type-Options': 'nosniff',
        'X-Load-Balancing-Endpoint-Weight': String(s.localEndpoints),
        // a length, not chunks, as kube-proxy's (Go) answer: some health checkers read only that
        'Content-Length': Buffer.byteLength(body),
      });
      res.end(body);
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: entry.port, host, ipv6Only: false }, () => {
        server.off('error', reject);
        resolve(server);
      });
    });
  }

  async stop(): Promise<void> {
    for (const l of this.listeners.values()) await closeAll(l.servers);
    this.listeners.clear();
  }
}

function closeAll(servers: Server[]): Promise<void> {
  return Promise.all(
    servers.map(
      (s) =>
        new Promise<void>((r) => {
          s.closeAllConnections?.();
          s.close(() => r());
        }),
    ),
  ).then(() => undefined);
}
