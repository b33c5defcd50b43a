#!/usr/bin/env bash
# Thread scaling, 1 to 16 threads, for a session lent the 16-core machine (the `run` tool of
# /work/.library/device): the natural-shape YCSB-C / YCSB-B / YCSB-A runs of caskv and its
# peers, then the uncontended and hot-key CAS benches.
#
# The device reaches nothing outside itself (no crates.io), so the benches are built here and
# carried there as two stripped executables (about 5 MB):
#   1. here:   benches/scaling.sh build            -> target/scaling-bin/{workloads,cas}
#   2. device: run(command: 'bash benches/scaling.sh run "$OUT"', carry: ["target/scaling-bin"],
#              timeout_s: 600)                      -> $OUT/{machine,workloads,cas}.txt
# Each bench is bounded in time so the run fits one device call (at most 10 minutes).
# Not part of CI. On 2 cores it runs too, but the 4-16 thread rows only measure
# oversubscription.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/scaling-bin
case "${1:-}" in
  build)
    mkdir -p "$bin"
    for bench in workloads cas; do
      exe=$(cargo bench --bench "$bench" --no-run --message-format=json 2>/dev/null \
        | jq -r "select(.executable != null and .target.name == \"$bench\") | .executable" | tail -1)
      [ -x "$exe" ] || { echo "scaling.sh: cannot build benches/$bench.rs"; exit 1; }
      cp "$exe" "$bin/$bench"
      strip "$bin/$bench"
    done
    ls -la "$bin"
    ;;
  run)
    out="${2:-${OUT:-target/scaling}}"
    mkdir -p "$out"
    threads="${CASKV_BENCH_THREADS:-1,2,4,8,16}"
    {
      echo "scaling.sh: $(date -u), $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs"
      lscpu | grep -E 'Model name|^CPU\(s\)|L3' || true
    } | tee "$out/machine.txt"
    start=$(date +%s)
    CASKV_BENCH_SHAPES=natural CASKV_BENCH_THREADS="$threads" CASKV_BENCH_SECS="${CASKV_BENCH_SECS:-0.5}" \
      timeout 330 "$bin/workloads" --bench --quick YCSB-C YCSB-B YCSB-A \
      > "$out/workloads.txt" 2>&1 || echo "scaling.sh: workloads stopped early (status $?)"
    CASKV_BENCH_THREADS="$threads" timeout 180 "$bin/cas" --bench --quick \
      > "$out/cas.txt" 2>&1 || echo "scaling.sh: cas stopped early (status $?)"
    echo "scaling.sh: done in $(( $(date +%s) - start )) s; tables in $out"
    ;;
  *)
    echo "usage: benches/scaling.sh build | run [OUT_DIR]"
    exit 2
    ;;
esac
