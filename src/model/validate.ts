// The one place raw objects (from files or the API) are checked against kpx's schemas.
import { describeZodError, schemaFor, type KubeObject, type ResourceKind } from './kube.js';

export type Validation<T> = { ok: true; object: T } | { ok: false; reason: string; name: string };

export function validateObject(kind: ResourceKind, raw: unknown): Validation<KubeObject> {
  const parsed = schemaFor[kind].safeParse(raw);
  if (parsed.success) return { ok: true, object: parsed.data };
  const meta = (raw as { metadata?: { name?: unknown; namespace?: unknown } } | null)?.metadata;
  const name = typeof meta?.name === 'string' ? meta.name : '(unnamed)';
  const ns = typeof meta?.namespace === 'string' ? `${meta.namespace}/` : kind === 'Node' ? '' : 'default/';
  return { ok: false, reason: describeZodError(parsed.error), name: `${ns}${name}` };
}
