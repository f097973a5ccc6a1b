#!/usr/bin/env bash
# Prepare (idempotently) everything hack/ipvs-vm/run.sh needs:
#   - host packages (qemu, busybox-static, cpio, kmod, ipvsadm, ipset, iptables, ...)
#   - Debian's bookworm kernel (the one linux-image-amd64 depends on): vmlinuz + full
#     modules tree (depmod'ed), cached under $KPX_CACHE_DIR/ipvs-vm/<kernel-version>/
#   - a tiny initramfs (static busybox + the few modules needed to mount the 9p root)
#
# Prints the cache directory of the prepared kernel on stdout (last line).
#
# Env:
#   KPX_CACHE_DIR      cache root (default: $HOME/.cache/kpx)
#   KPX_VM_KERNEL      kernel ABI to use, e.g. 6.1.0-56-amd64 (default: what
#                      linux-image-amd64 depends on)
#   KPX_VM_NO_APT=1    never call apt-get install (fail if something is missing)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KPX_CACHE_DIR:-$HOME/.cache/kpx}/ipvs-vm"
# Bump when the initramfs layout / init script changes in an incompatible way.
INITRD_FORMAT=1

log() { printf '[ipvs-vm/prepare] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, and qemu needs to read the whole host fs)"

# ---------------------------------------------------------------- host packages
# command -> debian package
declare -A NEED=(
  [qemu-system-x86_64]=qemu-system-x86
  [busybox]=busybox-static
  [cpio]=cpio
  [depmod]=kmod
  [modprobe]=kmod
  [ipvsadm]=ipvsadm
  [ipset]=ipset
  [iptables-legacy]=iptables
  [iptables-nft]=iptables
  [ip]=iproute2
  [conntrack]=conntrack
  [sysctl]=procps
  [gzip]=gzip
  [dpkg-deb]=dpkg
  [xz]=xz-utils
)
missing=()
for cmd in "${!NEED[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# busybox must be the static one (it is copied into the initramfs)
if command -v busybox >/dev/null 2>&1 && ! dpkg -s busybox-static >/dev/null 2>&1; then
  missing+=(busybox-static)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [ "${KPX_VM_NO_APT:-0}" = 1 ] && die "missing host packages: ${missing[*]}"
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
fi

# ---------------------------------------------------------------- kernel version
resolve_kernel() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n1
}
KVER="${KPX_VM_KERNEL:-}"
if [ -z "$KVER" ]; then
  KVER="$(resolve_kernel || true)"
  if [ -z "$KVER" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    KVER="$(resolve_kernel || true)"
  fi
  if [ -z "$KVER" ] && [ -e "$CACHE_ROOT/current" ]; then
    KVER="$(cat "$CACHE_ROOT/current")"
    log "apt cannot resolve linux-image-amd64; using cached kernel $KVER"
  fi
fi
[ -n "$KVER" ] || die "cannot resolve the kernel version linux-image-amd64 depends on"

DIR="$CACHE_ROOT/$KVER"
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9   # serialize concurrent prepare runs

# ---------------------------------------------------------------- kernel + modules
MODROOT="$DIR/modroot"              # contains lib/modules/$KVER (full tree)
if [ ! -f "$DIR/vmlinuz" ] || [ ! -f "$MODROOT/lib/modules/$KVER/modules.dep.bin" ]; then
  log "downloading linux-image-$KVER"
  tmp="$(mktemp -d "$DIR/dl.XXXXXX")"
  chmod 755 "$tmp"   # so that apt's _apt sandbox user can write into it
  ( cd "$tmp" && apt-get download -qq "linux-image-$KVER" >/dev/null 2>&1 ) || {
    apt-get update -qq >/dev/null 2>&1 || true
    ( cd "$tmp" && apt-get download -qq "linux-image-$KVER" >/dev/null )
  }
  deb="$(ls "$tmp"/linux-image-*.deb)"
  log "extracting $(basename "$deb")"
  rm -rf "$tmp/x" && dpkg-deb -x "$deb" "$tmp/x"
  rm -rf "$MODROOT"
  mkdir -p "$MODROOT/lib/modules"
  mv "$tmp/x/lib/modules/$KVER" "$MODROOT/lib/modules/$KVER"
  cp "$tmp/x/boot/config-$KVER" "$DIR/config"
  depmod -b "$MODROOT" "$KVER"
  cp "$tmp/x/boot/vmlinuz-$KVER" "$DIR/vmlinuz.tmp" && mv "$DIR/vmlinuz.tmp" "$DIR/vmlinuz"
  rm -rf "$tmp"
fi

# Uncompressed ELF vmlinux: qemu boots it directly through its PVH entry point
# (CONFIG_PVH=y), which skips the in-guest xz decompression of the bzImage
# (~4-5 s under TCG).
if [ ! -f "$DIR/vmlinux" ]; then
  for fmt in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
    tool="${fmt%%:*}"; magic="${fmt#*:}"
    command -v "$tool" >/dev/null 2>&1 || continue
    for off in $(LC_ALL=C grep -aboP "$magic" "$DIR/vmlinuz" | cut -d: -f1 | head -n 5); do
      tail -c +"$((off + 1))" "$DIR/vmlinuz" | "$tool" -dc >"$DIR/vmlinux.tmp" 2>/dev/null || true  # trailing data -> rc!=0
      if [ "$(head -c 4 "$DIR/vmlinux.tmp" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
        mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"; break 2
      fi
    done
  done
  rm -f "$DIR/vmlinux.tmp"
  [ -f "$DIR/vmlinux" ] && log "extracted uncompressed vmlinux (PVH boot)" \
    || log "WARNING: could not extract vmlinux; booting the bzImage (slower)"
fi

# ---------------------------------------------------------------- initramfs
# Modules the initramfs needs to reach the 9p/overlay root and the virtio ports.
BOOT_MODULES=(virtio_pci virtio_mmio virtio_console 9pnet_virtio 9p overlay qemu_fw_cfg)
stamp="format=$INITRD_FORMAT kver=$KVER mods=${BOOT_MODULES[*]} init=$(sha256sum "$HERE/guest-init.sh" | cut -c1-16) busybox=$(sha256sum "$(command -v busybox)" | cut -c1-16)"
if [ ! -f "$DIR/initramfs.cpio.gz" ] || [ "$(cat "$DIR/initramfs.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building initramfs"
  ird="$(mktemp -d "$DIR/initrd.XXXXXX")"
  mkdir -p "$ird"/{bin,dev,proc,sys,run,lower,rw,newroot,modules}
  cp "$(command -v busybox)" "$ird/bin/busybox"
  ln -s busybox "$ird/bin/sh"
  # ordered, de-duplicated insmod list (dependencies first)
  for m in "${BOOT_MODULES[@]}"; do
    modprobe -d "$MODROOT" -S "$KVER" --show-depends "$m"
  done | awk '$1=="insmod" && !seen[$2]++ {print $2}' | while read -r ko; do
    cp "$ko" "$ird/modules/"
    echo "$(basename "$ko")" >>"$ird/modules/load.list"
  done
  install -m 0755 "$HERE/guest-init.sh" "$ird/init"
  printf '%s\n' "$KVER" >"$ird/kver"
  ( cd "$ird" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 ) \
    | gzip -1 >"$DIR/initramfs.cpio.gz.tmp"
  mv "$DIR/initramfs.cpio.gz.tmp" "$DIR/initramfs.cpio.gz"
  printf '%s\n' "$stamp" >"$DIR/initramfs.stamp"
  rm -rf "$ird"
fi

printf '%s\n' "$KVER" >"$CACHE_ROOT/current.tmp" && mv "$CACHE_ROOT/current.tmp" "$CACHE_ROOT/current"
echo "$DIR"
