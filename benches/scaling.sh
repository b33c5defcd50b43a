#!/usr/bin/env bash
# Thread scaling, 1 to 16 threads, for a session lent the 16-core machine (the `run` tool of
# /work/.library/device): the natural-shape YCSB-C / YCSB-B / YCSB-A runs of caskv and its
# peers, then the uncontended and hot-key CAS benches, each bounded in time so the whole
# script fits one device call (at most 10 minutes) with the build included.
# Usage: benches/scaling.sh [OUT_DIR]   (default: $OUT, else ./target/scaling)
# Writes workloads.txt and cas.txt (Markdown tables, as the benches print them) to OUT_DIR.
# Not part of CI; on 2 cores it runs, but the 4-16 thread rows only measure oversubscription.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-target/scaling}}"
mkdir -p "$out"
threads="${CASKV_BENCH_THREADS:-1,2,4,8,16}"
{
  echo "scaling.sh: $(date -u), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs"
  lscpu | grep -E 'Model name|^CPU\(s\)|L3' || true
} | tee "$out/machine.txt"
start=$(date +%s)
cargo bench --bench workloads --bench cas --no-run --quiet 2>&1 | tail -3
echo "scaling.sh: built in $(( $(date +%s) - start )) s"
# The read mixes and YCSB-A of the natural shapes, 1M and 1K keys, every thread count.
CASKV_BENCH_SHAPES=natural CASKV_BENCH_THREADS="$threads" CASKV_BENCH_SECS="${CASKV_BENCH_SECS:-0.5}" \
  timeout 270 cargo bench --bench workloads -- --quick YCSB-C YCSB-B YCSB-A \
  > "$out/workloads.txt" 2>&1 || echo "scaling.sh: workloads stopped early (status $?)"
CASKV_BENCH_THREADS="$threads" timeout 120 cargo bench --bench cas -- --quick \
  > "$out/cas.txt" 2>&1 || echo "scaling.sh: cas stopped early (status $?)"
echo "scaling.sh: done in $(( $(date +%s) - start )) s; tables in $out"
