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
# A real kube-apiserver for the API-source tests (built once, then cached; the first
# build compiles Kubernetes and takes 10-20 minutes on 2 cores).
if [ -z "${KPX_TEST_KUBECONFIG:-}" ]; then
  KPX_TEST_APISERVER_BIN=$(hack/test-apiserver/build.sh)
  export KPX_TEST_APISERVER_BIN
fi
# Upstream kube-proxy, the oracle the kube-proxy-oracle tests run in a node namespace
# (same modules and build cache; ~15 s after the apiserver's build, ~5 minutes alone).
KPX_KUBE_PROXY_BIN=$(hack/kube-proxy/build.sh)
export KPX_KUBE_PROXY_BIN
# the linter (typescript-eslint, type-aware): part of the tests, so CI runs it
npx eslint .
npx vitest run "$@"
# IPVS mode needs a kernel with ip_vs; this suite runs again under qemu with Debian's
# kernel (hack/ipvs-vm), where it does not skip. Only for a full run (no filter given).
if [ $# -eq 0 ]; then
  npm run test:ipvs
fi
