#!/usr/bin/env bash
# Issue #13's throughput goal: `GET /v1/kv/{key}` (Consul's face) against `GET /kv/{key}` (the
# native one) on the same server in the same run, one hot 64-byte key, loopback. Rounds
# alternate the two faces; the summary is the median of each and their ratio.
# Server pinned to CPU 0 and wrk to CPU 1 when `taskset` exists (2-core machines).
# Usage: benches/consul_http.sh [SECONDS] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
conns="${2:-64}"
rounds="${3:-3}"
port="${PORT:-18578}"
command -v wrk >/dev/null || { echo "consul_http: wrk not installed (apt-get install wrk)"; exit 1; }
pin_server=()
pin_client=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0)
  pin_client=(taskset -c 1)
fi
cargo build --release --quiet
"${pin_server[@]}" ./target/release/caskv serve --addr "127.0.0.1:$port" 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
value=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
curl -sf -X PUT "http://127.0.0.1:$port/kv/hot" -d "{\"value\":\"$value\"}" >/dev/null
# Both faces must answer 200 with the value before anything is timed.
curl -sf "http://127.0.0.1:$port/kv/hot" | grep -q "$value"
curl -sf "http://127.0.0.1:$port/v1/kv/hot" | grep -q '"Key":"hot"'
run() {
  "${pin_client[@]}" wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port$1" |
    tee /dev/stderr | awk '/Non-2xx/ { bad = 1 } /Requests\/sec/ { rps = $2 } END { if (bad) exit 1; print rps }'
}
native=()
consul=()
for r in $(seq "$rounds"); do
  echo "== round $r: GET /kv/hot, ${secs}s, ${conns} connections ==" >&2
  native+=("$(run /kv/hot)")
  echo "== round $r: GET /v1/kv/hot, ${secs}s, ${conns} connections ==" >&2
  consul+=("$(run /v1/kv/hot)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
n=$(median "${native[@]}")
c=$(median "${consul[@]}")
echo "native GET /kv/hot    req/s per round: ${native[*]}  median $n"
echo "Consul GET /v1/kv/hot req/s per round: ${consul[*]}  median $c"
awk -v n="$n" -v c="$c" 'BEGIN { printf "Consul / native: %.3f\n", c / n }'
