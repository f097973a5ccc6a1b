#!/usr/bin/env bash
# Builds upstream kube-proxy (k8s.io/kubernetes cmd/kube-proxy/app, at the version go.mod
# pins) into ${KPX_CACHE:-~/.cache/kpx}/kube-proxy, once per source change. Prints the
# binary's path on stdout; progress goes to stderr. Shares Go's module and build caches
# with hack/test-apiserver, so after that build most of Kubernetes is already compiled.
# Needs Go >= 1.21, or fetches the toolchain from proxy.golang.org (hack/lib/go.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KPX_CACHE:-$HOME/.cache/kpx}
out=$cache/kube-proxy
mkdir -p "$cache"
. "$here/../lib/go.sh"
# one build at a time (two test processes may ask at once); the second finds it done
exec 9>"$out.lock"
flock 9

ldflags=$(kpx_k8s_ldflags "$here/go.mod")
stamp=$( { cat "$here"/go.mod "$here"/go.sum "$here"/*.go; echo "$ldflags"; } | sha256sum | cut -c1-16)
if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$out"
  exit 0
fi

kpx_go_ensure "$here/go.mod" "$cache"

echo "build.sh: building kube-proxy (the first build compiles Kubernetes; be patient)" >&2
start=$(date +%s)
(cd "$here" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go build -ldflags "$ldflags" -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
echo "build.sh: built kube-proxy in $(( $(date +%s) - start ))s" >&2
echo "$out"
