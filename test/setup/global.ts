// Runs once before all tests: builds dist/ (the tests run the real CLI) and removes
// namespaces that crashed test processes left behind.
import { execa } from 'execa';
import { REPO, removeStaleNamespaces } from '../substrate/netns.js';

export default async function setup(): Promise<void> {
  await execa('node_modules/.bin/tsc', ['-p', 'tsconfig.build.json'], { cwd: REPO, stdio: 'inherit' });
  if (process.getuid?.() === 0) {
    const removed = await removeStaleNamespaces().catch(() => []);
    if (removed.length) console.warn(`removed ${removed.length} namespaces left by earlier test runs`);
  }
}
