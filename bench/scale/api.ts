// A small HTTP/2 client for the apiserver: one TLS connection, many concurrent streams,
// so tens of thousands of Services and EndpointSlices are created in parallel without a
// connection per request. Authenticates as the kubeconfig does (client certificate or
// token) through @kubernetes/client-node's applyToHTTPSOptions.
import http2 from 'node:http2';
import type { KubeConfig } from '@kubernetes/client-node';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
    what: string,
  ) {
    super(`${what}: HTTP ${status}: ${body.slice(0, 300)}`);
  }
}

export class Http2Api {
  private session: http2.ClientHttp2Session | null = null;
  private headers: Record<string, string> = {};
  private opts: http2.SecureClientSessionOptions = {};
  private server = '';

  static async connect(kc: KubeConfig): Promise<Http2Api> {
    const api = new Http2Api();
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('kubeconfig has no current cluster');
    api.server = cluster.server;
    const o: { ca?: unknown; cert?: unknown; key?: unknown; headers?: Record<string, string> } = {};
    await kc.applyToHTTPSOptions(o);
    api.opts = { ca: o.ca as string, cert: o.cert as string, key: o.key as string };
    api.headers = { ...(o.headers ?? {}) };
    return api;
  }

  private sess(): http2.ClientHttp2Session {
    if (!this.session || this.session.closed || this.session.destroyed) {
      const s = http2.connect(this.server, this.opts);
      s.on('error', () => {
        if (this.session === s) this.session = null;
      });
      s.on('close', () => {
        if (this.session === s) this.session = null;
      });
      s.unref();
      this.session = s;
    }
    return this.session;
  }

  /** One request; resolves with status and parsed JSON body; throws ApiError on >= 400 unless allowed. */
  async request<T = Record<string, unknown>>(method: string, path: string, body?: unknown, allow: number[] = []): Promise<{ status: number; body: T }> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once<T>(method, path, body, allow);
      } catch (err) {
        // a GOAWAY or reset stream: one more try on a new connection
        if (err instanceof ApiError || attempt >= 2) throw err;
        this.session?.destroy();
        this.session = null;
      }
    }
  }

  private once<T>(method: string, path: string, body: unknown, allow: number[]): Promise<{ status: number; body: T }> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = this.sess().request({
        ':method': method,
        ':path': path,
        accept: 'application/json',
        ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
        ...this.headers,
      });
      req.setTimeout(120_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
      let status = 0;
      const chunks: Buffer[] = [];
      req.on('response', (h) => (status = Number(h[':status'])));
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('error', reject);
      req.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (status >= 400 && !allow.includes(status)) return reject(new ApiError(status, text, `${method} ${path}`));
        try {
          resolve({ status, body: (text ? JSON.parse(text) : {}) as T });
        } catch {
          reject(new Error(`${method} ${path}: not JSON: ${text.slice(0, 200)}`));
        }
      });
      if (payload) req.end(payload);
      else req.end();
    });
  }

  close(): void {
    this.session?.close();
    this.session = null;
  }
}

/** What pool() rejects with when fn threw something that is not an Error; `value` is what it threw. */
export class PoolFailure extends Error {
  constructor(readonly value: unknown) {
    super(`pool: a task threw a non-Error value: ${describe(value)}`);
  }
}

function describe(value: unknown): string {
  try {
    return typeof value === 'string' ? value : (JSON.stringify(value) ?? String(value));
  } catch {
    return String(value);
  }
}

/** Runs fn over items with at most `concurrency` in flight; rejects on the first error (non-Errors wrapped in PoolFailure). */
export async function pool<T>(items: readonly T[], concurrency: number, fn: (item: T, index: number) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  let failed: unknown = null;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (failed === null && next < items.length) {
        if (signal?.aborted) throw signal.reason ?? new Error('aborted');
        const i = next++;
        try {
          await fn(items[i]!, i);
        } catch (err) {
          failed ??= err;
        }
      }
    }),
  );
  if (failed !== null) throw failed instanceof Error ? failed : new PoolFailure(failed);
}
