#!/usr/bin/env bash
# A/B of server builds on the hot read: `GET /kv/hot` (64-byte value) against each caskv binary
# given and the bare hyper baseline (benches/hyper_baseline.rs, a constant body of the same
# JSON), rounds alternating, server pinned to CPU 0 and wrk (1 thread) to CPU 1, loopback.
# Prints requests/s per round and the median of each, per connection count.
# Usage: benches/server_ab.sh SECONDS "CONNECTION COUNTS" ROUNDS HYPER_BIN NAME=CASKV_BIN...
# e.g.   benches/server_ab.sh 5 "16 64 256" 3 /tmp/hyper-baseline before=/tmp/caskv-old after=target/release/caskv
set -euo pipefail
secs="$1"; conn_list="$2"; rounds="$3"; hyper_bin="$4"; shift 4
port="${PORT:-18620}"
value=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
# `exec`, so that a backgrounded `pin` is the server itself and `kill` reaches it.
pin() { if [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
wait_http() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "server_ab: $1 did not answer" >&2; exit 1; }
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null || true' EXIT
start() {  # NAME BIN
  if [ "$1" = hyper ]; then
    (pin 0 "$2" --addr "127.0.0.1:$port") & server=$!
    wait_http "http://127.0.0.1:$port/"
  else
    (RUST_LOG=warn pin 0 "$2" serve --addr "127.0.0.1:$port" --max-connections 4096 2>/dev/null) & server=$!
    wait_http "http://127.0.0.1:$port/health"
    curl -sf -X PUT "http://127.0.0.1:$port/kv/hot" -d "{\"value\":\"$value\"}" >/dev/null
    curl -sf "http://127.0.0.1:$port/kv/hot" | grep -q "$value"
  fi
}
stop() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; }
path_of() { if [ "$1" = hyper ]; then echo /; else echo /kv/hot; fi; }
declare -A results
names=(hyper)
bins=("$hyper_bin")
for arg in "$@"; do names+=("${arg%%=*}"); bins+=("${arg#*=}"); done
for c in $conn_list; do
  for r in $(seq "$rounds"); do
    for i in "${!names[@]}"; do
      name=${names[$i]}
      start "$name" "${bins[$i]}"
      out=$( (pin 1 wrk -t1 -c"$c" -d"${secs}s" --latency "http://127.0.0.1:$port$(path_of "$name")") )
      stop
      if grep -q "Non-2xx" <<<"$out"; then echo "server_ab: $name answered errors" >&2; echo "$out" >&2; exit 1; fi
      rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
      p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
      results["$c,$name"]+="$rps "
      echo "c=$c round $r $name: $rps req/s, p99 $p99"
    done
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| connections | $(printf '%s | ' "${names[@]}")"
for c in $conn_list; do
  line="| $c |"
  base=$(median ${results["$c,hyper"]})
  for name in "${names[@]}"; do
    m=$(median ${results["$c,$name"]})
    line+=" $m ($(awk -v m="$m" -v b="$base" 'BEGIN { printf "%.2f", m / b }')x) |"
  done
  echo "$line"
done
