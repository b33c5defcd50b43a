"""caskv's Consul-compatible API (`/v1/`), driven by the real, unchanged py-consul client.

How to run it: `bash tests/consul_py/run.sh` from anywhere in the repository. The script makes a
virtualenv in target/consul-venv (the exact versions in requirements.txt), builds `caskv` with
`cargo build --bin caskv` unless CASKV_BIN names a binary already built, and runs this file with
the venv's python. By hand, with the venv in place: `CASKV_BIN=target/debug/caskv
target/consul-venv/bin/python tests/consul_py/test_consul.py` (add test names, e.g.
`KVTest.test_cas_zero_is_create_only`, to run only those). Each test class starts its own
in-memory `caskv serve --addr 127.0.0.1:<free port> --min-session-ttl 1s`, waits for
`GET /health`, and stops it at the end; when a test fails, what the server printed during that
test is printed after it. The last line is `N passed, N failed`; the exit code is non-zero if any
test failed, erred or was skipped, or if none ran.

Every call below is py-consul's public API as its source (consul/api/*.py, version pinned in
requirements.txt) defines it, with one exception: `Session.create` asserts 10 <= ttl <= 86400 on
the client, so the session with a 2 s TTL is created with the very body `create` would send,
through py-consul's own HTTP transport and response callback (`_create_session`). A failed
transaction's 409 body is read from the ClientError py-consul raises ("409 <body>").
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

# Variables the client or the server would otherwise read from whatever environment runs this:
# a token or address meant for some real Consul, a proxy, or caskv's own settings.
for _name in list(os.environ):
    if _name.upper().startswith(("CONSUL_", "CASKV_")) and _name != "CASKV_BIN":
        del os.environ[_name]
    elif _name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        del os.environ[_name]

import consul  # noqa: E402  (after the environment is cleaned: py-consul reads it)
from consul.callback import CB  # noqa: E402
from consul.exceptions import ClientError, NotFound  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


def caskv_bin() -> str:
    path = os.environ.get("CASKV_BIN") or os.path.join(REPO, "target", "debug", "caskv")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no caskv binary at {path}: build it (cargo build --bin caskv) or set CASKV_BIN")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """One `caskv serve` in memory on a free loopback port; its output goes to a temporary file."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = tempfile.NamedTemporaryFile(prefix="caskv-consul-", suffix=".log", delete=False)
        self.log_path = self.log.name

    def start(self) -> None:
        binary = caskv_bin()
        last_error = ""
        for _attempt in range(3):  # a port taken between free_port() and the bind: try another
            self.port = free_port()
            args = [binary, "serve", "--addr", f"{HOST}:{self.port}", "--min-session-ttl", "1s"]
            self.log.write(f"$ {' '.join(args)}\n".encode())
            self.log.flush()
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = f"caskv serve exited with status {self.proc.returncode} before answering /health"
                    break
                try:
                    with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2) as r:
                        if r.status == 200:
                            return
                        last_error = f"GET /health answered {r.status}"
                except (urllib.error.URLError, ConnectionError, OSError) as e:
                    last_error = f"GET /health: {e}"
                time.sleep(0.05)
            else:
                self.stop()
                raise RuntimeError(
                    f"caskv serve did not answer GET /health with 200 within {START_TIMEOUT_S:.0f} s "
                    f"({last_error})\n{self.output()}"
                )
            if "address already in use" not in self.output().lower():
                break
        raise RuntimeError(f"{last_error}\n{self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def output(self, start: int = 0) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def log_size(self) -> int:
        self.log.flush()
        return os.path.getsize(self.log_path)

    def close(self) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log_path)


class ServerTest(unittest.TestCase):
    """A test class with its own server; `self.c` is a py-consul client for it."""

    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server()
        try:
            cls.server.start()
        except BaseException:
            cls.server.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        died = cls.server.proc is not None and cls.server.proc.poll() is not None
        output = cls.server.output()
        cls.server.close()
        if died:
            raise AssertionError(f"caskv serve exited during {cls.__name__}:\n{output}")

    def client(self) -> consul.Consul:
        return consul.Consul(HOST, self.server.port)

    def setUp(self) -> None:
        self.c = self.client()

    def run(self, result=None):
        # Print what the server said during a test that failed or erred (after unittest's line).
        before = self.server.log_size() if hasattr(type(self), "server") else 0
        counted = (len(result.failures), len(result.errors)) if result is not None else None
        out = super().run(result)
        if result is not None and counted != (len(result.failures), len(result.errors)):
            try:
                text = self.server.output(before)
            except (OSError, ValueError, AttributeError):
                text = "(no server output)"
            sys.stderr.write(f"\n--- caskv serve output during {self.id()} ---\n{text}--- end ---\n")
        return out

    # --- helpers ---

    def get(self, key: str):
        """The entry for *key*, or None (the index must still come back)."""
        index, entry = self.c.kv.get(key)
        self.assertGreaterEqual(int(index), 1)
        return entry

    def poll(self, what: str, predicate, timeout: float = 10.0, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = predicate()
            if last:
                return last
            if time.monotonic() >= deadline:
                self.fail(f"{what}: still not so after {timeout:.0f} s")
            time.sleep(interval)


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


class KVTest(ServerTest):
    def test_put_get_round_trips_bytes(self):
        for key, value in [
            ("kv/bytes", b"\xff\x00\x01"),
            ("kv/text", b"hello world"),
            ("kv/utf8", "h\u00e9llo \u2603".encode()),
            ("kv/big", bytes(range(256)) * 64),
        ]:
            with self.subTest(key=key):
                self.assertIs(self.c.kv.put(key, value), True)
                entry = self.get(key)
                self.assertEqual(entry["Key"], key)
                self.assertEqual(entry["Value"], value)
                self.assertEqual(entry["Flags"], 0)
                self.assertEqual(entry["LockIndex"], 0)
                self.assertNotIn("Session", entry)
        # A str value is sent as it is; it comes back as bytes (py-consul base64-decodes Value).
        self.assertIs(self.c.kv.put("kv/str", "plain"), True)
        self.assertEqual(self.get("kv/str")["Value"], b"plain")

    def test_put_without_value_stores_an_empty_value(self):
        # py-consul sends no body for value=None; Consul answers Value: null for an empty value.
        self.assertIs(self.c.kv.put("kv/empty", None), True)
        entry = self.get("kv/empty")
        self.assertEqual(entry["Key"], "kv/empty")
        self.assertIsNone(entry["Value"])

    def test_get_missing_key_is_none_with_an_index(self):
        index, entry = self.c.kv.get("kv/missing/never-written")
        self.assertIsNone(entry)
        self.assertIsInstance(index, str)  # the X-Consul-Index header, as py-consul hands it back
        self.assertGreaterEqual(int(index), 1)

    def test_flags_round_trip(self):
        self.assertIs(self.c.kv.put("kv/flags", b"f", flags=42), True)
        self.assertEqual(self.get("kv/flags")["Flags"], 42)
        self.assertIs(self.c.kv.put("kv/flags-max", b"f", flags=2**64 - 1), True)
        self.assertEqual(self.get("kv/flags-max")["Flags"], 2**64 - 1)
        # A later put without flags sets them back to 0, as in Consul.
        self.assertIs(self.c.kv.put("kv/flags", b"g"), True)
        self.assertEqual(self.get("kv/flags")["Flags"], 0)

    def test_indices(self):
        self.assertIs(self.c.kv.put("kv/idx", b"1"), True)
        index1, first = self.c.kv.get("kv/idx")
        self.assertGreaterEqual(first["CreateIndex"], 1)
        self.assertEqual(first["ModifyIndex"], first["CreateIndex"])
        self.assertGreaterEqual(int(index1), first["ModifyIndex"])
        self.assertIs(self.c.kv.put("kv/idx", b"2"), True)
        index2, second = self.c.kv.get("kv/idx")
        self.assertEqual(second["CreateIndex"], first["CreateIndex"])
        self.assertGreater(second["ModifyIndex"], first["ModifyIndex"])
        self.assertGreaterEqual(int(index2), second["ModifyIndex"])
        self.assertGreater(int(index2), int(index1))
        # A write to another key moves the store's index past this key's ModifyIndex.
        self.assertIs(self.c.kv.put("kv/idx-other", b"x"), True)
        other = self.get("kv/idx-other")
        self.assertGreater(other["CreateIndex"], second["ModifyIndex"])

    def _tree(self, prefix: str):
        for key in ["a", "b", "c/d", "c/e/f"]:
            self.assertIs(self.c.kv.put(f"{prefix}/{key}", f"v-{key}".encode()), True)
        self.assertIs(self.c.kv.put(f"{prefix}q", b"sibling"), True)  # shares the prefix without the /

    def test_recurse(self):
        self._tree("rec")
        index, entries = self.c.kv.get("rec/", recurse=True)
        self.assertGreaterEqual(int(index), 1)
        self.assertEqual([e["Key"] for e in entries], ["rec/a", "rec/b", "rec/c/d", "rec/c/e/f"])
        self.assertEqual([e["Value"] for e in entries], [b"v-a", b"v-b", b"v-c/d", b"v-c/e/f"])
        # Without the slash the prefix also matches the sibling.
        _, entries = self.c.kv.get("rec", recurse=True)
        self.assertEqual([e["Key"] for e in entries], ["rec/a", "rec/b", "rec/c/d", "rec/c/e/f", "recq"])
        # A prefix nothing is under: (index, None), as for a missing key.
        index, entries = self.c.kv.get("rec-none/", recurse=True)
        self.assertIsNone(entries)
        self.assertGreaterEqual(int(index), 1)

    def test_keys(self):
        self._tree("keys")
        _, keys = self.c.kv.get("keys/", keys=True)
        self.assertEqual(keys, ["keys/a", "keys/b", "keys/c/d", "keys/c/e/f"])
        _, keys = self.c.kv.get("keys/", keys=True, separator="/")
        self.assertEqual(keys, ["keys/a", "keys/b", "keys/c/"])
        _, keys = self.c.kv.get("keys/c/", keys=True, separator="/")
        self.assertEqual(keys, ["keys/c/d", "keys/c/e/"])
        _, keys = self.c.kv.get("keys", keys=True, separator="/")
        self.assertEqual(keys, ["keys/", "keysq"])
        index, keys = self.c.kv.get("keys-none/", keys=True)
        self.assertIsNone(keys)
        self.assertGreaterEqual(int(index), 1)

    def test_delete(self):
        self.assertIs(self.c.kv.put("del/one", b"1"), True)
        self.assertIs(self.c.kv.delete("del/one"), True)
        self.assertIsNone(self.get("del/one"))
        # Deleting a key that is not there succeeds too.
        self.assertIs(self.c.kv.delete("del/one"), True)

    def test_delete_recurse(self):
        self._tree("delr")
        self.assertIs(self.c.kv.delete("delr/", recurse=True), True)
        _, entries = self.c.kv.get("delr/", recurse=True)
        self.assertIsNone(entries)
        self.assertEqual(self.get("delrq")["Value"], b"sibling")

    def test_delete_without_recurse_deletes_only_the_key(self):
        self._tree("delk")
        self.assertIs(self.c.kv.delete("delk/a"), True)
        _, keys = self.c.kv.get("delk/", keys=True)
        self.assertEqual(keys, ["delk/b", "delk/c/d", "delk/c/e/f"])

    def test_cas_zero_is_create_only(self):
        self.assertIs(self.c.kv.put("cas/zero", b"first", cas=0), True)
        self.assertIs(self.c.kv.put("cas/zero", b"second", cas=0), False)
        self.assertEqual(self.get("cas/zero")["Value"], b"first")

    def test_cas_with_modify_index(self):
        self.assertIs(self.c.kv.put("cas/mi", b"1"), True)
        entry = self.get("cas/mi")
        stale = entry["ModifyIndex"]
        self.assertIs(self.c.kv.put("cas/mi", b"2", cas=stale), True)
        after = self.get("cas/mi")
        self.assertEqual(after["Value"], b"2")
        self.assertGreater(after["ModifyIndex"], stale)
        self.assertIs(self.c.kv.put("cas/mi", b"3", cas=stale), False)
        self.assertEqual(self.get("cas/mi")["Value"], b"2")
        self.assertIs(self.c.kv.put("cas/mi", b"3", cas=after["ModifyIndex"]), True)
        self.assertEqual(self.get("cas/mi")["Value"], b"3")
        # A non-zero cas on a key that does not exist fails.
        self.assertIs(self.c.kv.put("cas/absent", b"x", cas=after["ModifyIndex"]), False)
        self.assertIsNone(self.get("cas/absent"))

    def test_delete_with_cas(self):
        self.assertIs(self.c.kv.put("cas/del", b"1"), True)
        stale = self.get("cas/del")["ModifyIndex"]
        self.assertIs(self.c.kv.put("cas/del", b"2"), True)
        current = self.get("cas/del")["ModifyIndex"]
        self.assertIs(self.c.kv.delete("cas/del", cas=stale), False)
        self.assertEqual(self.get("cas/del")["Value"], b"2")
        self.assertIs(self.c.kv.delete("cas/del", cas=current), True)
        self.assertIsNone(self.get("cas/del"))


class BlockingTest(ServerTest):
    def test_blocking_get_is_woken_by_a_put(self):
        self.assertIs(self.c.kv.put("block/k", b"before"), True)
        index, entry = self.c.kv.get("block/k")
        self.assertEqual(entry["Value"], b"before")
        got = {}

        def waiter():
            start = time.monotonic()
            try:
                got["result"] = self.client().kv.get("block/k", index=index, wait="5s")
            except BaseException as e:  # reported by the main thread
                got["error"] = e
            got["elapsed"] = time.monotonic() - start

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        time.sleep(0.5)
        self.assertTrue(t.is_alive(), f"the blocking get returned before any write: {got}")
        self.assertIs(self.c.kv.put("block/k", b"after"), True)
        t.join(timeout=10)
        self.assertFalse(t.is_alive(), "the blocking get did not return within 10 s")
        if "error" in got:
            raise got["error"]
        self.assertLess(got["elapsed"], 3.0)
        new_index, new_entry = got["result"]
        self.assertGreater(int(new_index), int(index))
        self.assertEqual(new_entry["Value"], b"after")
        self.assertEqual(int(new_index), new_entry["ModifyIndex"])

    def test_blocking_get_times_out_with_the_same_index(self):
        self.assertIs(self.c.kv.put("block/still", b"same"), True)
        index, _ = self.c.kv.get("block/still")
        start = time.monotonic()
        new_index, entry = self.c.kv.get("block/still", index=index, wait="1s")
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 3.0)
        self.assertEqual(new_index, index)
        self.assertEqual(entry["Value"], b"same")


class CasLoopTest(ServerTest):
    THREADS = 8
    INCREMENTS = 25

    def test_concurrent_increments_lose_nothing(self):
        key = "casloop/counter"
        self.assertIs(self.c.kv.put(key, b"0"), True)
        errors = []
        conflicts = [0] * self.THREADS
        deadline = time.monotonic() + 120

        def worker(n: int):
            c = consul.Consul(HOST, self.server.port)
            try:
                for _ in range(self.INCREMENTS):
                    while True:
                        if time.monotonic() > deadline:
                            raise RuntimeError("gave up after 120 s")
                        _, entry = c.kv.get(key)
                        value = int(entry["Value"])
                        if c.kv.put(key, str(value + 1).encode(), cas=entry["ModifyIndex"]):
                            break
                        conflicts[n] += 1
            except BaseException as e:
                errors.append(f"thread {n}: {e!r}")

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(self.THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=150)
        self.assertFalse(any(t.is_alive() for t in threads), "a worker is still running")
        self.assertEqual(errors, [])
        self.assertEqual(self.get(key)["Value"], str(self.THREADS * self.INCREMENTS).encode())
        sys.stderr.write(f"({sum(conflicts)} cas conflicts) ")


def _create_session(c: consul.Consul, name: str, ttl: str, behavior: str = "release") -> str:
    """`c.session.create(name=name, ttl=..., behavior=behavior, lock_delay=0)` for a TTL below
    py-consul's client-side floor of 10 s: the same request body, sent through the same
    transport and callback (`CB.json(is_id=True)`)."""
    data = {"name": name, "lockdelay": "0s", "ttl": ttl}
    if behavior != "release":
        data["behavior"] = behavior
    return c.http.put(CB.json(is_id=True), "/v1/session/create", params=[], headers={}, data=json.dumps(data))


class SessionTest(ServerTest):
    def test_create_info_list_renew(self):
        s = self.c.session.create(name="sess-info", ttl=10, behavior="release", lock_delay=0)
        self.assertIsInstance(s, str)
        self.assertTrue(s)
        index, info = self.c.session.info(s)
        self.assertGreaterEqual(int(index), 1)
        self.assertEqual(info["ID"], s)
        self.assertEqual(info["Name"], "sess-info")
        self.assertEqual(info["Behavior"], "release")
        self.assertEqual(info["TTL"], "10s")
        self.assertEqual(info["LockDelay"], 0)  # a Go duration: nanoseconds
        self.assertGreaterEqual(info["CreateIndex"], 1)
        index, sessions = self.c.session.list()
        self.assertGreaterEqual(int(index), 1)
        self.assertIn(s, [x["ID"] for x in sessions])
        renewed = self.c.session.renew(s)
        self.assertEqual(renewed["ID"], s)
        self.assertEqual(renewed["TTL"], "10s")
        self.assertIs(self.c.session.destroy(s), True)
        _, info = self.c.session.info(s)
        self.assertIsNone(info)
        _, sessions = self.c.session.list()
        self.assertNotIn(s, [x["ID"] for x in sessions])
        # Renewing a session that is gone is a 404, which py-consul raises as NotFound.
        with self.assertRaises(NotFound):
            self.c.session.renew(s)

    def test_default_session_has_consuls_defaults(self):
        s = self.c.session.create()
        _, info = self.c.session.info(s)
        self.assertEqual(info["ID"], s)
        self.assertEqual(info["Behavior"], "release")
        self.assertEqual(info["LockDelay"], 15 * 10**9)
        self.assertEqual(info["TTL"], "")
        self.assertIs(self.c.session.destroy(s), True)

    def test_lock_acquire_contend_release(self):
        key = "lock/a"
        s1 = self.c.session.create(name="s1", ttl=30, behavior="release", lock_delay=0)
        s2 = self.c.session.create(name="s2", ttl=30, behavior="release", lock_delay=0)
        self.assertNotEqual(s1, s2)
        try:
            self.assertIs(self.c.kv.put(key, b"held-by-1", acquire=s1), True)
            self.assertIs(self.c.kv.put(key, b"held-by-2", acquire=s2), False)
            entry = self.get(key)
            self.assertEqual(entry["Session"], s1)
            self.assertEqual(entry["LockIndex"], 1)
            self.assertEqual(entry["Value"], b"held-by-1")
            # The holder may acquire again (it updates the value, not the LockIndex).
            self.assertIs(self.c.kv.put(key, b"again-1", acquire=s1), True)
            entry = self.get(key)
            self.assertEqual(entry["LockIndex"], 1)
            self.assertEqual(entry["Value"], b"again-1")
            # Only the holder can release.
            self.assertIs(self.c.kv.put(key, b"x", release=s2), False)
            self.assertIs(self.c.kv.put(key, b"released", release=s1), True)
            entry = self.get(key)
            self.assertNotIn("Session", entry)
            self.assertEqual(entry["Value"], b"released")
            self.assertEqual(entry["LockIndex"], 1)
            self.assertIs(self.c.kv.put(key, b"held-by-2", acquire=s2), True)
            entry = self.get(key)
            self.assertEqual(entry["Session"], s2)
            self.assertEqual(entry["LockIndex"], 2)
            # Destroying the holder releases the lock and keeps the key (behavior=release).
            self.assertIs(self.c.session.destroy(s2), True)
            entry = self.get(key)
            self.assertNotIn("Session", entry)
            self.assertEqual(entry["Value"], b"held-by-2")
            self.assertIs(self.c.kv.put(key, b"held-by-1", acquire=s1), True)
            self.assertEqual(self.get(key)["LockIndex"], 3)
        finally:
            self.c.session.destroy(s1)
            self.c.session.destroy(s2)

    def test_acquire_with_unknown_session_fails(self):
        # Consul answers 500 ("invalid session") for a session that does not exist.
        unknown = "00000000-0000-0000-0000-000000000000"
        with self.assertRaises(consul.ConsulException):
            self.c.kv.put("lock/unknown", b"v", acquire=unknown)
        self.assertIsNone(self.get("lock/unknown"))

    def test_unrenewed_ttl_session_expires_and_releases(self):
        key = "lock/ttl"
        s = _create_session(self.c, "short", "2s")
        _, info = self.c.session.info(s)
        self.assertEqual(info["TTL"], "2s")
        self.assertIs(self.c.kv.put(key, b"v", acquire=s), True)
        # Renewed every half second, it outlives its TTL several times over.
        for _ in range(10):
            time.sleep(0.5)
            self.assertEqual(self.c.session.renew(s)["ID"], s)
        self.assertEqual(self.get(key)["Session"], s)
        # Left alone, it expires (Consul allows up to twice the TTL) and its lock is released.
        renewed_at = time.monotonic()
        self.poll("the unrenewed session is gone", lambda: self.c.session.info(s)[1] is None)
        self.assertGreaterEqual(time.monotonic() - renewed_at, 1.5)

        def released():
            entry = self.get(key)
            return entry if "Session" not in entry else None

        entry = self.poll("the expired session's lock is released", released)
        self.assertEqual(entry["Value"], b"v")
        self.assertNotIn(s, [x["ID"] for x in self.c.session.list()[1]])

    def test_behavior_delete_deletes_the_held_key(self):
        s = self.c.session.create(name="eph", ttl=30, behavior="delete", lock_delay=0)
        _, info = self.c.session.info(s)
        self.assertEqual(info["Behavior"], "delete")
        self.assertIs(self.c.kv.put("eph/k", b"v", acquire=s), True)
        self.assertIs(self.c.kv.put("eph/other", b"w"), True)
        self.assertIs(self.c.session.destroy(s), True)
        self.assertIsNone(self.get("eph/k"))
        self.assertEqual(self.get("eph/other")["Value"], b"w")


class TxnTest(ServerTest):
    def test_txn_succeeds(self):
        self.assertIs(self.c.kv.put("txn/existing", b"old"), True)
        existing = self.get("txn/existing")
        self.assertIs(self.c.kv.put("txn/gone", b"bye"), True)
        result = self.c.txn.put([
            {"KV": {"Verb": "set", "Key": "txn/a", "Value": b64(b"\xff\x00\x01")}},
            {"KV": {"Verb": "set", "Key": "txn/b", "Value": b64("B"), "Flags": 7}},
            {"KV": {"Verb": "check-index", "Key": "txn/existing", "Index": existing["ModifyIndex"]}},
            {"KV": {"Verb": "cas", "Key": "txn/existing", "Value": b64("new"), "Index": existing["ModifyIndex"]}},
            # Ops run in order: this get sees the set above.
            {"KV": {"Verb": "get", "Key": "txn/a"}},
            {"KV": {"Verb": "check-not-exists", "Key": "txn/never"}},
            {"KV": {"Verb": "delete", "Key": "txn/gone"}},
        ])
        self.assertIsInstance(result, dict)
        self.assertIsNone(result.get("Errors"))
        results = [r["KV"] for r in result["Results"]]
        # One result per op but check-not-exists and delete (Consul returns none for those):
        # set, set, check-index, cas, get.
        self.assertEqual([r["Key"] for r in results], ["txn/a", "txn/b", "txn/existing", "txn/existing", "txn/a"])
        # Only a get carries the value (base64, as py-consul leaves it); the others send null.
        self.assertEqual(base64.b64decode(results[4]["Value"]), b"\xff\x00\x01")
        for r in results[:4]:
            self.assertIsNone(r["Value"])
        self.assertEqual(results[1]["Flags"], 7)
        # check-index answers the entry as it was; every write lands at one index above it.
        self.assertEqual(results[2]["ModifyIndex"], existing["ModifyIndex"])
        indices = {results[i]["ModifyIndex"] for i in (0, 1, 3, 4)}
        self.assertEqual(len(indices), 1, results)
        self.assertGreater(indices.pop(), existing["ModifyIndex"])
        self.assertEqual(results[3]["CreateIndex"], existing["CreateIndex"])
        self.assertEqual(self.get("txn/a")["Value"], b"\xff\x00\x01")
        self.assertEqual(self.get("txn/b")["Flags"], 7)
        self.assertEqual(self.get("txn/existing")["Value"], b"new")
        self.assertIsNone(self.get("txn/gone"))

    def test_txn_delete_tree_and_get_tree(self):
        for k in ["t1", "t2", "t3"]:
            self.assertIs(self.c.kv.put(f"txtree/{k}", k.encode()), True)
        result = self.c.txn.put([
            {"KV": {"Verb": "get-tree", "Key": "txtree/"}},
            {"KV": {"Verb": "delete-tree", "Key": "txtree/"}},
        ])
        results = [r["KV"] for r in result["Results"]]
        self.assertEqual([r["Key"] for r in results], ["txtree/t1", "txtree/t2", "txtree/t3"])
        self.assertEqual([base64.b64decode(r["Value"]) for r in results], [b"t1", b"t2", b"t3"])
        _, entries = self.c.kv.get("txtree/", recurse=True)
        self.assertIsNone(entries)

    def test_failing_txn_changes_nothing(self):
        self.assertIs(self.c.kv.put("txf/k", b"keep"), True)
        entry = self.get("txf/k")
        ops = [
            {"KV": {"Verb": "set", "Key": "txf/new", "Value": b64("should-not-exist")}},
            {"KV": {"Verb": "delete", "Key": "txf/k"}},
            {"KV": {"Verb": "cas", "Key": "txf/k", "Value": b64("x"), "Index": entry["ModifyIndex"] + 1000}},
        ]
        # Consul answers 409 Conflict with {"Results": null, "Errors": [...]}; py-consul raises
        # ClientError("409 <body>") for it.
        with self.assertRaises(ClientError) as caught:
            self.c.txn.put(ops)
        message = str(caught.exception)
        self.assertTrue(message.startswith("409 "), message)
        body = json.loads(message[4:])
        self.assertIsNone(body.get("Results"))
        self.assertEqual(len(body["Errors"]), 1)
        self.assertEqual(body["Errors"][0]["OpIndex"], 2)
        self.assertTrue(body["Errors"][0]["What"])
        self.assertIsNone(self.get("txf/new"))
        after = self.get("txf/k")
        self.assertEqual(after["Value"], b"keep")
        self.assertEqual(after["ModifyIndex"], entry["ModifyIndex"])
        # A failing check-index rolls back too.
        with self.assertRaises(ClientError):
            self.c.txn.put([
                {"KV": {"Verb": "set", "Key": "txf/new", "Value": b64("no")}},
                {"KV": {"Verb": "check-index", "Key": "txf/k", "Index": entry["ModifyIndex"] + 1}},
            ])
        self.assertIsNone(self.get("txf/new"))


class ServicesTest(ServerTest):
    def _web_health(self, passing: bool):
        index, nodes = self.c.health.service("web", passing=passing)
        self.assertGreaterEqual(int(index), 1)
        return nodes

    def test_register_health_catalog_ttl_deregister(self):
        ok = self.c.agent.service.register(
            "web", service_id="web1", address="127.0.0.1", port=8080, tags=["a"], check=consul.Check.ttl("2s")
        )
        self.assertIs(ok, True)
        services = self.c.agent.services()
        self.assertIn("web1", services)
        svc = services["web1"]
        self.assertEqual(svc["ID"], "web1")
        self.assertEqual(svc["Service"], "web")
        self.assertEqual(svc["Tags"], ["a"])
        self.assertEqual(svc["Address"], "127.0.0.1")
        self.assertEqual(svc["Port"], 8080)
        # A TTL check starts critical, so the service is not passing until the first pass.
        self.assertEqual(self._web_health(passing=True), [])

        self.assertIs(self.c.agent.check.ttl_pass("service:web1"), True)
        nodes = self._web_health(passing=True)
        self.assertEqual(len(nodes), 1)
        self.assertEqual(nodes[0]["Service"]["ID"], "web1")
        self.assertEqual(nodes[0]["Service"]["Service"], "web")
        self.assertEqual(nodes[0]["Service"]["Address"], "127.0.0.1")
        self.assertEqual(nodes[0]["Service"]["Port"], 8080)
        self.assertEqual(nodes[0]["Service"]["Tags"], ["a"])
        self.assertTrue(nodes[0]["Node"]["Node"])
        service_checks = [ch for ch in nodes[0]["Checks"] if ch["CheckID"] == "service:web1"]
        self.assertEqual(len(service_checks), 1)
        self.assertEqual(service_checks[0]["Status"], "passing")
        self.assertEqual(service_checks[0]["ServiceID"], "web1")

        index, catalog = self.c.catalog.services()
        self.assertGreaterEqual(int(index), 1)
        self.assertEqual(catalog["web"], ["a"])
        index, instances = self.c.catalog.service("web")
        self.assertGreaterEqual(int(index), 1)
        self.assertEqual(len(instances), 1)
        self.assertEqual(instances[0]["ServiceID"], "web1")
        self.assertEqual(instances[0]["ServiceName"], "web")
        self.assertEqual(instances[0]["ServiceAddress"], "127.0.0.1")
        self.assertEqual(instances[0]["ServicePort"], 8080)
        self.assertEqual(instances[0]["ServiceTags"], ["a"])
        self.assertTrue(instances[0]["Node"])

        # Without another pass the TTL runs out: critical, no longer among the passing.
        self.poll("web1 drops out of the passing instances", lambda: self._web_health(passing=True) == [])
        nodes = self._web_health(passing=False)
        self.assertEqual([n["Service"]["ID"] for n in nodes], ["web1"])
        self.assertEqual(
            [ch["Status"] for ch in nodes[0]["Checks"] if ch["CheckID"] == "service:web1"], ["critical"]
        )
        # A pass brings it back.
        self.assertIs(self.c.agent.check.ttl_pass("service:web1"), True)
        self.assertEqual([n["Service"]["ID"] for n in self._web_health(passing=True)], ["web1"])

        self.assertIs(self.c.agent.service.deregister("web1"), True)
        self.assertNotIn("web1", self.c.agent.services())
        self.assertEqual(self._web_health(passing=False), [])
        self.assertEqual(self.c.catalog.service("web")[1], [])
        self.assertNotIn("web", self.c.catalog.services()[1])

    def test_agent_checks_follow_the_ttl_check(self):
        ok = self.c.agent.service.register("chk", service_id="chk1", port=7000, check=consul.Check.ttl("30s"))
        self.assertIs(ok, True)
        checks = self.c.agent.checks()
        self.assertIn("service:chk1", checks)
        self.assertEqual(checks["service:chk1"]["CheckID"], "service:chk1")
        self.assertEqual(checks["service:chk1"]["ServiceID"], "chk1")
        self.assertEqual(checks["service:chk1"]["ServiceName"], "chk")
        self.assertEqual(checks["service:chk1"]["Status"], "critical")
        self.assertIs(self.c.agent.check.ttl_pass("service:chk1", notes="all good"), True)
        check = self.c.agent.checks()["service:chk1"]
        self.assertEqual(check["Status"], "passing")
        self.assertEqual(check["Output"], "all good")
        self.assertIs(self.c.agent.check.ttl_warn("service:chk1"), True)
        self.assertEqual(self.c.agent.checks()["service:chk1"]["Status"], "warning")
        self.assertIs(self.c.agent.check.ttl_fail("service:chk1"), True)
        self.assertEqual(self.c.agent.checks()["service:chk1"]["Status"], "critical")
        self.assertIs(self.c.agent.service.deregister("chk1"), True)
        self.assertNotIn("service:chk1", self.c.agent.checks())

    def test_two_instances_and_tag_filter(self):
        self.assertIs(self.c.agent.service.register("api", service_id="api1", port=9001, tags=["v1"]), True)
        self.assertIs(self.c.agent.service.register("api", service_id="api2", port=9002, tags=["v2"]), True)
        _, instances = self.c.catalog.service("api")
        self.assertEqual(sorted(i["ServiceID"] for i in instances), ["api1", "api2"])
        _, instances = self.c.catalog.service("api", tag="v2")
        self.assertEqual([i["ServiceID"] for i in instances], ["api2"])
        # Without checks an instance counts as passing.
        _, nodes = self.c.health.service("api", passing=True)
        self.assertEqual(sorted(n["Service"]["ID"] for n in nodes), ["api1", "api2"])
        _, catalog = self.c.catalog.services()
        self.assertEqual(sorted(catalog["api"]), ["v1", "v2"])
        self.assertIs(self.c.agent.service.deregister("api1"), True)
        self.assertIs(self.c.agent.service.deregister("api2"), True)
        self.assertEqual(self.c.catalog.service("api")[1], [])


class StatusTest(ServerTest):
    def test_leader_and_peers(self):
        leader = self.c.status.leader()
        self.assertIsInstance(leader, str)
        self.assertTrue(leader)
        peers = self.c.status.peers()
        self.assertIsInstance(peers, list)
        self.assertEqual(len(peers), 1)
        self.assertIsInstance(peers[0], str)
        self.assertTrue(peers[0])


class ReadmeExampleTest(ServerTest):
    """README's "Using Consul clients" example, run as it is written (only the port differs)."""

    def test_the_readme_example_runs(self):
        readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        marker = "<!-- consul-example"
        self.assertIn(marker, text, "README lost its Consul example marker")
        after = text[text.index(marker):]
        start = after.index("```python\n") + len("```python\n")
        code = after[start:after.index("```", start)]
        self.assertIn("port=8500", code)
        code = code.replace("port=8500", f"port={self.server.port}")
        exec(compile(code, "README.md (consul example)", "exec"), {"__name__": "readme_example"})
        # What the example left behind.
        index, entry = self.c.kv.get("config/db")
        self.assertEqual(entry["Value"], b"replica")
        index, entry = self.c.kv.get("service/leader")
        self.assertIsNone(entry.get("Session"))


class _Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def main() -> int:
    argv = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    loader = unittest.TestLoader()
    module = sys.modules[__name__]
    suite = loader.loadTestsFromNames(argv, module) if argv else loader.loadTestsFromModule(module)
    total = suite.countTestCases()
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stderr, resultclass=_Result).run(suite)
    skipped = len(result.skipped)
    # A test that never ran because its class's server did not start counts as failed.
    failed = total - result.passed - skipped
    sys.stderr.flush()
    line = f"{result.passed} passed, {failed} failed"
    if skipped:
        line += f", {skipped} skipped"
    print(line, flush=True)
    if total == 0:
        print("consul_py: no test ran", file=sys.stderr)
        return 1
    if skipped:
        print("consul_py: a test was skipped; this suite skips nothing", file=sys.stderr)
        return 1
    return 0 if failed == 0 and result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
