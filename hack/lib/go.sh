# Shell helpers for the scripts that build Go programs from Kubernetes' modules
# (hack/test-apiserver, hack/kube-proxy). Source it; it defines functions only.

# kpx_go_ensure GO_MOD CACHE_DIR
# Puts a Go on PATH that can build GO_MOD: the installed one when it is 1.21 or newer
# (from 1.21 on, GOTOOLCHAIN=auto fetches the toolchain go.mod asks for through the
# module proxy), else the newest go<major.minor>.x toolchain from proxy.golang.org,
# unpacked once into CACHE_DIR/go-toolchain.
kpx_go_ensure() {
  local gomod=$1 cache=$2 want v tc ver tmp
  want=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
  if command -v go >/dev/null 2>&1; then
    v=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
    [ "$(printf '%s\n1.21\n' "$v" | sort -V | head -1)" = "1.21" ] && return 0
  fi
  tc=$cache/go-toolchain
  if [ ! -x "$tc/bin/go" ]; then
    ver=$(curl -fsSL "https://proxy.golang.org/golang.org/toolchain/@v/list" | sed -n "s/^v0.0.1-go\(${want%.*}\.[0-9]*\)\.linux-amd64$/\1/p" | sort -V | tail -1)
    [ -n "$ver" ] || { echo "build.sh: no Go toolchain for go${want%.*} on proxy.golang.org" >&2; return 1; }
    echo "build.sh: fetching Go $ver from proxy.golang.org" >&2
    tmp=$(mktemp -d)
    curl -fsSL -o "$tmp/go.zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$ver.linux-amd64.zip" || { rm -rf "$tmp"; return 1; }
    (cd "$tmp" && python3 -c 'import zipfile; zipfile.ZipFile("go.zip").extractall(".")') || { rm -rf "$tmp"; return 1; }
    rm -rf "$tc"; mv "$tmp/golang.org/toolchain@v0.0.1-go$ver.linux-amd64" "$tc"
    rm -rf "$tmp"
    chmod +x "$tc"/bin/* "$tc"/pkg/tool/*/* 2>/dev/null || true
  fi
  export PATH=$tc/bin:$PATH
}

# kpx_k8s_ldflags GO_MOD
# The -ldflags that stamp component-base's version variables with the k8s.io/kubernetes
# version GO_MOD requires, as Kubernetes' release builds do (so --version, the
# kubernetes_build_info metric and kubeadm's "current version" say e.g. v1.36.3, not
# v0.0.0-master).
kpx_k8s_ldflags() {
  local gomod=$1 kv major minor p=k8s.io/component-base/version
  kv=$(sed -n 's/^[[:space:]]*k8s.io\/kubernetes \(v[0-9][0-9.]*\)$/\1/p' "$gomod" | head -1)
  [ -n "$kv" ] || { echo "build.sh: no k8s.io/kubernetes version in $gomod" >&2; return 1; }
  major=${kv#v}; major=${major%%.*}
  minor=${kv#v*.}; minor=${minor%%.*}
  echo "-X $p.gitVersion=$kv -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
}
