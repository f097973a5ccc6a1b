#!/usr/bin/env bash
# kpx end to end on kind (needs Docker, kind and kubectl; it cannot run without a Docker
# engine). Builds the image, creates a 3-node cluster without kube-proxy, deploys kpx
# from manifests/, runs a workload with a ClusterIP and a NodePort Service, checks both
# from a pod and from the host, scrapes kpx's metrics, and deletes the cluster (KEEP=1
# keeps it). E2E_SUITE=1 also runs the e2e scenarios of test/e2e (test/e2e/kind.test.ts)
# against the cluster; that path is unproven (no Docker engine where kpx is developed).
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-kpx-e2e}
IMAGE=${IMAGE:-kpx:e2e}
NODEPORT=${NODEPORT:-30080}

die() { echo "e2e: $*" >&2; exit 1; }
for bin in docker kind kubectl; do
  command -v "$bin" >/dev/null 2>&1 || die "$bin is not installed (see https://kind.sigs.k8s.io/docs/user/quick-start/)"
done
docker info >/dev/null 2>&1 || die "no Docker engine reachable (docker info failed)"

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "e2e: keeping cluster $CLUSTER"; return; fi
  kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "e2e: building $IMAGE"
docker build -t "$IMAGE" .

echo "e2e: creating cluster $CLUSTER (kubeProxyMode: none)"
kind create cluster --name "$CLUSTER" --config hack/kind/cluster.yaml --wait 0s
kctl() { kubectl --context "kind-$CLUSTER" "$@"; }
kind load docker-image "$IMAGE" --name "$CLUSTER"

# kpx must reach the apiserver without the ClusterIP it programs: the control plane's IP.
api_host=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER-control-plane")
[ -n "$api_host" ] || die "cannot find the control-plane container's IP"
pod_cidr=$(kctl get nodes -o jsonpath='{.items[0].spec.podCIDR}')

work=$(mktemp -d)
trap 'rm -rf "$work"; cleanup' EXIT
cp manifests/*.yaml "$work/"
sed -i "s/REPLACE-WITH-APISERVER-HOST/$api_host/" "$work/apiserver-endpoint.yaml"
sed -i "s|clusterCIDR: \"\"|clusterCIDR: \"10.244.0.0/16\"|" "$work/configmap.yaml"
sed -i "s|newName: kpx|newName: ${IMAGE%%:*}|; s|newTag: dev|newTag: ${IMAGE##*:}|" "$work/kustomization.yaml"
( cd "$work" && kctl apply -k . ) >/dev/null
echo "e2e: waiting for the kpx DaemonSet (pod CIDR of node 0: $pod_cidr)"
kctl -n kube-system rollout status daemonset/kpx --timeout=180s
echo "e2e: waiting for nodes (CoreDNS and the CNI need Services to work)"
kctl wait --for=condition=Ready nodes --all --timeout=180s

echo "e2e: deploying the workload"
kctl apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: { name: echo }
spec:
  replicas: 3
  selector: { matchLabels: { app: echo } }
  template:
    metadata: { labels: { app: echo } }
    spec:
      containers:
        - name: agnhost
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: [netexec, --http-port=8080]
          ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: echo }
spec:
  selector: { app: echo }
  ports: [{ port: 80, targetPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: echo-np }
spec:
  type: NodePort
  selector: { app: echo }
  ports: [{ port: 80, targetPort: 8080, nodePort: $NODEPORT }]
YAML
kctl rollout status deployment/echo --timeout=180s

echo "e2e: ClusterIP from a pod"
kctl run e2e-client --restart=Never --image=curlimages/curl:8.10.1 --command -- \
  sh -c 'for i in $(seq 1 30); do curl -fsS --max-time 2 http://echo/hostname && echo; done' >/dev/null
kctl wait --for=jsonpath='{.status.phase}'=Succeeded pod/e2e-client --timeout=120s
hosts=$(kctl logs e2e-client | sort -u | grep -c . || true)
[ "$hosts" -ge 2 ] || die "ClusterIP answered from $hosts distinct pods (want >= 2)"
echo "e2e: ClusterIP ok ($hosts distinct endpoints)"

echo "e2e: ClusterIP from a node (host network)"
cip=$(kctl get svc echo -o jsonpath='{.spec.clusterIP}')
docker exec "$CLUSTER-worker" curl -fsS --max-time 5 "http://$cip/hostname" >/dev/null || die "ClusterIP $cip did not answer on $CLUSTER-worker"
echo "e2e: ClusterIP from the node ok"

echo "e2e: NodePort from the host"
worker_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CLUSTER-worker")
curl -fsS --max-time 5 "http://$worker_ip:$NODEPORT/hostname" >/dev/null || die "NodePort $worker_ip:$NODEPORT did not answer"
echo "e2e: NodePort ok"

echo "e2e: metrics"
docker exec "$CLUSTER-worker" curl -fsS http://127.0.0.1:10249/metrics | grep -q '^kubeproxy_sync_proxy_rules_duration_seconds_count' \
  || die "kpx metrics lack kubeproxy_sync_proxy_rules_duration_seconds"
if [ "${E2E_SUITE:-0}" = 1 ]; then
  echo "e2e: the test/e2e scenarios against $CLUSTER"
  [ -d node_modules ] || npm ci --no-audit --no-fund
  kind get kubeconfig --name "$CLUSTER" >"$work/kubeconfig"
  KPX_E2E_KUBECONFIG="$work/kubeconfig" KPX_E2E_KIND_CLUSTER="$CLUSTER" npx vitest run test/e2e/kind.test.ts
fi
echo "e2e: all checks passed"
