// kubeadm-config writes what `kubeadm init` (from the k8s.io/kubernetes module pinned in
// ../go.mod) puts into the kube-system/kube-proxy ConfigMap: the ConfigMap itself and its
// two keys, config.conf (the KubeProxyConfiguration) and kubeconfig.conf. It runs kubeadm's
// own defaulting and its addon phase in print mode (what `kubeadm init phase addon
// kube-proxy --print-manifest` does), so no cluster, CRI or network is involved.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
	componentversion "k8s.io/component-base/version"
	"sigs.k8s.io/yaml"

	kubeadmapiv1 "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4"
	kubeadmconstants "k8s.io/kubernetes/cmd/kubeadm/app/constants"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/addons/proxy"
	configutil "k8s.io/kubernetes/cmd/kubeadm/app/util/config"
)

func main() {
	out := flag.String("out", "", "directory to write kubeadm-configmap.yaml, kubeadm-config.conf and kubeadm-kubeconfig.conf into (required)")
	advertise := flag.String("advertise-address", "198.18.0.1", "the control plane's advertise address (the kubeconfig's server)")
	podSubnet := flag.String("pod-subnet", "", "networking.podSubnet (kubeadm init --pod-network-cidr); kube-proxy's clusterCIDR is defaulted from it")
	serviceSubnet := flag.String("service-subnet", "198.19.0.0/16", "networking.serviceSubnet")
	nodeName := flag.String("node-name", "node-a", "nodeRegistration.name (avoids reading the hostname)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "kubeadm-config: --out is required")
		os.Exit(2)
	}
	if err := run(*out, *advertise, *podSubnet, *serviceSubnet, *nodeName); err != nil {
		fmt.Fprintf(os.Stderr, "kubeadm-config: %v\n", err)
		os.Exit(1)
	}
}

func run(out, advertise, podSubnet, serviceSubnet, nodeName string) error {
	if componentversion.Get().Major == "" {
		return fmt.Errorf("built without the version stamp (run it through kubeadm-fixtures.sh): kubeadm would assume a placeholder version")
	}
	initCfg := &kubeadmapiv1.InitConfiguration{
		LocalAPIEndpoint: kubeadmapiv1.APIEndpoint{AdvertiseAddress: advertise},
		// an explicit CRI socket and name: kubeadm would otherwise probe the machine
		NodeRegistration: kubeadmapiv1.NodeRegistrationOptions{CRISocket: kubeadmconstants.DefaultCRISocket, Name: nodeName},
	}
	clusterCfg := &kubeadmapiv1.ClusterConfiguration{
		// an explicit version: kubeadm would otherwise ask dl.k8s.io for the latest release
		KubernetesVersion: kubeadmconstants.CurrentKubernetesVersion.String(),
		Networking:        kubeadmapiv1.Networking{PodSubnet: podSubnet, ServiceSubnet: serviceSubnet},
	}
	cfg, err := configutil.DefaultedInitConfiguration(initCfg, clusterCfg, configutil.LoadOrDefaultConfigurationOptions{SkipCRIDetect: true})
	if err != nil {
		return fmt.Errorf("kubeadm defaulting: %w", err)
	}
	var buf bytes.Buffer
	if err := proxy.EnsureProxyAddon(&cfg.ClusterConfiguration, &cfg.LocalAPIEndpoint, nil, &buf, true); err != nil {
		return fmt.Errorf("kube-proxy addon phase: %w", err)
	}
	var cmDoc string
	for _, doc := range strings.Split(buf.String(), "\n---") {
		if strings.Contains(doc, "\nkind: ConfigMap") || strings.HasPrefix(strings.TrimLeft(doc, "-\n"), "kind: ConfigMap") {
			cmDoc = strings.TrimLeft(doc, "-\n")
		}
	}
	if cmDoc == "" {
		return fmt.Errorf("no ConfigMap in the addon phase's output:\n%s", buf.String())
	}
	var cm v1.ConfigMap
	if err := yaml.Unmarshal([]byte(cmDoc), &cm); err != nil {
		return fmt.Errorf("parse the ConfigMap: %w", err)
	}
	files := map[string]string{"kubeadm-configmap.yaml": strings.TrimRight(cmDoc, "\n") + "\n"}
	for key, file := range map[string]string{kubeadmconstants.KubeProxyConfigMapKey: "kubeadm-config.conf", "kubeconfig.conf": "kubeadm-kubeconfig.conf"} {
		v, ok := cm.Data[key]
		if !ok {
			return fmt.Errorf("ConfigMap %s has no key %q", cm.Name, key)
		}
		files[file] = strings.TrimRight(v, "\n") + "\n"
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(out, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "kubeadm-config: kubeadm %s, ConfigMap %s/%s -> %s\n", componentversion.Get().GitVersion, cm.Namespace, cm.Name, out)
	return nil
}
