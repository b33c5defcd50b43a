#!/usr/bin/env bash
# A quick loopback load test of the real server with wrk (Debian package `wrk`):
# GET of one hot key, and create-only CAS PUTs of fresh keys. Bounded in time, loopback only.
# Usage: benches/http_quick.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
conns="${2:-16}"
port="${PORT:-18577}"
command -v wrk >/dev/null || { echo "http_quick: wrk not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet
./target/release/caskv serve --addr "127.0.0.1:$port" 2>/dev/null &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -sf -X PUT "http://127.0.0.1:$port/kv/hot" -d '{"value":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}' >/dev/null
lua=$(mktemp --suffix .lua)
cat > "$lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local key = string.format("k-%d-%d", math.random(1, 1000000000), n)
  return wrap({ method = "PUT", path = "/kv/" .. key, body = '{"value":"v","cas":0}' })
end
function wrap(r) return wrk.format(r.method, r.path, {["Content-Type"]="application/json"}, r.body) end
LUA
echo "== GET /kv/hot: ${secs}s, ${conns} connections, 1 wrk thread =="
wrk -t1 -c"$conns" -d"${secs}s" --latency "http://127.0.0.1:$port/kv/hot" | grep -E "Requests/sec|Latency|99%|50%|Non-2xx"
echo "== PUT /kv/<fresh> with cas=0 (create-only CAS): ${secs}s, ${conns} connections =="
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port" | grep -E "Requests/sec|Latency|99%|50%|Non-2xx"
rm -f "$lua"
