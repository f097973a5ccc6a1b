// kube-proxy, built from the k8s.io/kubernetes module at the version go.mod pins, as the
// reference implementation kpx's tests and scale runs compare against. Nothing here
// changes its behaviour: the command is upstream's, run through component-base's cli
// (flag parsing, logging set-up and flush, exit codes).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"

	// Registrations the released binary carries: --logging-format=json, and the
	// client-go (rest_client_*) and version (kubernetes_build_info) metrics on /metrics.
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
)

func main() {
	os.Exit(cli.Run(app.NewProxyCommand()))
}
