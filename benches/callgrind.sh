#!/usr/bin/env bash
# Instructions per single-thread operation, counted by callgrind (benches/instructions.rs):
# each op runs with N=0 and N=200,000; (Ir(N) - Ir(0)) / N is the cost of one operation with
# setup excluded. Counts are repeatable on a noisy machine; compare them across commits.
# Usage: benches/callgrind.sh [N]   (needs valgrind: apt-get install valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-200000}"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind not installed (apt-get install valgrind)"; exit 1; }
bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.executable != null and .target.name == "instructions") | .executable' | tail -1)
[ -x "$bin" ] || { echo "callgrind.sh: cannot build benches/instructions.rs"; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ir() { # OP N -> total instructions
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" --op "$1" --n "$2" 2>&1 \
    | awk '/Collected :/ {print $4}'
}
echo "callgrind.sh: N=$n, $(date -u), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "| op | instructions/op |"
echo "|---|---|"
for op in get pinned_get set set_cas stale_cas delete_set batch4 batch16 rwlock_get; do
  base=$(ir "$op" 0)
  total=$(ir "$op" "$n")
  echo "| $op | $(echo "scale=1; ($total - $base) / $n" | bc) |"
done
