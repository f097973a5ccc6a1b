// A kubeconfig file as client-go reads it. @kubernetes/client-node ignores a user's
// `tokenFile` (it knows only `token-file`), and kubeadm's kube-proxy ConfigMap
// (kubeconfig.conf) authenticates exactly that way, with the ServiceAccount's projected
// token, which the kubelet rotates. Such a user gets client-node's file authenticator,
// which re-reads the file (at most a minute old, as client-go).
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import type { KubeConfig } from '@kubernetes/client-node';

interface RawUser {
  name?: unknown;
  user?: { token?: unknown; tokenFile?: unknown } | null;
}

/** users[].user.tokenFile by user name (made absolute against the file's directory), where no token is given. */
function tokenFiles(path: string): Map<string, string> {
  const raw = parse(readFileSync(path, 'utf8')) as { users?: RawUser[] } | null;
  const out = new Map<string, string>();
  for (const u of raw?.users ?? []) {
    const file = u.user?.tokenFile;
    if (typeof u.name !== 'string' || typeof file !== 'string' || file === '' || u.user?.token) continue;
    out.set(u.name, isAbsolute(file) ? file : resolve(dirname(path), file));
  }
  return out;
}

/** kc.loadFromFile(path), plus `tokenFile` users. */
export function loadKubeconfigFile(kc: KubeConfig, path: string): void {
  kc.loadFromFile(path);
  const files = tokenFiles(path);
  if (files.size === 0) return;
  const users = kc.users.map((u) => {
    const tokenFile = files.get(u.name);
    return tokenFile && !u.token && !u.authProvider ? { ...u, authProvider: { name: 'tokenFile', config: { tokenFile } } } : u;
  });
  kc.loadFromOptions({ clusters: kc.clusters, users, contexts: kc.contexts, currentContext: kc.currentContext });
}
