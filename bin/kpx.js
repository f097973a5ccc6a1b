#!/usr/bin/env -S node --max-semi-space-size=1
// V8's young generation capped at 1 MiB per semi-space (node's default grows to 16):
// kpx's garbage is short-lived, and at 1k services x 10 this keeps 40 MiB less resident
// with no slower syncs at 10k (bench/api-rss.ts; docs/performance.md). The image's
// ENTRYPOINT passes the same flags; `node bin/kpx.js` runs without them.
// Thin launcher: the CLI is compiled to dist/ by `npm ci` (the prepare script).
import('../dist/cli/main.js').then((m) => m.main(process.argv)).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/main.js')) {
    console.error('kpx: dist/ is missing; run `npm ci` (or `npm run build`) in the repository first');
    process.exit(2);
  }
  throw err;
});
