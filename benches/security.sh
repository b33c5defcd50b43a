#!/usr/bin/env bash
# Issue #15's goals: what access control and TLS cost a GET, against the same server without
# them, in one run, loopback only, bounded in time.
#
#   plain   caskv serve, no ACL file, plain HTTP
#   acl     --acl-file with 1,000 prefix rules (lengths 3 to 30 bytes) for the token sent, the
#           key's rule found by the longest-prefix lookup (the key matches rules at several
#           lengths), the token in `Authorization: Bearer`
#   tls     --tls-cert/--tls-key (a P-256 certificate made by openssl), HTTPS with keep-alive
#
# Each scenario: GET /kv/<key> of one 64-byte value, wrk with one thread and 16 keep-alive
# connections, ROUNDS rounds of SECONDS each, run alternately (plain, acl, tls, plain, …) so
# that drift of the machine hits all three alike; the median of each is reported, and the
# ratios to plain. The server is pinned to CPU 0 and wrk to CPU 1 (taskset).
# Usage: benches/security.sh [SECONDS] [ROUNDS]   (default: 5 3). Needs wrk (built with
# OpenSSL, as Debian's is), openssl, curl, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-3}"
port="${PORT:-18630}"
for tool in wrk openssl curl taskset; do
  command -v "$tool" >/dev/null || { echo "security.sh: $tool is missing"; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# 1,000 prefix rules; the benched key "svc/team-7/app/config/db" is matched at 4 lengths.
python3 - "$work/acl.json" <<'PY'
import json, sys
kv = {"": "deny", "svc/": "read", "svc/team-7/": "read", "svc/team-7/app/": "read",
      "svc/team-7/app/config/": "write"}
i = 0
while len(kv) < 1000:
    kv[f"svc/team-{i}/{'x' * (i % 20)}{i}/"] = "read" if i % 3 else "deny"
    i += 1
acl = {"default": "deny", "tokens": [{"name": "bench", "secret": "bench-token", "kv": kv}]}
json.dump(acl, open(sys.argv[1], "w"))
PY
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

key="svc/team-7/app/config/db"
value='0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef'

# start SCENARIO: serves it on $port, fills the key.
start() {
  local scheme=http extra=() curl_extra=()
  case "$1" in
    acl) extra=(--acl-file "$work/acl.json"); curl_extra=(-H "Authorization: Bearer bench-token") ;;
    tls) extra=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem"); scheme=https; curl_extra=(--cacert "$work/cert.pem") ;;
  esac
  taskset -c 0 ./target/release/caskv serve --addr "127.0.0.1:$port" "${extra[@]}" 2>/dev/null &
  server=$!
  for _ in $(seq 100); do
    curl -sf "${curl_extra[@]}" "$scheme://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.05
  done
  curl -sf "${curl_extra[@]}" -X PUT "$scheme://127.0.0.1:$port/kv/$key" \
    -d "{\"value\":\"$value\"}" >/dev/null
  url="$scheme://127.0.0.1:$port/kv/$key"
  header=()
  [ "$1" = acl ] && header=(-H "Authorization: Bearer bench-token")
  return 0
}

stop() { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; server=""; }

declare -A results
for r in $(seq "$rounds"); do
  for scenario in plain acl tls; do
    start "$scenario"
    rps=$(taskset -c 1 wrk -t1 -c16 -d"${secs}s" "${header[@]}" "$url" \
      | awk '/Requests\/sec/ {print $2}')
    non2xx=$(taskset -c 1 wrk -t1 -c1 -d1s "${header[@]}" "$url" | awk '/Non-2xx/ {print $NF}')
    [ -z "$non2xx" ] || { echo "security.sh: $scenario answered non-2xx"; exit 1; }
    results[$scenario]="${results[$scenario]:-} $rps"
    stop
    echo "round $r $scenario: $rps req/s"
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
plain=$(median "${results[plain]}")
acl=$(median "${results[acl]}")
tls=$(median "${results[tls]}")
echo
echo "| scenario | GET req/s (median of $rounds × ${secs}s, 16 connections) | ÷ plain |"
echo "|---|---:|---:|"
echo "| plain HTTP, no ACL | $plain | 1.00 |"
echo "| ACL, 1,000 prefix rules, bearer token | $acl | $(echo "scale=3; $acl / $plain" | bc) |"
echo "| TLS (keep-alive), no ACL | $tls | $(echo "scale=3; $tls / $plain" | bc) |"
