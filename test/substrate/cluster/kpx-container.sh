#!/bin/sh
# Gives kpx the filesystem its DaemonSet pod has, then execs it. Runs inside a node's
# network namespace and a private mount namespace (unshare --mount --propagation private),
# so nothing here is visible outside this process:
#   - STAGE/root/etc/...  appears under /etc (an overlay on the host's /etc; ConfigMap
#     volumes such as /etc/kpx/config.yaml);
#   - STAGE/root/run/...  is the pod's own /run, a tmpfs (the projected service-account
#     token in /run/secrets/kubernetes.io/serviceaccount, which /var/run reaches);
#   - each --bind-host PATH under /run is the host's file (hostPath volumes such as
#     /run/xtables.lock, so kpx and the host share the iptables lock).
# usage: kpx-container.sh STAGE [--bind-host PATH]... -- CMD ARGS...
set -eu
stage=$1
shift
binds=""
while [ "$1" != "--" ]; do
  [ "$1" = "--bind-host" ] || { echo "kpx-container.sh: unexpected $1" >&2; exit 2; }
  binds="$binds $2"
  shift 2
done
shift
mkdir -p "$stage/work/etc" "$stage/run-mnt"
mount -n -t overlay kpx-etc -o "lowerdir=/etc,upperdir=$stage/root/etc,workdir=$stage/work/etc" /etc
mount -n -t tmpfs -o mode=0755 kpx-run "$stage/run-mnt"
cp -a "$stage/root/run/." "$stage/run-mnt/"
for p in $binds; do
  case "$p" in /run/*) ;; *) echo "kpx-container.sh: --bind-host $p is not under /run" >&2; exit 2 ;; esac
  [ -e "$p" ] || : >"$p" # hostPath type FileOrCreate
  mkdir -p "$stage/run-mnt$(dirname "${p#/run}")"
  : >"$stage/run-mnt${p#/run}"
  mount -n --bind "$p" "$stage/run-mnt${p#/run}"
done
mount -n --move "$stage/run-mnt" /run
exec "$@"
