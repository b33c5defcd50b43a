#!/usr/bin/env bash
# caskv's Consul-compatible API (/v1/) driven by the real py-consul client: makes a virtualenv in
# target/consul-venv with the exact versions in tests/consul_py/requirements.txt, builds caskv
# (`cargo build --bin caskv`, the debug build the tests already use) unless CASKV_BIN names a
# binary, then runs tests/consul_py/test_consul.py. Arguments are passed on to it (test names,
# e.g. `bash tests/consul_py/run.sh KVTest SessionTest.test_lock_acquire_contend_release`).
# Exits non-zero if a test fails, errs or is skipped, or if none ran.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/consul-venv
requirements=tests/consul_py/requirements.txt

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
# Quick when the pinned versions are already there (pip then asks no index).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

if [ -z "${CASKV_BIN:-}" ]; then
    cargo build --bin caskv
    CASKV_BIN="${CARGO_TARGET_DIR:-target}/debug/caskv"
fi
if [ ! -x "$CASKV_BIN" ]; then
    echo "consul_py: no caskv binary at $CASKV_BIN" >&2
    exit 1
fi
CASKV_BIN="$(cd "$(dirname "$CASKV_BIN")" && pwd)/$(basename "$CASKV_BIN")"
export CASKV_BIN

export PYTHONDONTWRITEBYTECODE=1  # leave no __pycache__ in the work tree
exec "$venv/bin/python" tests/consul_py/test_consul.py "$@"
