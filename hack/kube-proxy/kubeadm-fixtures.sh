#!/usr/bin/env bash
# Writes what kubeadm (the k8s.io/kubernetes version go.mod pins) puts into the
# kube-system/kube-proxy ConfigMap on `kubeadm init --pod-network-cidr 198.18.0.0/16`:
# test/fixtures/kube-proxy-config/kubeadm-{configmap.yaml,config.conf,kubeconfig.conf}.
# Runs kubeadm's own defaulting and addon phase (kubeadm-config/main.go); no cluster.
# The first run compiles kubeadm's packages (a few minutes unless hack/kube-proxy/build.sh
# has filled Go's build cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KPX_CACHE:-$HOME/.cache/kpx}
out=$(realpath -m "${1:-$here/../../test/fixtures/kube-proxy-config}")
mkdir -p "$cache"
. "$here/../lib/go.sh"
kpx_go_ensure "$here/go.mod" "$cache"
# the version stamp matters here: kubeadm derives its "current version" from it
ldflags=$(kpx_k8s_ldflags "$here/go.mod")
(cd "$here" && GOTOOLCHAIN=${GOTOOLCHAIN:-auto} go run -ldflags "$ldflags" ./kubeadm-config \
  --out "$out" --advertise-address 198.18.0.1 --pod-subnet 198.18.0.0/16 --service-subnet 198.19.0.0/16 --node-name node-a)
