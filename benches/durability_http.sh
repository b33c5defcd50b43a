#!/usr/bin/env bash
# Acknowledged CAS writes/s over HTTP at 64 keep-alive connections, in memory and for each
# --fsync policy, side by side in one run (issue #4's figures). The real `caskv serve` on
# loopback, pinned to CPU 0; wrk (Debian package `wrk`) pinned to CPU 1, one thread, 64
# connections, each request a create-only CAS (`cas: 0`) PUT of a fresh key with a 64-byte value.
# Then the peers a user would weigh against `--fsync always`, on the same disk and CPUs:
# - redis-server (Debian `redis-server`), `--appendonly yes --appendfsync always --save ''` on a
#   temp dir, pinned to CPU 0, loaded by `redis-benchmark -c 64 -t set -d 64 -r 1000000` pinned
#   to CPU 1 (RESP, not HTTP: wrk cannot speak it; a fresh random key per SET). redis-benchmark
#   counts requests, not seconds: a 1-second calibration run sizes `-n` to about SECONDS.
# - etcd (Debian `etcd-server`, v3.4), one member on a temp dir (it fsyncs its WAL before every
#   acknowledgement, like `always`), pinned to CPU 0, loaded by the same wrk on CPU 1 with a
#   `POST /v3/kv/put` of a fresh key (JSON over its gRPC gateway, base64 key and value).
# A peer that is not installed is skipped with a line saying so.
# Usage: benches/durability_http.sh [SECONDS]   (default 10; bounded in time, loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
port="${PORT:-18578}"
command -v wrk >/dev/null || { echo "durability_http: wrk not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/caskv"
lua=$(mktemp --suffix .lua)
data=$(mktemp -d)
server=""
etcd_lua=$(mktemp --suffix .lua)
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$lua" "$etcd_lua" "$data"; }
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
cat > "$etcd_lua" <<'LUA'
local n = 0
local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  return ((s:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2^i - b % 2^(i-1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2^(6-i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#s % 3 + 1])
end
local value = b64(string.rep("v", 64))
request = function()
  n = n + 1
  local key = b64(string.format("k-%d-%d", math.random(1, 1000000000), n))
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"},
    '{"key":"' .. key .. '","value":"' .. value .. '"}')
end
LUA
# `exec` so that a backgrounded `pin` is the server itself and `kill` reaches it.
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
echo "durability_http: ${secs}s per mode, 64 connections, $(nproc) cores, $(date -u)"
printf '%-10s %10s %9s %9s %9s %8s\n' mode "req/s" p50 p99 non2xx ratio
# Prints one table row from wrk's output: requests/s, p50, p99, non-2xx, ratio to in-memory.
row() {
  local rps p50 p99 non2xx
  rps=$(echo "$2" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$2" | awk '$1=="50%" {print $2}')
  p99=$(echo "$2" | awk '$1=="99%" {print $2}')
  non2xx=$(echo "$2" | awk '/Non-2xx/ {print $5}')
  [ -z "$base" ] && base=$rps
  printf '%-10s %10.0f %9s %9s %9s %8.3f\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}" "$(echo "$rps / $base" | bc -l)"
}
base=""
for mode in memory always everysec never; do
  port=$((port + 1)) # a fresh port per mode: the last server may still hold the old one
  args=(serve --addr "127.0.0.1:$port")
  if [ "$mode" != memory ]; then
    rm -rf "$data/$mode"
    args+=(--data-dir "$data/$mode" --fsync "$mode")
  fi
  (RUST_LOG=warn pin 0 "$bin" "${args[@]}" 2>/dev/null) &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "durability_http: $mode server did not start"; exit 1; }
  out=$(pin 1 wrk -t1 -c64 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port")
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""
  row "$mode" "$out"
done

# redis-server, appendfsync always.
if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null; then
  port=$((port + 1))
  mkdir -p "$data/redis"
  (pin 0 redis-server --port "$port" --bind 127.0.0.1 --dir "$data/redis" --appendonly yes \
    --appendfsync always --save '' --daemonize no --loglevel warning >/dev/null 2>&1) &
  server=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  bench() { (pin 1 redis-benchmark -p "$port" -c 64 -t set -d 64 -r 1000000 -n "$1" --csv); }
  rate=$(bench 20000 | awk -F'"' '/"SET"/ {print int($4)}')
  out=$(bench $((rate * secs)))
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  echo "$out" | awk -F'"' -v base="$base" '/"SET"/ {
    printf "%-10s %10.0f %8.2fms %8.2fms %9s %8.3f\n", "redis", $4, $10, $14, "-", $4 / base }'
else
  echo "redis      skipped: redis-server / redis-benchmark not installed (apt-get install redis-server redis-tools)"
fi

# etcd: one member; every put is in its fsynced WAL before the answer.
if command -v etcd >/dev/null; then
  port=$((port + 1)); peer=$((port + 1000))
  (pin 0 etcd --name bench --data-dir "$data/etcd" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error >/dev/null 2>&1) &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "durability_http: etcd did not start"; exit 1; }
  out=$(pin 1 wrk -t1 -c64 -d"${secs}s" --latency -s "$etcd_lua" "http://127.0.0.1:$port")
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""
  row etcd "$out"
else
  echo "etcd       skipped: etcd not installed (apt-get install etcd-server)"
fi
