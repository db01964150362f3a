#!/usr/bin/env bash
# The README's first command: sets everything up (packages, CRIU, build),
# starts a lab cluster (coordinator + 2 agents), runs a container on host1
# with a TCP client attached, migrates it live to host2 with `migrate`, and
# back to host1 with post-copy (`--postcopy`), shows what happened (downtime,
# the connection kept, the counter continued, same IP and MAC) and takes the
# lab down again.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
export BUILD_DIR=${BUILD_DIR:-$top/build}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Setting up (packages, CRIU 4.2, build)"
scripts/install-deps.sh
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target migrate-agent migrate-coordinator migrate test-image tcp-client \
  >/dev/null

cleanup() { scripts/cluster.sh down >/dev/null 2>&1 || true; }
trap cleanup EXIT
say "Starting the lab: coordinator on the fabric, agents on host1 and host2"
scripts/cluster.sh up 2 "$BUILD_DIR/tests/test-image.tar" demo
eval "$(scripts/cluster.sh env)"
migrate() { "$BUILD_DIR/migrate/migrate" "$@"; }
migrate hosts

say "Running 'web' on host1: a counter and a TCP echo server"
migrate run --on host1 --name web demo sh -c \
  'echo "written on host1 at $(date)" > /root/note; /usr/local/bin/echo-server 7777 & exec /usr/local/bin/counter'
sleep 1
ip=$(migrate ps --output json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="web"][0]["ip"])')
mac=$(migrate ps --output json | python3 -c 'import json,sys; print([c for c in json.load(sys.stdin) if c["name"]=="web"][0]["mac"])')
migrate ps

say "A client in the 'client' namespace opens one TCP connection to $ip:7777 and streams numbered messages"
client_out=$(mktemp)
scripts/lab.sh exec client "$BUILD_DIR/tests/payloads/tcp-client" "$ip" 7777 30 20 >"$client_out" 2>/dev/null &
client=$!
sleep 2
before=$(migrate logs web | grep '^count' | tail -1)

say "migrate web --to host2 --tcp-established"
migrate web --to host2 --tcp-established

say "After the move"
migrate ps
sleep 2
say "And back: migrate web --to host1 --tcp-established --postcopy (runs on host1 first, its memory follows)"
migrate web --to host1 --tcp-established --postcopy
migrate ps
sleep 2
kill -TERM "$client" 2>/dev/null || true
wait "$client" || true
after=$(migrate logs web | grep '^count' | tail -1)
scripts/lab.sh exec host2 true
now=$(migrate ps --output json | python3 -c 'import json,sys; c=[c for c in json.load(sys.stdin) if c["name"]=="web"][0]; print(c["host"], c["ip"], c["mac"])')
echo "counter before the moves: $before; now: $after (it went on, not from 1)"
echo "address before: $ip $mac; now on: $now"
echo "TCP client summary: $(cat "$client_out")"
python3 - "$client_out" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ok = s["error"] is None and s["sent"] == s["verified"]
print("the connection %s: %d messages sent, %d echoed back intact, longest stall %.0f ms"
      % ("survived" if ok else "BROKE", s["sent"], s["verified"], s["maxStallMs"]))
sys.exit(0 if ok else 1)
PY
rm -f "$client_out"
say "Done; taking the lab down"
