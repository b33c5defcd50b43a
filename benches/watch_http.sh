#!/usr/bin/env bash
# Issue #12's feed goal over HTTP: PUT throughput of `caskv serve` (wrk, create-only CAS PUTs
# of fresh keys, one wrk thread, 16 connections) with no change-feed consumer, and with one
# `GET /watch` consumer that reads at a tenth of the write rate (a Python client paced in
# events/s; after `event: lagged` it resumes from the last index it got). ROUNDS alternating
# rounds of SECONDS each; the median of each and the ratio. Every wrk run writes keys of its
# own (a key prefix per run): a create-only PUT of a key an earlier run wrote would be a 409
# and no write.
# Usage: benches/watch_http.sh [SECONDS] [ROUNDS]   (default: 5 3). Needs wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-3}"
port="${PORT:-18640}"
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "watch_http.sh: $tool is missing"; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d)
server=""
consumer=""
cleanup() {
  if [ -n "$consumer" ]; then kill "$consumer" 2>/dev/null || true; fi
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
./target/release/caskv serve --addr "127.0.0.1:$port" 2>/dev/null &
server=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
cat > "$work/put.lua" <<'LUA'
local n = 0
local run = "r"
init = function(args) run = args[1] or "r" end
request = function()
  n = n + 1
  return wrk.format("PUT", "/kv/" .. run .. "-" .. n, {["Content-Type"]="application/json"}, '{"value":"v","cas":0}')
end
done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
LUA
# The consumer: follows /watch, paced to RATE events/s; resumes after `lagged` from the last
# index it got; on SIGTERM writes "N events read, C cuts" to OUT.
cat > "$work/consumer.py" <<'PY'
import http.client, signal, sys, time
port, rate, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
events = cuts = 0
last = None
def done(*_):
    open(out, "w").write(f"{events} events read, {cuts} cuts")
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
start = time.monotonic()
while True:
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/watch", headers={} if last is None else {"Last-Event-ID": str(last)})
    r = c.getresponse()
    if r.status != 200:
        sys.stderr.write(f"consumer: {r.status} {r.read()[:200]!r}\n")
        last = None
        time.sleep(0.05)
        continue
    for line in r:
        if line.startswith(b"id: "):
            last = int(line[4:])
            events += 1
            ahead = events / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        elif line.startswith(b"event: lagged"):
            cuts += 1
PY
put() { # RUN -> requests/s (keys of their own: RUN names them)
  out=$(wrk -t1 -c16 -d"${secs}s" -s "$work/put.lua" "http://127.0.0.1:$port" -- "$1")
  if ! echo "$out" | grep -q '^non2xx 0$'; then echo "watch_http.sh: a PUT was refused" >&2; exit 1; fi
  echo "$out" | awk '/Requests\/sec/ {print $2}'
}
none=(); with=()
for r in $(seq "$rounds"); do
  rps=$(put "none$r"); none+=("$rps")
  rate=$(awk -v r="$rps" 'BEGIN {printf "%d", r / 10}')
  python3 "$work/consumer.py" "$port" "$rate" "$work/read.$r" &
  consumer=$!
  sleep 0.5
  rps2=$(put "with$r"); with+=("$rps2")
  kill "$consumer" 2>/dev/null || true
  wait "$consumer" 2>/dev/null || true
  consumer=""
  echo "round $r: no consumer ${rps} req/s; with a consumer paced at ${rate} events/s: ${rps2} req/s ($(cat "$work/read.$r"))"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m0=$(median "${none[@]}"); m1=$(median "${with[@]}")
echo "| no consumer (req/s) | with a consumer at 1/10 (req/s) | ratio |"
echo "|---:|---:|---:|"
echo "| $m0 | $m1 | $(awk -v a="$m0" -v b="$m1" 'BEGIN {printf "%.3f", b / a}') |"
