#!/bin/sh
# /init of the ipvs-vm initramfs (runs under static busybox as PID 1).
#
# Stage 1 (in the initramfs): load virtio/9p/overlay modules, mount the host's "/"
#   (9p, read-only) as the lower layer of an overlay whose upper layer is a tmpfs,
#   mount the repo (9p, read-write) at its host path, bind the kernel's module
#   tree onto /lib/modules/<kver>, mount proc/sys/dev/run/tmp, switch_root.
# Stage 2 (in the new root, still busybox as PID 1): modprobe the preload list,
#   run /run/kpx-vm/cmd.sh with bash, report its exit code, sync, reboot -f
#   (qemu runs with -no-reboot, so that terminates qemu).
#
# Configuration comes from qemu fw_cfg (opt/kpx/env: sourced shell, opt/kpx/cmd:
# the command script); output goes to virtio-serial ports kpx.stdout, kpx.stderr,
# kpx.status. The serial console (ttyS0) only carries kernel/init diagnostics.
BB=/bin/busybox

msg() { echo "kpx-vm-init: $*" >/dev/console 2>/dev/null || echo "kpx-vm-init: $*"; }

fail() {
  msg "FATAL: $*"
  echo "KPX-VM-EXIT: 125" >/dev/console 2>/dev/null
  [ -n "$STATUS_DEV" ] && echo "init-failed 125 $*" >"$STATUS_DEV" 2>/dev/null
  $BB sync
  $BB reboot -f
  sleep 1000
}

port_dev() { # virtio-serial port name -> /dev node
  for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] || continue
    if [ "$($BB cat "$p/name")" = "$1" ]; then echo "/dev/${p##*/}"; return 0; fi
  done
  return 1
}

ts() { $BB cut -d' ' -f1 /proc/uptime; }

if [ "$1" != "stage2" ]; then
  # ------------------------------------------------------------------ stage 1
  $BB mkdir -p /proc /sys /dev
  $BB mount -t proc proc /proc
  $BB mount -t sysfs sysfs /sys
  $BB mount -t devtmpfs devtmpfs /dev
  export PATH=/bin
  $BB --install -s /bin
  while read -r m; do
    insmod "/modules/$m" || msg "insmod $m failed"
  done </modules/load.list

  CFG=/sys/firmware/qemu_fw_cfg/by_name/opt/kpx
  i=0
  while [ ! -e "$CFG/env/raw" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  [ -e "$CFG/env/raw" ] || fail "no fw_cfg opt/kpx/env"
  . "$CFG/env/raw"
  STATUS_DEV="$(port_dev kpx.status)"
  [ -n "$KPX_DEBUG" ] && msg "stage1 at $(ts)s, kernel $(uname -r)"

  KVER="$(cat /kver)"
  O9="trans=virtio,version=9p2000.L,msize=${KPX_MSIZE:-512000}"
  mount -t 9p -o "$O9,ro,cache=${KPX_ROOT_CACHE:-loose}" hostroot /lower || fail "mount 9p hostroot"
  if [ "${KPX_ROOTMODE:-overlay}" = overlay ]; then
    mount -t tmpfs -o mode=0755 rwroot /rw
    mkdir -p /rw/upper /rw/work
    mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
      || fail "mount overlay"
  else
    mount --bind /lower /newroot   # plain read-only 9p root (no /lib/modules!)
  fi
  N=/newroot
  if [ "${KPX_ROOTMODE:-overlay}" = overlay ]; then
    mkdir -p "$N/lib/modules/$KVER"
    mount --bind "/lower$KPX_MODROOT/lib/modules/$KVER" "$N/lib/modules/$KVER" \
      || fail "bind modules from $KPX_MODROOT"
  fi
  mount -t tmpfs -o mode=0755,nosuid,nodev run "$N/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$N/tmp"
  [ -d "$N/var/tmp" ] && mount -t tmpfs -o mode=1777,nosuid,nodev vartmp "$N/var/tmp"
  mkdir -p "$N/run/netns" "$N/run/lock" "$N/run/kpx-vm"
  # the repo last, so a checkout under /tmp (or /run, /var/tmp) is not hidden by the tmpfs
  if [ -n "$KPX_REPO" ]; then
    mkdir -p "$N$KPX_REPO"
    mount -t 9p -o "$O9,cache=${KPX_REPO_CACHE:-loose}" repo "$N$KPX_REPO" || fail "mount 9p repo at $KPX_REPO"
  fi
  # /var/run is a symlink to /run on Debian; make sure it is usable either way
  [ -L "$N/var/run" ] || [ ! -d "$N/var/run" ] || mount --bind "$N/run" "$N/var/run"
  cp "$CFG/env/raw" "$N/run/kpx-vm/env"
  cp "$CFG/cmd/raw" "$N/run/kpx-vm/cmd.sh"
  cp /init "$N/run/kpx-vm/init"
  cp /bin/busybox "$N/run/kpx-vm/busybox"
  echo "$STATUS_DEV" >"$N/run/kpx-vm/status_dev"
  mount --move /dev "$N/dev"
  mount --move /proc "$N/proc"
  mount --move /sys "$N/sys"
  exec switch_root "$N" /run/kpx-vm/busybox sh /run/kpx-vm/init stage2
  fail "switch_root failed"
fi

# -------------------------------------------------------------------- stage 2
BB=/run/kpx-vm/busybox
. /run/kpx-vm/env
STATUS_DEV="$($BB cat /run/kpx-vm/status_dev)"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 KPX_IN_VM=1
[ -n "$KPX_DEBUG" ] && msg "stage2 at $(ts)s"

$BB mkdir -p /dev/pts /dev/shm
$BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
$BB mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm 2>/dev/null
[ -e /dev/fd ] || $BB ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || { $BB ln -s /proc/self/fd/0 /dev/stdin; $BB ln -s /proc/self/fd/1 /dev/stdout; $BB ln -s /proc/self/fd/2 /dev/stderr; }
if [ -n "$KPX_CGROUP" ]; then
  $BB mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || msg "cannot mount cgroup2"
fi
$BB hostname kpx-vm
echo /sbin/modprobe >/proc/sys/kernel/modprobe 2>/dev/null
ip link set lo up 2>/dev/null || $BB ip link set lo up

if [ -n "$KPX_MODULES" ]; then
  # shellcheck disable=SC2086
  modprobe -a $KPX_MODULES 2>/dev/null || for m in $KPX_MODULES; do
    modprobe "$m" 2>/dev/null || msg "modprobe $m failed"
  done
fi
[ -n "$KPX_DEBUG" ] && msg "modules loaded at $(ts)s"

OUT="$(port_dev kpx.stdout)"; ERR="$(port_dev kpx.stderr)"
[ -n "$OUT" ] || OUT=/dev/console
[ -n "$ERR" ] || ERR=/dev/console
cd "${KPX_REPO:-/}" || cd /
echo "started $(ts)" >"$STATUS_DEV"
/bin/bash /run/kpx-vm/cmd.sh </dev/null >"$OUT" 2>"$ERR"
rc=$?
echo "exit $rc $(ts)" >"$STATUS_DEV"
echo "KPX-VM-EXIT: $rc" >/dev/console
[ -n "$KPX_DEBUG" ] && msg "command exited $rc at $(ts)s"
$BB sync
$BB reboot -f
