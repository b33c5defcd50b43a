#!/usr/bin/env bash
# The server set of issue #6: `caskv serve` (in memory) against the ceiling of its HTTP stack
# (a bare hyper server answering a constant body, benches/hyper_baseline.rs) and against
# redis-server with redis-benchmark, in one run, loopback only, bounded in time.
#
# Servers are pinned to CPU 0 and load generators to CPU 1 (taskset), so neither steals the
# other's core. wrk (one thread, keep-alive) drives caskv and hyper; redis-benchmark drives Redis
# (pipeline depth 1, 64-byte values). caskv scenarios:
#   get     GET /kv/{key}, keys zipf(0.99) over 10,000 prefilled keys
#   put     PUT /kv/{key} unconditional, 64-byte value, keys uniform over 10,000
#   cas     PUT /kv/{key} with "cas": the last index this wrk thread saw for the key (from the
#           answer, 200 or 409), keys zipf(0.99): a read-then-CAS loop; 409s are counted
#   batch8  POST /batch/kv/set-cas of 8 fresh keys, all create-only
# Usage: benches/server.sh [SECONDS] [CONNECTION COUNTS]   (default: 5 "1 16 64 256")
# Needs wrk, redis-server, redis-benchmark, curl, jq, taskset (Debian: apt-get install wrk
# redis-server redis-tools curl jq util-linux); installs them when run as root and missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
conn_list="${2:-1 16 64 256}"
base_port="${PORT:-18610}"

need=()
for tool in wrk redis-server redis-benchmark curl jq taskset bc; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y wrk redis-server redis-tools curl jq util-linux bc >/dev/null
  else
    echo "server.sh: missing ${need[*]} (apt-get install wrk redis-server redis-tools curl jq bc)"; exit 1
  fi
fi

cargo build --release --quiet
hyper_bin=$(cargo bench --bench hyper_baseline --no-run --message-format=json 2>/dev/null \
  | jq -r 'select(.executable != null and .target.name == "hyper_baseline") | .executable' | tail -1)
[ -x "$hyper_bin" ] || { echo "server.sh: cannot build benches/hyper_baseline.rs"; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# `exec` so that a backgrounded `pin` is the server itself and `kill` reaches it.
pin() { if [ "$(nproc)" -ge 2 ]; then exec taskset -c "$1" "${@:2}"; else exec "${@:2}"; fi; }
wait_http() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return 0; sleep 0.1; done; echo "server.sh: $1 did not answer"; exit 1; }

caskv_port=$base_port; hyper_port=$((base_port + 1)); redis_port=$((base_port + 2))
(RUST_LOG=warn pin 0 ./target/release/caskv serve --addr "127.0.0.1:$caskv_port" --max-connections 4096 2>/dev/null) &
pids+=($!)
(pin 0 "$hyper_bin" --addr "127.0.0.1:$hyper_port") &
pids+=($!)
(pin 0 redis-server --port "$redis_port" --save '' --appendonly no --daemonize no --loglevel warning >/dev/null) &
pids+=($!)
wait_http "http://127.0.0.1:$caskv_port/health"
wait_http "http://127.0.0.1:$hyper_port/"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

value=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
# Prefill 10,000 keys k0..k9999 in batches of 1,000.
for b in $(seq 0 9); do
  items=$(seq $((b * 1000)) $((b * 1000 + 999)) | awk -v v="$value" '{printf "%s\"k%d\":\"%s\"", (NR>1?",":""), $1, v}')
  curl -sf -X POST "http://127.0.0.1:$caskv_port/batch/kv/set" -d "{\"items\":{$items}}" >/dev/null
done

zipf_lua='
local n, s = 10000, 0.99
local cdf = {}
local total = 0
for i = 1, n do total = total + 1 / (i ^ s); cdf[i] = total end
for i = 1, n do cdf[i] = cdf[i] / total end
-- Scramble ranks so hot keys are spread over the key space.
local function key_of(rank) return (rank * 7919) % n end
function zipf()
  local u, lo, hi = math.random(), 1, n
  while lo < hi do local mid = math.floor((lo + hi) / 2); if cdf[mid] < u then lo = mid + 1 else hi = mid end end
  return key_of(lo)
end
'
cat > "$work/get.lua" <<LUA
$zipf_lua
request = function() return wrk.format("GET", "/kv/k" .. zipf()) end
LUA
cat > "$work/put.lua" <<LUA
local body = '{"value":"$value"}'
request = function()
  return wrk.format("PUT", "/kv/k" .. math.random(0, 9999), {["Content-Type"]="application/json"}, body)
end
LUA
cat > "$work/cas.lua" <<LUA
$zipf_lua
local seen = {}
request = function()
  local k = "k" .. zipf()
  return wrk.format("PUT", "/kv/" .. k, {["Content-Type"]="application/json"},
    '{"value":"$value","cas":' .. (seen[k] or 1) .. '}')
end
response = function(status, headers, body)
  local k = body:match('"key":"([^"]+)"')
  local i = body:match('"modify_index":(%d+)') or body:match('"current":(%d+)')
  if k and i then seen[k] = tonumber(i) end
end
LUA
cat > "$work/batch8.lua" <<LUA
local n = 0
-- A fresh key prefix per run and per wrk thread: keys from an earlier run would make the
-- create-only batches fail.
math.randomseed(os.time() + math.floor(os.clock() * 1000000))
local id = math.random(1, 1000000000)
request = function()
  local items, expected = {}, {}
  for j = 1, 8 do
    n = n + 1
    local k = "b" .. id .. "-" .. n
    items[j] = '"' .. k .. '":"$value"'
    expected[j] = '"' .. k .. '":0'
  end
  return wrk.format("POST", "/batch/kv/set-cas", {["Content-Type"]="application/json"},
    '{"items":{' .. table.concat(items, ",") .. '},"expected_indices":{' .. table.concat(expected, ",") .. '}}')
end
LUA
cat > "$work/hyper.lua" <<LUA
request = function() return wrk.format("GET", "/kv/hot") end
LUA

# wrk PORT SCRIPT CONNS -> "rps p50 p99 non2xx"
run_wrk() {
  local out
  out=$(pin 1 wrk -t1 -c"$3" -d"${secs}s" --latency -s "$2" "http://127.0.0.1:$1" 2>&1)
  echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') \
$(echo "$out" | awk '$1=="50%" {print $2}') $(echo "$out" | awk '$1=="99%" {print $2}') \
$(echo "$out" | awk '/Non-2xx/ {print $5}' | grep . || echo 0)"
}
# redis TEST CONNS -> "rps p50 p99" (redis-benchmark 7 --csv: test,rps,avg,min,p50,p95,p99,max)
run_redis() {
  local n=$(( secs * 40000 ))
  pin 1 redis-benchmark -p "$redis_port" -t "$1" -c "$2" -n "$n" -P 1 -d 64 -r 10000 --csv 2>/dev/null \
    | awk -F'","' 'NR==2 {printf "%s %sms %sms", $2, $5, $7}'
}

echo "server.sh: ${secs}s per cell, connections: $conn_list; $(nproc) cores; $(date -u)"
echo "servers pinned to CPU 0, load generators to CPU 1; wrk -t1; redis-benchmark -P 1 -d 64"
echo
echo "| scenario | conns | caskv req/s | p50 | p99 | non-2xx | hyper GET req/s | redis req/s | caskv/hyper | caskv/redis |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for c in $conn_list; do
  read -r h_rps _ _ _ <<<"$(run_wrk "$hyper_port" "$work/hyper.lua" "$c")"
  read -r rg_rps _ _ <<<"$(run_redis get "$c")"
  read -r rs_rps _ _ <<<"$(run_redis set "$c")"
  for scenario in get put cas batch8; do
    read -r rps p50 p99 non2xx <<<"$(run_wrk "$caskv_port" "$work/$scenario.lua" "$c")"
    case $scenario in
      get) hy=$h_rps; rd=$rg_rps ;;
      put) hy=$h_rps; rd=$rs_rps ;;
      *) hy=""; rd="" ;;
    esac
    ratio_h=$([ -n "$hy" ] && echo "scale=3; $rps / $hy" | bc || echo "")
    ratio_r=$([ -n "$rd" ] && echo "scale=3; $rps / $rd" | bc || echo "")
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$scenario" "$c" "$rps" "$p50" "$p99" "$non2xx" \
      "$([ -n "$hy" ] && printf '%.0f' "$hy")" "$([ -n "$rd" ] && printf '%.0f' "$rd")" "$ratio_h" "$ratio_r"
  done
done
echo
echo "redis latencies (p50/p99) per connection count:"
for c in $conn_list; do
  echo "  c=$c GET $(run_redis get "$c" | awk '{print $2"/"$3}')  SET $(run_redis set "$c" | awk '{print $2"/"$3}')"
done
