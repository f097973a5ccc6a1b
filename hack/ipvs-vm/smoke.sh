#!/usr/bin/env bash
# IPVS packet smoke test. Runs INSIDE the ipvs-vm guest (it refuses to run on the host):
#
#   hack/ipvs-vm/run.sh --timeout 600 -- hack/ipvs-vm/smoke.sh [--explore]
#
# Topology (all addresses from 198.18.0.0/15, everything in fresh network namespaces):
#
#   netns "node"                                   netns "pod1" / "pod2"
#     kpx-ipvs0 (dummy)  198.19.0.10/32 (the VIP)
#     veth-pod1          198.18.1.1/24  <------->  eth0 198.18.1.2/24 (default via 198.18.1.1)
#     veth-pod2          198.18.2.1/24  <------->  eth0 198.18.2.2/24 (default via 198.18.2.1)
#
#   IPVS (in "node"): TCP 198.19.0.10:80 rr -> 198.18.1.2:8080 (-m), 198.18.2.2:8080 (-m)
#   Each pod runs a tiny TCP server on :8080 that answers its own name.
#   From "node", connect to 198.19.0.10:80 $SMOKE_N times (default 10): the answers must be
#   exactly an even round-robin split between pod1 and pod2, else exit 1.
#
# SMOKE_POD2_WEIGHT=0 gives pod2 weight 0 (rr then skips it): the check must FAIL (exit 1).
# --explore additionally tries the variants (net.ipv4.vs.conntrack 0/1, with/without an
# iptables MASQUERADE, client source = VIP / node's veth address, pod -> VIP hairpin) and
# prints what works, then dumps `ipvsadm -Sn` for a persistent service with a weight-0
# real server. The exit code only reflects the main check.
set -uo pipefail

N="${SMOKE_N:-10}"
VIP=198.19.0.10
PORT=80
RPORT=8080
EXPLORE=0
[ "${1:-}" = "--explore" ] && EXPLORE=1

if [ "${KPX_IN_VM:-}" != 1 ]; then
  echo "smoke.sh: refusing to run outside the ipvs-vm guest (use hack/ipvs-vm/run.sh -- $0)" >&2
  exit 2
fi

say() { printf '== %s\n' "$*"; }
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

PY=/usr/bin/python3
command -v "$PY" >/dev/null 2>&1 || PY="$(command -v python3)"

SERVER_PIDS=()
cleanup() {
  {
    for p in ${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}; do kill "$p"; wait "$p"; done
    for ns in pod1 pod2 node; do
      ip netns pids "$ns" | xargs -r kill
      ip netns del "$ns"
    done
  } 2>/dev/null
}
trap cleanup EXIT

# ------------------------------------------------------------------ topology
modprobe -a ip_vs ip_vs_rr nf_conntrack veth dummy 2>/dev/null
cleanup
ip netns add node
nsx node ip link set lo up
nsx node sysctl -qw net.ipv4.ip_forward=1
nsx node ip link add kpx-ipvs0 type dummy
nsx node ip addr add "$VIP/32" dev kpx-ipvs0
nsx node ip link set kpx-ipvs0 up
for i in 1 2; do
  ip netns add "pod$i"
  nsx "pod$i" ip link set lo up
  ip link add "veth-pod$i" netns node type veth peer name eth0 netns "pod$i"
  nsx node ip addr add "198.18.$i.1/24" dev "veth-pod$i"
  nsx node ip link set "veth-pod$i" up
  nsx "pod$i" ip addr add "198.18.$i.2/24" dev eth0
  nsx "pod$i" ip link set eth0 up
  nsx "pod$i" ip route add default via "198.18.$i.1"
done

# ------------------------------------------------------------------ servers
SERVER='
import socket, sys
name = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(64)
while True:
    c, peer = s.accept()
    try: c.sendall(("%s %s:%d\n" % (name, peer[0], peer[1])).encode())
    finally: c.close()
'
for i in 1 2; do
  nsx "pod$i" "$PY" -c "$SERVER" "pod$i" "$RPORT" &
  SERVER_PIDS+=($!)
done

# client: prints one line per attempt: "<answer-or-ERR> "; answer = "podN <peer-seen-by-pod>"
CLIENT='
import socket, sys
host, port, n, src = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for _ in range(n):
    try:
        s = socket.socket(); s.settimeout(3)
        if src: s.bind((src, 0))
        s.connect((host, port)); data = b""
        while True:
            b = s.recv(256)
            if not b: break
            data += b
        s.close(); print(data.decode().strip() or "ERR:empty")
    except Exception as e:
        print("ERR:%s" % type(e).__name__)
    sys.stdout.flush()
'
client() { # ns host port n [src]
  nsx "$1" "$PY" -c "$CLIENT" "$2" "$3" "$4" "${5:-}"
}

# wait for both servers (direct, not through IPVS)
for i in 1 2; do
  ok=0
  for _ in $(seq 1 100); do
    if client node "198.18.$i.2" "$RPORT" 1 | grep -q "^pod$i "; then ok=1; break; fi
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "FAIL: server in pod$i did not come up" >&2; exit 1; }
done

# ------------------------------------------------------------------ IPVS
# What the node netns needs for locally-originated traffic to an IPVS NAT service
# (see README.md, "IPVS facts"): the VIP on a local interface, ip_forward=1 (for the
# pod -> pod case), nothing else. SMOKE_CONNTRACK=1 / SMOKE_MASQ=1 switch on the
# kube-proxy style extras.
nsx node sysctl -qw "net.ipv4.vs.conntrack=${SMOKE_CONNTRACK:-0}"
if [ "${SMOKE_MASQ:-0}" = 1 ]; then
  nsx node iptables -t nat -A POSTROUTING -m ipvs --vaddr "$VIP/32" --vport "$PORT" -j MASQUERADE
fi
nsx node ipvsadm -A -t "$VIP:$PORT" -s rr
nsx node ipvsadm -a -t "$VIP:$PORT" -r "198.18.1.2:$RPORT" -m -w 1
nsx node ipvsadm -a -t "$VIP:$PORT" -r "198.18.2.2:$RPORT" -m -w "${SMOKE_POD2_WEIGHT:-1}"
say "ipvsadm -Ln (netns node)"; nsx node ipvsadm -Ln
say "ipvsadm -Ln in the VM's root netns (IPVS tables are per netns, so empty)"; ipvsadm -Ln

say "$N connections from netns node to $VIP:$PORT"
out="$(client node "$VIP" "$PORT" "$N")"
echo "$out" | sed 's/^/  /'
c1=$(grep -c '^pod1 ' <<<"$out"); c2=$(grep -c '^pod2 ' <<<"$out"); errs=$(grep -c '^ERR' <<<"$out")
say "pod1=$c1 pod2=$c2 errors=$errs"
# the counters shown by --stats are folded in by the 2 s IPVS estimator: wait for it
sleep 2.5
say "ipvsadm -Ln --stats (netns node)"; nsx node ipvsadm -Ln --stats
rc=0
if [ "$errs" -ne 0 ] || [ $((c1 + c2)) -ne "$N" ]; then
  echo "FAIL: $errs of $N connections failed" >&2; rc=1
elif [ "$c1" -eq 0 ] || [ "$c2" -eq 0 ] || [ $((c1 - c2)) -gt 1 ] || [ $((c2 - c1)) -gt 1 ]; then
  echo "FAIL: round-robin spread is wrong (pod1=$c1 pod2=$c2)" >&2; rc=1
else
  say "PASS: both real servers answered, rr spread $c1/$c2"
fi

# ------------------------------------------------------------------ explore
if [ "$EXPLORE" = 1 ]; then
  try() { # label ns src
    local o; o="$(client "$2" "$VIP" "$PORT" 4 "${3:-}")"
    printf '  %-58s %s\n' "$1" "$(echo "$o" | awk '{print $1 "(" $2 ")"}' | tr '\n' ' ')"
  }
  masq() { # on|off
    nsx node iptables -t nat -F POSTROUTING
    [ "$1" = on ] && nsx node iptables -t nat -A POSTROUTING -m ipvs --vaddr "$VIP/32" --vport "$PORT" -j MASQUERADE
  }
  say "explore: answer(peer address seen by the pod) for 4 connections each"
  for ct in 0 1; do
    for m in off on; do
      nsx node sysctl -qw "net.ipv4.vs.conntrack=$ct"; masq "$m"
      nsx node conntrack -F >/dev/null 2>&1
      try "vs.conntrack=$ct masq=$m node src=VIP (default)" node
      try "vs.conntrack=$ct masq=$m node src=198.18.1.1 (veth)" node 198.18.1.1
      try "vs.conntrack=$ct masq=$m pod1 -> VIP (may hairpin to pod1)" pod1
    done
  done
  nsx node sysctl -qw net.ipv4.vs.conntrack=0; masq off
  say "iptables-nft vs legacy in netns node: $(nsx node iptables -V)"

  say "ipvsadm -Sn for a persistent service (-p 600, netmask 255.255.255.0) with a weight-0 server"
  nsx node ipvsadm -A -t 198.19.0.11:443 -s wrr -p 600 -M 255.255.255.0
  nsx node ipvsadm -a -t 198.19.0.11:443 -r 198.18.1.2:8443 -m -w 0
  nsx node ipvsadm -a -t 198.19.0.11:443 -r 198.18.2.2:8443 -m -w 3
  nsx node ipvsadm -A -u 198.19.0.11:53 -s rr -p
  nsx node ipvsadm -a -u 198.19.0.11:53 -r 198.18.1.2:53 -m
  nsx node ipvsadm -Sn | sed 's/^/  /'
  say "ipvsadm -Ln for the same"
  nsx node ipvsadm -Ln | sed 's/^/  /'
  say "sysctls under net.ipv4.vs in netns node"
  nsx node sysctl -a 2>/dev/null | grep '^net.ipv4.vs\.' | sed 's/^/  /'
fi
exit "$rc"
