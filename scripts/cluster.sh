#!/usr/bin/env bash
# A whole cluster in the lab: lab.sh's namespaces, a coordinator on the fabric
# and one migrate-agent daemon per host, with CURVE keys, the agents'
# allow-list and an API token made fresh. Used by the demo and the tests.
#
#   cluster.sh up N [IMAGE_TAR NAME]   lab up N, keys, coordinator, N agents (each
#                                      with the image imported); waits until every
#                                      host has registered
#   cluster.sh down                    stop daemons, remove every container the
#                                      agents still hold, lab down, remove state
#   cluster.sh start-agent hostK       (re)start one agent daemon
#   cluster.sh start-coordinator       (re)start the coordinator
#   cluster.sh env                     print MIGRATE_COORDINATOR / MIGRATE_TOKEN_FILE /
#                                      MIGRATE_CA
#
# The coordinator's API serves HTTPS on the fabric (198.19.0.1:8080) with a
# certificate from the lab's own CA ($KEYS/ca.crt, made by `up` with openssl),
# and plain HTTP on its unix socket, which the file mode guards.
#
# Binaries come from $BUILD_DIR (default: build/ at the top of the checkout).
# $AGENT_DAEMON_ARGS is added to every agent daemon's command line (e.g.
# "--zstd-level 1 --zstd-threads 0" for benchmarks); $AGENT_ARGS to every
# agent command, daemon or not, before the verb (e.g. "--userns-range
# 1073741824:65536", so that every host allocates the same one mapping).
# Logs: /run/migrate-lab/coordinator.log, /run/migrate-lab/hostK/agent.log;
# `down` keeps a copy of the last run's in /var/tmp/migrate-lab-logs.
# Agent state: /var/lib/migrate-lab/hostK; journal: /var/lib/migrate-lab/coordinator.db.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$top/build}
LAB=$top/scripts/lab.sh
RUN=/run/migrate-lab
VAR=/var/lib/migrate-lab
KEYS=$VAR/keys
AGENT=$BUILD_DIR/agent/migrate-agent
COORDINATOR=$BUILD_DIR/coordinator/migrate-coordinator
MIGRATE=$BUILD_DIR/migrate/migrate
CTL_NET=198.19.0

log() { [ -n "${LAB_QUIET:-}" ] || echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: $*" >&2; exit 1; }

# A daemon is alive if its process exists and is not a zombie: daemons are
# reparented to PID 1, which in some sandboxes never reaps them.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }

hosts() { ls -d "$RUN"/host* 2>/dev/null | xargs -rn1 basename | sort -V; }

agent_cmd() {  # agent_cmd hostK ARGS...: the local agent CLI on that host's state
  local h=$1; shift
  nsenter --net="/run/netns/$h" -- "$AGENT" --state "$VAR/$h" --host "$h" \
    --cni-config "$RUN/$h/cni.conflist" ${AGENT_ARGS:-} "$@"
}

start_agent() {
  local h=$1 k=${1#host}
  if [ -f "$RUN/$h/agent.pid" ] && alive "$(cat "$RUN/$h/agent.pid")"; then return; fi
  # setsid: the daemon is nobody's child; it stops by its pid file (lab.sh down).
  setsid nsenter --net="/run/netns/$h" -- "$AGENT" --state "$VAR/$h" --host "$h" \
    --cni-config "$RUN/$h/cni.conflist" ${AGENT_ARGS:-} daemon \
    --coordinator "tcp://$CTL_NET.1:7700" --coordinator-key "$KEYS/coordinator.pub" \
    --key-dir "$KEYS" --data-address "$CTL_NET.$((10 + k))" ${AGENT_DAEMON_ARGS:-} \
    </dev/null >>"$RUN/$h/agent.log" 2>&1 &
  echo $! >"$RUN/$h/agent.pid"
  log "agent $h: pid $!"
}

# The lab's CA and the coordinator's server certificate for its fabric
# address (subjectAltName IP, which the CLI checks); kept across `up`s like
# the CURVE keys, removed by `down`.
make_certificates() {
  [ -f "$KEYS/http.crt" ] && return
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=migrate lab CA" \
    -keyout "$KEYS/ca.key" -out "$KEYS/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj "/CN=$CTL_NET.1" -keyout "$KEYS/http.key" -out "$KEYS/http.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$CTL_NET.1" \
    >"$KEYS/http.ext"
  openssl x509 -req -in "$KEYS/http.csr" -CA "$KEYS/ca.crt" -CAkey "$KEYS/ca.key" -CAcreateserial \
    -days 30 -extfile "$KEYS/http.ext" -out "$KEYS/http.crt" 2>/dev/null
  chmod 600 "$KEYS/ca.key" "$KEYS/http.key"
  rm -f "$KEYS/http.csr" "$KEYS/http.ext" "$KEYS/ca.srl"
}

start_coordinator() {
  if [ -f "$RUN/coordinator.pid" ] && alive "$(cat "$RUN/coordinator.pid")"; then return; fi
  setsid nsenter --net=/run/netns/fabric -- "$COORDINATOR" \
    --listen "tcp://$CTL_NET.1:7700" --key-dir "$KEYS" --agents "$KEYS/agents" \
    --db "$VAR/coordinator.db" --http "$CTL_NET.1:8080" --http-socket "$RUN/coordinator.sock" \
    --tls-cert "$KEYS/http.crt" --tls-key "$KEYS/http.key" \
    --token-file "$KEYS/token" --heartbeat-ms 500 \
    </dev/null >>"$RUN/coordinator.log" 2>&1 &
  echo $! >"$RUN/coordinator.pid"
  log "coordinator: pid $!"
}

print_env() {
  echo "export MIGRATE_COORDINATOR=unix:$RUN/coordinator.sock"
  echo "export MIGRATE_TOKEN_FILE=$KEYS/token"
  echo "export MIGRATE_CA=$KEYS/ca.crt"
  echo "# inside a lab namespace: export MIGRATE_COORDINATOR=https://$CTL_NET.1:8080"
}

# The CLI over the fabric, as an operator on a host would use it: HTTPS,
# the coordinator's certificate verified against the lab CA.
check_https() {
  nsenter --net=/run/netns/host1 -- env MIGRATE_COORDINATOR="https://$CTL_NET.1:8080" MIGRATE_CA="$KEYS/ca.crt" \
    MIGRATE_TOKEN_FILE="$KEYS/token" "$MIGRATE" hosts >/dev/null ||
    die "the CLI cannot reach https://$CTL_NET.1:8080 with the lab CA (see $RUN/coordinator.log)"
}

wait_registered() {  # wait_registered N
  local n=$1 deadline=$((SECONDS + 30)) connected
  while [ $SECONDS -lt $deadline ]; do
    connected=$(MIGRATE_COORDINATOR=unix:$RUN/coordinator.sock MIGRATE_TOKEN_FILE=$KEYS/token \
      "$MIGRATE" hosts --output json 2>/dev/null |
      python3 -c 'import json,sys; print(sum(1 for h in json.load(sys.stdin) if h.get("up")))' 2>/dev/null || echo 0)
    [ "$connected" -ge "$n" ] && return 0
    sleep 0.2
  done
  die "only $connected of $n agents registered within 30 s (see $RUN/*.log, $RUN/host*/agent.log)"
}

cmd_up() {
  local n=${1:?usage: cluster.sh up N [IMAGE_TAR NAME]} image=${2:-} name=${3:-}
  for b in "$AGENT" "$COORDINATOR" "$MIGRATE"; do [ -x "$b" ] || die "$b is not built"; done
  "$LAB" up "$n"
  # Post-copy (--postcopy) needs CRIU's 4 MiB page-server pipe, which without
  # CAP_SYS_RESOURCE only fs.pipe-max-size allows; put back by `down`.
  [ -f "$RUN/pipe-max-size.orig" ] || cat /proc/sys/fs/pipe-max-size >"$RUN/pipe-max-size.orig"
  [ "$(cat /proc/sys/fs/pipe-max-size)" -ge 4194304 ] || echo 4194304 >/proc/sys/fs/pipe-max-size
  # Post-copy of a container in a user namespace: its restored tasks open
  # their userfaultfd from inside it (docs/userns.md); put back by `down`.
  [ -f "$RUN/unprivileged-userfaultfd.orig" ] || cat /proc/sys/vm/unprivileged_userfaultfd >"$RUN/unprivileged-userfaultfd.orig"
  echo 1 >/proc/sys/vm/unprivileged_userfaultfd
  mkdir -p "$KEYS"
  chmod 700 "$KEYS"
  if [ ! -f "$KEYS/coordinator.key" ]; then
    "$COORDINATOR" keygen --dir "$KEYS" --name coordinator >/dev/null
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$KEYS/token"
    chmod 600 "$KEYS/token"
  fi
  : >"$KEYS/agents.new"
  for k in $(seq 1 "$n"); do
    h=host$k
    [ -f "$KEYS/$h.key" ] || "$AGENT" keygen --dir "$KEYS" --name "$h" >/dev/null
    echo "$h $(cat "$KEYS/$h.pub")" >>"$KEYS/agents.new"
    mkdir -p "$VAR/$h"
    if [ -n "$image" ] && ! agent_cmd "$h" image ls 2>/dev/null | grep -q " $name "; then
      agent_cmd "$h" image import "$image" "$name" >/dev/null 2>&1
    fi
  done
  mv "$KEYS/agents.new" "$KEYS/agents"
  make_certificates
  start_coordinator
  for k in $(seq 1 "$n"); do start_agent "host$k"; done
  wait_registered "$n"
  check_https
  log "up: coordinator and $n agent(s); $(print_env | tr '\n' ' ')"
}

cmd_down() {
  # Daemons first, so nothing races the cleanup; then each host's containers.
  for f in "$RUN"/coordinator.pid "$RUN"/host*/agent.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  for d in "$VAR"/host*; do
    [ -d "$d" ] || continue
    h=$(basename "$d")
    ids=$("$AGENT" --state "$d" --host "$h" --output json ps 2>/dev/null |
      python3 -c 'import json,sys; [print(c["id"]) for c in json.load(sys.stdin)]' 2>/dev/null || true)
    for id in $ids; do
      if [ -e "/run/netns/$h" ]; then agent_cmd "$h" rm --force "$id" >/dev/null 2>&1 || true
      else "$AGENT" --state "$d" --host "$h" rm --force "$id" >/dev/null 2>&1 || true; fi
    done
    # Post-copy page relays outlive their agent by design (agent/page-relay.h);
    # here they go with the containers whose memory they held.
    for f in "$d"/relays/*/pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "page-relay $(dirname "$f")"; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
    rm -rf "$d/relays"
    # And whatever ran in their cgroups (the target's `criu lazy-pages`).
    for g in /sys/fs/cgroup/migrate-relays/"$h"/* /sys/fs/cgroup/*/migrate-relays/"$h"/*; do
      [ -f "$g/cgroup.procs" ] || continue
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$g/cgroup.procs"
      for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$g" 2>/dev/null && break; sleep 0.1; done
    done
    rmdir /sys/fs/cgroup/migrate-relays/"$h" /sys/fs/cgroup/*/migrate-relays/"$h" 2>/dev/null || true
    # Whatever a killed agent left half-made: its mounts go before the files.
    grep -F " $d/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  done
  # Keep the last run's logs for whoever investigates a failure.
  rm -rf /var/tmp/migrate-lab-logs
  mkdir -p /var/tmp/migrate-lab-logs
  cp "$RUN"/*.log /var/tmp/migrate-lab-logs/ 2>/dev/null || true
  for d in "$RUN"/host*; do [ -f "$d/agent.log" ] && cp "$d/agent.log" "/var/tmp/migrate-lab-logs/$(basename "$d").log"; done
  if [ -f "$RUN/pipe-max-size.orig" ]; then cat "$RUN/pipe-max-size.orig" >/proc/sys/fs/pipe-max-size; fi
  if [ -f "$RUN/unprivileged-userfaultfd.orig" ]; then
    cat "$RUN/unprivileged-userfaultfd.orig" >/proc/sys/vm/unprivileged_userfaultfd
  fi
  "$LAB" down
  rm -rf "$VAR"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  start-agent) start_agent "${2:?host}" ;;
  start-coordinator) start_coordinator ;;
  env) print_env ;;
  *) echo "usage: cluster.sh up N [IMAGE_TAR NAME] | down | start-agent hostK | start-coordinator | env" >&2; exit 2 ;;
esac
