#!/usr/bin/env bash
# Installs what kpx's tests need on a Debian/Ubuntu machine (as root): netfilter
# userland, iproute2, conntrack, ipset, ipvsadm. Idempotent; skips what is installed.
set -euo pipefail

need=()
for pair in iptables:iptables ip6tables:iptables ipset:ipset conntrack:conntrack nft:nftables \
            ip:iproute2 bridge:iproute2 ipvsadm:ipvsadm sysctl:procps python3:python3 curl:curl; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || need+=("$pkg")
done
for bin in iptables-legacy iptables-nft; do
  command -v "$bin" >/dev/null 2>&1 || need+=(iptables)
done

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install: ${need[*]}" >&2
    exit 1
  fi
  # shellcheck disable=SC2207
  uniq=($(printf '%s\n' "${need[@]}" | sort -u))
  echo "install-deps: apt-get install ${uniq[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${uniq[@]}" >/dev/null
fi
echo "install-deps: system packages present"
