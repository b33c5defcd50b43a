//! Access control over HTTP: tokens with rules per key prefix, per service prefix and for the
//! metrics, from an ACL file (`caskv serve --acl-file`), on a real server on loopback.

#[path = "support/server.rs"]
mod server;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use caskv::server::ConnLimits;
use serde_json::{json, Value};
use server::{in_memory, Server};

/// An ACL file in a fresh temporary directory (removed with it).
struct AclFile {
    dir: tempfile::TempDir,
}

impl AclFile {
    fn new(text: &str) -> AclFile {
        let file = AclFile {
            dir: tempfile::tempdir().unwrap(),
        };
        file.write(text);
        file
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("acl.json")
    }

    /// Replaces the file's text (written whole, then renamed into place).
    fn write(&self, text: &str) {
        let tmp = self.dir.path().join("acl.json.tmp");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

/// The SHA-256 of "ops-token", as the file may give it.
const OPS_SHA256: &str = "d9310c002af91822beb0b3487d8b04f85bf6bf1f8a5496bff7d35fc7c5a29def";

fn rules() -> Value {
    json!({
        "default": "deny",
        "anonymous": { "kv": { "public/": "read" }, "services": { "web": "read" } },
        "tokens": [
            { "name": "app", "secret": "app-token",
              "kv": { "": "read", "app/": "write", "app/secrets/": "deny" },
              "services": { "app": "write" } },
            { "name": "reader", "secret": "reader-token",
              "kv": { "app/": "read" }, "metrics": "read" },
            { "name": "ops", "secret_sha256": OPS_SHA256,
              "kv": { "": "write" }, "services": { "": "write" }, "metrics": "read",
              "management": true }
        ]
    })
}

/// A server with the ACL file `file`.
fn serve(file: &AclFile) -> Server {
    let state = in_memory()
        .with_acl_file(&file.path())
        .expect("a valid ACL file");
    Server::spawn(state, ConnLimits::default())
}

/// One request as `token` (`None`: anonymous), through `Authorization: Bearer`.
fn call(
    s: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_with(
        s,
        token.map(|t| ("authorization", format!("Bearer {t}"))),
        method,
        path,
        body,
    )
}

/// One request with one extra header.
fn call_with(
    s: &Server,
    header: Option<(&str, String)>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let (status, text) = s
        .send_with(method, path, &headers, bytes.as_deref())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let value = if text.starts_with('#') {
        Value::String(text) // the metrics' text
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

#[track_caller]
fn denied(reply: (u16, Value), status: u16) {
    server::assert_error(&reply, status);
    let text = reply.1.to_string();
    for secret in ["app-token", "reader-token", "ops-token", "app/secrets"] {
        assert!(!text.contains(secret), "a refusal names {secret}: {text}");
    }
}

#[test]
fn the_longest_matching_prefix_decides_and_write_implies_read() {
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    let app = Some("app-token");
    // Seed as ops (write everything).
    for key in ["app/config", "app/secrets/db", "other/x", "public/motd"] {
        let (status, _) = call(
            &s,
            Some("ops-token"),
            "PUT",
            &format!("/kv/{key}"),
            Some(json!({"value": "v"})),
        );
        assert_eq!(status, 200, "{key}");
    }
    // app: "" read, "app/" write, "app/secrets/" deny.
    assert_eq!(call(&s, app, "GET", "/kv/other/x", None).0, 200);
    denied(
        call(&s, app, "PUT", "/kv/other/x", Some(json!({"value": "w"}))),
        403,
    );
    assert_eq!(
        call(
            &s,
            app,
            "PUT",
            "/kv/app/config",
            Some(json!({"value": "w"}))
        )
        .0,
        200
    );
    assert_eq!(
        call(&s, app, "GET", "/kv/app/config", None).0,
        200,
        "write implies read"
    );
    denied(call(&s, app, "GET", "/kv/app/secrets/db", None), 403);
    denied(call(&s, app, "DELETE", "/kv/app/secrets/db", None), 403);
    // A missing key under a denied prefix is a 403 too: nothing says whether it exists.
    denied(call(&s, app, "GET", "/kv/app/secrets/none", None), 403);
    // reader: only "app/" read; elsewhere the default (deny).
    let reader = Some("reader-token");
    assert_eq!(call(&s, reader, "GET", "/kv/app/secrets/db", None).0, 200);
    denied(
        call(
            &s,
            reader,
            "PUT",
            "/kv/app/config",
            Some(json!({"value": "w"})),
        ),
        403,
    );
    denied(call(&s, reader, "GET", "/kv/other/x", None), 403);
    // The same token through X-Caskv-Token.
    let by_header = call_with(
        &s,
        Some(("x-caskv-token", "app-token".into())),
        "GET",
        "/kv/app/config",
        None,
    );
    assert_eq!(by_header.0, 200);
    // Nothing was written by a refused request.
    assert_eq!(s.state.store.get("other/x").unwrap().value, "v");
    assert_eq!(s.state.store.get("app/secrets/db").unwrap().value, "v");
}

#[test]
fn no_token_or_an_unknown_one_is_a_401_and_a_forbidden_request_a_403() {
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    s.state.store.set("public/motd".into(), "hello".into());
    s.state.store.set("app/config".into(), "c".into());
    // Anonymous: its own rules ("public/" read), else 401.
    assert_eq!(call(&s, None, "GET", "/kv/public/motd", None).0, 200);
    denied(call(&s, None, "GET", "/kv/app/config", None), 401);
    denied(
        call(
            &s,
            None,
            "PUT",
            "/kv/public/motd",
            Some(json!({"value": "x"})),
        ),
        401,
    );
    // An unknown token, a malformed header, an empty token: 401 before anything else.
    denied(
        call(&s, Some("not-a-token"), "GET", "/kv/public/motd", None),
        401,
    );
    denied(
        call_with(
            &s,
            Some(("authorization", "Basic abc".into())),
            "GET",
            "/kv/public/motd",
            None,
        ),
        401,
    );
    denied(
        call_with(
            &s,
            Some(("x-caskv-token", " ".into())),
            "GET",
            "/kv/public/motd",
            None,
        ),
        401,
    );
    // A 401 says how to authenticate.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .get(format!("{}/kv/app/config", s.base))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers().get("www-authenticate").unwrap(), "Bearer");
    // /health needs nothing; /metrics needs a metrics read rule.
    assert_eq!(call(&s, None, "GET", "/health", None).0, 200);
    assert_eq!(call(&s, Some("not-a-token"), "GET", "/health", None).0, 200);
    denied(call(&s, None, "GET", "/metrics", None), 401);
    denied(call(&s, Some("app-token"), "GET", "/metrics", None), 403);
    assert_eq!(
        call(&s, Some("reader-token"), "GET", "/metrics", None).0,
        200
    );
}

#[test]
fn listings_show_only_what_the_token_may_read() {
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    for key in ["app/config", "app/secrets/db", "other/x", "public/motd"] {
        s.state.store.set(key.into(), "v".into());
    }
    let keys = |token| call(&s, token, "GET", "/kv/", None);
    assert_eq!(
        keys(Some("app-token")).1,
        json!(["app/config", "other/x", "public/motd"])
    );
    assert_eq!(
        keys(Some("reader-token")).1,
        json!(["app/config", "app/secrets/db"])
    );
    assert_eq!(keys(None).1, json!(["public/motd"]));
    assert_eq!(keys(Some("ops-token")).1.as_array().unwrap().len(), 4);
    let prefixed = call(&s, Some("app-token"), "GET", "/kv/?prefix=app/", None);
    assert_eq!(prefixed.1, json!(["app/config"]));
    // Services: "app" write for app, "web" read for anonymous.
    for name in ["app-api", "web", "db"] {
        let reg = json!({"name": name, "address": "10.0.0.1", "port": 80});
        assert_eq!(
            call(&s, Some("ops-token"), "POST", "/services", Some(reg)).0,
            200
        );
    }
    let names = |token| -> Vec<String> {
        let (status, list) = call(&s, token, "GET", "/services", None);
        assert_eq!(status, 200);
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(Some("app-token")), ["app-api"]);
    assert_eq!(names(None), ["web"]);
    assert_eq!(names(Some("ops-token")), ["app-api", "db", "web"]);
    assert_eq!(call(&s, None, "GET", "/services/web", None).0, 200);
    denied(call(&s, None, "GET", "/services/db", None), 401);
    denied(
        call(&s, Some("app-token"), "DELETE", "/services/db", None),
        403,
    );
    denied(
        call(
            &s,
            Some("app-token"),
            "PUT",
            "/services/web/heartbeat",
            None,
        ),
        403,
    );
    let reg = json!({"name": "db", "address": "10.0.0.9", "port": 5432});
    denied(
        call(&s, Some("app-token"), "POST", "/services", Some(reg)),
        403,
    );
    assert_eq!(
        call(
            &s,
            Some("app-token"),
            "PUT",
            "/services/app-api/heartbeat",
            None
        )
        .0,
        200
    );
    assert_eq!(
        s.state.registry.get("db").unwrap().service.address,
        "10.0.0.1"
    );
}

#[test]
fn a_batch_with_one_forbidden_key_is_refused_whole() {
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    let app = Some("app-token");
    let before = s.state.store.global_index().high_water();
    let body = json!({"items": {"app/a": "1", "app/secrets/b": "2"}});
    denied(call(&s, app, "POST", "/batch/kv/set", Some(body)), 403);
    assert!(
        s.state.store.get("app/a").is_none(),
        "half a batch was written"
    );
    assert_eq!(s.state.store.global_index().high_water(), before);
    let body = json!({"items": {"app/a": "1", "app/b": "2"}});
    assert_eq!(call(&s, app, "POST", "/batch/kv/set", Some(body)).0, 200);
    denied(
        call(
            &s,
            app,
            "POST",
            "/batch/kv/get",
            Some(json!({"keys": ["app/a", "app/secrets/x"]})),
        ),
        403,
    );
    assert_eq!(
        call(
            &s,
            app,
            "POST",
            "/batch/kv/get",
            Some(json!({"keys": ["app/a", "other/q"]}))
        )
        .0,
        200
    );
    denied(
        call(
            &s,
            app,
            "POST",
            "/batch/kv/delete",
            Some(json!({"keys": ["app/a", "other/q"]})),
        ),
        403,
    );
    let cas = json!({"items": {"app/a": "x", "other/q": "y"}, "expected_indices": {"app/a": 0, "other/q": 0}});
    denied(call(&s, app, "POST", "/batch/kv/set-cas", Some(cas)), 403);
    let cas = json!({"keys": ["app/a", "app/secrets/z"], "expected_indices": {"app/a": 1, "app/secrets/z": 1}});
    denied(
        call(&s, app, "POST", "/batch/kv/delete-cas", Some(cas)),
        403,
    );
    assert_eq!(s.state.store.get("app/a").unwrap().value, "1");
}

#[test]
fn a_reload_swaps_the_rules_whole_and_a_bad_file_keeps_the_old_ones() {
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    s.state.store.set("other/x".into(), "v".into());
    assert_eq!(
        call(&s, Some("reader-token"), "GET", "/kv/app/a", None).0,
        404
    );
    denied(
        call(&s, Some("reader-token"), "GET", "/kv/other/x", None),
        403,
    );
    // Only a management token may reload.
    denied(
        call(&s, Some("app-token"), "POST", "/admin/reload", None),
        403,
    );
    denied(call(&s, None, "POST", "/admin/reload", None), 401);
    // A file that does not parse: refused, and the old rules stay.
    file.write("{ not json");
    let (status, body) = call(&s, Some("ops-token"), "POST", "/admin/reload", None);
    server::assert_error(&(status, body), 400);
    assert_eq!(
        call(&s, Some("reader-token"), "GET", "/kv/app/a", None).0,
        404
    );
    // A file with an error in it (a token named twice): refused the same way.
    let mut twice = rules();
    twice["tokens"][1]["name"] = json!("app");
    file.write(&twice.to_string());
    assert_eq!(
        call(&s, Some("ops-token"), "POST", "/admin/reload", None).0,
        400
    );
    // A good new file: reader may now read everything; app is gone.
    let mut next = rules();
    next["tokens"][1]["kv"] = json!({"": "read"});
    next["tokens"].as_array_mut().unwrap().remove(0);
    file.write(&next.to_string());
    let (status, body) = call(&s, Some("ops-token"), "POST", "/admin/reload", None);
    assert_eq!((status, &body["tokens"]), (200, &json!(2)), "{body}");
    assert_eq!(
        call(&s, Some("reader-token"), "GET", "/kv/other/x", None).0,
        200
    );
    denied(call(&s, Some("app-token"), "GET", "/kv/other/x", None), 401);
}

#[test]
fn requests_during_reloads_each_see_one_table_and_none_fails() {
    // Two files that differ only in which of two tokens may write "k/": at every moment
    // exactly one of them may. Writers with both tokens run while the file flips back and forth
    // and reloads run; each request must get a 200 or a 403 (never a 401, a 5xx or an error:
    // no request meets a missing or half-read table), and both answers must have come.
    let table = |writer: &str| {
        json!({"tokens": [
            {"name": "a", "secret": "token-a", "kv": {"k/": if writer == "a" {"write"} else {"read"}}},
            {"name": "b", "secret": "token-b", "kv": {"k/": if writer == "b" {"write"} else {"read"}}},
            {"name": "ops", "secret": "ops-token", "management": true}
        ]})
        .to_string()
    };
    let file = AclFile::new(&table("a"));
    let s = serve(&file);
    let stop = AtomicBool::new(false);
    let (ok, forbidden) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for token in ["token-a", "token-b"] {
            let (s, stop, ok, forbidden) = (&s, &stop, &ok, &forbidden);
            scope.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (status, body) = call(
                        s,
                        Some(token),
                        "PUT",
                        &format!("/kv/k/{token}"),
                        Some(json!({"value": i.to_string()})),
                    );
                    match status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        403 => forbidden.fetch_add(1, Ordering::Relaxed),
                        other => panic!("{token}: {other} {body}"),
                    };
                }
            });
        }
        for round in 0..20 {
            file.write(&table(if round % 2 == 0 { "b" } else { "a" }));
            let (status, body) = call(&s, Some("ops-token"), "POST", "/admin/reload", None);
            assert_eq!(status, 200, "{body}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ok.load(Ordering::Relaxed) > 0 && forbidden.load(Ordering::Relaxed) > 0);
}

#[test]
fn an_invalid_acl_file_is_refused_at_start_with_the_reason() {
    let cases = [
        ("{", "EOF"),
        (r#"{"tokens": [{"name": "x"}]}"#, "exactly one of secret"),
        (
            r#"{"tokens": [{"name": "x", "secret": "s", "secret_sha256": "00"}]}"#,
            "exactly one of secret",
        ),
        (
            r#"{"tokens": [{"name": "x", "secret_sha256": "zz"}]}"#,
            "64 hex digits",
        ),
        (
            r#"{"tokens": [{"name": "x", "secret": "s", "kv": {"a/": "admin"}}]}"#,
            "unknown variant",
        ),
        (
            r#"{"tokens": [{"name": "x", "secret": "s"}, {"name": "y", "secret": "s"}]}"#,
            "same secret",
        ),
        (r#"{"tokens": [], "defaults": "read"}"#, "unknown field"),
    ];
    for (text, reason) in cases {
        let file = AclFile::new(text);
        let err = in_memory()
            .with_acl_file(&file.path())
            .err()
            .unwrap_or_else(|| panic!("accepted {text}"));
        assert!(err.contains(reason), "{text}: {err}");
    }
    let missing = std::env::temp_dir().join("caskv-no-such-acl-file.json");
    assert!(in_memory()
        .with_acl_file(&missing)
        .err()
        .unwrap()
        .contains("cannot read"));
}

/// Every log line the servers of this test binary write (installed once, for the audit test).
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::default());
        struct Sink(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(logs))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        logs
    })
}

#[test]
fn each_refusal_is_logged_with_the_token_name_and_rule_never_the_token_and_rate_limited() {
    let logs = captured_logs();
    let file = AclFile::new(&rules().to_string());
    let s = serve(&file);
    denied(
        call(&s, Some("app-token"), "GET", "/kv/app/secrets/db", None),
        403,
    );
    denied(call(&s, Some("not-a-token"), "GET", "/kv/x", None), 401);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("/kv/app/secrets/db"))
        .unwrap_or_else(|| panic!("no audit line for the 403: {text}"));
    assert!(
        line.contains("request denied") && line.contains("GET"),
        "{line}"
    );
    assert!(
        line.contains("token=\"app\"") || line.contains("token=app"),
        "{line}"
    );
    assert!(line.contains("app/secrets/"), "the rule: {line}");
    assert!(
        text.lines()
            .any(|l| l.contains("/kv/x") && l.contains("unknown or malformed")),
        "{text}"
    );
    assert!(
        !text.contains("app-token") && !text.contains("not-a-token"),
        "a token was logged: {text}"
    );
    // A burst of refusals: at most the per-second budget each second (the burst spans a second
    // boundary at most once in the time it takes).
    let before = logs.lock().unwrap().len();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        denied(
            call(&s, Some("app-token"), "GET", "/kv/app/secrets/burst", None),
            403,
        );
    }
    let seconds = started.elapsed().as_secs() + 1;
    let burst = String::from_utf8_lossy(&logs.lock().unwrap()[before..])
        .lines()
        .filter(|l| l.contains("/kv/app/secrets/burst"))
        .count() as u64;
    let budget = caskv::server::acl::AUDIT_LINES_PER_SECOND * (seconds + 1);
    assert!(
        burst >= 1 && burst <= budget,
        "{burst} audit lines for 200 refusals in {seconds} s"
    );
}

/// The change feed under an ACL file: an anonymous caller may follow only a prefix the rules
/// let anyone read (else a 401), and a token's stream leaves out the keys it may not read.
#[test]
fn the_change_feed_is_refused_or_filtered_by_the_rules() {
    let acl = AclFile::new(&rules().to_string());
    let s = Server::spawn(
        in_memory().with_acl_file(&acl.path()).unwrap(),
        ConnLimits::default(),
    );
    let anonymous = s.send("GET", "/watch?after=0", None).unwrap();
    assert_eq!(anonymous.0, 401, "{}", anonymous.1);
    // Written past the rules, straight through the server's write path.
    let write = |key: &str| {
        s.state
            .db()
            .set(key.to_string(), "v".into())
            .unwrap()
            .wait()
            .unwrap();
    };
    write("app/a");
    write("app/secrets/pw");
    write("app/b");
    // The app token reads everything but app/secrets/.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    let mut stream = agent
        .get(format!("{}/watch?after=0", s.base))
        .header("Authorization", "Bearer app-token")
        .call()
        .unwrap()
        .into_body()
        .into_reader();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("data: ").count() < 2 {
        let n = std::io::Read::read(&mut stream, &mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(
        seen.contains("\"key\":\"app/a\"") && seen.contains("\"key\":\"app/b\""),
        "{seen}"
    );
    assert!(
        !seen.contains("secrets"),
        "a denied key was streamed: {seen}"
    );
}
