//! The `caskv` binary end to end (SPEC §4): a real `caskv serve` child process on a free port,
//! driven by the `caskv kv …` / `caskv service …` client, checking stdout, stderr and exit codes
//! (0 ok, 1 other failure, 2 usage, 3 not found, 4 CAS conflict).

#![cfg(feature = "server")]

#[path = "support/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_caskv");

/// Every environment variable the binary reads, so the caller's environment cannot leak in.
const CASKV_ENV: &[&str] = &[
    "CASKV_ADDR",
    "CASKV_DATA_DIR",
    "CASKV_FSYNC",
    "CASKV_SERVICE_TTL",
    "CASKV_MAX_KEY_BYTES",
    "CASKV_MAX_VALUE_BYTES",
    "CASKV_MAX_BODY_BYTES",
    "CASKV_MAX_BATCH",
    "CASKV_MAX_CONNECTIONS",
    "CASKV_HEADER_TIMEOUT",
    "CASKV_BODY_TIMEOUT",
];

/// A `caskv` command with a clean environment (no `CASKV_*`, no backtraces).
fn caskv() -> Command {
    let mut cmd = Command::new(BIN);
    for var in CASKV_ENV {
        cmd.env_remove(var);
    }
    cmd.env_remove("RUST_BACKTRACE").env("RUST_LOG", "warn");
    cmd.stdin(Stdio::null());
    cmd
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// One `GET /health` over a raw connection: true when the server answers 200.
fn health_ok(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains("\"ok\"")
}

/// Polls `child` until it exits or `limit` passes.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// A `caskv serve` child; killed (and reaped) on drop so no server outlives its test.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts a server with a 30 s service TTL.
    fn start() -> Server {
        Server::start_with(&["--service-ttl", "30s"])
    }

    /// Starts a server with extra `serve` flags and waits until `/health` answers. A free port can
    /// be taken between finding it and binding it, so a server that dies early is retried on
    /// another port.
    fn start_with(extra: &[&str]) -> Server {
        Server::start_full(extra, &[])
    }

    /// Starts a server configured from the environment.
    fn start_env(env: &[(&str, &str)]) -> Server {
        Server::start_full(&[], env)
    }

    fn start_full(extra: &[&str], env: &[(&str, &str)]) -> Server {
        for _attempt in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let child = caskv()
                .args(["serve", "--addr", &addr])
                .args(extra)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn caskv serve");
            let mut server = Server { child, addr };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if health_ok(&server.addr) {
                    return server;
                }
                if server.child.try_wait().expect("try_wait").is_some() {
                    break; // died (port taken?): try another port
                }
                sleep(Duration::from_millis(25));
            }
            // Dropping `server` kills whatever is left of this attempt.
        }
        panic!("caskv serve did not become healthy");
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Runs the client against this server (`--addr` appended last).
    fn run(&self, args: &[&str]) -> Run {
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--addr", &self.addr]);
        run(caskv().args(&full))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A finished client call.
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let args = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run caskv");
    Run {
        args,
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

impl Run {
    /// Asserts success and returns stdout without its trailing newline.
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "{} failed: stdout {:?} stderr {:?}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stderr, "", "{}: unexpected stderr", self.args);
        self.stdout.strip_suffix('\n').unwrap_or(&self.stdout)
    }

    /// Asserts success and that stdout is exactly `expected` plus a newline.
    fn ok_eq(&self, expected: &str) {
        assert_eq!(
            self.ok(),
            expected,
            "{}: stdout {:?}",
            self.args,
            self.stdout
        );
        assert!(
            self.stdout.ends_with('\n'),
            "{}: no final newline",
            self.args
        );
    }

    /// Asserts success and parses stdout as an index.
    fn index(&self) -> u64 {
        let out = self.ok();
        out.parse()
            .unwrap_or_else(|_| panic!("{}: stdout {out:?} is not an index", self.args))
    }

    /// Asserts success and parses stdout as JSON.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("{}: stdout {:?} is not JSON: {e}", self.args, self.stdout))
    }

    /// Asserts the exit code, an empty stdout, and exactly one `caskv: …` line on stderr
    /// containing every one of `needles`; returns that line.
    fn fails(&self, code: i32, needles: &[&str]) -> &str {
        assert_eq!(
            self.code,
            Some(code),
            "{}: expected exit {code}; stdout {:?} stderr {:?}",
            self.args,
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stdout, "", "{}: stdout on failure", self.args);
        let line = self
            .stderr
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("{}: stderr {:?} not one line", self.args, self.stderr));
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "{}: stderr is not exactly one line: {:?}",
            self.args,
            self.stderr
        );
        assert!(
            line.starts_with("caskv: "),
            "{}: stderr {line:?}",
            self.args
        );
        assert!(!line.contains("panicked"), "{}: {line:?}", self.args);
        for needle in needles {
            assert!(
                line.contains(needle),
                "{}: stderr {line:?} lacks {needle:?}",
                self.args
            );
        }
        line
    }
}

fn is_rfc3339(s: &str) -> bool {
    humantime::parse_rfc3339(s).is_ok()
}

fn parse_time(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

#[test]
fn kv_put_with_a_ttl_shows_its_deadline() {
    let srv = Server::start();
    let before = SystemTime::now();
    srv.run(&["kv", "put", "session/1", "u-42", "--ttl", "1h"])
        .index();
    let meta = srv.run(&["kv", "get", "session/1", "--metadata"]).json();
    let at = parse_time(meta["expires_at"].as_str().expect("expires_at"));
    let left = at.duration_since(before).unwrap();
    assert!(
        left > Duration::from_secs(3590) && left <= Duration::from_secs(3601),
        "{meta}"
    );
    // A bad TTL is refused by clap before anything is sent.
    let bad = srv.run(&["kv", "put", "session/2", "x", "--ttl", "soon"]);
    assert_eq!(bad.code, Some(2), "stderr {:?}", bad.stderr);
    assert!(bad.stderr.contains("soon"), "stderr {:?}", bad.stderr);
    srv.run(&["kv", "get", "session/2"])
        .fails(3, &["session/2"]);
}

#[test]
fn kv_put_get_metadata_list_and_delete() {
    let srv = Server::start();

    // put prints the new modify_index; get prints the value alone.
    let i1 = srv
        .run(&["kv", "put", "config/db/host", "db.internal"])
        .index();
    // A fresh server: the first write takes index 1, and indices count up from there.
    assert_eq!(i1, 1);
    srv.run(&["kv", "get", "config/db/host"])
        .ok_eq("db.internal");

    // get --metadata: JSON with value, indices and flags.
    let meta = srv
        .run(&["kv", "get", "config/db/host", "--metadata"])
        .json();
    assert_eq!(
        meta,
        json!({
            "key": "config/db/host",
            "value": "db.internal",
            "modify_index": i1,
            "create_index": i1,
            "flags": 0,
        })
    );

    // An update moves modify_index, keeps create_index.
    let i2 = srv
        .run(&["kv", "put", "config/db/host", "db2.internal"])
        .index();
    assert_eq!(i2, 2);
    let meta = srv
        .run(&["kv", "get", "config/db/host", "--metadata"])
        .json();
    assert_eq!(meta["value"], "db2.internal");
    assert_eq!(meta["modify_index"], i2);
    assert_eq!(meta["create_index"], i1);

    // --flags is stored and shown.
    let i3 = srv
        .run(&["kv", "put", "config/db/port", "5432", "--flags", "42"])
        .index();
    assert_eq!(i3, 3);
    let meta = srv
        .run(&["kv", "get", "config/db/port", "--metadata"])
        .json();
    assert_eq!(
        meta,
        json!({
            "key": "config/db/port",
            "value": "5432",
            "modify_index": i3,
            "create_index": i3,
            "flags": 42,
        })
    );
    srv.run(&["kv", "get", "config/db/port"]).ok_eq("5432");

    // Values keep spaces, quotes, newlines and non-ASCII text exactly.
    let odd_value = "a value with spaces, \"quotes\", é and\na second line";
    srv.run(&["kv", "put", "notes", odd_value]).index();
    srv.run(&["kv", "get", "notes"]).ok_eq(odd_value);

    srv.run(&["kv", "put", "app/name", "caskv"]).index();

    // list: every key, sorted, one per line; --prefix filters.
    srv.run(&["kv", "list"])
        .ok_eq("app/name\nconfig/db/host\nconfig/db/port\nnotes");
    srv.run(&["kv", "list", "--prefix", "config/"])
        .ok_eq("config/db/host\nconfig/db/port");
    srv.run(&["kv", "list", "--prefix", "config/db/p"])
        .ok_eq("config/db/port");
    // A prefix matching nothing prints nothing at all (no blank line).
    let none = srv.run(&["kv", "list", "--prefix", "zzz"]);
    assert_eq!((none.code, none.stdout.as_str()), (Some(0), ""));

    // delete prints the index of the delete; the key is then gone.
    let d = srv.run(&["kv", "delete", "config/db/host"]).index();
    assert_eq!(d, 6);
    srv.run(&["kv", "get", "config/db/host"])
        .fails(3, &["config/db/host", "not found"]);
    srv.run(&["kv", "list", "--prefix", "config/"])
        .ok_eq("config/db/port");

    // Missing keys: get and delete exit 3 with one line naming the key.
    assert_eq!(
        srv.run(&["kv", "get", "never-written"]).fails(3, &[]),
        "caskv: key 'never-written' not found"
    );
    srv.run(&["kv", "get", "never-written", "--metadata"])
        .fails(3, &["never-written"]);
    srv.run(&["kv", "delete", "never-written"])
        .fails(3, &["never-written"]);
    srv.run(&["kv", "delete", "config/db/host"])
        .fails(3, &["config/db/host"]);
}

#[test]
fn kv_keys_needing_percent_encoding_round_trip() {
    let srv = Server::start();
    let keys = [
        "with space",
        "what?",
        "a b?c=d&e",
        "hash#frag",
        "percent%20literal",
        "plus+sign",
        "dir/with space/and?query",
        "unicodé/ключ",
    ];
    for (n, key) in keys.iter().enumerate() {
        let value = format!("value {n} of {key}");
        let index = srv.run(&["kv", "put", key, &value]).index();
        srv.run(&["kv", "get", key]).ok_eq(&value);
        let meta = srv.run(&["kv", "get", key, "--metadata"]).json();
        assert_eq!(meta["key"], *key, "the server saw the key decoded");
        assert_eq!(meta["value"], value);
        assert_eq!(meta["modify_index"], index);
    }
    // `%20` in a key is three literal characters, not a space: two different keys.
    srv.run(&["kv", "get", "percent literal"])
        .fails(3, &["percent literal"]);

    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    srv.run(&["kv", "list"]).ok_eq(&sorted.join("\n"));
    // Prefixes with a space, a `?` and a `/` are encoded in the query string too.
    srv.run(&["kv", "list", "--prefix", "with "])
        .ok_eq("with space");
    srv.run(&["kv", "list", "--prefix", "a b?"])
        .ok_eq("a b?c=d&e");
    srv.run(&["kv", "list", "--prefix", "dir/with space/"])
        .ok_eq("dir/with space/and?query");
    srv.run(&["kv", "list", "--prefix", "plus+"])
        .ok_eq("plus+sign");

    for key in keys {
        srv.run(&["kv", "delete", key]).index();
        srv.run(&["kv", "get", key]).fails(3, &[]);
    }
    let empty = srv.run(&["kv", "list"]);
    assert_eq!((empty.code, empty.stdout.as_str()), (Some(0), ""));
}

#[test]
fn kv_compare_and_swap() {
    let srv = Server::start();

    // --cas 0: create-only. The second one is a conflict: exit 4, one line naming it.
    let created = srv
        .run(&["kv", "put", "locks/leader", "node-a", "--cas", "0"])
        .index();
    assert_eq!(created, 1);
    assert_eq!(
        srv.run(&["kv", "put", "locks/leader", "node-b", "--cas", "0"])
            .fails(4, &[]),
        "caskv: CAS conflict for key 'locks/leader': expected ModifyIndex 0, but current is 1"
    );
    srv.run(&["kv", "get", "locks/leader"]).ok_eq("node-a");

    // --cas N with the current index succeeds and moves the index.
    let swapped = srv
        .run(&[
            "kv",
            "put",
            "locks/leader",
            "node-c",
            "--cas",
            &created.to_string(),
        ])
        .index();
    assert!(swapped > created);
    srv.run(&["kv", "get", "locks/leader"]).ok_eq("node-c");

    // The now-stale index is a conflict, and nothing changes.
    srv.run(&[
        "kv",
        "put",
        "locks/leader",
        "node-d",
        "--cas",
        &created.to_string(),
    ])
    .fails(4, &["CAS conflict", "locks/leader"]);
    let meta = srv.run(&["kv", "get", "locks/leader", "--metadata"]).json();
    assert_eq!(meta["value"], "node-c");
    assert_eq!(meta["modify_index"], swapped);
    assert_eq!(meta["create_index"], created);

    // --cas with --flags together.
    let flagged = srv
        .run(&[
            "kv",
            "put",
            "locks/leader",
            "node-e",
            "--cas",
            &swapped.to_string(),
            "--flags",
            "7",
        ])
        .index();
    let meta = srv.run(&["kv", "get", "locks/leader", "--metadata"]).json();
    assert_eq!(meta["flags"], 7);
    assert_eq!(meta["modify_index"], flagged);

    // A non-zero --cas on a missing key is "not found" (SPEC §2), exit 3.
    srv.run(&["kv", "put", "locks/none", "x", "--cas", "5"])
        .fails(3, &["locks/none", "not found"]);
    srv.run(&["kv", "delete", "locks/none", "--cas", "5"])
        .fails(3, &["locks/none", "not found"]);
    // delete --cas 0 means nothing: a 400, exit 1, and the key stays.
    srv.run(&["kv", "delete", "locks/leader", "--cas", "0"])
        .fails(1, &["locks/leader"]);
    srv.run(&["kv", "get", "locks/none"]).fails(3, &[]);

    // delete --cas: a stale index is a conflict (key kept), the current one deletes.
    srv.run(&[
        "kv",
        "delete",
        "locks/leader",
        "--cas",
        &swapped.to_string(),
    ])
    .fails(4, &["CAS conflict", "locks/leader"]);
    srv.run(&["kv", "get", "locks/leader"]).ok_eq("node-e");
    let deleted = srv
        .run(&[
            "kv",
            "delete",
            "locks/leader",
            "--cas",
            &flagged.to_string(),
        ])
        .index();
    assert!(deleted > flagged);
    srv.run(&["kv", "get", "locks/leader"]).fails(3, &[]);

    // Create-only works again once the key is gone.
    srv.run(&["kv", "put", "locks/leader", "node-f", "--cas", "0"])
        .index();
    srv.run(&["kv", "get", "locks/leader"]).ok_eq("node-f");
}

#[test]
fn service_register_get_list_heartbeat_deregister() {
    let srv = Server::start();

    let before = SystemTime::now();
    let web = srv
        .run(&[
            "service",
            "register",
            "--name",
            "web",
            "--address",
            "10.0.0.1",
            "--port",
            "8080",
            "--tag",
            "primary",
            "--tag",
            "v2",
            "--meta",
            "zone=eu-west",
            "--meta",
            "owner=team=a",
            "--cas",
            "0",
        ])
        .index();
    assert_eq!(web, 1, "the first write on a fresh server");
    // A second create-only registration is a conflict.
    let line = srv
        .run(&[
            "service",
            "register",
            "--name",
            "web",
            "--address",
            "10.0.0.2",
            "--port",
            "8080",
            "--cas",
            "0",
        ])
        .fails(4, &[])
        .to_string();
    assert_eq!(
        line,
        "caskv: CAS conflict for service 'web': expected ModifyIndex 0, but current is 1"
    );

    let expected_web = json!({
        "name": "web",
        "address": "10.0.0.1",
        "port": 8080,
        "tags": ["primary", "v2"],
        "meta": {"zone": "eu-west", "owner": "team=a"},
    });
    assert_eq!(srv.run(&["service", "get", "web"]).json(), expected_web);

    // --metadata: the service, its indices and an RFC 3339 expiry about a TTL away.
    let meta = srv.run(&["service", "get", "web", "--metadata"]).json();
    assert_eq!(meta["service"], expected_web);
    assert_eq!(meta["modify_index"], web);
    assert_eq!(meta["create_index"], web);
    let expires = meta["expires_at"].as_str().expect("expires_at is a string");
    let expires_at = parse_time(expires);
    assert!(
        expires_at > before + Duration::from_secs(20)
            && expires_at < SystemTime::now() + Duration::from_secs(40),
        "expires_at {expires} is not ~30 s away"
    );

    let db = srv
        .run(&[
            "service",
            "register",
            "--name",
            "db",
            "--address",
            "db.internal",
            "--port",
            "5432",
        ])
        .index();
    assert!(db > web);
    // list: live services sorted by name.
    let list = srv.run(&["service", "list"]).json();
    let names: Vec<&str> = list
        .as_array()
        .expect("list is an array")
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"]);
    assert_eq!(list[1], expected_web);
    assert_eq!(list[0]["port"], 5432);

    // Re-registering with the current index replaces; a stale one conflicts.
    let web2 = srv
        .run(&[
            "service",
            "register",
            "--name",
            "web",
            "--address",
            "10.0.0.3",
            "--port",
            "9090",
            "--cas",
            &web.to_string(),
        ])
        .index();
    assert!(web2 > db);
    srv.run(&[
        "service",
        "register",
        "--name",
        "web",
        "--address",
        "10.0.0.4",
        "--port",
        "9090",
        "--cas",
        &web.to_string(),
    ])
    .fails(4, &["web"]);
    assert_eq!(
        srv.run(&["service", "get", "web"]).json()["address"],
        "10.0.0.3"
    );

    // heartbeat prints an RFC 3339 time and does not change modify_index.
    let hb = srv.run(&["service", "heartbeat", "web"]);
    let at = hb.ok();
    assert!(is_rfc3339(at), "heartbeat printed {at:?}");
    assert!(parse_time(at) > before + Duration::from_secs(20));
    let meta = srv.run(&["service", "get", "web", "--metadata"]).json();
    assert_eq!(meta["modify_index"], web2);
    assert_eq!(meta["create_index"], web);

    // deregister prints the index of the removal; the service is then gone.
    let gone = srv.run(&["service", "deregister", "web"]).index();
    assert!(gone > web2);
    srv.run(&["service", "get", "web"]).fails(3, &["web"]);
    srv.run(&["service", "get", "web", "--metadata"])
        .fails(3, &["web"]);
    srv.run(&["service", "heartbeat", "web"]).fails(3, &["web"]);
    srv.run(&["service", "deregister", "web"])
        .fails(3, &["web"]);
    assert_eq!(
        srv.run(&["service", "deregister", "never-registered"])
            .fails(3, &[]),
        "caskv: service 'never-registered' not found"
    );
    let list = srv.run(&["service", "list"]).json();
    assert_eq!(list.as_array().map(Vec::len), Some(1));

    // deregister --cas: stale conflicts, current removes.
    srv.run(&[
        "service",
        "deregister",
        "db",
        "--cas",
        &(db + 1000).to_string(),
    ])
    .fails(4, &["db"]);
    srv.run(&["service", "deregister", "db", "--cas", &db.to_string()])
        .index();
    assert_eq!(srv.run(&["service", "list"]).json(), json!([]));

    // The KV space and the registry share the global index: a KV write after all this is later.
    let k = srv.run(&["kv", "put", "after", "x"]).index();
    assert!(k > gone);
}

#[test]
fn service_names_with_odd_characters_round_trip() {
    let srv = Server::start();
    for name in ["api v1", "what?", "team/api"] {
        srv.run(&[
            "service",
            "register",
            "--name",
            name,
            "--address",
            "h",
            "--port",
            "1",
        ])
        .index();
        assert_eq!(srv.run(&["service", "get", name]).json()["name"], name);
        assert!(is_rfc3339(srv.run(&["service", "heartbeat", name]).ok()));
        srv.run(&["service", "deregister", name]).index();
        srv.run(&["service", "get", name]).fails(3, &[]);
    }
}

#[test]
fn services_expire_after_the_ttl() {
    let srv = Server::start_with(&["--service-ttl", "1s"]);
    srv.run(&[
        "service",
        "register",
        "--name",
        "brief",
        "--address",
        "h",
        "--port",
        "1",
    ])
    .index();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = srv.run(&["service", "get", "brief"]);
        if got.code == Some(3) {
            got.fails(3, &["brief"]);
            break;
        }
        got.ok();
        assert!(Instant::now() < deadline, "the service never expired");
        sleep(Duration::from_millis(200));
    }
    assert_eq!(srv.run(&["service", "list"]).json(), json!([]));
    srv.run(&["service", "heartbeat", "brief"]).fails(3, &[]);
}

#[test]
fn addr_from_the_environment_and_as_a_url() {
    let srv = Server::start();
    let from_env = |args: &[&str], addr: &str| run(caskv().args(args).env("CASKV_ADDR", addr));

    from_env(&["kv", "put", "env/k", "from-env"], &srv.addr).index();
    from_env(&["kv", "get", "env/k"], &srv.addr).ok_eq("from-env");
    from_env(&["kv", "list"], &srv.addr).ok_eq("env/k");
    from_env(
        &[
            "service",
            "register",
            "--name",
            "s",
            "--address",
            "a",
            "--port",
            "1",
        ],
        &srv.addr,
    )
    .index();
    from_env(&["service", "get", "s"], &srv.addr).json();

    // An http:// base URL (with a trailing slash) works too, from the flag or the environment.
    let url = format!("http://{}/", srv.addr);
    from_env(&["kv", "get", "env/k"], &url).ok_eq("from-env");
    run(caskv().args(["kv", "get", "env/k", "--addr", &url])).ok_eq("from-env");

    // --addr wins over CASKV_ADDR.
    let dead = format!("127.0.0.1:{}", free_port());
    run(caskv()
        .args(["kv", "get", "env/k", "--addr", &srv.addr])
        .env("CASKV_ADDR", &dead))
    .ok_eq("from-env");
    // And the environment is really used: pointed at nothing, the call fails.
    from_env(&["kv", "get", "env/k"], &dead).fails(1, &[]);
}

#[test]
fn no_server_exits_1_with_one_line() {
    let dead = format!("127.0.0.1:{}", free_port());
    for args in [
        &["kv", "get", "k"][..],
        &["kv", "put", "k", "v"],
        &["kv", "delete", "k"],
        &["kv", "list"],
        &["service", "list"],
        &["service", "heartbeat", "s"],
        &[
            "service",
            "register",
            "--name",
            "s",
            "--address",
            "a",
            "--port",
            "1",
        ],
    ] {
        let r = run(caskv().args(args).args(["--addr", &dead]));
        let line = r.fails(1, &[&dead]);
        assert!(!r.stderr.contains("RUST_BACKTRACE"), "{line:?}");
    }
}

#[test]
fn non_http_peer_exits_1_with_one_line() {
    // Something listens but never speaks HTTP: it answers garbage and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"this is not http\r\n\r\n");
        }
    });
    run(caskv().args(["kv", "get", "k", "--addr", &addr])).fails(1, &[]);
    peer.join().unwrap();
}

#[test]
fn bad_usage_exits_2_with_a_usage_message() {
    for args in [
        &["kv", "put", "k", "v", "--cas", "abc"][..],
        &["kv", "put", "k", "v", "--flags", "-1"],
        &["kv", "get"],
        &["kv", "frobnicate"],
        &[
            "service",
            "register",
            "--name",
            "s",
            "--address",
            "a",
            "--port",
            "70000",
        ],
        &[
            "service",
            "register",
            "--name",
            "s",
            "--address",
            "a",
            "--port",
            "1",
            "--meta",
            "novalue",
        ],
        &["serve", "--addr", "not-an-address"],
        &["serve", "--service-ttl", "soon"],
    ] {
        // A dead --addr, in case parsing wrongly succeeds: then it fails with 1, not 2.
        let r = run(caskv().args(args).env("CASKV_ADDR", "127.0.0.1:1"));
        assert_eq!(
            r.code,
            Some(2),
            "{args:?}: stdout {:?} stderr {:?}",
            r.stdout,
            r.stderr
        );
        assert_eq!(r.stdout, "", "{args:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {:?}", r.stderr);
        // clap prints the usage line, or for a bad value the pointer to --help.
        assert!(
            r.stderr.contains("Usage: caskv") || r.stderr.contains("try '--help'"),
            "{args:?}: {:?}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{args:?}: {:?}", r.stderr);
    }
    let r = run(caskv().args(["kv", "put", "k", "v", "--cas", "abc"]));
    assert!(r.stderr.contains("--cas"), "{:?}", r.stderr);
    assert!(r.stderr.contains("'abc'"), "{:?}", r.stderr);
    // A missing argument shows the usage line itself.
    let r = run(caskv().args(["kv", "get"]));
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("Usage: caskv kv get"), "{:?}", r.stderr);
}

#[test]
fn server_rejections_exit_1_with_one_line() {
    let srv = Server::start_with(&["--service-ttl", "30s", "--max-value-bytes", "16"]);
    // An empty value is a value: stored, and printed as nothing.
    srv.run(&["kv", "put", "empty", ""]).index();
    let got = srv.run(&["kv", "get", "empty"]);
    assert_eq!((got.code, got.stdout.as_str()), (Some(0), ""));
    assert_eq!(
        srv.run(&["kv", "get", "empty", "--metadata"]).json()["value"],
        ""
    );
    // Over the value limit: a 413, exit 1, one line; nothing stored.
    srv.run(&["kv", "put", "big", &"x".repeat(17)])
        .fails(1, &[]);
    srv.run(&["kv", "get", "big"]).fails(3, &[]);
    srv.run(&["kv", "put", "fits", &"x".repeat(16)]).index();
    // An empty key is refused, not found or stored.
    srv.run(&["kv", "put", "", "v"]).fails(1, &[]);
    srv.run(&["kv", "list"]).ok_eq("empty\nfits");
    // deregister --cas 0 means nothing for a removal: a 400, exit 1.
    srv.run(&[
        "service",
        "register",
        "--name",
        "s",
        "--address",
        "a",
        "--port",
        "1",
    ])
    .index();
    srv.run(&["service", "deregister", "s", "--cas", "0"])
        .fails(1, &[]);
    assert_eq!(srv.run(&["service", "get", "s"]).json()["name"], "s");
}

#[test]
fn serve_with_a_data_dir_keeps_every_write_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut srv = Server::start_with(&["--data-dir", data, "--fsync", "always"]);
    let a = srv.run(&["kv", "put", "k", "v1"]).index();
    let b = srv
        .run(&["kv", "put", "k", "v2", "--cas", &a.to_string()])
        .index();
    srv.run(&["kv", "put", "gone", "x"]).index();
    let deleted = srv.run(&["kv", "delete", "gone"]).index();
    srv.run(&[
        "service",
        "register",
        "--name",
        "web",
        "--address",
        "10.0.0.1",
        "--port",
        "80",
    ])
    .index();
    signal(&srv.pid(), "-TERM");
    let status = wait_timeout(&mut srv.child, Duration::from_secs(10)).expect("exit on SIGTERM");
    assert_eq!(status.code(), Some(0));

    // The same directory from the environment, with another policy: the state is back.
    let srv = Server::start_env(&[("CASKV_DATA_DIR", data), ("CASKV_FSYNC", "everysec")]);
    let entry = srv.run(&["kv", "get", "k", "--metadata"]).json();
    assert_eq!(entry["value"], "v2");
    assert_eq!(entry["modify_index"], b);
    assert_eq!(entry["create_index"], a);
    srv.run(&["kv", "get", "gone"]).fails(3, &[]);
    assert_eq!(srv.run(&["service", "get", "web"]).json()["port"], 80);
    let next = srv.run(&["kv", "put", "k2", "v"]).index();
    assert!(
        next > deleted,
        "index {next} not above the deleted {deleted}"
    );
}

/// Runs `caskv serve --data-dir data extra…`, which must exit on its own within 10 s (a
/// refusal at start-up); returns its output. `what` names the case in the failure message.
fn serve_until_it_exits(
    data: &std::path::Path,
    extra: &[&str],
    what: &str,
) -> std::process::Output {
    let mut child = caskv()
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve with {what} kept running");
    }
    child.wait_with_output().unwrap()
}

/// Limits a log record cannot hold (issue #16's two 35 MiB values in one batch, which used to
/// fail the log and turn every later write into a 503) are refused at start-up, in one line,
/// before the data directory is touched.
#[test]
fn serve_refuses_limits_the_log_cannot_hold() {
    for (flags, named) in [
        (
            [
                "--max-body-bytes",
                "209715200",
                "--max-value-bytes",
                "104857600",
            ],
            "--max-key-bytes plus --max-value-bytes",
        ),
        (
            ["--max-body-bytes", "209715200", "--max-value-bytes", "1024"],
            "--max-body-bytes",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = serve_until_it_exits(&data, &flags, "limits the log cannot hold");
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(named), "{stderr:?}");
        assert!(stderr.contains("one log record can hold"), "{stderr:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
        assert!(!data.exists(), "the data directory was created");
    }
}

#[test]
fn serve_with_a_corrupt_data_dir_exits_2_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segment = dir.path().join("log-0000000000000001.caskv");
    std::fs::write(&segment, b"this is not a caskv log, and it is long enough").unwrap();
    let out = serve_until_it_exits(dir.path(), &[], "a corrupt data dir");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("log-0000000000000001.caskv"), "{stderr:?}");
    assert!(stderr.contains("offset 0"), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    // Nothing was changed: the damaged file is left for the operator.
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        b"this is not a caskv log, and it is long enough"
    );
}

#[test]
fn serve_on_a_taken_port_exits_1() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let mut child = caskv()
        .args(["serve", "--addr", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(10));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("serve on a taken port kept running");
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains(&addr), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    drop(holder);
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid)
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_0() {
    let mut srv = Server::start();
    srv.run(&["kv", "put", "k", "v"]).index();
    // An idle keep-alive connection that already had a request must not hold shutdown up.
    let mut idle = TcpStream::connect(&srv.addr).unwrap();
    idle.write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr).as_bytes())
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let started = Instant::now();
    signal(&srv.pid(), "-TERM");
    let status = wait_timeout(&mut srv.child, Duration::from_secs(5))
        .expect("the server did not exit within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The port is closed: a client now fails with 1.
    srv.run(&["kv", "get", "k"]).fails(1, &[]);
}

#[test]
fn sigint_shuts_down_gracefully_with_exit_0() {
    let mut srv = Server::start();
    signal(&srv.pid(), "-INT");
    let status = wait_timeout(&mut srv.child, Duration::from_secs(5))
        .expect("the server did not exit within 5 s of SIGINT");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

/// An ACL file in a fresh temporary directory, removed with it.
struct TempAcl(tempfile::TempDir);

impl TempAcl {
    fn new(text: &str) -> TempAcl {
        let acl = TempAcl(tempfile::tempdir().unwrap());
        acl.write(text);
        acl
    }

    fn path(&self) -> String {
        self.0
            .path()
            .join("acl.json")
            .to_string_lossy()
            .into_owned()
    }

    fn write(&self, text: &str) {
        let tmp = self.0.path().join("acl.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.path().join("acl.json")).unwrap();
    }
}

#[test]
fn serve_refuses_a_public_address_without_an_acl_file() {
    let mut child = caskv()
        .args(["serve", "--addr", "0.0.0.0:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve on 0.0.0.0 without an ACL file kept running")
    });
    assert_eq!(status.code(), Some(2));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--acl-file") && stderr.contains("--allow-unauthenticated"),
        "{stderr}"
    );
    // A bad ACL file is refused at start with exit 2 and one line.
    let acl = TempAcl::new("{ not json");
    let mut child = caskv()
        .args(["serve", "--addr", "127.0.0.1:0", "--acl-file", &acl.path()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(2));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ACL file") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn the_client_sends_its_token_and_sighup_reloads_the_rules() {
    let rules = |reader_kv: &str| {
        format!(
            r#"{{"tokens": [
                {{"name": "admin", "secret": "admin-token", "kv": {{"": "write"}}}},
                {{"name": "reader", "secret": "reader-token", "kv": {{"{reader_kv}": "read"}}}}
            ]}}"#
        )
    };
    let acl = TempAcl::new(&rules("app/"));
    let srv = Server::start_with(&["--acl-file", &acl.path()]);
    // No token: 401, exit 5, one line.
    srv.run(&["kv", "put", "app/x", "1"]).fails(5, &[]);
    srv.run(&["kv", "put", "app/x", "1", "--token", "admin-token"])
        .index();
    srv.run(&["kv", "put", "other/y", "2", "--token", "admin-token"])
        .index();
    // The token from the environment.
    let got = run(caskv()
        .args(["kv", "get", "app/x", "--addr", &srv.addr])
        .env("CASKV_TOKEN", "reader-token"));
    assert_eq!(
        (got.code, got.stdout.trim()),
        (Some(0), "1"),
        "{}",
        got.stderr
    );
    srv.run(&["kv", "get", "other/y", "--token", "reader-token"])
        .fails(5, &[]);
    srv.run(&["kv", "put", "app/x", "3", "--token", "reader-token"])
        .fails(5, &[]);
    // SIGHUP re-reads the file: reader may now read everything.
    acl.write(&rules(""));
    signal(&srv.pid(), "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = srv.run(&["kv", "get", "other/y", "--token", "reader-token"]);
        if got.code == Some(0) {
            assert_eq!(got.stdout.trim(), "2");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the ACL file: {}",
            got.stderr
        );
        sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_over_tls_and_the_client_with_its_ca_certificate() {
    let ours = pki::pki("cli");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(path("ca.pem"), &ours.ca).unwrap();
    std::fs::write(path("server.pem"), &ours.server_cert).unwrap();
    std::fs::write(path("server.key"), &ours.server_key).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = caskv()
        .args(["serve", "--addr", &addr, "--tls-cert", &path("server.pem")])
        .args(["--tls-key", &path("server.key")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let srv = Server {
        child,
        addr: format!("https://{addr}"),
    };
    let ca = path("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = srv.run(&["kv", "put", "k", "v", "--ca-cert", &ca]);
        if r.code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "no TLS server: {}", r.stderr);
        sleep(Duration::from_millis(50));
    }
    let got = srv.run(&["kv", "get", "k", "--ca-cert", &ca]);
    assert_eq!(
        (got.code, got.stdout.trim()),
        (Some(0), "v"),
        "{}",
        got.stderr
    );
    // Without the CA, the server's certificate is not trusted: exit 1, one line.
    srv.run(&["kv", "get", "k"]).fails(1, &[]);
    // A CA file that does not read: exit 1, one line naming it.
    srv.run(&["kv", "get", "k", "--ca-cert", "/no/such/ca.pem"])
        .fails(1, &["/no/such/ca.pem"]);
    // Plain HTTP to the TLS port: refused with the server's 400 (exit 1).
    let plain = run(caskv().args(["kv", "get", "k", "--addr", &addr]));
    assert_eq!(plain.code, Some(1), "{}", plain.stderr);
    assert!(plain.stderr.contains("https"), "{}", plain.stderr);
    // SIGHUP re-reads the certificate: a client trusting only the new CA gets in.
    let next = pki::pki("cli-next");
    std::fs::write(path("next-ca.pem"), &next.ca).unwrap();
    std::fs::write(path("server.key"), &next.server_key).unwrap();
    std::fs::write(path("server.pem"), &next.server_cert).unwrap();
    signal(&srv.pid(), "-HUP");
    let next_ca = path("next-ca.pem");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = srv.run(&["kv", "get", "k", "--ca-cert", &next_ca]);
        if got.code == Some(0) {
            assert_eq!(got.stdout.trim(), "v");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the certificate: {}",
            got.stderr
        );
        sleep(Duration::from_millis(50));
    }
    srv.run(&["kv", "get", "k", "--ca-cert", &ca]).fails(1, &[]);
}

#[test]
fn sighup_without_anything_to_reload_leaves_the_server_running() {
    let srv = Server::start();
    srv.run(&["kv", "put", "k", "v"]).index();
    signal(&srv.pid(), "-HUP");
    sleep(Duration::from_millis(200));
    let got = srv.run(&["kv", "get", "k"]);
    assert_eq!(
        (got.code, got.stdout.trim()),
        (Some(0), "v"),
        "{}",
        got.stderr
    );
}

/// A running `caskv kv watch …`: its stdout lines arrive on a channel (read by a thread, so a
/// test can wait for one with a timeout); killed (and reaped) on drop.
struct Watcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    /// Starts `caskv kv watch args… --addr addr`.
    fn start(addr: &str, args: &[&str]) -> Watcher {
        Watcher::spawn(
            caskv()
                .args(["kv", "watch"])
                .args(args)
                .args(["--addr", addr]),
        )
    }

    /// Starts `cmd` (a `caskv kv watch …`).
    fn spawn(cmd: &mut Command) -> Watcher {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn caskv kv watch");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next line, within 10 s, parsed as JSON (each line must be exactly one object).
    fn next(&mut self) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
                assert!(v.is_object(), "watch printed {line:?}, not an object");
                v
            }
            Err(_) => panic!("no line from the watch within 10 s: {}", self.stderr_now()),
        }
    }

    /// Kills the watch and returns what it wrote on stderr (for failure messages).
    fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        format!("stderr {err:?}")
    }

    /// Writes with `write` (which returns the write's index) until the watch prints one of
    /// them, then reads past every line up to the last one: from then on it is connected and
    /// has printed everything before. `write` must touch what the watch prints.
    fn connect(&mut self, mut write: impl FnMut() -> u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = write();
        let mut seen = loop {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                break serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
            }
            assert!(
                Instant::now() < deadline,
                "the watch never connected: {}",
                self.stderr_now()
            );
            last = write();
        };
        while seen["index"].as_u64() != Some(last) {
            seen = self.next();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One `POST path` with a JSON body over a raw connection; returns the status and the JSON body.
fn post_json(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line in {head:?}"));
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// Runs `cmd`, which must exit within 10 s (it is killed otherwise).
fn run_bounded(cmd: &mut Command) -> Run {
    let args = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn caskv");
    if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{args} did not exit within 10 s");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("output");
    Run {
        args,
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(stderr).expect("utf-8 stderr"),
    }
}

#[test]
fn kv_watch_key_prints_its_sets_deletes_and_batch_items_only() {
    let srv = Server::start();
    srv.run(&["kv", "put", "ab", "before"]).index();
    let mut watch = Watcher::start(&srv.addr, &["a"]);
    watch.connect(|| srv.run(&["kv", "put", "a", "ping"]).index());

    let set = srv.run(&["kv", "put", "a", "1", "--flags", "3"]).index();
    srv.run(&["kv", "put", "ab", "x"]).index(); // same prefix, another key: not printed
    let created = watch.next();
    assert_eq!(created["index"], set, "{created}");
    assert_eq!(created["op"], "set");
    assert_eq!(created["key"], "a");
    assert_eq!(created["value"], "1");
    assert_eq!(created["flags"], 3);
    assert_eq!(created["modify_index"], set);

    let deleted = srv.run(&["kv", "delete", "a"]).index();
    assert_eq!(
        watch.next(),
        json!({"index": deleted, "op": "delete", "key": "a"})
    );

    let (status, batch) = post_json(
        &srv.addr,
        "/batch/kv/set",
        &json!({"items": {"a": "2", "ab": "y", "b": "z"}}),
    );
    assert_eq!(status, 200, "{batch}");
    let at = batch["modify_index"].as_u64().expect("the batch's index");
    let item = watch.next();
    assert_eq!(item["index"], at, "the batch's index is added: {item}");
    assert_eq!(item["op"], "set");
    assert_eq!(item["key"], "a");
    assert_eq!(item["value"], "2");
    assert_eq!(item["modify_index"], at);

    // Nothing was printed for "ab" or "b": the next line is the next write of "a".
    srv.run(&["kv", "put", "ab", "again"]).index();
    let last = srv.run(&["kv", "put", "a", "3"]).index();
    let next = watch.next();
    assert_eq!(
        (&next["index"], &next["value"]),
        (&json!(last), &json!("3"))
    );
}

#[test]
fn kv_watch_prefix_prints_every_key_under_it_in_index_order() {
    let mut srv = Server::start();
    let mut watch = Watcher::start(&srv.addr, &["config/", "--prefix"]);
    watch.connect(|| srv.run(&["kv", "put", "config/ping", "p"]).index());

    let host = srv.run(&["kv", "put", "config/db host", "h"]).index();
    srv.run(&["kv", "put", "other/x", "1"]).index();
    let port = srv.run(&["kv", "put", "config/db/port", "5432"]).index();
    let gone = srv.run(&["kv", "delete", "config/db host"]).index();
    let (status, batch) = post_json(
        &srv.addr,
        "/batch/kv/set",
        &json!({"items": {"config/a": "1", "config/b": "2", "other/y": "3"}}),
    );
    assert_eq!(status, 200, "{batch}");
    let at = batch["modify_index"].as_u64().expect("the batch's index");

    let first = watch.next();
    assert_eq!(
        (
            &first["index"],
            &first["op"],
            &first["key"],
            &first["value"]
        ),
        (
            &json!(host),
            &json!("set"),
            &json!("config/db host"),
            &json!("h")
        )
    );
    let second = watch.next();
    assert_eq!(
        (&second["index"], &second["key"], &second["value"]),
        (&json!(port), &json!("config/db/port"), &json!("5432"))
    );
    assert_eq!(
        watch.next(),
        json!({"index": gone, "op": "delete", "key": "config/db host"})
    );
    // A batch prints as the server sent it: one object, its items filtered to the prefix.
    let batched = watch.next();
    assert_eq!(
        (&batched["index"], &batched["op"]),
        (&json!(at), &json!("batch"))
    );
    let keys: Vec<&str> = batched["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["key"].as_str())
        .collect();
    assert_eq!(keys, ["config/a", "config/b"], "{batched}");

    // The server ends the stream when it shuts down: the watch exits 0.
    signal(&srv.pid(), "-TERM");
    let status = wait_timeout(&mut watch.child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the watch outlived the server: {}", watch.stderr_now()));
    assert_eq!(status.code(), Some(0), "{}", watch.stderr_now());
    let _ = wait_timeout(&mut srv.child, Duration::from_secs(10));
}

#[test]
fn kv_watch_after_replays_and_a_compacted_index_exits_1() {
    let srv = Server::start_with(&["--history-changes", "2"]);
    let mut indices = Vec::new();
    for n in 1..=5 {
        let key = format!("k{n}");
        indices.push(srv.run(&["kv", "put", &key, "v"]).index());
    }
    // An index still in the history: the changes after it print at once.
    let mut watch = Watcher::start(&srv.addr, &["k5", "--after", &indices[3].to_string()]);
    let replayed = watch.next();
    assert_eq!(
        (&replayed["index"], &replayed["key"]),
        (&json!(indices[4]), &json!("k5"))
    );
    drop(watch);

    // Index 1 is gone from a two-change history: the server's 410 message, exit 1.
    let r = run_bounded(caskv().args(["kv", "watch", "k1", "--after", "1", "--addr", &srv.addr]));
    let line = r.fails(1, &["compacted", "oldest index"]);
    assert!(!line.contains("HTTP 410"), "the server's message: {line}");
}

#[test]
fn kv_watch_sends_its_token_and_an_unknown_one_exits_5() {
    let acl = TempAcl::new(
        r#"{"tokens": [
            {"name": "admin", "secret": "admin-token", "kv": {"": "write"}},
            {"name": "reader", "secret": "reader-token", "kv": {"app/": "read"}}
        ]}"#,
    );
    let srv = Server::start_with(&["--acl-file", &acl.path()]);
    let put = |key: &str| {
        srv.run(&["kv", "put", key, "v", "--token", "admin-token"])
            .index()
    };
    // The token from the environment: the stream shows what it may read.
    let mut watch = Watcher::spawn(
        caskv()
            .args(["kv", "watch", "", "--prefix", "--addr", &srv.addr])
            .env("CASKV_TOKEN", "reader-token"),
    );
    watch.connect(|| put("app/ping"));
    put("other/hidden");
    let shown = put("app/shown");
    let next = watch.next();
    assert_eq!(
        (&next["index"], &next["key"]),
        (&json!(shown), &json!("app/shown"))
    );
    // A token the server does not know: its 401, exit 5, one line.
    run_bounded(caskv().args([
        "kv", "watch", "app/x", "--token", "nope", "--addr", &srv.addr,
    ]))
    .fails(5, &["token"]);
}

/// A fake server for one test: answers each of `responses` to one connection in turn (then
/// closes it) and sends back every request head it read.
fn fake_server(responses: Vec<String>) -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let (tx, heads) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        for response in responses {
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(10)),
                    Err(_) => return,
                }
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, heads)
}

#[test]
fn kv_watch_resumes_after_lagged_and_skips_services_and_heartbeats() {
    let stream = |body: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
        )
    };
    let first = stream(concat!(
        ": heartbeat\n\n",
        "id: 4\ndata: {\"index\":4,\"op\":\"set\",\"key\":\"a b&c/dé\",\"value\":\"1\"}\n\n",
        "id: 5\nevent: service\ndata: {\"index\":5,\"op\":\"register\",\"name\":\"web\"}\n\n",
        "id: 6\ndata: {\"index\":6,\"op\":\"delete\",\"key\":\"a b&c/dé2\"}\n\n",
        "id: 6\nevent: lagged\ndata: {\"last_index\":6,\"message\":\"behind\"}\n\n",
    ));
    // CRLF line endings, as the format allows.
    let second = stream(
        "id: 9\r\ndata: {\"index\":9,\"op\":\"batch\",\"items\":[{\"op\":\"delete\",\"key\":\"a b&c/dé\"}]}\r\n\r\n",
    );
    let (addr, heads) = fake_server(vec![first, second]);
    let r =
        run_bounded(caskv().args(["kv", "watch", "a b&c/dé", "--token", "t0k", "--addr", &addr]));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stderr, "");
    assert_eq!(
        r.stdout,
        concat!(
            "{\"index\":4,\"op\":\"set\",\"key\":\"a b&c/dé\",\"value\":\"1\"}\n",
            "{\"index\":9,\"key\":\"a b&c/dé\",\"op\":\"delete\"}\n",
        )
    );
    let heads: Vec<String> = heads.try_iter().collect();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /watch?prefix=a%20b%26c%2Fd%C3%A9 HTTP/1.1\r\n"),
        "{:?}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("GET /watch?prefix=a%20b%26c%2Fd%C3%A9&after=6 HTTP/1.1\r\n"),
        "{:?}",
        heads[1]
    );
    for head in &heads {
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer t0k\r\n"),
            "{head:?}"
        );
    }
}

#[test]
fn kv_watch_exits_0_when_its_reader_goes_away() {
    let srv = Server::start();
    srv.run(&["kv", "put", "k", "0"]).index();
    let mut child = caskv()
        .args(["kv", "watch", "k", "--after", "0", "--addr", &srv.addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut first).expect("a line");
    } // the reader is gone: the next line the watch prints meets a closed pipe
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the watch kept running with nobody reading");
        }
        srv.run(&["kv", "put", "k", "more"]).index();
        sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&first).expect("JSON")["value"],
        "0"
    );
    assert_eq!((status.code(), stderr.as_str()), (Some(0), ""));
}

#[test]
fn serve_logs_plain_lines_without_colour_escapes_when_stderr_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = caskv()
        .args(["serve", "--addr", &addr, "--workers", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn caskv serve");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !health_ok(&addr) {
        assert!(
            Instant::now() < deadline,
            "caskv serve did not become healthy"
        );
        assert!(child.try_wait().unwrap().is_none(), "caskv serve exited");
        sleep(Duration::from_millis(25));
    }
    // The line is logged once the server listens; give it a moment past the first answer.
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("caskv serving") || Instant::now() > deadline {
            break text;
        }
        sleep(Duration::from_millis(25));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("caskv serving"), "{text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "colour escapes in a log file: {text:?}"
    );
}
