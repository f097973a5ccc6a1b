// Where the apiserver is and how to authenticate to it, read the way client-go (and so
// kube-proxy) reads it: a kubeconfig file, else the pod's service account, else --master
// alone. kpx reads this itself because @kubernetes/client-node's KubeConfig pulls the
// library's whole generated API into the process (~70 MiB of RSS). That library is
// imported, lazily, only for what kpx does not do: credential plugins (`exec`),
// `auth-provider` and `proxy-url`.
import { readFileSync } from 'node:fs';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import type { RequestOptions } from 'node:https';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse } from 'yaml';
import { ConfigError } from '../../config/errors.js';
import type { Logger } from '../../util/log.js';

/** The small interface the API source needs. */
export interface ApiConnection {
  /** the apiserver's base URL without a trailing slash (it may carry a path prefix) */
  readonly server: string;
  /** where the settings came from and how kpx authenticates, for the log (never a secret) */
  readonly summary: Readonly<Record<string, string>>;
  /** Fills one request's TLS options (ca, cert, key, rejectUnauthorized, servername) and credentials. */
  apply(opts: RequestOptions): Promise<void>;
}

export interface LoadOptions {
  /** --kubeconfig, or the configuration file's clientConnection.kubeconfig */
  kubeconfig?: string;
  /** --master: the apiserver URL, overriding the kubeconfig's or the in-cluster one */
  master?: string;
}

/** What the loader takes from the process; tests inject their own. */
export interface LoadContext {
  env?: Readonly<Record<string, string | undefined>>;
  /** ms clock of the token and certificate re-reads */
  now?: () => number;
  /** the service account's token and ca.crt in a pod */
  serviceAccountDir?: string;
  log?: Pick<Logger, 'info' | 'warn'>;
}

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
/**
 * client-go's cached file token source: a token read from a file is good for a minute,
 * less a 10 s leeway, so a projected token (rotated by the kubelet well before it expires)
 * is never used for long after it changed.
 */
export const TOKEN_REREAD_MS = 60_000 - 10_000;
/** client-go re-reads a client certificate and key given as files every 5 minutes. */
export const CERT_REREAD_MS = 5 * 60_000;

type Fields = Record<string, unknown>;
type Fail = (where: string, problem: string) => never;

export async function loadApiConnection(opts: LoadOptions, ctx: LoadContext = {}): Promise<ApiConnection> {
  const env = ctx.env ?? process.env;
  if (opts.kubeconfig) return fromKubeconfig(opts.kubeconfig, opts.master, ctx);
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT) return inCluster(env.KUBERNETES_SERVICE_HOST, env.KUBERNETES_SERVICE_PORT, opts.master, ctx);
  if (opts.master) {
    const fail: Fail = (where, problem) => {
      throw new ConfigError(`${where}: ${problem}`);
    };
    return connection({ server: serverURL(opts.master, false, '--master', fail), summary: { config: '--master', auth: 'none' } });
  }
  throw new ConfigError('no apiserver: pass --kubeconfig FILE, --master URL or --manifests DIR, or run in a pod with KUBERNETES_SERVICE_HOST/PORT set');
}

/** What one request gets, once the configuration is resolved. */
interface Settings {
  server: string;
  summary: Record<string, string>;
  ca?: Buffer;
  insecure?: boolean;
  servername?: string;
  clientCert?: () => { cert: Buffer; key: Buffer };
  bearer?: () => string | undefined;
  /** base64 of user:password */
  basic?: string;
  headers?: OutgoingHttpHeaders;
}

function connection(s: Settings): ApiConnection {
  // client-go sends neither TLS settings nor credentials to a plain-http server
  const secure = s.server.startsWith('https:');
  return {
    server: s.server,
    summary: secure ? s.summary : { ...s.summary, auth: 'none (plain http)' },
    apply(opts: RequestOptions): Promise<void> {
      if (!secure) return Promise.resolve();
      if (s.ca) opts.ca = s.ca;
      if (s.insecure) opts.rejectUnauthorized = false;
      if (s.servername) opts.servername = s.servername;
      if (s.clientCert) Object.assign(opts, s.clientCert());
      const headers = (opts.headers ??= {}) as OutgoingHttpHeaders;
      Object.assign(headers, s.headers);
      const token = s.bearer?.();
      if (token) headers.Authorization = `Bearer ${token}`;
      else if (s.basic) headers.Authorization = `Basic ${s.basic}`;
      return Promise.resolve();
    },
  };
}

/**
 * A value read from files, read again once it is `periodMs` old. A failed re-read keeps
 * the last good value (and is tried again on the next use), as client-go does for tokens.
 */
class Reread<T> {
  private readAt: number;
  constructor(
    private value: T,
    private readonly read: () => T,
    private readonly periodMs: number,
    private readonly now: () => number,
    private readonly onError: (err: Error) => void,
    readNow: boolean,
  ) {
    this.readAt = readNow ? -Infinity : now();
  }

  get(): T {
    const t = this.now();
    if (t - this.readAt < this.periodMs) return this.value;
    try {
      this.value = this.read();
      this.readAt = t;
    } catch (err) {
      this.onError(err as Error);
    }
    return this.value;
  }
}

/** An error's first line; a file system error without the path it repeats. */
const reason = (err: unknown): string => {
  const e = err as NodeJS.ErrnoException;
  const msg = String(e?.message ?? err).split('\n')[0]!;
  return e?.syscall ? msg.split(', ')[0]! : msg;
};

function readToken(path: string): string {
  // trimmed: the file often ends with a newline, which is not part of the token
  const token = readFileSync(path, 'utf8').trim();
  if (!token) throw new Error(`${path} is empty`);
  return token;
}

/** PEM certificates, each parsed, so a bad CA is an error at start and not a TLS failure later. */
function checkCertificates(pem: Buffer): void {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no PEM certificate in it');
  for (const b of blocks) new X509Certificate(b);
}

function checkPair(cert: Buffer, key: Buffer): void {
  checkCertificates(cert);
  let k;
  try {
    k = createPrivateKey(key);
  } catch (err) {
    throw new Error(`the client key does not parse: ${reason(err)}`);
  }
  if (!new X509Certificate(cert).checkPrivateKey(k)) throw new Error('the client key does not belong to the client certificate');
}

/**
 * A server URL as client-go takes it: without a scheme, https when TLS is configured (a CA,
 * a client certificate or insecure-skip-tls-verify), else http. Query and fragment dropped.
 */
function serverURL(raw: string, tls: boolean, where: string, fail: Fail): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `${tls ? 'https' : 'http'}://${raw}`;
  let u: URL;
  try {
    u = new URL(withScheme);
  } catch {
    fail(where, `${JSON.stringify(raw)} is not a URL`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') fail(where, `${JSON.stringify(raw)}: use an https:// (or http://) URL`);
  if (!u.hostname) fail(where, `${JSON.stringify(raw)}: no host`);
  // the text itself, not URL's normal form (which would drop an explicit :443)
  return withScheme.replace(/[?#].*$/, '').replace(/\/+$/, '');
}

// ---- in-cluster ----

function inCluster(host: string, port: string, master: string | undefined, ctx: LoadContext): ApiConnection {
  const dir = ctx.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const tokenFile = join(dir, 'token');
  const caFile = join(dir, 'ca.crt');
  const fail: Fail = (where, problem) => {
    throw new ConfigError(`in-cluster config: ${where}: ${problem}`);
  };
  let token: string;
  try {
    token = readToken(tokenFile);
  } catch (err) {
    fail('the service account token', `cannot read ${tokenFile}: ${reason(err)}`);
  }
  let ca: Buffer | undefined;
  try {
    ca = readFileSync(caFile);
    checkCertificates(ca);
  } catch (err) {
    // as client-go: logged, and the system's roots verify the apiserver
    ca = undefined;
    ctx.log?.warn({ file: caFile, err: reason(err) }, 'the service account CA is unusable; verifying the apiserver against the system roots');
  }
  const now = ctx.now ?? Date.now;
  const tokens = new Reread(token, () => readToken(tokenFile), TOKEN_REREAD_MS, now, (err) => ctx.log?.warn({ file: tokenFile, err: reason(err) }, 'cannot re-read the token; using the last one'), false);
  const h = host.includes(':') ? `[${host}]` : host;
  const server = master ? serverURL(master, true, '--master', fail) : serverURL(`https://${h}:${port}`, true, 'KUBERNETES_SERVICE_HOST/PORT', fail);
  return connection({ server, summary: { config: 'in-cluster', auth: `tokenFile ${tokenFile}` }, ca, bearer: () => tokens.get() });
}

// ---- kubeconfig files ----

/** A named list (clusters, contexts, users) by name; the entry's body is its `field`. */
function namedList(doc: Fields, list: 'clusters' | 'contexts' | 'users', field: string, fail: Fail): Map<string, { where: string; body: Fields }> {
  const out = new Map<string, { where: string; body: Fields }>();
  const items = doc[list];
  if (items === undefined || items === null) return out;
  if (!Array.isArray(items)) fail(list, 'must be a list');
  items.forEach((item: unknown, i) => {
    if (!isMapping(item)) fail(`${list}[${i}]`, 'must be a mapping with name and ' + field);
    const name = item.name;
    if (typeof name !== 'string' || name === '') fail(`${list}[${i}].name`, 'not set');
    if (out.has(name)) fail(`${list}[${i}]`, `a second entry named ${JSON.stringify(name)}`);
    const where = `${list}[${JSON.stringify(name)}].${field}`;
    const body = item[field] ?? {};
    if (!isMapping(body)) fail(where, 'must be a mapping');
    out.set(name, { where, body });
  });
  return out;
}

function isMapping(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function fieldReader(fail: Fail) {
  return {
    str(o: Fields, key: string, where: string): string | undefined {
      const v = o[key];
      if (v === undefined || v === null || v === '') return undefined;
      if (typeof v !== 'string') fail(`${where}.${key}`, 'must be a string');
      return v;
    },
    bool(o: Fields, key: string, where: string): boolean {
      const v = o[key];
      if (v === undefined || v === null) return false;
      if (typeof v !== 'boolean') fail(`${where}.${key}`, 'must be true or false');
      return v;
    },
    strings(o: Fields, key: string, where: string): string[] {
      const v = o[key];
      if (v === undefined || v === null) return [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) fail(`${where}.${key}`, 'must be a list of strings');
      return v as string[];
    },
  };
}

interface Picked {
  contextName: string;
  clusterName: string | undefined;
  userName: string | undefined;
  cluster: { where: string; body: Fields };
  user: { where: string; body: Fields };
}

function readKubeconfig(file: string): Fields {
  let doc: unknown;
  try {
    doc = parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new ConfigError(`kubeconfig ${file}: ${e.syscall ? `cannot read it: ${reason(e)}` : `not YAML: ${reason(e)}`}`);
  }
  if (!isMapping(doc)) throw new ConfigError(`kubeconfig ${file}: not a kubeconfig (a mapping with clusters, contexts, users and current-context)`);
  return doc;
}

/** current-context -> context -> cluster and user, each required once named. */
function pick(doc: Fields, master: string | undefined, fail: Fail): Picked {
  const clusters = namedList(doc, 'clusters', 'cluster', fail);
  const contexts = namedList(doc, 'contexts', 'context', fail);
  const users = namedList(doc, 'users', 'user', fail);
  const f = fieldReader(fail);
  const contextName = f.str(doc, 'current-context', 'kubeconfig');
  if (!contextName) fail('current-context', 'not set (kpx uses the context it names)');
  const context = contexts.get(contextName) ?? fail('current-context', `${JSON.stringify(contextName)}: no context of that name in contexts`);
  const clusterName = f.str(context.body, 'cluster', context.where);
  const userName = f.str(context.body, 'user', context.where);
  let cluster = { where: `${context.where}.cluster`, body: {} as Fields };
  if (clusterName) cluster = clusters.get(clusterName) ?? fail(`${context.where}.cluster`, `${JSON.stringify(clusterName)}: no cluster of that name in clusters`);
  else if (!master) fail(`${context.where}.cluster`, 'not set');
  // no user: anonymous, as client-go
  let user = { where: `${context.where}.user`, body: {} as Fields };
  if (userName) user = users.get(userName) ?? fail(`${context.where}.user`, `${JSON.stringify(userName)}: no user of that name in users`);
  return { contextName, clusterName, userName, cluster, user };
}

/** Reading what a kubeconfig names: files relative to its directory (as client-go), base64 data. */
function sources(file: string, fail: Fail) {
  const base = dirname(resolve(file));
  const path = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  return {
    path,
    file(where: string, p: string): Buffer {
      try {
        return readFileSync(path(p));
      } catch (err) {
        fail(where, `cannot read ${path(p)}: ${reason(err)}`);
      }
    },
    base64(where: string, v: string): Buffer {
      const s = v.replace(/\s+/g, '');
      if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 === 1) fail(where, 'not base64');
      return Buffer.from(s, 'base64');
    },
  };
}
type Sources = ReturnType<typeof sources>;

/** The cluster's CA, insecure-skip-tls-verify and tls-server-name. */
function clusterTLS(s: Settings, cluster: Picked['cluster'], src: Sources, fail: Fail): void {
  const f = fieldReader(fail);
  const { body: c, where: cw } = cluster;
  const caFile = f.str(c, 'certificate-authority', cw);
  const caData = f.str(c, 'certificate-authority-data', cw);
  s.insecure = f.bool(c, 'insecure-skip-tls-verify', cw);
  s.servername = f.str(c, 'tls-server-name', cw);
  if (caFile && caData) fail(cw, 'certificate-authority and certificate-authority-data are both set (client-go refuses this too)');
  if (!caFile && !caData) return;
  const where = `${cw}.${caFile ? 'certificate-authority' : 'certificate-authority-data'}`;
  s.ca = caFile ? src.file(where, caFile) : src.base64(where, caData!);
  try {
    checkCertificates(s.ca);
  } catch (err) {
    fail(where, reason(err));
  }
  if (s.insecure) fail(cw, 'insecure-skip-tls-verify with a certificate authority (client-go refuses this too: drop one)');
}

/** The user's client certificate and key; files are read again every 5 minutes, as client-go. */
function clientCertificate(s: Settings, user: Picked['user'], src: Sources, ctx: LoadContext, fail: Fail): string[] {
  const f = fieldReader(fail);
  const { body: u, where: uw } = user;
  const certFile = f.str(u, 'client-certificate', uw);
  const certData = f.str(u, 'client-certificate-data', uw);
  const keyFile = f.str(u, 'client-key', uw);
  const keyData = f.str(u, 'client-key-data', uw);
  if (certFile && certData) fail(uw, 'client-certificate and client-certificate-data are both set (client-go refuses this too)');
  if (keyFile && keyData) fail(uw, 'client-key and client-key-data are both set (client-go refuses this too)');
  if (!certFile && !certData) {
    if (keyFile || keyData) fail(uw, `${keyFile ? 'client-key' : 'client-key-data'} without a client certificate`);
    return [];
  }
  if (!keyFile && !keyData) fail(uw, 'a client certificate without client-key or client-key-data');
  const certWhere = `${uw}.${certFile ? 'client-certificate' : 'client-certificate-data'}`;
  const keyWhere = `${uw}.${keyFile ? 'client-key' : 'client-key-data'}`;
  const first = { cert: certFile ? src.file(certWhere, certFile) : src.base64(certWhere, certData!), key: keyFile ? src.file(keyWhere, keyFile) : src.base64(keyWhere, keyData!) };
  try {
    checkPair(first.cert, first.key);
  } catch (err) {
    fail(certWhere, reason(err));
  }
  if (certFile && keyFile) {
    const [cp, kp] = [src.path(certFile), src.path(keyFile)];
    const reread = () => {
      const p = { cert: readFileSync(cp), key: readFileSync(kp) };
      checkPair(p.cert, p.key);
      return p;
    };
    const onError = (err: Error) => ctx.log?.warn({ cert: cp, key: kp, err: reason(err) }, 'cannot re-read the client certificate; using the last one');
    const pairs = new Reread(first, reread, CERT_REREAD_MS, ctx.now ?? Date.now, onError, false);
    s.clientCert = () => pairs.get();
  } else {
    s.clientCert = () => first;
  }
  return ['client certificate'];
}

/** token, tokenFile (client-node's token-file too), or username/password. */
function credentials(s: Settings, user: Picked['user'], src: Sources, ctx: LoadContext, fail: Fail): string[] {
  const f = fieldReader(fail);
  const { body: u, where: uw } = user;
  const token = f.str(u, 'token', uw);
  const camel = f.str(u, 'tokenFile', uw);
  const dashed = f.str(u, 'token-file', uw);
  if (camel && dashed) fail(uw, 'tokenFile and token-file are both set (tokenFile is the field)');
  const tokenFile = camel ?? dashed;
  const username = f.str(u, 'username', uw);
  const password = f.str(u, 'password', uw);
  if ((token || tokenFile) && (username || password)) fail(uw, 'a token and a username/password are both set (only one authentication method, as client-go)');
  if (tokenFile) {
    const p = src.path(tokenFile);
    const where = `${uw}.${camel ? 'tokenFile' : 'token-file'}`;
    let initial = token;
    if (!initial) {
      try {
        initial = readToken(p);
      } catch (err) {
        fail(where, `cannot read ${p}: ${reason(err)}`);
      }
    }
    // with a token as well, the file wins whenever it can be read and the token is the fallback (client-go)
    const onError = (err: Error) => ctx.log?.warn({ file: p, err: reason(err) }, 'cannot re-read the token; using the last one');
    const tokens = new Reread(initial, () => readToken(p), TOKEN_REREAD_MS, ctx.now ?? Date.now, onError, !!token);
    s.bearer = () => tokens.get();
    return [`${camel ? 'tokenFile' : 'token-file'} ${p}`];
  }
  if (token) {
    s.bearer = () => token;
    return ['token'];
  }
  if (username || password) {
    s.basic = Buffer.from(`${username ?? ''}:${password ?? ''}`).toString('base64');
    return ['basic'];
  }
  return [];
}

/** as, as-uid, as-groups: the Impersonate-* headers. */
function impersonation(s: Settings, user: Picked['user'], fail: Fail): string[] {
  const f = fieldReader(fail);
  const { body: u, where: uw } = user;
  const as = f.str(u, 'as', uw);
  const asUid = f.str(u, 'as-uid', uw);
  const asGroups = f.strings(u, 'as-groups', uw);
  if (u['as-user-extra'] != null) fail(`${uw}.as-user-extra`, 'not supported by kpx');
  if ((asUid || asGroups.length) && !as) fail(uw, 'as-uid or as-groups without as (client-go refuses this too)');
  if (!as) return [];
  s.headers = { 'Impersonate-User': as };
  if (asUid) s.headers['Impersonate-Uid'] = asUid;
  if (asGroups.length) s.headers['Impersonate-Group'] = asGroups;
  return [`impersonating ${as}`];
}

async function fromKubeconfig(file: string, master: string | undefined, ctx: LoadContext): Promise<ApiConnection> {
  const fail: Fail = (where, problem) => {
    throw new ConfigError(`kubeconfig ${file}: ${where}: ${problem}`);
  };
  const picked = pick(readKubeconfig(file), master, fail);
  const { cluster, user } = picked;
  const fallback = user.body.exec != null ? `${user.where}.exec` : user.body['auth-provider'] != null ? `${user.where}.auth-provider` : cluster.body['proxy-url'] != null ? `${cluster.where}.proxy-url` : null;
  if (fallback) return clientNodeConnection(file, master, fallback, ctx);

  const src = sources(file, fail);
  const summary: Record<string, string> = { config: 'kubeconfig', kubeconfig: file, context: picked.contextName, cluster: picked.clusterName ?? '', user: picked.userName ?? '' };
  const s: Settings = { server: '', summary };
  clusterTLS(s, cluster, src, fail);
  const auth = [...clientCertificate(s, user, src, ctx, fail), ...credentials(s, user, src, ctx, fail), ...impersonation(s, user, fail)];
  summary.auth = auth.join(', ') || 'none';

  // --master replaces the server only: CA, tls-server-name and credentials stay (as kpx did before)
  const tls = !!(s.ca || s.insecure || s.clientCert);
  if (master) s.server = serverURL(master, tls, '--master', fail);
  else {
    const server = fieldReader(fail).str(cluster.body, 'server', cluster.where);
    if (!server) fail(`${cluster.where}.server`, 'not set');
    s.server = serverURL(server, tls, `${cluster.where}.server`, fail);
  }
  return connection(s);
}

/**
 * What kpx does not do itself goes to client-node's KubeConfig, imported only now: it
 * costs ~70 MiB of RSS (the library loads its whole generated API).
 */
async function clientNodeConnection(file: string, master: string | undefined, why: string, ctx: LoadContext): Promise<ApiConnection> {
  ctx.log?.info({ kubeconfig: file, field: why }, 'loading @kubernetes/client-node for this kubeconfig (kpx does not handle the field itself; ~70 MiB more memory)');
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    kc.loadFromFile(file);
  } catch (err) {
    throw new ConfigError(`kubeconfig ${file}: ${reason(err)}`);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new ConfigError(`kubeconfig ${file}: current-context: no cluster`);
  if (master) {
    const clusters = kc.clusters.map((c) => (c.name === cluster.name ? { ...c, server: master } : c));
    kc.loadFromOptions({ clusters, users: kc.users, contexts: kc.contexts, currentContext: kc.currentContext });
  }
  return {
    server: (master ?? cluster.server).replace(/\/+$/, ''),
    summary: { config: 'kubeconfig', kubeconfig: file, context: kc.currentContext, auth: `${why} (through @kubernetes/client-node)` },
    apply: (opts) => kc.applyToHTTPSOptions(opts),
  };
}
