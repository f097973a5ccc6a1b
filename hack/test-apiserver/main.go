// Command test-apiserver runs an embedded etcd plus a real kube-apiserver on
// 127.0.0.1 for kpx integration tests. See README.md.
package main

import (
	"fmt"
	"os"
	"strings"
)

const usage = `test-apiserver: embedded etcd + kube-apiserver on 127.0.0.1 for kpx integration tests.

Usage:
  test-apiserver [run] --data-dir DIR [flags]   start etcd + kube-apiserver; prints
                                                "READY <url> <kubeconfig>" on stdout when /readyz is 200
  test-apiserver compact --data-dir DIR          compact etcd (of a running instance) to its current revision
  test-apiserver stop --data-dir DIR             SIGTERM the running instance and wait for it to exit
  test-apiserver version                         print the embedded Kubernetes / etcd versions

Run "test-apiserver <command> --help" for the flags of a command.
`

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = runCmd(args)
	case "compact":
		err = compactCmd(args)
	case "stop":
		err = stopCmd(args)
	case "version":
		fmt.Printf("kubernetes %s\netcd %s\n", kubeVersion(), etcdVersion())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "test-apiserver %s: %v\n", cmd, err)
		os.Exit(1)
	}
}
