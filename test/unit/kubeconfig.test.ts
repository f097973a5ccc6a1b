// kpx's kubeconfig loader (src/source/kube/kubeconfig.ts): each field as client-go reads
// it, relative paths, token and certificate re-reads on an injected clock, in-cluster
// config, --master, the errors for a bad kubeconfig, the client-node fallback for exec and
// auth-provider users; real TLS handshakes against a local https server with the fixture
// PKI (test/fixtures/kubeconfig/make-certs.sh); and that the common case never loads
// @kubernetes/client-node.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { createServer, request, type RequestOptions, type Server } from 'node:https';
import type { OutgoingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { parseProxyFlags } from '../../src/cli/flags.js';
import { CERT_REREAD_MS, TOKEN_REREAD_MS, loadApiConnection, type ApiConnection, type LoadContext } from '../../src/source/kube/kubeconfig.js';
import { REPO } from '../substrate/netns.js';

const PKI = join(REPO, 'test/fixtures/kubeconfig');
const pem = (name: string) => readFile(join(PKI, name), 'utf8');
const b64 = async (name: string) => Buffer.from(await pem(name)).toString('base64');

const dir = await mkdtemp(join(tmpdir(), 'kpx-kubeconfig-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

let n = 0;
/** A kubeconfig in a directory of its own (so relative paths have somewhere to point). */
async function kubeconfig(cluster: Record<string, unknown>, user: Record<string, unknown> | null, extra: Record<string, unknown> = {}): Promise<{ file: string; dir: string }> {
  const d = join(dir, `k${n++}`);
  await mkdir(d, { recursive: true });
  const file = join(d, 'config');
  const doc = {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'c', cluster: { server: 'https://198.18.0.1:6443', ...cluster } }],
    contexts: [{ name: 'ctx', context: { cluster: 'c', ...(user ? { user: 'u' } : {}) } }],
    users: user ? [{ name: 'u', user }] : [],
    'current-context': 'ctx',
    ...extra,
  };
  await writeFile(file, stringify(doc));
  return { file, dir: d };
}

interface Logged {
  level: 'info' | 'warn';
  obj: Record<string, unknown>;
  msg: string;
}
/** A clock the test moves and a log it reads. */
function context(extra: Partial<LoadContext> = {}): LoadContext & { logged: Logged[]; advance(ms: number): void } {
  let t = 1_000_000;
  const logged: Logged[] = [];
  return {
    env: {},
    now: () => t,
    advance: (ms: number) => void (t += ms),
    logged,
    log: {
      info: ((obj: Record<string, unknown>, msg: string) => void logged.push({ level: 'info', obj, msg })) as never,
      warn: ((obj: Record<string, unknown>, msg: string) => void logged.push({ level: 'warn', obj, msg })) as never,
    },
    ...extra,
  };
}

async function applied(conn: ApiConnection): Promise<RequestOptions & { headers: OutgoingHttpHeaders }> {
  const opts: RequestOptions = { headers: {} };
  await conn.apply(opts);
  return opts as RequestOptions & { headers: OutgoingHttpHeaders };
}

async function loadError(p: Promise<unknown>): Promise<Error> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error,
  );
  if (!err) throw new Error('expected the load to fail');
  expect(err).toBeInstanceOf(ConfigError);
  return err;
}

describe('kubeconfig fields', () => {
  it("reads kubeadm's kube-proxy kubeconfig.conf (CA file, tokenFile) as clientConnection.kubeconfig names it", async () => {
    const d = join(dir, 'kubeadm');
    await mkdir(join(d, 'sa'), { recursive: true });
    await cp(join(PKI, 'ca.crt'), join(d, 'sa/ca.crt'));
    await writeFile(join(d, 'sa/token'), 'token-1\n');
    const text = (await readFile(join(REPO, 'test/fixtures/kube-proxy-config/kubeadm-kubeconfig.conf'), 'utf8'))
      .replace('/var/run/secrets/kubernetes.io/serviceaccount/ca.crt', 'sa/ca.crt')
      .replace('/var/run/secrets/kubernetes.io/serviceaccount/token', join(d, 'sa/token'));
    await writeFile(join(d, 'kubeconfig.conf'), text);
    const cfg = join(d, 'kube-proxy.yaml');
    await writeFile(cfg, `apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: ${join(d, 'kubeconfig.conf')}\n`);
    const config = loadConfig(parseProxyFlags([`--config=${cfg}`]), 'node-a').kpx!;
    expect(config.kubeconfig).toBe(join(d, 'kubeconfig.conf'));

    const conn = await loadApiConnection({ kubeconfig: config.kubeconfig }, context());
    expect(conn.server).toBe('https://198.18.0.1:6443');
    const opts = await applied(conn);
    // the trailing newline of the file is not part of the token
    expect(opts.headers.Authorization).toBe('Bearer token-1');
    expect(String(opts.ca)).toBe(await pem('ca.crt'));
    expect(opts.rejectUnauthorized).toBeUndefined();
    expect(conn.summary).toMatchObject({ config: 'kubeconfig', context: 'default', cluster: 'default', user: 'default', auth: `tokenFile ${join(d, 'sa/token')}` });
  });

  it('certificate-authority-data, insecure-skip-tls-verify, tls-server-name', async () => {
    const data = await loadApiConnection({ kubeconfig: (await kubeconfig({ 'certificate-authority-data': await b64('ca.crt'), 'tls-server-name': 'apiserver.test' }, null)).file });
    const o = await applied(data);
    expect(String(o.ca)).toBe(await pem('ca.crt'));
    expect(o.servername).toBe('apiserver.test');
    // no user: anonymous
    expect(o.headers.Authorization).toBeUndefined();
    expect(data.summary.auth).toBe('none');

    const insecure = await applied(await loadApiConnection({ kubeconfig: (await kubeconfig({ 'insecure-skip-tls-verify': true }, null)).file }));
    expect(insecure.rejectUnauthorized).toBe(false);
    expect(insecure.ca).toBeUndefined();
  });

  it('relative certificate-authority, client-certificate, client-key and tokenFile are against the kubeconfig directory', async () => {
    const k = await kubeconfig({ 'certificate-authority': 'pki/ca.crt' }, { 'client-certificate': 'pki/client.crt', 'client-key': 'pki/client.key', tokenFile: 'pki/token' });
    await mkdir(join(k.dir, 'pki'));
    for (const f of ['ca.crt', 'client.crt', 'client.key']) await cp(join(PKI, f), join(k.dir, 'pki', f));
    await writeFile(join(k.dir, 'pki/token'), 'relative-token');
    // (the test process's working directory is the repository, not the kubeconfig's directory)
    const conn = await loadApiConnection({ kubeconfig: k.file });
    const o = await applied(conn);
    expect(String(o.ca)).toBe(await pem('ca.crt'));
    expect(String(o.cert)).toBe(await pem('client.crt'));
    expect(String(o.key)).toBe(await pem('client.key'));
    expect(o.headers.Authorization).toBe('Bearer relative-token');
    expect(conn.summary.auth).toBe(`client certificate, tokenFile ${join(k.dir, 'pki/token')}`);
  });

  it('client-certificate-data and client-key-data; token; token-file; username and password; as and as-groups', async () => {
    const cert = await applied(await loadApiConnection({ kubeconfig: (await kubeconfig({}, { 'client-certificate-data': await b64('client.crt'), 'client-key-data': await b64('client.key') })).file }));
    expect(String(cert.cert)).toBe(await pem('client.crt'));
    expect(String(cert.key)).toBe(await pem('client.key'));
    expect(cert.headers.Authorization).toBeUndefined();

    expect((await applied(await loadApiConnection({ kubeconfig: (await kubeconfig({}, { token: 'abc' })).file }))).headers.Authorization).toBe('Bearer abc');

    // client-node's spelling, which kpx accepted before
    const k = await kubeconfig({}, { 'token-file': 'tok' });
    await writeFile(join(k.dir, 'tok'), 'dashed');
    expect((await applied(await loadApiConnection({ kubeconfig: k.file }))).headers.Authorization).toBe('Bearer dashed');

    const basic = await applied(await loadApiConnection({ kubeconfig: (await kubeconfig({}, { username: 'kpx', password: 'p:w' })).file }));
    expect(basic.headers.Authorization).toBe(`Basic ${Buffer.from('kpx:p:w').toString('base64')}`);

    const as = await applied(await loadApiConnection({ kubeconfig: (await kubeconfig({}, { token: 't', as: 'system:kube-proxy', 'as-groups': ['g1', 'g2'] })).file }));
    expect(as.headers).toMatchObject({ Authorization: 'Bearer t', 'Impersonate-User': 'system:kube-proxy', 'Impersonate-Group': ['g1', 'g2'] });
  });

  it('a server with a path prefix keeps it; a trailing slash, query and fragment go', async () => {
    const conn = await loadApiConnection({ kubeconfig: (await kubeconfig({ server: 'https://rancher.test/k8s/clusters/c-1/?x=1#f' }, null)).file });
    expect(conn.server).toBe('https://rancher.test/k8s/clusters/c-1');
  });
});

describe('token and certificate files are read again, as client-go', () => {
  it('a tokenFile is re-read once its token is a minute old (less client-go\'s 10 s leeway); a failed re-read keeps the last token', async () => {
    const k = await kubeconfig({}, { tokenFile: 'token' });
    const tokenFile = join(k.dir, 'token');
    await writeFile(tokenFile, 'token-1');
    const ctx = context();
    const conn = await loadApiConnection({ kubeconfig: k.file }, ctx);
    const auth = async () => (await applied(conn)).headers.Authorization;
    expect(await auth()).toBe('Bearer token-1');
    await writeFile(tokenFile, 'token-2');
    ctx.advance(TOKEN_REREAD_MS - 1);
    expect(await auth()).toBe('Bearer token-1');
    ctx.advance(1);
    expect(await auth()).toBe('Bearer token-2');
    expect(TOKEN_REREAD_MS).toBe(50_000);

    // the kubelet replaces the file: missing or empty for a moment
    await unlink(tokenFile);
    ctx.advance(TOKEN_REREAD_MS);
    expect(await auth()).toBe('Bearer token-2');
    await writeFile(tokenFile, '  \n');
    ctx.advance(TOKEN_REREAD_MS);
    expect(await auth()).toBe('Bearer token-2');
    expect(ctx.logged.filter((l) => l.level === 'warn').map((l) => l.obj.err)).toEqual(['ENOENT: no such file or directory', `${tokenFile} is empty`]);
    // and the next use tries again
    await writeFile(tokenFile, 'token-3');
    expect(await auth()).toBe('Bearer token-3');
  });

  it('with token and tokenFile both, the file wins when readable and the token is the fallback', async () => {
    const k = await kubeconfig({}, { token: 'inline', tokenFile: 'token' });
    const ctx = context();
    const conn = await loadApiConnection({ kubeconfig: k.file }, ctx);
    expect((await applied(conn)).headers.Authorization).toBe('Bearer inline');
    await writeFile(join(k.dir, 'token'), 'from-file');
    expect((await applied(conn)).headers.Authorization).toBe('Bearer from-file');
  });

  it('client certificate and key files are re-read every 5 minutes; a mismatched pair mid-rotation keeps the last good one', async () => {
    const k = await kubeconfig({}, { 'client-certificate': 'tls.crt', 'client-key': 'tls.key' });
    await cp(join(PKI, 'client.crt'), join(k.dir, 'tls.crt'));
    await cp(join(PKI, 'client.key'), join(k.dir, 'tls.key'));
    const ctx = context();
    const conn = await loadApiConnection({ kubeconfig: k.file }, ctx);
    const cert = async () => String((await applied(conn)).cert);
    expect(await cert()).toBe(await pem('client.crt'));
    // the certificate is replaced first, the key a moment later
    await cp(join(PKI, 'client2.crt'), join(k.dir, 'tls.crt'));
    ctx.advance(CERT_REREAD_MS);
    expect(await cert()).toBe(await pem('client.crt'));
    expect(ctx.logged.at(-1)?.obj.err).toBe('the client key does not belong to the client certificate');
    await cp(join(PKI, 'client2.key'), join(k.dir, 'tls.key'));
    expect(await cert()).toBe(await pem('client2.crt'));
    await cp(join(PKI, 'client.crt'), join(k.dir, 'tls.crt'));
    await cp(join(PKI, 'client.key'), join(k.dir, 'tls.key'));
    ctx.advance(CERT_REREAD_MS - 1);
    expect(await cert()).toBe(await pem('client2.crt'));
  });
});

describe('in-cluster config', () => {
  let sa: string;
  beforeAll(async () => {
    sa = join(dir, 'serviceaccount');
    await mkdir(sa, { recursive: true });
    await cp(join(PKI, 'ca.crt'), join(sa, 'ca.crt'));
    await writeFile(join(sa, 'token'), 'sa-token-1\n');
  });

  it('KUBERNETES_SERVICE_HOST/PORT with the service account token (re-read: it rotates) and CA', async () => {
    const ctx = context({ env: { KUBERNETES_SERVICE_HOST: '198.18.0.1', KUBERNETES_SERVICE_PORT: '443' }, serviceAccountDir: sa });
    const conn = await loadApiConnection({}, ctx);
    expect(conn.server).toBe('https://198.18.0.1:443');
    const o = await applied(conn);
    expect(o.headers.Authorization).toBe('Bearer sa-token-1');
    expect(String(o.ca)).toBe(await pem('ca.crt'));
    await writeFile(join(sa, 'token'), 'sa-token-2\n');
    ctx.advance(TOKEN_REREAD_MS);
    expect((await applied(conn)).headers.Authorization).toBe('Bearer sa-token-2');
    await writeFile(join(sa, 'token'), 'sa-token-1\n');
  });

  it('an IPv6 host is bracketed; port 80 is still https (client-go)', async () => {
    const conn = await loadApiConnection({}, context({ env: { KUBERNETES_SERVICE_HOST: '2001:2::1', KUBERNETES_SERVICE_PORT: '80' }, serviceAccountDir: sa }));
    expect(conn.server).toBe('https://[2001:2::1]:80');
  });

  it('no token is an error naming the file; an unusable CA is logged and the system roots verify (client-go)', async () => {
    const empty = join(dir, 'no-sa');
    await mkdir(empty, { recursive: true });
    const env = { KUBERNETES_SERVICE_HOST: '198.18.0.1', KUBERNETES_SERVICE_PORT: '443' };
    const err = await loadError(loadApiConnection({}, context({ env, serviceAccountDir: empty })));
    expect(err.message).toBe(`in-cluster config: the service account token: cannot read ${join(empty, 'token')}: ENOENT: no such file or directory`);

    await writeFile(join(empty, 'token'), 't');
    await writeFile(join(empty, 'ca.crt'), 'not a certificate');
    const ctx = context({ env, serviceAccountDir: empty });
    const o = await applied(await loadApiConnection({}, ctx));
    expect(o.ca).toBeUndefined();
    expect(o.headers.Authorization).toBe('Bearer t');
    expect(ctx.logged).toEqual([expect.objectContaining({ level: 'warn', obj: { file: join(empty, 'ca.crt'), err: 'no PEM certificate in it' } })]);
  });

  it('a kubeconfig wins over the in-cluster environment', async () => {
    const conn = await loadApiConnection({ kubeconfig: (await kubeconfig({}, { token: 'k' })).file }, context({ env: { KUBERNETES_SERVICE_HOST: '198.18.0.1', KUBERNETES_SERVICE_PORT: '443' }, serviceAccountDir: sa }));
    expect(conn.server).toBe('https://198.18.0.1:6443');
    expect((await applied(conn)).headers.Authorization).toBe('Bearer k');
  });

  it('--master replaces the in-cluster server and keeps its token and CA (as kpx did before)', async () => {
    const conn = await loadApiConnection({ master: 'https://198.18.0.9:6443' }, context({ env: { KUBERNETES_SERVICE_HOST: '198.18.0.1', KUBERNETES_SERVICE_PORT: '443' }, serviceAccountDir: sa }));
    expect(conn.server).toBe('https://198.18.0.9:6443');
    const o = await applied(conn);
    expect(o.headers.Authorization).toBe('Bearer sa-token-1');
    expect(String(o.ca)).toBe(await pem('ca.crt'));
  });
});

describe('--master', () => {
  it('alone: that server, no credentials', async () => {
    const conn = await loadApiConnection({ master: 'https://198.18.0.9:6443/' }, context());
    expect(conn.server).toBe('https://198.18.0.9:6443');
    const o = await applied(conn);
    expect(o.headers.Authorization).toBeUndefined();
    expect(o.ca).toBeUndefined();
  });

  it("overrides the kubeconfig's server; its CA, tls-server-name and credentials stay", async () => {
    const k = await kubeconfig({ 'certificate-authority-data': await b64('ca.crt'), 'tls-server-name': 'apiserver.test' }, { token: 'k' });
    const conn = await loadApiConnection({ kubeconfig: k.file, master: 'https://198.18.0.9:6443' }, context());
    expect(conn.server).toBe('https://198.18.0.9:6443');
    const o = await applied(conn);
    expect(o.headers.Authorization).toBe('Bearer k');
    expect(String(o.ca)).toBe(await pem('ca.crt'));
    expect(o.servername).toBe('apiserver.test');
  });

  it('a server without a scheme is https with TLS settings, else http; over http nothing is sent (client-go)', async () => {
    const plain = await loadApiConnection({ kubeconfig: (await kubeconfig({}, { token: 'k' })).file, master: '127.0.0.1:8080' }, context());
    expect(plain.server).toBe('http://127.0.0.1:8080');
    expect((await applied(plain)).headers).toEqual({});
    expect(plain.summary.auth).toBe('none (plain http)');
    const tls = await loadApiConnection({ kubeconfig: (await kubeconfig({ 'certificate-authority-data': await b64('ca.crt') }, { token: 'k' })).file, master: '198.18.0.9:6443' }, context());
    expect(tls.server).toBe('https://198.18.0.9:6443');
  });

  it('with no kubeconfig, no in-cluster environment and no --master there is nothing to watch', async () => {
    const err = await loadError(loadApiConnection({}, context()));
    expect(err.message).toMatch(/^no apiserver: pass --kubeconfig FILE, --master URL or --manifests DIR/);
  });
});

describe('a bad kubeconfig is an error naming the file and the field', () => {
  const cases: Array<[string, () => Promise<{ file: string; dir: string }>, (d: string) => string]> = [
    ['no current-context', () => kubeconfig({}, null, { 'current-context': '' }), () => 'current-context: not set (kpx uses the context it names)'],
    ['current-context names no context', () => kubeconfig({}, null, { 'current-context': 'nope' }), () => 'current-context: "nope": no context of that name in contexts'],
    [
      'the context names a missing cluster',
      () => kubeconfig({}, null, { contexts: [{ name: 'ctx', context: { cluster: 'gone' } }] }),
      () => 'contexts["ctx"].context.cluster: "gone": no cluster of that name in clusters',
    ],
    [
      'the context names a missing user',
      () => kubeconfig({}, null, { contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'who' } }] }),
      () => 'contexts["ctx"].context.user: "who": no user of that name in users',
    ],
    ['the cluster has no server', () => kubeconfig({ server: '' }, null), () => 'clusters["c"].cluster.server: not set'],
    ['the server is not a string', () => kubeconfig({ server: 6443 }, null), () => 'clusters["c"].cluster.server: must be a string'],
    ['the server is not http(s)', () => kubeconfig({ server: 'ftp://x' }, null), () => 'clusters["c"].cluster.server: "ftp://x": use an https:// (or http://) URL'],
    [
      'an unreadable CA file',
      () => kubeconfig({ 'certificate-authority': 'missing/ca.crt' }, null),
      (d) => `clusters["c"].cluster.certificate-authority: cannot read ${join(d, 'missing/ca.crt')}: ENOENT: no such file or directory`,
    ],
    ['CA data that is not base64', () => kubeconfig({ 'certificate-authority-data': 'not base64!' }, null), () => 'clusters["c"].cluster.certificate-authority-data: not base64'],
    [
      'CA data without a certificate',
      () => kubeconfig({ 'certificate-authority-data': Buffer.from('hello').toString('base64') }, null),
      () => 'clusters["c"].cluster.certificate-authority-data: no PEM certificate in it',
    ],
    [
      'CA file and data both',
      () => kubeconfig({ 'certificate-authority': '/x', 'certificate-authority-data': 'eA==' }, null),
      () => 'clusters["c"].cluster: certificate-authority and certificate-authority-data are both set (client-go refuses this too)',
    ],
    ['insecure-skip-tls-verify that is not a boolean', () => kubeconfig({ 'insecure-skip-tls-verify': 'yes' }, null), () => 'clusters["c"].cluster.insecure-skip-tls-verify: must be true or false'],
    ['a client certificate without a key', () => kubeconfig({}, { 'client-certificate': '/x.crt' }), () => 'users["u"].user: a client certificate without client-key or client-key-data'],
    [
      'a key that does not belong to the certificate',
      async () => kubeconfig({}, { 'client-certificate-data': await b64('client.crt'), 'client-key-data': await b64('client2.key') }),
      () => 'users["u"].user.client-certificate-data: the client key does not belong to the client certificate',
    ],
    ['an unreadable tokenFile', () => kubeconfig({}, { tokenFile: 'token' }), (d) => `users["u"].user.tokenFile: cannot read ${join(d, 'token')}: ENOENT: no such file or directory`],
    ['a token and a password', () => kubeconfig({}, { token: 't', username: 'u', password: 'p' }), () => 'users["u"].user: a token and a username/password are both set (only one authentication method, as client-go)'],
    ['two clusters of one name', () => kubeconfig({}, null, { clusters: [{ name: 'c', cluster: { server: 'https://a' } }, { name: 'c', cluster: { server: 'https://b' } }] }), () => 'clusters[1]: a second entry named "c"'],
    ['a user without a name', () => kubeconfig({}, null, { users: [{ user: { token: 't' } }] }), () => 'users[0].name: not set'],
  ];
  it.each(cases)('%s', async (_what, make, expected) => {
    const k = await make();
    const err = await loadError(loadApiConnection({ kubeconfig: k.file }, context()));
    expect(err.message).toBe(`kubeconfig ${k.file}: ${expected(k.dir)}`);
  });

  it('a file that is missing, or not YAML, or not a mapping', async () => {
    const missing = join(dir, 'nope.conf');
    expect((await loadError(loadApiConnection({ kubeconfig: missing }))).message).toBe(`kubeconfig ${missing}: cannot read it: ENOENT: no such file or directory`);
    const bad = join(dir, 'bad.conf');
    await writeFile(bad, 'clusters: [\n');
    expect((await loadError(loadApiConnection({ kubeconfig: bad }))).message).toMatch(new RegExp(`^kubeconfig ${bad}: not YAML: `));
    await writeFile(bad, '- a\n- b\n');
    expect((await loadError(loadApiConnection({ kubeconfig: bad }))).message).toBe(`kubeconfig ${bad}: not a kubeconfig (a mapping with clusters, contexts, users and current-context)`);
  });
});

describe('exec, auth-provider and proxy-url go to @kubernetes/client-node', () => {
  it('an exec credential plugin: client-node runs it and its token is sent; the log says why memory grows', async () => {
    const plugin = join(dir, 'plugin.mjs');
    await writeFile(plugin, `console.log(JSON.stringify({ apiVersion: 'client.authentication.k8s.io/v1', kind: 'ExecCredential', status: { token: 'from-plugin' } }));\n`);
    const k = await kubeconfig({}, { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: process.execPath, args: [plugin], interactiveMode: 'Never' } });
    const ctx = context();
    const conn = await loadApiConnection({ kubeconfig: k.file, master: 'https://198.18.0.9:6443' }, ctx);
    expect(conn.server).toBe('https://198.18.0.9:6443');
    expect(conn.summary.auth).toBe('users["u"].user.exec (through @kubernetes/client-node)');
    expect((await applied(conn)).headers.Authorization).toBe('Bearer from-plugin');
    expect(ctx.logged).toEqual([expect.objectContaining({ level: 'info', obj: { kubeconfig: k.file, field: 'users["u"].user.exec' } })]);
    expect(ctx.logged[0]!.msg).toMatch(/@kubernetes\/client-node.*70 MiB more memory/);
  });

  it('an auth-provider (client-node\'s tokenFile provider here) and a proxy-url are handled by client-node too', async () => {
    const k = await kubeconfig({}, { 'auth-provider': { name: 'tokenFile', config: { tokenFile: join(dir, 'provider-token') } } });
    await writeFile(join(dir, 'provider-token'), 'provided');
    const conn = await loadApiConnection({ kubeconfig: k.file }, context());
    expect(conn.summary.auth).toBe('users["u"].user.auth-provider (through @kubernetes/client-node)');
    expect((await applied(conn)).headers.Authorization).toBe('Bearer provided');

    const proxied = await loadApiConnection({ kubeconfig: (await kubeconfig({ 'proxy-url': 'http://127.0.0.1:3128' }, { token: 't' })).file }, context());
    expect(proxied.summary.auth).toBe('clusters["c"].cluster.proxy-url (through @kubernetes/client-node)');
  });
});

describe('real TLS handshakes with what the loader fills in', () => {
  let server: Server;
  let port: number;
  beforeAll(async () => {
    // serves apiserver.test only (no IP in its certificate) and asks for a client certificate
    server = createServer({ cert: await pem('server.crt'), key: await pem('server.key'), ca: await pem('ca.crt'), requestCert: true, rejectUnauthorized: false }, (req, res) => {
      const sock = req.socket as TLSSocket;
      const peer = sock.getPeerCertificate();
      res.end(JSON.stringify({ client: sock.authorized ? peer.subject?.CN : null, authorization: req.headers.authorization ?? null }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const get = async (conn: ApiConnection): Promise<{ client: string | null; authorization: string | null }> => {
    const opts: RequestOptions = { headers: {}, agent: false };
    await conn.apply(opts);
    return new Promise((resolve, reject) => {
      const req = request(new URL(`${conn.server}/version`), opts, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve(JSON.parse(body)));
      });
      req.on('error', reject);
      req.end();
    });
  };
  const load = async (cluster: Record<string, unknown>, user: Record<string, unknown> | null) =>
    loadApiConnection({ kubeconfig: (await kubeconfig({ server: `https://127.0.0.1:${port}`, ...cluster }, user)).file });

  it('CA, tls-server-name and a client certificate: the server verifies kpx and kpx verifies the server', async () => {
    const conn = await load({ 'certificate-authority-data': await b64('ca.crt'), 'tls-server-name': 'apiserver.test' }, { 'client-certificate-data': await b64('client.crt'), 'client-key-data': await b64('client.key'), token: 'tok' });
    expect(await get(conn)).toEqual({ client: 'kpx-test-client', authorization: 'Bearer tok' });
  });

  it('without tls-server-name the certificate does not match 127.0.0.1; another CA does not verify it', async () => {
    await expect(get(await load({ 'certificate-authority-data': await b64('ca.crt') }, null))).rejects.toMatchObject({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' });
    await expect(get(await load({ 'certificate-authority-data': await b64('other-ca.crt'), 'tls-server-name': 'apiserver.test' }, null))).rejects.toMatchObject({ code: 'SELF_SIGNED_CERT_IN_CHAIN' });
  });

  it('insecure-skip-tls-verify connects without a CA; no client certificate means none is presented', async () => {
    expect(await get(await load({ 'insecure-skip-tls-verify': true }, { username: 'a', password: 'b' }))).toEqual({ client: null, authorization: `Basic ${Buffer.from('a:b').toString('base64')}` });
  });
});

describe('the common cases never load @kubernetes/client-node', () => {
  it('kpx (cli, API source, loader) runs from a copy of dist/ whose node_modules has no @kubernetes; only an exec user then fails to load it', async () => {
    // dist/ is built by the global setup
    const root = join(dir, 'no-client-node');
    await mkdir(join(root, 'node_modules'), { recursive: true });
    await cp(join(REPO, 'dist'), join(root, 'dist'), { recursive: true });
    await writeFile(join(root, 'package.json'), '{"type":"module"}');
    for (const m of await readdir(join(REPO, 'node_modules'))) if (m !== '@kubernetes' && m !== '.bin') await symlink(join(REPO, 'node_modules', m), join(root, 'node_modules', m));
    await writeFile(
      join(root, 'check.mjs'),
      `await import('./dist/cli/main.js');
await import('./dist/source/kube/api-source.js');
const { loadApiConnection } = await import('./dist/source/kube/kubeconfig.js');
const conn = await loadApiConnection({ kubeconfig: process.argv[2] });
const opts = { headers: {} };
await conn.apply(opts);
console.log(JSON.stringify({ server: conn.server, authorization: opts.headers.Authorization }));
`,
    );
    const common = await kubeconfig({ 'certificate-authority-data': await b64('ca.crt') }, { token: 'plain' });
    const ok = await execa(process.execPath, [join(root, 'check.mjs'), common.file], { reject: false });
    expect(ok.stderr).toBe('');
    expect(JSON.parse(ok.stdout)).toEqual({ server: 'https://198.18.0.1:6443', authorization: 'Bearer plain' });

    const exec = await kubeconfig({}, { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: 'true' } });
    const failed = await execa(process.execPath, [join(root, 'check.mjs'), exec.file], { reject: false });
    expect(failed.exitCode).not.toBe(0);
    expect(failed.stderr).toMatch(/Cannot find package '@kubernetes\/client-node'/);
  });
});
