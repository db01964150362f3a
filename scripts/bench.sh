#!/bin/bash
# Checkpoint/restore benchmarks, side by side on the same workloads:
#   floor     runc checkpoint to tmpfs + runc restore, no transfer (what CRIU costs)
#   postcopy  runc --lazy-pages + criu lazy-pages + runc restore --lazy-pages (local)
#   ours      migrate-agent checkpoint --export FILE, copy, restore --import FILE
#   podman    podman container checkpoint --export (zstd), copy, restore --import
#   migration our live migration between two lab hosts (coordinator + agents, migrate CLI)
# Workloads: memhog holding 64/256/1024 MiB of incompressible (random) and
# compressible (text) data, a container whose writable layer holds 20000
# files of 1 KiB, and randrw-1024: the pagecheck payload with 1 GiB written
# and read at random by a client during the move (lab migrations only; the
# report sets post-copy's pages phase against stop-and-copy's stream).
# Each figure is the median of several runs, with min and max.
#
#   scripts/bench.sh [--quick] [--out DIR] [--runs N] [--sizes 64,256] [--modes random,text]
#                    [--files N] [--methods floor,ours,...] [--workloads randrw-1024,...]
#
# Writes DIR/runs.jsonl (one line per run), DIR/results.json, DIR/downtime.png
# and prints a table with ratios. BUILD_DIR=... uses an existing build tree.
# Needs root. --quick: 64 MiB both kinds + 2000 files, 2 runs (< 2 minutes).
# --workloads NAMES: only those (random-64, files-2000, randrw-1024, ...):
#   scripts/bench.sh --quick --workloads randrw-1024   # the post-copy throughput check
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=/var/tmp/migrate-bench-results
quick=0
runs=
sizes=
methods=floor,postcopy,ours,migration,migration-postcopy,podman
modes=random,text
files=
workloads=
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --runs) runs=$2; shift ;;
    --sizes) sizes=$2; shift ;;
    --methods) methods=$2; shift ;;
    --files) files=$2; shift ;;
    --modes) modes=$2; shift ;;
    --workloads) workloads=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $quick == 1 ]]; then
  : "${runs:=2}" "${sizes:=64}" "${files:=2000}"
else
  : "${runs:=3}" "${sizes:=64,256,1024}" "${files:=20000}"
fi

if [[ $(id -u) != 0 ]]; then
  echo "bench.sh: needs root (runc, CRIU, overlay mounts, cgroups)" >&2
  exit 2
fi

build=${BUILD_DIR:-$here/build-bench}
if [[ -z ${BUILD_DIR:-} ]]; then
  echo "bench.sh: building in $build" >&2
  cmake -S "$here" -B "$build" -DMIGRATE_WERROR=ON >/dev/null
  cmake --build "$build" --target migrate-agent migrate-coordinator migrate test-image memhog pagecheck -j2 >/dev/null
fi
for f in "$build/agent/migrate-agent" "$build/tests/test-image.tar"; do
  [[ -e $f ]] || { echo "bench.sh: $f missing (build migrate-agent and test-image)" >&2; exit 1; }
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out/runs.jsonl" "$out/results.json" "$out/notes.json" "$out/downtime.png" "$out"/timeline*

python3 "$here/bench/bench.py" measure --build "$build" --out "$out" --sizes "$sizes" \
  --modes "$modes" --files "$files" --runs "$runs" --methods "$methods" --workloads "$workloads"
python3 "$here/bench/bench.py" report --out "$out"

if ! grep -Eq '^[0-9]+ [0-9]' "$out/plot.dat"; then
  echo "bench.sh: no memhog workload measured, no downtime plot" >&2
elif command -v gnuplot >/dev/null; then
  gnuplot -e "datafile='$out/plot.dat'; outfile='$out/downtime.png'; methods='$(cat "$out/plot.methods")'; modes='${modes//,/ }'" \
    "$here/bench/downtime.gp" && echo "plot: $out/downtime.png"
else
  echo "bench.sh: gnuplot not installed, no plot (apt-get install gnuplot-nox)" >&2
fi
rows=$(awk '!/^#/ && $1 ~ /^[0-9]+$/ {print $1}' "$out/timeline.dat" 2>/dev/null | sort -u | wc -l)
if [ "${rows:-0}" -gt 0 ] && command -v gnuplot >/dev/null; then
  gnuplot -e "datafile='$out/timeline.dat'; downfile='$out/timeline-downtime.dat'; outfile='$out/timeline.png'; phases='$(cat "$out/timeline.phases")'; rows=$rows" \
    "$here/bench/timeline.gp" && echo "timeline: $out/timeline.png"
fi
echo "results: $out/results.json"
