// Runs once before all tests: builds dist/ (the tests run the real CLI) unless it is newer
// than every source, and removes namespaces that crashed test processes left behind.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { REPO, removeStaleNamespaces } from '../substrate/netns.js';
import { removeOrphanClusters } from '../substrate/cluster/netns-cluster.js';

/** The check hack/netns-cluster makes: dist/cli/main.js newer than src/ and the build config.
 *  (Saves the ~4 minutes tsc takes in the emulated IPVS VM when the host built dist/ first.) */
async function distIsCurrent(): Promise<boolean> {
  const built = await stat(join(REPO, 'dist/cli/main.js')).catch(() => null);
  if (!built) return false;
  const sources = [join(REPO, 'tsconfig.build.json'), ...(await readdir(join(REPO, 'src'), { recursive: true })).map((f) => join(REPO, 'src', f))];
  for (const f of sources) if ((await stat(f)).mtimeMs > built.mtimeMs) return false;
  return true;
}

export default async function setup(): Promise<void> {
  if (!(await distIsCurrent())) await execa('node_modules/.bin/tsc', ['-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  if (process.getuid?.() === 0) {
    const removed = await removeStaleNamespaces().catch(() => []);
    if (removed.length) console.warn(`removed ${removed.length} namespaces left by earlier test runs`);
    // netns clusters of e2e runs whose process died (clusters made with hack/netns-cluster have no owner and stay)
    const clusters = await removeOrphanClusters().catch(() => []);
    if (clusters.length) console.warn(`removed netns clusters left by earlier test runs: ${clusters.join(', ')}`);
  }
}
