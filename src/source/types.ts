// What every source (files, the Kubernetes API) gives the sync: typed changes, and a
// signal that its initial state is complete.
import type { Change } from '../model/state.js';

export interface SourceHandler {
  onChange(change: Change): void;
  /** every kind has delivered its initial state; safe to program */
  onSynced(): void;
}

export interface Source {
  start(handler: SourceHandler): Promise<void>;
  stop(): Promise<void>;
  /** what the source has handed on (kind -> key -> resourceVersion), for /debug/inventory */
  inventory?(): unknown;
}
