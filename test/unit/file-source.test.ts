import { afterEach, describe, expect, it } from 'vitest';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileSource } from '../../src/source/file.js';
import type { Change } from '../../src/model/state.js';
import { captureLogger } from '../substrate/log.js';
import { endpointSlice, service, yamlDocs } from '../substrate/manifests.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

async function setup() {
  const dir = await mkdtemp(join(tmpdir(), 'kpx-files-'));
  dirs.push(dir);
  const { log, lines } = captureLogger();
  const changes: Change[] = [];
  let synced = 0;
  const src = new FileSource(dir, log, 20);
  return { dir, lines, changes, src, start: () => src.start({ onChange: (c) => changes.push(c), onSynced: () => synced++ }), synced: () => synced };
}

const describeChange = (c: Change) =>
  `${c.kind} ${(c.current ?? c.previous)!.metadata.name} ${!c.previous ? 'add' : !c.current ? 'delete' : 'update'}`;

describe('file source', () => {
  it('reads multi-document YAML, kind: List and JSON, and signals the initial state', async () => {
    const s = await setup();
    await writeFile(join(s.dir, 'a.yaml'), yamlDocs(service({ name: 'a', clusterIP: '198.19.0.1', ports: [{ port: 80 }] }), endpointSlice({ service: 'a', ports: [{ port: 80 }], endpoints: [] })));
    await writeFile(join(s.dir, 'b.json'), JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [service({ name: 'b', clusterIP: '198.19.0.2', ports: [{ port: 80 }] })] }));
    await writeFile(join(s.dir, 'notes.txt'), 'ignored');
    await s.start();
    expect(s.changes.map(describeChange).sort()).toEqual(['EndpointSlice a-ipv4 add', 'Service a add', 'Service b add']);
    expect(s.synced()).toBe(1);
    await s.src.stop();
  });

  it('logs a broken file and an invalid object with file, object and reason, and serves the rest', async () => {
    const s = await setup();
    await writeFile(join(s.dir, 'bad.yaml'), 'kind: Service\n  : : [broken');
    await writeFile(
      join(s.dir, 'mixed.yaml'),
      yamlDocs(service({ name: 'ok', clusterIP: '198.19.0.1', ports: [{ port: 80 }] }), service({ name: 'wrong', clusterIP: '198.19.0.2', ports: [{ port: 0 }] })),
    );
    await s.start();
    expect(s.changes.map(describeChange)).toEqual(['Service ok add']);
    expect(s.lines).toContainEqual(expect.objectContaining({ file: join(s.dir, 'bad.yaml'), level: 50 }));
    expect(s.lines).toContainEqual(
      expect.objectContaining({ file: join(s.dir, 'mixed.yaml'), object: 'default/wrong', reason: expect.stringMatching(/^spec\.ports\[0\]\.port: /) }),
    );
    await s.src.stop();
  });

  it('turns file edits and deletions into update and delete changes', async () => {
    const s = await setup();
    const f = join(s.dir, 'svc.yaml');
    await writeFile(f, yamlDocs(service({ name: 'a', clusterIP: '198.19.0.1', ports: [{ port: 80 }] })));
    await s.start();
    s.changes.length = 0;
    await writeFile(f, yamlDocs(service({ name: 'a', clusterIP: '198.19.0.1', ports: [{ port: 81 }] })));
    await waitFor(() => s.changes.length === 1);
    expect(describeChange(s.changes[0]!)).toBe('Service a update');
    expect((s.changes[0]!.current as { spec: { ports: Array<{ port: number }> } }).spec.ports[0]!.port).toBe(81);
    // previous: the object's identity (kpx keeps no copy of every object it read)
    expect(s.changes[0]!.previous).toEqual({ apiVersion: 'v1', kind: 'Service', metadata: { name: 'a', namespace: 'default' } });
    await unlink(f);
    await waitFor(() => s.changes.length === 2);
    expect(describeChange(s.changes[1]!)).toBe('Service a delete');
    await s.src.stop();
  });

  it('keeps the first file on duplicates and says so', async () => {
    const s = await setup();
    await writeFile(join(s.dir, '1.yaml'), yamlDocs(service({ name: 'a', clusterIP: '198.19.0.1', ports: [{ port: 80 }] })));
    await writeFile(join(s.dir, '2.yaml'), yamlDocs(service({ name: 'a', clusterIP: '198.19.0.9', ports: [{ port: 80 }] })));
    await s.start();
    expect(s.changes).toHaveLength(1);
    expect((s.changes[0]!.current as { spec: { clusterIP: string } }).spec.clusterIP).toBe('198.19.0.1');
    expect(s.lines.some((l) => String(l.msg).includes('two files'))).toBe(true);
    // the first file goes: the second file's copy (in a file not read again) takes over
    await unlink(join(s.dir, '1.yaml'));
    await waitFor(() => s.changes.length === 2);
    expect(describeChange(s.changes[1]!)).toBe('Service a update');
    expect((s.changes[1]!.current as { spec: { clusterIP: string } }).spec.clusterIP).toBe('198.19.0.9');
    await s.src.stop();
  });
});

async function waitFor(cond: () => boolean, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}
