// The one place raw objects (from files or the API) are checked against kpx's schemas.
import { describeZodError, isClusterScoped, schemaFor, type KubeObject, type ResourceKind } from './kube.js';

export type Validation<T> = { ok: true; object: T } | { ok: false; reason: string; name: string };

export function validateObject(kind: ResourceKind, raw: unknown): Validation<KubeObject> {
  const parsed = schemaFor[kind].safeParse(raw);
  if (parsed.success) return { ok: true, object: parsed.data };
  return { ok: false, reason: describeZodError(parsed.error), name: nameForLogs(kind, raw) };
}

/** What stands for an object's name in a log line, whatever its metadata holds. */
export function nameForLogs(kind: ResourceKind, raw: unknown): string {
  const meta = (raw as { metadata?: { name?: unknown; namespace?: unknown } } | null)?.metadata;
  const text = (v: unknown) => (typeof v === 'string' ? v : v === undefined || v === null ? undefined : JSON.stringify(v));
  const name = text(meta?.name) ?? '(no name)';
  const ns = text(meta?.namespace);
  return isClusterScoped(kind) ? name : `${ns ?? 'default'}/${name}`;
}
