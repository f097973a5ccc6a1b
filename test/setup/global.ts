// Runs once before all tests: builds dist/ (the tests run the real CLI) and removes
// namespaces that crashed test processes left behind.
import { execa } from 'execa';
import { REPO, removeStaleNamespaces } from '../substrate/netns.js';
import { removeOrphanClusters } from '../substrate/cluster/netns-cluster.js';

export default async function setup(): Promise<void> {
  await execa('node_modules/.bin/tsc', ['-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  if (process.getuid?.() === 0) {
    const removed = await removeStaleNamespaces().catch(() => []);
    if (removed.length) console.warn(`removed ${removed.length} namespaces left by earlier test runs`);
    // netns clusters of e2e runs whose process died (clusters made with hack/netns-cluster have no owner and stay)
    const clusters = await removeOrphanClusters().catch(() => []);
    if (clusters.length) console.warn(`removed netns clusters left by earlier test runs: ${clusters.join(', ')}`);
  }
}
