#!/usr/bin/env bash
# Multi-host lab on one machine: network namespaces host1..hostN, `fabric` and
# `client`. See DESIGN.md, "Multi-host lab on one machine".
#
#   lab.sh up N            make (or complete) a lab with N hosts (1..11); idempotent
#   lab.sh down            remove everything the lab made: processes, namespaces,
#                          links, bridges, mounts, /run/migrate-lab
#   lab.sh exec HOST CMD…  run CMD in HOST's netns (HOST: hostK, fabric or client)
#   lab.sh status          print what exists
#
# Topology (every link is created directly inside namespaces, none in the root one):
#
#   fabric: br-ctl 198.19.0.1/24   control bridge; the coordinator listens here
#           br-ctr 198.18.0.1/24   container segment; gateway of every container
#           ip_forward on
#   hostK:  eth0 198.19.0.(10+K)/24  <-veth-> fabric c-hostK  (in br-ctl)
#           cni0 (bridge, no IP) with port uplink <-veth-> fabric u-hostK (in br-ctr)
#           default route via 198.19.0.1 (the fabric), so agents reach containers too
#   client: eth0 198.18.0.250/24  <-veth-> fabric u-client (in br-ctr); default via 198.18.0.1
#
# So all hosts' containers share one L2 segment, 198.18.0.0/24, gateway in the fabric.
#
# Per host, /run/migrate-lab/hostK/cni.conflist: bridge (cni0) + host-local IPAM with
# the host's own range .(20K+1)-.(20K+19), then tuning. All hosts share ONE host-local
# dataDir (/run/migrate-lab/ipam): the segment is one network, so its reservations
# must be too (a cluster-wide IPAM). With a dataDir per host, an address that
# migrated away would look free to its old host, which could hand it out again
# while the moved container still uses it on the new host. host-local
# locks its dataDir, so hosts allocating at once do not race. host-local
# refuses a requested IP outside rangeStart..rangeEnd, and a range set may not hold
# overlapping ranges, so the conflist can't admit "the whole subnet, but only when
# requested". Our CniClient (net/cni.h) handles it: for an ADD with a requested IP
# that is in a host-local range's subnet but outside its start..end, it passes that
# one ADD the whole subnet. loopback is not in the conflist: createNetns
# (net/netns.h) brings lo up in every container netns, as runc does for the
# namespaces it creates itself.
#
# Processes: anything the lab starts later (agents, coordinator) records its PID in
# /run/migrate-lab/*.pid or /run/migrate-lab/*/*.pid; `down` stops those that still
# run inside a lab namespace (so a stale file never kills an unrelated process).
#
# Tests share one lab and each brings it down at its end, so every test that
# uses it holds an exclusive flock on /run/lock/migrate-lab-session.lock for
# its whole session (net/cni-test.cpp, tests/lab-test.sh). `up` and `down`
# themselves serialise on /run/lock/migrate-lab.lock.
#
# `exec` uses `nsenter --net` rather than `ip netns exec`: the latter unshares the
# mount namespace and remounts /sys, and an agent must share the root mount
# namespace so the overlay mounts it makes outlive it.
set -euo pipefail

STATE=/run/migrate-lab
LOCK=/run/lock/migrate-lab.lock
MAX_HOSTS=11        # host K's range is .(20K+1)-.(20K+19); .250 is the client
CTL_NET=198.19.0
CTR_NET=198.18.0

die() { echo "lab.sh: $*" >&2; exit 1; }
log() { [ -n "${LAB_QUIET:-}" ] || echo "lab.sh: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"

# in NS CMD…: run CMD inside namespace NS (network only).
in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" -- "$@"; }
ns_exists() { [ -e "/run/netns/$1" ] && ip netns list | awk '{print $1}' | grep -qx "$1"; }
link_exists() { ip -n "$1" link show "$2" &>/dev/null; }

ensure_ns() {
  local ns=$1
  if ! ns_exists "$ns"; then
    ip netns add "$ns"
    log "netns $ns"
  fi
  ip -n "$ns" link set lo up
  # No IPv6 chatter (router solicitations, DAD) on the lab's links.
  in_ns "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
}

ensure_bridge() {  # ensure_bridge NS NAME [CIDR]
  local ns=$1 name=$2 cidr=${3:-}
  link_exists "$ns" "$name" || ip -n "$ns" link add "$name" type bridge
  if [ -n "$cidr" ] && ! ip -n "$ns" -o addr show dev "$name" | grep -qw "$cidr"; then
    ip -n "$ns" addr add "$cidr" dev "$name"
  fi
  ip -n "$ns" link set "$name" up
}

# ensure_veth NS_A NAME_A NS_B NAME_B: one veth pair, made directly in its namespaces.
ensure_veth() {
  local nsa=$1 a=$2 nsb=$3 b=$4
  if link_exists "$nsa" "$a" && link_exists "$nsb" "$b"; then return; fi
  # A half-made pair (interrupted run): drop what's there and start over.
  ip -n "$nsa" link del "$a" 2>/dev/null || true
  ip -n "$nsb" link del "$b" 2>/dev/null || true
  ip -n "$nsa" link add "$a" type veth peer name "$b" netns "$nsb"
}

ensure_addr() {  # ensure_addr NS DEV CIDR
  ip -n "$1" -o addr show dev "$2" | grep -qw "$3" || ip -n "$1" addr add "$3" dev "$2"
}

write_conflist() {  # write_conflist K
  local k=$1 dir=$STATE/host$1
  mkdir -p "$dir" "$STATE/ipam"
  local tmp
  tmp=$(mktemp "$dir/.cni.conflist.XXXXXX")
  cat >"$tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "migrate-lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{
          "subnet": "$CTR_NET.0/24",
          "rangeStart": "$CTR_NET.$((k * 20 + 1))",
          "rangeEnd": "$CTR_NET.$((k * 20 + 19))",
          "gateway": "$CTR_NET.1"
        }]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/ipam"
      },
      "capabilities": {"ips": true}
    },
    {
      "type": "tuning",
      "capabilities": {"mac": true}
    }
  ]
}
EOF
  chmod 0644 "$tmp"
  mv -f "$tmp" "$dir/cni.conflist"
}

up() {
  local n=${1:-}
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt $MAX_HOSTS ]; then
    die "up: want a host count in 1..$MAX_HOSTS, got \`${n}\`"
  fi

  # `ip netns add` makes /run/netns a shared bind mount of itself; note whether we
  # caused that so `down` can undo it.
  mkdir -p "$STATE"
  if ! mountpoint -q /run/netns 2>/dev/null && [ ! -e "$STATE/made-run-netns-mount" ]; then
    touch "$STATE/made-run-netns-mount"
  fi

  ensure_ns fabric
  in_ns fabric sysctl -qw net.ipv4.ip_forward=1
  ensure_bridge fabric br-ctl "$CTL_NET.1/24"
  ensure_bridge fabric br-ctr "$CTR_NET.1/24"

  local k
  for k in $(seq 1 "$n"); do
    local h=host$k
    ensure_ns "$h"
    # control link
    ensure_veth fabric "c-$h" "$h" eth0
    ip -n fabric link set "c-$h" master br-ctl up
    ensure_addr "$h" eth0 "$CTL_NET.$((10 + k))/24"
    ip -n "$h" link set eth0 up
    ip -n "$h" route replace default via "$CTL_NET.1" dev eth0
    # container segment: the host's cni0 bridged into the fabric's br-ctr
    ensure_bridge "$h" cni0
    ensure_veth fabric "u-$h" "$h" uplink
    ip -n fabric link set "u-$h" master br-ctr up
    ip -n "$h" link set uplink master cni0 up
    write_conflist "$k"
  done

  ensure_ns client
  ensure_veth fabric u-client client eth0
  ip -n fabric link set u-client master br-ctr up
  ensure_addr client eth0 "$CTR_NET.250/24"
  ip -n client link set eth0 up
  ip -n client route replace default via "$CTR_NET.1" dev eth0

  # The largest N asked for, for status and tests.
  local prev=0
  [ -f "$STATE/hosts" ] && prev=$(cat "$STATE/hosts")
  [ "$n" -gt "$prev" ] && echo "$n" >"$STATE/hosts"
  log "up: $n host(s), fabric, client"
}

lab_namespaces() {
  ip netns list | awk '{print $1}' | grep -E '^(host[0-9]+|fabric|client)$' || true
}

# Stops the processes named in pid files, only if they run in a lab namespace.
stop_recorded_processes() {
  [ -d "$STATE" ] || return 0
  local inodes=() ns
  for ns in $(lab_namespaces); do inodes+=("$(stat -L -c %i "/run/netns/$ns")"); done
  local files=() pids=() f pid
  shopt -s nullglob
  files=("$STATE"/*.pid "$STATE"/*/*.pid)
  shopt -u nullglob
  for f in "${files[@]}"; do
    pid=$(head -n1 "$f" | tr -dc 0-9)
    if [ -z "$pid" ] || [ ! -d "/proc/$pid" ]; then continue; fi
    local inode
    inode=$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null) || continue
    if printf '%s\n' "${inodes[@]}" | grep -qx "$inode"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid") && log "stopping pid $pid ($(basename "$f"))"
    else
      log "pid $pid from $f is not in a lab namespace; leaving it alone"
    fi
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local p alive
  for _ in $(seq 1 50); do   # up to 5 s for a clean exit
    alive=0
    for p in "${pids[@]}"; do [ -d "/proc/$p" ] && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

down() {
  stop_recorded_processes
  local ns
  for ns in $(lab_namespaces); do
    local left
    left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -z "$left" ] || log "warning: processes still in $ns: $left(not started by the lab; not killed)"
    # Deleting the namespace deletes every link in it, and with each veth its peer.
    ip netns del "$ns"
    log "removed netns $ns"
  done
  if [ -e "$STATE/made-run-netns-mount" ] && mountpoint -q /run/netns &&
     [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    if umount -n /run/netns; then rmdir /run/netns || true; fi
  fi
  # host-local's dataDir, conflists, pid files: nothing is mounted under STATE.
  rm -rf "$STATE"
}

status() {
  local nss
  nss=$(lab_namespaces)
  if [ -z "$nss" ]; then echo "lab: down"; return 0; fi
  echo "lab: $(echo "$nss" | wc -w) namespace(s); hosts up to $(cat "$STATE/hosts" 2>/dev/null || echo '?')"
  local ns
  for ns in $nss; do
    echo "== $ns"
    ip -n "$ns" -br addr show | sed 's/^/   /'
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -z "$pids" ] || echo "   pids: $pids"
  done
  shopt -s nullglob
  local f
  for f in "$STATE"/*.pid "$STATE"/*/*.pid; do echo "pid file $f: $(head -n1 "$f")"; done
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up|down)
    mkdir -p "$(dirname "$LOCK")"
    exec 9>"$LOCK"
    flock 9   # concurrent up/down from parallel tests would race
    "$cmd" "$@"
    ;;
  exec)
    [ $# -ge 2 ] || die "usage: lab.sh exec HOST CMD..."
    host=$1; shift
    ns_exists "$host" || die "exec: no lab namespace \`$host\` (run lab.sh up N)"
    exec nsenter --net="/run/netns/$host" -- "$@"
    ;;
  status) status ;;
  *) die "usage: lab.sh up N | down | exec HOST CMD... | status" ;;
esac
