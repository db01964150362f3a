#!/usr/bin/env bash
# The multi-host lab comes up (twice: idempotent), carries traffic, and
# `down` leaves nothing behind. Exit 77 = skipped (ctest SKIP_RETURN_CODE 77).
set -euo pipefail

LAB=$(cd "$(dirname "$0")/.." && pwd)/scripts/lab.sh
export LAB_QUIET=1

if [ "$(id -u)" != 0 ]; then
  echo "lab-test: skipped: the lab needs root" >&2
  exit 77
fi

# Every user of the shared lab takes this lock for its whole session (see
# net/cni-test.cpp): one test's `down` must not pull the lab from under another.
exec 8>/run/lock/migrate-lab-session.lock
flock 8

failures=0
check() {  # check DESCRIPTION CMD...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then
    echo "ok   - $what"
  else
    echo "FAIL - $what" >&2
    failures=$((failures + 1))
  fi
}
check_not() { local what=$1; shift; if "$@" >/dev/null 2>&1; then check "$what" false; else check "$what" true; fi; }

links_before=$(ip -o link show | awk -F': ' '{print $2}' | sort)
bg_pid=
cleanup() {
  "$LAB" down >/dev/null 2>&1 || true
  [ -z "$bg_pid" ] || kill "$bg_pid" 2>/dev/null || true
}
trap cleanup EXIT

start=$(date +%s%N)
"$LAB" up 2
"$LAB" up 2
echo "lab-test: up twice in $(( ($(date +%s%N) - start) / 1000000 )) ms"

for ns in host1 host2 fabric client; do
  check "netns $ns exists" test -e "/run/netns/$ns"
done
check "host1 conflist" test -s /run/migrate-lab/host1/cni.conflist
check "host2 conflist" test -s /run/migrate-lab/host2/cni.conflist
check "no host3" test ! -e /run/netns/host3
for h in host1 host2; do
  check "$h pings the control gateway 198.19.0.1" "$LAB" exec "$h" ping -c1 -W1 198.19.0.1
  check "$h pings the container gateway 198.18.0.1" "$LAB" exec "$h" ping -c1 -W1 198.18.0.1
  check "$h has cni0 up" "$LAB" exec "$h" sh -c 'ip -o link show cni0 | grep -q "state UP\|,UP"'
done
check "host1 pings host2 on the control network" "$LAB" exec host1 ping -c1 -W1 198.19.0.12
check "client pings the gateway 198.18.0.1" "$LAB" exec client ping -c1 -W1 198.18.0.1
check "fabric forwards" test "$("$LAB" exec fabric cat /proc/sys/net/ipv4/ip_forward)" = 1
check "exec shares the root mount namespace" test "$("$LAB" exec host1 readlink /proc/self/ns/mnt)" = "$(readlink /proc/self/ns/mnt)"
check_not "exec into an unknown host fails" "$LAB" exec host9 true
check_not "up 0 is refused" "$LAB" up 0
check "status" "$LAB" status

# A process the lab started (as agents will be): its pid file makes `down` stop it.
"$LAB" exec host1 sleep 300 &
bg_pid=$!
echo "$bg_pid" >/run/migrate-lab/host1/test-sleeper.pid
for _ in $(seq 1 50); do  # wait for nsenter to have entered host1 and exec'd sleep
  [ "$(readlink "/proc/$bg_pid/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.02
done

"$LAB" down
"$LAB" down   # idempotent

check_not "down stopped the recorded process" kill -0 "$bg_pid"
wait "$bg_pid" 2>/dev/null || true
bg_pid=
for ns in host1 host2 fabric client; do
  check_not "netns $ns is gone" sh -c "ip netns list | awk '{print \$1}' | grep -qx $ns"
done
links_after=$(ip -o link show | awk -F': ' '{print $2}' | sort)
check "no links left in the root netns" test "$links_before" = "$links_after"
check "no /run/migrate-lab" test ! -e /run/migrate-lab
check_not "no mounts of the lab" grep -qE 'migrate-lab|/run/netns/(host[0-9]+|fabric|client) ' /proc/self/mountinfo

if [ "$failures" -gt 0 ]; then
  echo "lab-test: $failures check(s) failed" >&2
  exit 1
fi
echo "lab-test: all checks passed"
