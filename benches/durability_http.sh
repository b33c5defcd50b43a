#!/usr/bin/env bash
# Acknowledged CAS writes/s over HTTP at 64 keep-alive connections, in memory and for each
# --fsync policy, side by side in one run (issue #4's figures). The real `caskv serve` on
# loopback, pinned to CPU 0; wrk (Debian package `wrk`) pinned to CPU 1, one thread, 64
# connections, each request a create-only CAS (`cas: 0`) PUT of a fresh key with a 64-byte value.
# Usage: benches/durability_http.sh [SECONDS]   (default 10; bounded in time, loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
port="${PORT:-18578}"
command -v wrk >/dev/null || { echo "durability_http: wrk not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
lua=$(mktemp --suffix .lua)
data=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$lua" "$data"; }
trap cleanup EXIT
cat > "$lua" <<'LUA'
local n = 0
local value = string.rep("v", 64)
request = function()
  n = n + 1
  local key = string.format("k-%d-%d", math.random(1, 1000000000), n)
  return wrk.format("PUT", "/kv/" .. key, {["Content-Type"]="application/json"},
    '{"value":"' .. value .. '","cas":0}')
end
LUA
# `exec` so that a backgrounded `pin` is the server itself and `kill` reaches it.
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
echo "durability_http: ${secs}s per mode, 64 connections, $(nproc) cores, $(date -u)"
printf '%-10s %10s %9s %9s %9s %8s\n' mode "req/s" p50 p99 non2xx ratio
base=""
for mode in memory always everysec never; do
  port=$((port + 1)) # a fresh port per mode: the last server may still hold the old one
  args=(serve --addr "127.0.0.1:$port")
  if [ "$mode" != memory ]; then
    rm -rf "$data/$mode"
    args+=(--data-dir "$data/$mode" --fsync "$mode")
  fi
  (RUST_LOG=warn pin 0 ./target/release/caskv "${args[@]}" 2>/dev/null) &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "durability_http: $mode server did not start"; exit 1; }
  out=$(pin 1 wrk -t1 -c64 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port")
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  [ -z "$base" ] && base=$rps
  printf '%-10s %10.0f %9s %9s %9s %8.3f\n' "$mode" "$rps" "$p50" "$p99" "${non2xx:-0}" "$(echo "$rps / $base" | bc -l)"
done
