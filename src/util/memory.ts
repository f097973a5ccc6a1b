// Giving memory back after a burst. A full sync at 10k services (reading every object,
// rendering, streaming ~30 MB of rules) leaves ~50 MB of garbage in V8's old generation,
// and V8 may not collect it for minutes while kpx sits idle: the node would carry it as
// resident memory. Two full collections after such a sync (the second compacts what the
// first left sparse) let V8 shrink the heap.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type GC = (options?: { type?: string; execution?: string; flavor?: string }) => void;

let collect: GC | null | undefined;

/** V8's full garbage collection; null where it cannot be had. */
function collector(): GC | null {
  if (collect !== undefined) return collect;
  const exposed = (globalThis as { gc?: GC }).gc;
  if (exposed) return (collect = exposed);
  try {
    // --expose-gc only adds a gc() function to contexts created from now on
    setFlagsFromString('--expose-gc');
    collect = (runInNewContext('gc') as GC | undefined) ?? null;
  } catch {
    collect = null;
  }
  return collect;
}

/** Runs two full collections (see below); returns their duration in ms, or null when unavailable. */
export function releaseMemory(): number | null {
  const gc = collector();
  if (!gc) return null;
  const t = performance.now();
  // the first collection frees the garbage; the second compacts the pages it left sparse,
  // which is what lets V8 hand them back (measured at 10k: RSS 221 -> 182 MiB at once,
  // against ~40 s later with one)
  gc();
  gc();
  return performance.now() - t;
}
