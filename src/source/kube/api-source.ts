// The Kubernetes API source: Services, EndpointSlices and this node's Node, each through
// its own reflector, and ServiceCIDRs where the mode acts on them (nftables). Nothing is
// reported synced until every reflector has completed its first list, so kpx never
// programs a half view at startup; ServiceCIDRs that cannot be listed (no API, no
// permission) count as none.
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { request as httpRequest } from 'node:http';
import { createInterface } from 'node:readline';
import type { ApiConnection } from './kubeconfig.js';
import type { Logger } from '../../util/log.js';
import type { ResourceKind } from '../../model/kube.js';
import { LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME } from '../../model/kube.js';
import type { Source, SourceHandler } from '../types.js';
import { Reflector, type ListPage, type ReflectorOptions, type ResourceApi } from './reflector.js';

/** Like kube-proxy: objects of other proxies and headless services are not ours. */
export const PROXYABLE_SELECTOR = `!${LABEL_SERVICE_PROXY_NAME},!${LABEL_HEADLESS}`;

export interface ApiSourceOptions {
  /** the apiserver and credentials (./kubeconfig.ts) */
  readonly connection: ApiConnection;
  readonly nodeName: string;
  /** watch networking.k8s.io/v1 ServiceCIDRs too (kube-proxy's nftables mode drops unallocated cluster IPs) */
  readonly serviceCIDRs?: boolean;
  readonly reflector: ReflectorOptions;
  readonly observer?: {
    onRelist?(kind: ResourceKind, reason: string): void;
    onWatchEnd?(kind: ResourceKind, reason: string): void;
  };
}

export const DEFAULT_REFLECTOR_OPTIONS: Omit<ReflectorOptions, 'watchIdleTimeoutMs' | 'relistPeriodMs'> = {
  pageSize: 500,
  backoff: { initialMs: 500, maxMs: 30_000 },
};

/** A page of a list can take a while at scale, but never forever (a dead connection). */
const LIST_TIMEOUT_MS = 60_000;

async function requestOptions(conn: ApiConnection, path: string, query: Record<string, string>): Promise<{ url: URL; opts: RequestOptions }> {
  const url = new URL(conn.server + path);
  for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
  // agent false: a connection of its own per request, never a pooled idle socket that may be dead
  const opts: RequestOptions = { method: 'GET', headers: { Accept: 'application/json' }, agent: false };
  await conn.apply(opts);
  return { url, opts };
}

/** An error with the HTTP status (as `code`) and the Status message when there is one. */
function statusError(statusCode: number | undefined, statusMessage: string | undefined, body: string): Error {
  let message = statusMessage ?? 'error';
  try {
    message = (JSON.parse(body) as { message?: string }).message ?? message;
  } catch {
    /* not a Status */
  }
  return Object.assign(new Error(message), { code: statusCode });
}

/** One list page with node's https; the connection supplies TLS and credentials. */
async function getJson(conn: ApiConnection, path: string, query: Record<string, string>): Promise<unknown> {
  const { url, opts } = await requestOptions(conn, path, query);
  return new Promise((resolve, reject) => {
    const req = (url.protocol === 'http:' ? httpRequest : httpsRequest)(url, opts, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        if (res.statusCode !== 200) return reject(statusError(res.statusCode, res.statusMessage, body));
        try {
          resolve(JSON.parse(body));
        } catch (err) {
          reject(new Error(`list response does not parse: ${(err as Error).message}`));
        }
      });
    });
    req.setTimeout(LIST_TIMEOUT_MS, () => req.destroy(new Error(`list timed out after ${LIST_TIMEOUT_MS / 1000}s`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * One watch request, read with node's https. client-node's fetch-based calls (its Watch
 * and generated list functions) were seen here to hang or fail with AbortError on every
 * later request once connections had been cut, with no timeout to recover; requests we
 * own can always be torn down and retried.
 */
async function openWatch(
  conn: ApiConnection,
  path: string,
  query: Record<string, string>,
  onEvent: (ev: { type: string; object: unknown }) => void,
  onDone: (err: unknown) => void,
): Promise<() => void> {
  const { url, opts } = await requestOptions(conn, path, query);
  let done = false;
  const finish = (err: unknown) => {
    if (done) return;
    done = true;
    req.destroy();
    onDone(err);
  };
  const req = (url.protocol === 'http:' ? httpRequest : httpsRequest)(url, opts, (res) => {
    if (res.statusCode !== 200) {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => finish(statusError(res.statusCode, res.statusMessage, body)));
      return;
    }
    const lines = createInterface({ input: res, crlfDelay: Infinity });
    lines.on('line', (line) => {
      if (done || !line) return;
      let ev: { type: string; object: unknown };
      try {
        ev = JSON.parse(line) as { type: string; object: unknown };
      } catch (err) {
        finish(new Error(`watch stream: undecodable line: ${(err as Error).message}`));
        return;
      }
      onEvent(ev);
    });
    // readline re-emits stream errors: without a listener a cut connection would crash kpx
    lines.on('error', finish);
    res.on('error', finish);
    res.on('close', () => finish(res.complete ? null : new Error('watch stream closed before its end')));
  });
  req.on('error', finish);
  req.setNoDelay(true);
  req.on('socket', (sock) => sock.setKeepAlive(true, 30_000));
  req.end();
  return () => finish(null);
}

/** A collection path (list and watch) as the reflector's interface. */
function resourceApi(conn: ApiConnection, path: string, selector: { labelSelector?: string; fieldSelector?: string }): ResourceApi {
  return {
    async list({ limit, continueToken }): Promise<ListPage> {
      const query: Record<string, string> = { limit: String(limit), ...selector };
      if (continueToken) query.continue = continueToken;
      const res = (await getJson(conn, path, query)) as { items?: unknown[]; metadata?: { resourceVersion?: string; continue?: string } };
      return { items: res.items ?? [], resourceVersion: res.metadata?.resourceVersion ?? '', continueToken: res.metadata?.continue };
    },
    watch({ resourceVersion, timeoutSeconds }, onEvent, onDone) {
      const query: Record<string, string> = {
        watch: 'true',
        allowWatchBookmarks: 'true',
        resourceVersion,
        timeoutSeconds: String(timeoutSeconds),
      };
      if (selector.labelSelector) query.labelSelector = selector.labelSelector;
      if (selector.fieldSelector) query.fieldSelector = selector.fieldSelector;
      return openWatch(conn, path, query, onEvent, onDone);
    },
  };
}

export class ApiSource implements Source {
  private readonly reflectors: Reflector[];
  private handler: SourceHandler | null = null;
  private synced = false;

  constructor(private readonly opts: ApiSourceOptions, private readonly log: Logger) {
    const conn = opts.connection;
    const proxyable = { labelSelector: PROXYABLE_SELECTOR };
    const apis: Array<[ResourceKind, ResourceApi, ReflectorOptions?]> = [
      ['Service', resourceApi(conn, '/api/v1/services', proxyable)],
      ['EndpointSlice', resourceApi(conn, '/apis/discovery.k8s.io/v1/endpointslices', proxyable)],
      ['Node', resourceApi(conn, '/api/v1/nodes', { fieldSelector: `metadata.name=${opts.nodeName}` })],
    ];
    if (opts.serviceCIDRs) apis.push(['ServiceCIDR', resourceApi(conn, '/apis/networking.k8s.io/v1/servicecidrs', {}), { ...opts.reflector, optional: true }]);
    this.reflectors = apis.map(
      ([kind, api, reflectorOpts]) =>
        new Reflector(
          kind,
          api,
          {
            onChange: (change) => this.handler?.onChange(change),
            onListed: () => this.maybeSynced(),
            onRelist: (reason) => opts.observer?.onRelist?.(kind, reason),
            onWatchEnd: (reason) => opts.observer?.onWatchEnd?.(kind, reason),
          },
          reflectorOpts ?? opts.reflector,
          log,
        ),
    );
  }

  private maybeSynced(): void {
    if (this.synced || !this.reflectors.every((r) => r.hasListed)) return;
    this.synced = true;
    this.handler?.onSynced();
  }

  start(handler: SourceHandler): Promise<void> {
    this.handler = handler;
    this.log.info({ server: this.opts.connection.server, ...this.opts.connection.summary, node: this.opts.nodeName }, 'watching the Kubernetes API');
    for (const r of this.reflectors) r.start();
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    await Promise.all(this.reflectors.map((r) => r.stop()));
  }

  /** kind -> key -> resourceVersion of every object kpx's model holds. */
  inventory(): Record<ResourceKind, Record<string, string>> {
    const out = {} as Record<ResourceKind, Record<string, string>>;
    for (const r of this.reflectors) out[r.kind] = Object.fromEntries(r.inventory());
    return out;
  }
}
