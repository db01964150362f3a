#!/bin/bash
# Post-copy probe: runc checkpoint --lazy-pages with CRIU's page server, then
# `criu lazy-pages` + runc restore --lazy-pages on the same host (loopback),
# so the process runs again before its memory has arrived.
#
#   lazy-probe.sh TEST_IMAGE_TAR OUT_DIR [MIB] [MODE]
#
# LAZY_RAISE_PIPE_MAX=1 raises fs.pipe-max-size to 4 MiB for the probe (and
# puts it back): without CAP_SYS_RESOURCE CRIU's page server needs it, else the
# first page request fails with "page-pipe: splice: -1: Bad file descriptor".
# Leaves the CRIU logs (dump.log, lazy-pages.log, restore.log) and a summary
# (probe.txt) in OUT_DIR; removes the container, cgroup and temp dirs.
set -uo pipefail

image=${1:?usage: lazy-probe.sh TEST_IMAGE_TAR OUT_DIR [MIB] [MODE]}
out=${2:?usage: lazy-probe.sh TEST_IMAGE_TAR OUT_DIR [MIB] [MODE]}
mib=${3:-64}
mode=${4:-random}
port=${LAZY_PORT:-27027}
mkdir -p "$out"
out=$(cd "$out" && pwd)

tmp=$(mktemp -d /var/tmp/migrate-lazy-probe.XXXXXX)
shm=$(mktemp -d /dev/shm/migrate-lazy-probe.XXXXXX)
id=lazyprobe$$
root=$tmp/runc-root
troot=$tmp/runc-root-target   # the "target host": its own runc state
bundle=$tmp/bundle
tbundle=$tmp/bundle-target
images=$shm/images
dumpwork=$tmp/dump-work
restwork=$tmp/restore-work
mkdir -p "$root" "$troot" "$bundle/rootfs" "$bundle/exits" "$bundle/sock" "$tbundle/exits" "$tbundle/sock" "$images" "$dumpwork" "$restwork"
ckpt_pid=
lazy_pid=

now() { date +%s.%N; }
say() { echo "$*" | tee -a "$out/probe.txt"; }

old_pipe_max=
if [[ ${LAZY_RAISE_PIPE_MAX:-0} == 1 ]]; then
  old_pipe_max=$(cat /proc/sys/fs/pipe-max-size)
  (( old_pipe_max < 4194304 )) && echo 4194304 >/proc/sys/fs/pipe-max-size
fi

cleanup() {
  [[ -n $old_pipe_max ]] && echo "$old_pipe_max" >/proc/sys/fs/pipe-max-size
  # runc's CRIU child (the page server) outlives runc if only runc is killed.
  if [[ -n $ckpt_pid ]]; then
    for c in $(pgrep -P "$ckpt_pid"); do kill "$c" 2>/dev/null; done
  fi
  for p in $ckpt_pid $lazy_pid; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for r in "$root" "$troot"; do runc --root "$r" delete --force "$id" >/dev/null 2>&1; done
  for b in "$bundle" "$tbundle"; do
    [[ -f $b/conmon.pid ]] || continue
    cpid=$(cat "$b/conmon.pid")
    for _ in $(seq 30); do [[ -d /proc/$cpid ]] || break; sleep 0.1; done
    [[ -d /proc/$cpid ]] && kill "$cpid" 2>/dev/null
  done
  for d in /sys/fs/cgroup/*/migrate-lazy-probe/"$id" /sys/fs/cgroup/*/migrate-lazy-probe/"$id"-target \
           /sys/fs/cgroup/*/migrate-lazy-probe; do
    [[ -d $d && ! -L $(dirname "$d") ]] && rmdir "$d" 2>/dev/null
  done
  rm -rf "$tmp" "$shm"
}
trap cleanup EXIT

: >"$out/probe.txt"
tar -xf "$image" -C "$bundle/rootfs"
runc spec --bundle "$bundle"
python3 - "$bundle/config.json" "$id" "$mib" "$mode" "$tmp/criu.conf" <<'EOF'
import json, sys
path, ident, mib, mode, conf = sys.argv[1:]
spec = json.load(open(path))
spec["root"] = {"path": "rootfs", "readonly": False}
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/usr/local/bin/memhog", mib, mode]
spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
spec["linux"]["cgroupsPath"] = f"/migrate-lazy-probe/{ident}"
spec.setdefault("annotations", {})["org.criu.config"] = conf
json.dump(spec, open(path, "w"))
spec["root"]["path"] = path.rsplit("/", 1)[0] + "/rootfs"
spec["linux"]["cgroupsPath"] = f"/migrate-lazy-probe/{ident}-target"
json.dump(spec, open(path.replace("/bundle/", "/bundle-target/"), "w"))
EOF
echo "network-lock nftables" >"$tmp/criu.conf"

conmon_for() {  # BUNDLE RUNC_ROOT
  conmon_args=(--api-version 1 -c "$id" -u "$id" -n "$id" -r /usr/sbin/runc -b "$1"
    -p "$1/pidfile" -P "$1/conmon.pid" -l "k8s-file:$1/ctr.log"
    --exit-dir "$1/exits" --socket-dir-path "$1/sock" --runtime-arg "--root=$2"
    --runtime-arg "--log=$tmp/runc.log")
}
conmon_for "$bundle" "$root"

wait_file() { for _ in $(seq 200); do [[ -s $1 ]] && return 0; sleep 0.05; done; return 1; }
log=$bundle/ctr.log
last_round() { grep -o 'verified [0-9]*' "$log" 2>/dev/null | tail -1 | cut -d' ' -f2; }

env -u _OCI_SYNCPIPE conmon "${conmon_args[@]}" || { say "FAIL: conmon create"; exit 1; }
wait_file "$bundle/pidfile" || { say "FAIL: runc create (no pidfile)"; exit 1; }
runc --root "$root" start "$id"
for _ in $(seq 600); do [[ -n $(last_round) ]] && break; sleep 0.05; done
say "container $id running memhog $mib $mode, round $(last_round)"

# Source: dump everything but the memory, then serve the pages from the page server.
t0=$(now)
exec 7>"$tmp/status"
runc --root "$root" checkpoint --lazy-pages --page-server "127.0.0.1:$port" --status-fd 7 \
  --image-path "$images" --work-path "$dumpwork" "$id" >"$out/runc-checkpoint.out" 2>&1 &
ckpt_pid=$!
exec 7>&-
for _ in $(seq 600); do
  [[ -s $tmp/status ]] && break
  kill -0 "$ckpt_pid" 2>/dev/null || break
  sleep 0.02
done
t1=$(now)
cp "$dumpwork/dump.log" "$out/dump.log" 2>/dev/null
if [[ ! -s $tmp/status ]]; then
  wait "$ckpt_pid"; rc=$?; ckpt_pid=
  say "FAIL: runc checkpoint --lazy-pages exited with $rc before the page server was ready"
  tail -n 15 "$out/runc-checkpoint.out" | tee -a "$out/probe.txt"
  grep -E 'Error|Warn' "$out/dump.log" | tail -n 15 | tee -a "$out/probe.txt"
  exit 1
fi
say "lazy dump ready after $(echo "$t1 - $t0" | bc) s; images without pages: $(du -sh "$images" | cut -f1)"

# Target: the lazy-pages daemon fetches pages from the page server on faults.
criu lazy-pages --page-server --address 127.0.0.1 --port "$port" --images-dir "$images" \
  --work-dir "$restwork" -o lazy-pages.log -v4 >"$out/criu-lazy-pages.out" 2>&1 &
lazy_pid=$!
for _ in $(seq 100); do [[ -S $restwork/lazy-pages.socket ]] && break; sleep 0.02; done

frozen=$(last_round)
cp "$bundle/ctr.log" "$tbundle/ctr.log"
log=$tbundle/ctr.log
conmon_for "$tbundle" "$troot"
t2=$(now)
env -u _OCI_SYNCPIPE conmon "${conmon_args[@]}" --restore "$images" \
  --runtime-opt "--work-path=$restwork" --runtime-opt --lazy-pages
ok=0
for _ in $(seq 400); do
  [[ -s $tbundle/pidfile ]] && { ok=1; break; }
  [[ -f $tbundle/exits/$id ]] && break
  sleep 0.025
done
t3=$(now)
cp "$restwork/restore.log" "$out/restore.log" 2>/dev/null
cp "$tmp/runc.log" "$out/runc.log" 2>/dev/null
if [[ $ok != 1 ]]; then
  say "FAIL: runc restore --lazy-pages did not start the container"
  tail -n 5 "$tmp/runc.log" | tee -a "$out/probe.txt"
  grep -E 'Error|Warn' "$out/restore.log" 2>/dev/null | tail -n 15 | tee -a "$out/probe.txt"
else
  say "restore returned after $(echo "$t3 - $t2" | bc) s; downtime (dump start -> running) $(echo "$t3 - $t0" | bc) s"
fi
for _ in $(seq 600); do
  r=$(last_round)
  [[ -n $r && $r -gt ${frozen:-0} ]] && break
  grep -q CORRUPT "$log" && break
  [[ -f $tbundle/exits/$id ]] && break
  sleep 0.05
done
t4=$(now)
if grep -q CORRUPT "$log"; then say "FAIL: memory CORRUPT after lazy restore"
elif [[ ${r:-0} -gt ${frozen:-0} ]]; then say "OK: verified round $r after lazy restore, $(echo "$t4 - $t0" | bc) s after dump start"
else say "FAIL: no verified round after restore (exit: $(cat "$tbundle/exits/$id" 2>/dev/null))"; fi

# Let the page transfer finish (or fail) and collect the logs.
for _ in $(seq 200); do kill -0 "$ckpt_pid" 2>/dev/null || break; sleep 0.05; done
if kill -0 "$ckpt_pid" 2>/dev/null; then say "runc checkpoint still running after 10 s (page server waiting)"
else wait "$ckpt_pid"; say "runc checkpoint exited with $?"; ckpt_pid=; fi
for _ in $(seq 100); do kill -0 "$lazy_pid" 2>/dev/null || break; sleep 0.05; done
if ! kill -0 "$lazy_pid" 2>/dev/null; then wait "$lazy_pid"; say "criu lazy-pages exited with $?"; lazy_pid=; fi
cp "$dumpwork/dump.log" "$out/dump.log" 2>/dev/null
cp "$restwork/lazy-pages.log" "$out/lazy-pages.log" 2>/dev/null
cp "$restwork/restore.log" "$out/restore.log" 2>/dev/null
for f in dump.log lazy-pages.log restore.log runc-checkpoint.out criu-lazy-pages.out; do
  [[ -s $out/$f ]] || continue
  errs=$(grep -E 'Error|error' "$out/$f" | tail -n 8)
  [[ -n $errs ]] && { say "--- $f errors:"; say "$errs"; }
done
exit 0
