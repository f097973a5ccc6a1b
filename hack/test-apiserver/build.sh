#!/usr/bin/env bash
# Builds the test apiserver (embedded etcd + kube-apiserver from k8s.io/kubernetes) into
# ~/.cache/kpx/test-apiserver, once per source change. Prints the binary's path.
# The first build compiles Kubernetes: ~10-20 minutes on 2 cores; later ones are cached.
# Needs Go >= 1.21 (it fetches the toolchain go.mod asks for through the module proxy);
# without Go at all it fetches that toolchain itself from proxy.golang.org.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KPX_CACHE:-$HOME/.cache/kpx}
out=$cache/test-apiserver
mkdir -p "$cache"

stamp=$(cat "$here"/go.mod "$here"/go.sum "$here"/*.go | sha256sum | cut -c1-16)
if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out"
  exit 0
fi

. "$here/../lib/go.sh"
kpx_go_ensure "$here/go.mod" "$cache"

echo "build.sh: building the test apiserver (first build compiles Kubernetes; be patient)" >&2
start=$(date +%s)
(cd "$here" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go build -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
