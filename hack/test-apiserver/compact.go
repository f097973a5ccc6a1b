package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// parseDataDirArgs parses the flags compact and stop share: --data-dir (required) and
// --timeout. An empty dataDir with a nil error means help was printed.
func parseDataDirArgs(name string, args []string, timeout time.Duration, timeoutHelp string) (string, time.Duration, error) {
	var dataDir string
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.StringVar(&dataDir, "data-dir", "", "data dir of a running test-apiserver (required)")
	fs.DurationVar(&timeout, "timeout", timeout, timeoutHelp)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return "", 0, nil
		}
		return "", 0, err
	}
	if dataDir == "" {
		return "", 0, errors.New("--data-dir is required")
	}
	return dataDir, timeout, nil
}

// compactCmd connects to the etcd of a running instance (endpoint read from
// <data-dir>/etcd-endpoint) and compacts to the current revision, so that a
// watch/list from any older resourceVersion fails with 410 Gone (see README
// for the watch-cache caveat).
func compactCmd(args []string) error {
	dataDir, timeout, err := parseDataDirArgs("compact", args, 10*time.Second, "overall timeout")
	if err != nil || dataDir == "" {
		return err
	}
	b, err := os.ReadFile(filepath.Join(dataDir, etcdEndpointFile))
	if err != nil {
		return fmt.Errorf("read etcd endpoint (is test-apiserver running?): %w", err)
	}
	endpoint := strings.TrimSpace(string(b))
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: timeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	// Any read returns the current store revision in its header.
	resp, err := cli.Get(ctx, "compact_rev_key")
	if err != nil {
		return fmt.Errorf("get revision from %s: %w", endpoint, err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		// Already compacted to this revision: nothing to do.
		if !strings.Contains(err.Error(), "required revision has been compacted") {
			return fmt.Errorf("compact to %d: %w", rev, err)
		}
	}
	fmt.Printf("COMPACTED %d\n", rev)
	return nil
}

// stopCmd sends SIGTERM to the instance running on the data dir and waits
// until it has exited (its flock on the data dir is released).
func stopCmd(args []string) error {
	dataDir, timeout, err := parseDataDirArgs("stop", args, 60*time.Second, "how long to wait for exit before sending SIGKILL")
	if err != nil || dataDir == "" {
		return err
	}
	pid, err := runningPID(dataDir)
	if err != nil {
		return err
	}
	if pid == 0 {
		fmt.Println("STOPPED (was not running)")
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p, _ := runningPID(dataDir); p == 0 {
			fmt.Println("STOPPED")
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return fmt.Errorf("pid %d did not exit within %s; sent SIGKILL", pid, timeout)
}

// runningPID returns the pid of the instance holding the data dir lock, or 0.
func runningPID(dataDir string) (int, error) {
	lock, err := os.OpenFile(filepath.Join(dataDir, lockFileName), os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		_ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
		return 0, nil // nobody holds it
	}
	b, err := os.ReadFile(filepath.Join(dataDir, pidFileName))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, err
	}
	return pid, nil
}
