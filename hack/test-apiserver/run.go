package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"

	"k8s.io/klog/v2"
)

// Files inside the data dir.
const (
	stateFileName      = "state.json" // persisted ports (so restarts reuse them)
	readyFileName      = "ready.json" // written when /readyz is 200, removed on clean exit
	pidFileName        = "test-apiserver.pid"
	lockFileName       = "test-apiserver.lock"
	etcdEndpointFile   = "etcd-endpoint" // "http://127.0.0.1:PORT"
	kubeconfigFileName = "admin.kubeconfig"
	apiserverLogName   = "kube-apiserver.log"
	etcdLogName        = "etcd.log"
)

type state struct {
	APIServerPort int `json:"apiserverPort"`
	EtcdPort      int `json:"etcdPort"`
	EtcdPeerPort  int `json:"etcdPeerPort"`
}

// readyInfo is written to <data-dir>/ready.json once the apiserver is ready.
type readyInfo struct {
	Server                string   `json:"server"`
	Kubeconfig            string   `json:"kubeconfig"`
	CAFile                string   `json:"caFile"`
	AdminCertFile         string   `json:"adminCertFile"`
	AdminKeyFile          string   `json:"adminKeyFile"`
	EtcdEndpoint          string   `json:"etcdEndpoint"`
	DataDir               string   `json:"dataDir"`
	PID                   int      `json:"pid"`
	APIServerPort         int      `json:"apiserverPort"`
	EtcdPort              int      `json:"etcdPort"`
	ServiceClusterIPRange string   `json:"serviceClusterIPRange"`
	ServiceAccountIssuer  string   `json:"serviceAccountIssuer"`
	WatchCache            bool     `json:"watchCache"`
	KubernetesVersion     string   `json:"kubernetesVersion"`
	EtcdVersion           string   `json:"etcdVersion"`
	APIServerArgs         []string `json:"apiserverArgs"`
	StartupMillis         int64    `json:"startupMillis"`
	EtcdReadyMillis       int64    `json:"etcdReadyMillis"`
	ReadyAt               string   `json:"readyAt"`
}

type runOptions struct {
	dataDir                string
	apiserverPort          int
	etcdPort               int
	etcdPeerPort           int
	serviceCIDR            string
	advertiseAddress       string
	watchCache             bool
	etcdCompactionInterval string
	etcdUnsafeNoFsync      bool
	saIssuer               string
	apiserverArgs          []string
	verbosity              int
	readyTimeout           time.Duration
	shutdownTimeout        time.Duration
}

func runCmd(args []string) error {
	o := runOptions{}
	fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
	fs.StringVar(&o.dataDir, "data-dir", "", "directory for etcd data, certs, kubeconfig, logs (required; reused on restart)")
	fs.IntVar(&o.apiserverPort, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0 = reuse the port saved in the data dir, else pick a free one)")
	fs.IntVar(&o.etcdPort, "etcd-port", 0, "etcd client port on 127.0.0.1 (0 = saved / free)")
	fs.IntVar(&o.etcdPeerPort, "etcd-peer-port", 0, "etcd peer port on 127.0.0.1 (0 = saved / free)")
	fs.StringVar(&o.serviceCIDR, "service-cluster-ip-range", "198.19.0.0/16,2001:2:0:ffff::/112", "--service-cluster-ip-range for kube-apiserver (one CIDR, or v4,v6 for dual-stack)")
	fs.StringVar(&o.advertiseAddress, "advertise-address", "198.18.0.1", "--advertise-address (IP written into the default/kubernetes Endpoints/EndpointSlice; must not be loopback; nothing listens on it)")
	fs.BoolVar(&o.watchCache, "watch-cache", true, "--watch-cache for kube-apiserver (false: every watch/list goes to etcd; use this for deterministic 410 Gone after compact)")
	fs.StringVar(&o.etcdCompactionInterval, "etcd-compaction-interval", "", "if set, passed as --etcd-compaction-interval to kube-apiserver (apiserver default 5m; 0 disables)")
	fs.BoolVar(&o.etcdUnsafeNoFsync, "etcd-unsafe-no-fsync", true, "disable fsync in etcd (faster; data survives process kill, not a machine crash)")
	fs.StringVar(&o.saIssuer, "service-account-issuer", "https://kubernetes.default.svc.cluster.local", "--service-account-issuer (also the default API audience)")
	fs.StringArrayVar(&o.apiserverArgs, "apiserver-arg", nil, "extra kube-apiserver flag, repeatable, e.g. --apiserver-arg=--feature-gates=Foo=true (later flags override earlier/default ones)")
	fs.IntVar(&o.verbosity, "v", 0, "kube-apiserver log verbosity (logs go to <data-dir>/"+apiserverLogName+")")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 120*time.Second, "give up if /readyz is not 200 within this time")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 30*time.Second, "max time to wait for kube-apiserver graceful shutdown before closing etcd anyway")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: test-apiserver [run] --data-dir DIR [flags]\n\nFlags:\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if o.dataDir == "" {
		return errors.New("--data-dir is required")
	}
	return run(o)
}

func run(o runOptions) error {
	start := time.Now()
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}

	// One instance per data dir.
	lock, err := os.OpenFile(filepath.Join(dataDir, lockFileName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("data dir %s is in use by another test-apiserver (flock: %v)", dataDir, err)
	}
	readyPath := filepath.Join(dataDir, readyFileName)
	_ = os.Remove(readyPath)
	if err := os.WriteFile(filepath.Join(dataDir, pidFileName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}

	// Ports: flag > saved state > free port.
	st, err := loadState(dataDir)
	if err != nil {
		return err
	}
	pick := func(flagVal int, saved *int) error {
		if flagVal != 0 {
			*saved = flagVal
		}
		if *saved == 0 {
			p, err := freePort()
			if err != nil {
				return err
			}
			*saved = p
		}
		return nil
	}
	for _, x := range []struct {
		f int
		s *int
	}{{o.apiserverPort, &st.APIServerPort}, {o.etcdPort, &st.EtcdPort}, {o.etcdPeerPort, &st.EtcdPeerPort}} {
		if err := pick(x.f, x.s); err != nil {
			return err
		}
	}
	if err := saveState(dataDir, st); err != nil {
		return err
	}

	// PKI + kubeconfig.
	pki := newPKIPaths(dataDir)
	var sanIPs []net.IP
	for _, c := range strings.Split(o.serviceCIDR, ",") {
		if ip := firstServiceIP(strings.TrimSpace(c)); ip != nil {
			sanIPs = append(sanIPs, ip)
		}
	}
	if ip := net.ParseIP(o.advertiseAddress); ip != nil {
		sanIPs = append(sanIPs, ip)
	}
	if err := ensurePKI(pki, sanIPs); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	serverURL := fmt.Sprintf("https://127.0.0.1:%d", st.APIServerPort)
	kubeconfigPath := filepath.Join(dataDir, kubeconfigFileName)
	if err := writeKubeconfig(kubeconfigPath, serverURL, pki); err != nil {
		return err
	}

	// Keep stdout clean: everything that writes to fd 1 (or fd 2 via log
	// libraries we route explicitly) ends up in log files; only the READY line
	// goes to the real stdout.
	apiLog, err := os.OpenFile(filepath.Join(dataDir, apiserverLogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer apiLog.Close()
	fmt.Fprintf(apiLog, "\n===== test-apiserver starting at %s pid %d =====\n", time.Now().Format(time.RFC3339Nano), os.Getpid())
	realStdout, err := redirectStdout(apiLog)
	if err != nil {
		return err
	}
	klog.LogToStderr(false)
	klog.SetOutput(apiLog)
	log.SetOutput(apiLog)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Signals: first SIGTERM/SIGINT = graceful stop, second = exit now.
	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT)

	// etcd.
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", st.EtcdPort)
	etcd, err := startEtcd(dataDir, st, o.etcdUnsafeNoFsync)
	if err != nil {
		return fmt.Errorf("etcd: %w (see %s)", err, filepath.Join(dataDir, etcdLogName))
	}
	etcdClosed := false
	closeEtcd := func() {
		if !etcdClosed {
			etcdClosed = true
			etcd.Close()
		}
	}
	defer closeEtcd()
	etcdReady := time.Since(start)
	if err := writeFileAtomic(filepath.Join(dataDir, etcdEndpointFile), []byte(etcdURL+"\n"), 0o644); err != nil {
		return err
	}

	// kube-apiserver.
	apiArgs := []string{
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", st.APIServerPort),
		"--advertise-address=" + o.advertiseAddress,
		"--etcd-servers=" + etcdURL,
		"--tls-cert-file=" + pki.ServingCrt,
		"--tls-private-key-file=" + pki.ServingKey,
		"--client-ca-file=" + pki.CACert,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + o.saIssuer,
		"--service-account-key-file=" + pki.SAPub,
		"--service-account-signing-key-file=" + pki.SAKey,
		"--service-cluster-ip-range=" + o.serviceCIDR,
		"--watch-cache=" + strconv.FormatBool(o.watchCache),
		"--v=" + strconv.Itoa(o.verbosity),
		"--profiling=false",
	}
	if o.etcdCompactionInterval != "" {
		apiArgs = append(apiArgs, "--etcd-compaction-interval="+o.etcdCompactionInterval)
	}
	apiArgs = append(apiArgs, o.apiserverArgs...)
	fmt.Fprintf(apiLog, "kube-apiserver args: %s\n", strings.Join(apiArgs, " "))

	apiCtx, apiCancel := context.WithCancel(ctx)
	defer apiCancel()
	apiDone := make(chan error, 1)
	go func() {
		apiDone <- runAPIServer(apiCtx, apiArgs, apiLog)
	}()

	// Readiness.
	readyCh := make(chan error, 1)
	go func() {
		readyCh <- waitReady(ctx, serverURL, pki, o.readyTimeout)
	}()

	stop := func(reason string) {
		fmt.Fprintf(apiLog, "===== test-apiserver stopping: %s =====\n", reason)
		_ = os.Remove(readyPath)
		apiCancel()
		select {
		case err := <-apiDone:
			if err != nil {
				fmt.Fprintf(apiLog, "kube-apiserver exited: %v\n", err)
			}
		case <-time.After(o.shutdownTimeout):
			fmt.Fprintf(apiLog, "kube-apiserver did not stop within %s, closing etcd anyway\n", o.shutdownTimeout)
		case <-sigCh:
			fmt.Fprintf(os.Stderr, "second signal, exiting immediately\n")
			os.Exit(1)
		}
		closeEtcd()
		fmt.Fprintf(apiLog, "===== test-apiserver stopped at %s =====\n", time.Now().Format(time.RFC3339Nano))
	}

	for {
		select {
		case sig := <-sigCh:
			stop("signal " + sig.String())
			return nil
		case err := <-apiDone:
			apiDone <- err // let stop() see it
			stop(fmt.Sprintf("kube-apiserver exited unexpectedly: %v", err))
			return fmt.Errorf("kube-apiserver exited: %v (see %s)", err, filepath.Join(dataDir, apiserverLogName))
		case err := <-etcd.Err():
			stop(fmt.Sprintf("etcd failed: %v", err))
			return fmt.Errorf("etcd failed: %v (see %s)", err, filepath.Join(dataDir, etcdLogName))
		case err := <-readyCh:
			if err != nil {
				stop("not ready: " + err.Error())
				return fmt.Errorf("%v (see %s)", err, filepath.Join(dataDir, apiserverLogName))
			}
			elapsed := time.Since(start)
			info := readyInfo{
				Server:                serverURL,
				Kubeconfig:            kubeconfigPath,
				CAFile:                pki.CACert,
				AdminCertFile:         pki.AdminCrt,
				AdminKeyFile:          pki.AdminKey,
				EtcdEndpoint:          etcdURL,
				DataDir:               dataDir,
				PID:                   os.Getpid(),
				APIServerPort:         st.APIServerPort,
				EtcdPort:              st.EtcdPort,
				ServiceClusterIPRange: o.serviceCIDR,
				ServiceAccountIssuer:  o.saIssuer,
				WatchCache:            o.watchCache,
				KubernetesVersion:     kubeVersion(),
				EtcdVersion:           etcdVersion(),
				APIServerArgs:         apiArgs,
				StartupMillis:         elapsed.Milliseconds(),
				EtcdReadyMillis:       etcdReady.Milliseconds(),
				ReadyAt:               time.Now().Format(time.RFC3339Nano),
			}
			b, _ := json.MarshalIndent(info, "", "  ")
			if err := writeFileAtomic(readyPath, append(b, '\n'), 0o644); err != nil {
				stop("cannot write ready.json")
				return err
			}
			fmt.Fprintf(apiLog, "===== READY after %s =====\n", elapsed)
			fmt.Fprintf(realStdout, "READY %s %s\n", serverURL, kubeconfigPath)
			_ = realStdout.Sync()
			readyCh = nil
		}
	}
}

func waitReady(ctx context.Context, serverURL string, pki pkiPaths, timeout time.Duration) error {
	caPEM, err := os.ReadFile(pki.CACert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(pki.AdminCrt, pki.AdminKey)
	if err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
			DisableKeepAlives: true,
		},
	}
	deadline := time.Now().Add(timeout)
	last := "no response"
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := client.Get(serverURL + "/readyz")
		if err != nil {
			last = err.Error()
			continue
		}
		_ = resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = resp.Status
	}
	return fmt.Errorf("kube-apiserver not ready after %s (last: %s)", timeout, last)
}

func startEtcd(dataDir string, st state, unsafeNoFsync bool) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "test-apiserver"
	cfg.Dir = filepath.Join(dataDir, "etcd")
	curl := mustURL(fmt.Sprintf("http://127.0.0.1:%d", st.EtcdPort))
	purl := mustURL(fmt.Sprintf("http://127.0.0.1:%d", st.EtcdPeerPort))
	cfg.ListenClientUrls = []neturl.URL{curl}
	cfg.AdvertiseClientUrls = []neturl.URL{curl}
	cfg.ListenPeerUrls = []neturl.URL{purl}
	cfg.AdvertisePeerUrls = []neturl.URL{purl}
	cfg.InitialCluster = cfg.Name + "=" + purl.String()
	cfg.InitialClusterToken = "kpx-test-apiserver"
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dataDir, etcdLogName)}
	cfg.UnsafeNoFsync = unsafeNoFsync
	cfg.AutoCompactionMode = "periodic" // with retention 0 etcd itself never compacts; kube-apiserver (or `compact`) does
	cfg.AutoCompactionRetention = "0"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, errors.New("etcd not ready after 60s")
	}
}

func writeKubeconfig(path, serverURL string, pki pkiPaths) error {
	read := func(p string) (string, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(b), nil
	}
	ca, err := read(pki.CACert)
	if err != nil {
		return err
	}
	crt, err := read(pki.AdminCrt)
	if err != nil {
		return err
	}
	key, err := read(pki.AdminKey)
	if err != nil {
		return err
	}
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test-apiserver
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: test-apiserver
  context:
    cluster: test-apiserver
    user: admin
    namespace: default
current-context: test-apiserver
`, serverURL, ca, crt, key)
	return writeFileAtomic(path, []byte(kc), 0o600)
}

func loadState(dataDir string) (state, error) {
	var st state
	b, err := os.ReadFile(filepath.Join(dataDir, stateFileName))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", stateFileName, err)
	}
	return st, nil
}

func saveState(dataDir string, st state) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	return writeFileAtomic(filepath.Join(dataDir, stateFileName), append(b, '\n'), 0o644)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// firstServiceIP returns network address + 1 (the IP of the "kubernetes" Service).
func firstServiceIP(cidr string) net.IP {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil
	}
	ip := make(net.IP, len(n.IP))
	copy(ip, n.IP)
	ip[len(ip)-1]++
	return ip
}

// redirectStdout points fd 1 at f and returns a file for the original stdout.
func redirectStdout(f *os.File) (*os.File, error) {
	fd, err := syscall.Dup(1)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Dup3(int(f.Fd()), 1, 0); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "stdout"), nil
}
