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

want=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$here/go.mod")
have_go() {
  command -v go >/dev/null 2>&1 || return 1
  local v; v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  # toolchain switching (GOTOOLCHAIN=auto) exists from 1.21 on
  [ "$(printf '%s\n1.21\n' "$v" | sort -V | head -1)" = "1.21" ]
}
if ! have_go; then
  tc=$cache/go-toolchain
  if [ ! -x "$tc/bin/go" ]; then
    ver=$(curl -fsSL "https://proxy.golang.org/golang.org/toolchain/@v/list" | sed -n "s/^v0.0.1-go\(${want%.*}\.[0-9]*\)\.linux-amd64$/\1/p" | sort -V | tail -1)
    [ -n "$ver" ] || { echo "build.sh: no Go toolchain for go${want%.*} on proxy.golang.org" >&2; exit 1; }
    echo "build.sh: fetching Go $ver from proxy.golang.org" >&2
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    curl -fsSL -o "$tmp/go.zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$ver.linux-amd64.zip"
    (cd "$tmp" && python3 -c 'import zipfile,sys; zipfile.ZipFile("go.zip").extractall(".")')
    rm -rf "$tc"; mv "$tmp/golang.org/toolchain@v0.0.1-go$ver.linux-amd64" "$tc"
    chmod +x "$tc"/bin/* "$tc"/pkg/tool/*/* 2>/dev/null || true
  fi
  export PATH=$tc/bin:$PATH
fi

echo "build.sh: building the test apiserver (first build compiles Kubernetes; be patient)" >&2
start=$(date +%s)
(cd "$here" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go build -o "$out.tmp" .)
mv "$out.tmp" "$out"
echo "$stamp" >"$out.stamp"
echo "build.sh: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
