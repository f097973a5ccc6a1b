#!/usr/bin/env bash
# The test command: installs what the tests need (system packages as root, npm
# dependencies), then runs every test suite. Tests create their own network namespaces
# and never touch the machine's root namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

hack/install-deps.sh
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx vitest run "$@"
