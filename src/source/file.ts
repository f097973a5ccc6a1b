// The file source: Services, EndpointSlices, Nodes and ServiceCIDRs from *.yaml, *.yml and *.json files
// in a directory, watched for changes. Editing a file produces the same changes a watch
// on the API would (previous and current object per key).
import { hash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Logger } from '../util/log.js';
import { API_VERSION_FOR, objectKey, type KubeObject, type ResourceKind } from '../model/kube.js';
import { changeOf, type Change } from '../model/state.js';
import { nameForLogs, validateObject } from '../model/validate.js';
import type { Source, SourceHandler } from './types.js';

const EXTENSIONS = /\.(ya?ml|json)$/i;
const KINDS = new Set<ResourceKind>(['Service', 'EndpointSlice', 'Node', 'ServiceCIDR']);

/** A file's valid objects by "Kind/key", in file order. */
export type ParsedObjects = Map<string, { kind: ResourceKind; object: KubeObject }>;

/** What kpx keeps of one object: enough to detect a change and to name it in a delete. */
interface Kept {
  readonly kind: ResourceKind;
  readonly digest: string;
  /** apiVersion, kind and metadata name, namespace and labels: a change's `previous` */
  readonly identity: KubeObject;
}

interface FileObjects {
  readonly mtimeMs: number;
  readonly size: number;
  /** "Kind/key" -> what is kept of it, in file order (not the object: at 10k services the
   *  parsed objects would be the largest thing in memory) */
  readonly objects: Map<string, Kept>;
}

function keep(kind: ResourceKind, object: KubeObject): Kept {
  const m = object.metadata as { name: string; namespace?: string; labels?: Record<string, string> };
  const metadata = { name: m.name, ...(m.namespace !== undefined ? { namespace: m.namespace } : {}), ...(m.labels ? { labels: m.labels } : {}) };
  // a digest, not the JSON itself: change detection without a second copy of everything
  return { kind, digest: hash('sha1', JSON.stringify(object), 'hex'), identity: { apiVersion: API_VERSION_FOR[kind], kind, metadata } };
}

/**
 * Parses one file's text into valid objects; everything wrong is logged (with the file)
 * and skipped, and the rest is kept. null: the file as a whole does not parse.
 */
export function parseManifest(text: string, file: string, log: Logger): ParsedObjects | null {
  const out: ParsedObjects = new Map();
  if (/\.json$/i.test(file)) {
    // JSON.parse: an order of magnitude less memory than a YAML document model for big lists
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      log.error({ file, reason: (err as Error).message }, 'manifest file does not parse; skipped');
      return null;
    }
    addDocument(value, 0, file, log, out);
    return out;
  }
  let docs;
  try {
    docs = parseAllDocuments(text, { prettyErrors: false });
  } catch (err) {
    log.error({ file, reason: (err as Error).message }, 'manifest file does not parse; skipped');
    return null;
  }
  const list = Array.isArray(docs) ? docs : [docs];
  for (const [i, doc] of list.entries()) {
    if (doc.errors.length > 0) {
      log.error({ file, document: i, reason: doc.errors[0]!.message.split('\n')[0] }, 'manifest document does not parse; skipped');
      continue;
    }
    let value: unknown;
    try {
      // YAML's own limits (e.g. "Excessive alias count") are hit here
      value = doc.toJS({ maxAliasCount: 100 });
    } catch (err) {
      log.error({ file, document: i, reason: (err as Error).message }, 'manifest document does not parse; skipped');
      continue;
    }
    addDocument(value, i, file, log, out);
  }
  return out;
}

function addDocument(value: unknown, index: number, file: string, log: Logger, out: ParsedObjects): void {
  if (value == null) return;
  if (Array.isArray(value)) {
    log.warn({ file, document: index, reason: 'a list, not an object (wrap objects in a kind: List with items)' }, 'manifest document skipped');
    return;
  }
  const isList = typeof value === 'object' && (value as { kind?: unknown }).kind === 'List';
  const items = isList ? ((value as { items?: unknown }).items ?? []) : [value];
  if (!Array.isArray(items)) {
    log.error({ file, document: index, reason: 'List without items array' }, 'manifest skipped');
    return;
  }
  for (let i = 0; i < items.length; i++) {
    const item: unknown = items[i];
    if (isList && typeof item === 'object' && item !== null && (item as { kind?: unknown }).kind === 'List') {
      log.warn({ file, document: index, item: i, reason: 'a List inside a List' }, 'manifest item skipped');
    } else addObject(item, file, log, out);
    items[i] = null; // validation made a copy: the raw object can go now (10k-service lists)
  }
}

function addObject(item: unknown, file: string, log: Logger, out: ParsedObjects): void {
  if (typeof item !== 'object' || item === null || Array.isArray(item)) {
    log.warn({ file, reason: 'not an object' }, 'manifest item skipped');
    return;
  }
  const { kind, apiVersion } = item as { kind?: unknown; apiVersion?: unknown };
  if (typeof kind !== 'string' || !KINDS.has(kind as ResourceKind)) {
    const near = typeof kind === 'string' ? [...KINDS].find((k) => k.toLowerCase() === kind.toLowerCase()) : undefined;
    if (near) log.warn({ file, kind, reason: `kinds are case-sensitive: did you mean ${near}?` }, 'manifest item skipped');
    else if (typeof kind !== 'string') log.warn({ file, reason: 'no kind' }, 'manifest item skipped');
    else log.debug({ file, kind }, 'not a Service, EndpointSlice or Node; ignored');
    return;
  }
  const k = kind as ResourceKind;
  if (apiVersion !== API_VERSION_FOR[k]) {
    log.warn({ file, kind: k, object: nameForLogs(k, item), reason: `apiVersion ${JSON.stringify(apiVersion)} is not ${API_VERSION_FOR[k]}` }, 'object skipped');
    return;
  }
  const v = validateObject(k, item);
  if (!v.ok) {
    log.warn({ file, kind: k, object: v.name, reason: v.reason }, 'invalid object skipped');
    return;
  }
  const key = `${k}/${objectKey(k, v.object)}`;
  if (out.has(key)) log.warn({ file, kind: k, object: key }, 'object appears twice in one file; the last one wins');
  out.set(key, { kind: k, object: v.object });
}

export class FileSource implements Source {
  private files = new Map<string, FileObjects>();
  /** the effective object per "Kind/key" (first file in name order wins on duplicates) */
  private effective = new Map<string, Kept & { readonly file: string }>();
  private watcher: FSWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private scanning: Promise<void> = Promise.resolve();
  private handler: SourceHandler | null = null;

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly debounceMs = 100,
  ) {}

  async start(handler: SourceHandler): Promise<void> {
    this.handler = handler;
    await stat(this.dir).catch(() => {
      throw new Error(`--manifests ${this.dir}: directory does not exist`);
    });
    await this.scan();
    this.watcher = watch(this.dir, { persistent: true }, () => this.schedule());
    this.watcher.on('error', (err) => this.log.error({ dir: this.dir, err: err.message }, 'watching manifests failed'));
    handler.onSynced();
  }

  async stop(): Promise<void> {
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearTimeout(this.timer);
    await this.scanning;
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.scanning = this.scanning.then(() => this.scan()).catch((err) => this.log.error({ err: String(err) }, 'rescan failed'));
    }, this.debounceMs);
  }

  /** Re-reads changed files and emits the differences. Public for tests and --once. */
  async scan(): Promise<void> {
    const names = (await readdir(this.dir)).filter((n) => EXTENSIONS.test(n) && !n.startsWith('.')).sort();
    const next = new Map<string, FileObjects>();
    /** objects of the files read in this scan, until their changes are emitted */
    const parsed = new Map<string, ParsedObjects>();
    for (const name of names) {
      const path = join(this.dir, name);
      const st = await stat(path).catch((err: Error) => {
        // a dangling symlink, a file kpx may not look at: named, not silently left out
        this.log.error({ file: path, reason: err.message }, 'manifest file cannot be read; skipped');
        return null;
      });
      if (!st) continue;
      if (!st.isFile()) {
        this.log.warn({ file: path, reason: 'not a regular file' }, 'manifest file skipped');
        continue;
      }
      const prev = this.files.get(name);
      if (prev && prev.mtimeMs === st.mtimeMs && prev.size === st.size) {
        next.set(name, prev);
        continue;
      }
      const objects = await this.read(name);
      if (!objects) {
        // unreadable or not parseable at all: what it held before stays served
        if (prev) {
          this.log.warn({ file: path }, 'the objects this file held before stay in place');
          next.set(name, prev);
        }
        continue;
      }
      parsed.set(name, objects);
      next.set(name, { mtimeMs: st.mtimeMs, size: st.size, objects: new Map([...objects].map(([k, o]) => [k, keep(o.kind, o.object)])) });
    }
    this.files = next;
    await this.reconcile(parsed);
  }

  private async read(name: string): Promise<ParsedObjects | null> {
    const path = join(this.dir, name);
    try {
      return parseManifest(await readFile(path, 'utf8'), path, this.log);
    } catch (err) {
      this.log.error({ file: path, reason: (err as Error).message }, 'manifest file cannot be read; skipped');
      return null;
    }
  }

  private async reconcile(parsed: Map<string, ParsedObjects>): Promise<void> {
    const now = new Map<string, Kept & { file: string }>();
    for (const [file, fo] of this.files) {
      for (const [key, kept] of fo.objects) {
        const had = now.get(key);
        if (had) {
          this.log.warn({ kind: kept.kind, object: key, file: join(this.dir, file), kept: join(this.dir, had.file) }, 'object defined in two files; the first file wins');
          continue;
        }
        now.set(key, { ...kept, file });
      }
    }
    // each change goes out as soon as it is known, and its object is dropped from `parsed`:
    // a 10k-service file is never held twice over
    const emit = (c: Change) => this.handler?.onChange(c);
    for (const [key, cur] of now) {
      const prev = this.effective.get(key);
      if (prev && prev.digest === cur.digest) continue;
      // The object itself: from this scan's reads or, for a duplicate in an unchanged file
      // that now wins, read again.
      let objects = parsed.get(cur.file);
      if (!objects) parsed.set(cur.file, (objects = (await this.read(cur.file)) ?? (new Map() as ParsedObjects)));
      const object = objects.get(key)?.object;
      objects.delete(key);
      if (!object) {
        // the file changed under us (the watcher rescans it): keep what was delivered
        if (prev) now.set(key, prev);
        else now.delete(key);
        continue;
      }
      emit(changeOf(cur.kind, prev?.identity, object, join(this.dir, cur.file)));
    }
    for (const [key, prev] of this.effective) {
      if (!now.has(key)) emit(changeOf(prev.kind, prev.identity, undefined, join(this.dir, prev.file)));
    }
    this.effective = now;
  }
}
