// The image and the manifests, checked by shape (no Docker engine here; the apiserver
// validates the manifests in test/dataplane/api-source.test.ts with a server-side dry run).
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { KPX_BIN, REPO } from '../substrate/netns.js';
import { launcherNodeFlags } from '../substrate/launcher.js';

type Obj = { kind: string; metadata: { name: string }; [k: string]: unknown };

async function manifests(): Promise<Map<string, Obj[]>> {
  const out = new Map<string, Obj[]>();
  for (const f of (await readdir(join(REPO, 'manifests'))).filter((f) => /\.ya?ml$/.test(f) && f !== 'kustomization.yaml')) {
    out.set(f, parseAllDocuments(await readFile(join(REPO, 'manifests', f), 'utf8')).map((d) => d.toJS() as Obj).filter(Boolean));
  }
  return out;
}
const all = async () => [...(await manifests()).values()].flat();

describe('Dockerfile', () => {
  it('builds in a full Node image, runs on a slim one, both pinned by tag', async () => {
    const text = await readFile(join(REPO, 'Dockerfile'), 'utf8');
    const froms = [...text.matchAll(/^FROM\s+(\S+)/gm)].map((m) => m[1]!);
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const image of froms) {
      expect(image).toMatch(/:[0-9]/);
      expect(image).not.toMatch(/:latest$/);
    }
    expect(froms[0]).toMatch(/^node:\S+-bookworm$/);
    expect(froms.at(-1)).toMatch(/^node:\S+-bookworm-slim$/);
  });

  it('installs the dataplane tools kpx runs', async () => {
    const text = await readFile(join(REPO, 'Dockerfile'), 'utf8');
    const install = [...text.matchAll(/apt-get install[^\n\\]*(?:\\\n[^\n\\]*)*/g)].map((m) => m[0]).join(' ');
    for (const pkg of ['iptables', 'ipset', 'ipvsadm', 'conntrack', 'iproute2', 'kmod']) expect(install.split(/\s+/)).toContain(pkg);
  });

  it('runs the CLI entry point that package.json declares, with its shebang\'s node flags, copied from the build stage', async () => {
    const text = await readFile(join(REPO, 'Dockerfile'), 'utf8');
    const pkg = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { bin: { kpx: string } };
    const entry = JSON.parse(/^ENTRYPOINT\s+(\[.*\])/m.exec(text)![1]!) as string[];
    expect(entry[0]).toBe('node');
    expect(entry.slice(1, -1)).toEqual(launcherNodeFlags(join(REPO, pkg.bin.kpx)));
    expect(entry.slice(1, -1)).toContain('--max-semi-space-size=1');
    expect(entry.at(-1)).toBe(join('/opt/kpx', pkg.bin.kpx));
    expect(existsSync(join(REPO, pkg.bin.kpx))).toBe(true);
    for (const dir of ['bin', 'dist', 'node_modules']) expect(text).toMatch(new RegExp(`COPY --from=build \\S+/${dir} \\./${dir}`));
    expect(existsSync(join(REPO, '.dockerignore'))).toBe(true);
  });
});

describe('manifests', () => {
  it('kustomization lists every manifest file', async () => {
    const k = parse(await readFile(join(REPO, 'manifests/kustomization.yaml'), 'utf8')) as { resources: string[]; images: Array<{ name: string }> };
    expect([...k.resources].sort()).toEqual([...(await manifests()).keys()].sort());
    const ds = (await all()).find((o) => o.kind === 'DaemonSet') as unknown as { spec: { template: { spec: { containers: Array<{ image: string }> } } } };
    expect(k.images.map((i) => i.name)).toContain(ds.spec.template.spec.containers[0]!.image.split(':')[0]);
  });

  it('the ClusterRole grants only what kpx reads, and the binding points at the ServiceAccount', async () => {
    const objs = await all();
    const role = objs.find((o) => o.kind === 'ClusterRole') as unknown as { rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[] }> };
    const grants = role.rules.flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g}/${res}:${v}`)))).sort();
    expect(grants).toEqual(
      [
        '/services:list', '/services:watch',
        'discovery.k8s.io/endpointslices:list', 'discovery.k8s.io/endpointslices:watch',
        '/nodes:get', '/nodes:list', '/nodes:watch',
        'networking.k8s.io/servicecidrs:list', 'networking.k8s.io/servicecidrs:watch',
        '/events:create', '/events:patch', '/events:update',
        'events.k8s.io/events:create', 'events.k8s.io/events:patch', 'events.k8s.io/events:update',
      ].sort(),
    );
    const sa = objs.find((o) => o.kind === 'ServiceAccount') as unknown as { metadata: { name: string; namespace: string } };
    const binding = objs.find((o) => o.kind === 'ClusterRoleBinding') as unknown as { subjects: Array<{ name: string; namespace: string }> };
    expect(binding.subjects).toEqual([expect.objectContaining({ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace })]);
  });

  it('the DaemonSet is shaped like kube-proxy and passes only flags kpx has', async () => {
    const ds = (await all()).find((o) => o.kind === 'DaemonSet') as unknown as {
      spec: {
        updateStrategy: { rollingUpdate: { maxUnavailable: string } };
        template: { spec: Record<string, unknown> & { containers: Array<Record<string, unknown> & { args: string[]; env: Array<{ name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }> }>; tolerations: unknown[]; volumes: Array<{ hostPath?: { path: string } }> } };
      };
    };
    const pod = ds.spec.template.spec;
    expect(pod.hostNetwork).toBe(true);
    expect(pod.priorityClassName).toBe('system-node-critical');
    expect(pod.tolerations).toEqual([{ operator: 'Exists' }]);
    expect(ds.spec.updateStrategy.rollingUpdate.maxUnavailable).toBe('10%');
    expect(pod.volumes.map((v) => v.hostPath?.path).filter(Boolean).sort()).toEqual(['/lib/modules', '/run/xtables.lock']);
    const c = pod.containers[0]!;
    expect(c.env.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    expect(c.args).toContain('--hostname-override=$(NODE_NAME)');
    expect(JSON.stringify(c)).toContain('/livez');
    const help = (await execa(process.execPath, [KPX_BIN, 'run', '--help'])).stdout;
    expect(c.args[0]).toBe('run');
    for (const a of c.args.slice(1)) expect(help, a).toContain(a.split('=')[0]!);
  });

  it('the ConfigMap holds a KubeProxyConfiguration kpx accepts', async () => {
    const cm = (await all()).find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'kpx-config') as unknown as { data: Record<string, string> };
    const dir = await mkdtemp(join(tmpdir(), 'kpx-deploy-'));
    try {
      await writeFile(join(dir, 'config.yaml'), cm.data['config.yaml']!);
      const r = await execa(process.execPath, [KPX_BIN, 'render', '--config', join(dir, 'config.yaml'), '--manifests', join(REPO, 'examples'), '--hostname-override', 'node-a', '--log-level', 'error'], { reject: false });
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toContain('*nat');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
