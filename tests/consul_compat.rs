//! The Consul-compatible face (issue #13) on a real listener: `/v1/kv`, `/v1/txn`,
//! `/v1/session`, `/v1/status`, with exact bodies and headers, bad input, a restart of a
//! persistent server, and what stays hidden from the native API. The agent, catalog and health
//! endpoints have their own tests in `src/server/consul/agent.rs`; py-consul drives all of it
//! in `tests/consul_py/`.

#[path = "support/server.rs"]
mod server;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use caskv::persist::FsyncPolicy;
use caskv::server::{AppState, ConnLimits, Limits};
use serde_json::{json, Value};
use server::{in_memory, Server};

/// A response: status, headers (lowercase names), body bytes.
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .unwrap_or_else(|| panic!("no X-Consul-Index on a {}", self.status))
            .parse()
            .unwrap()
    }
}

fn call(s: &Server, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    let builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", s.base));
    let mut r = match body {
        Some(b) => s.agent.run(builder.body(b.to_vec()).unwrap()),
        None => s.agent.run(builder.body(()).unwrap()),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_vec().unwrap();
    Resp {
        status,
        headers,
        body,
    }
}

fn get(s: &Server, path: &str) -> Resp {
    call(s, "GET", path, None)
}

fn put(s: &Server, path: &str, body: &[u8]) -> Resp {
    call(s, "PUT", path, Some(body))
}

/// A `PUT /v1/kv/…` whose answer must be `200 true` or `200 false`.
fn kv_put(s: &Server, path: &str, body: &[u8]) -> bool {
    let r = put(s, &format!("/v1/kv/{path}"), body);
    assert_eq!(r.status, 200, "PUT {path}: {}", r.text());
    r.json().as_bool().expect("true or false")
}

fn start() -> Server {
    Server::spawn(in_memory(), ConnLimits::default())
}

fn start_with(limits: Limits) -> Server {
    Server::spawn(
        AppState::new(limits, Duration::from_secs(30)),
        ConnLimits::default(),
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn every_response_carries_consuls_headers_and_a_kv_entry_has_consuls_exact_shape() {
    let s = start();
    // A missing key: 404, empty body, and the headers anyway (py-consul needs the index).
    let r = get(&s, "/v1/kv/app/config");
    assert_eq!((r.status, r.body.len()), (404, 0));
    assert!(r.index() >= 1);
    assert_eq!(r.headers["x-consul-knownleader"], "true");
    assert_eq!(r.headers["x-consul-lastcontact"], "0");

    let w = put(&s, "/v1/kv/app/config?flags=42", b"hello");
    assert_eq!((w.status, w.json()), (200, json!(true)));
    let r = get(&s, "/v1/kv/app/config");
    assert_eq!(r.status, 200);
    let index = r.index();
    assert_eq!(
        r.json(),
        json!([{"LockIndex": 0, "Key": "app/config", "Flags": 42, "Value": b64(b"hello"),
                "CreateIndex": index, "ModifyIndex": index}])
    );
    // `?raw`: the bytes alone, served so that a browser does not run them.
    let raw = get(&s, "/v1/kv/app/config?raw");
    assert_eq!((raw.status, raw.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(raw.headers["content-type"], "text/plain");
    assert_eq!(raw.headers["x-content-type-options"], "nosniff");
    assert_eq!(raw.headers["content-security-policy"], "sandbox");
    assert_eq!(raw.index(), index);

    // A plain PUT resets the flags (Consul's rule: flags are sent with every write).
    assert!(kv_put(&s, "app/config", b"again"));
    assert_eq!(get(&s, "/v1/kv/app/config").json()[0]["Flags"], 0);
    // An empty value shows as null; bytes that are not UTF-8 round-trip.
    assert!(kv_put(&s, "empty", b""));
    assert_eq!(get(&s, "/v1/kv/empty").json()[0]["Value"], Value::Null);
    let binary = [0xff, 0x00, 0xc1, 0x80];
    assert!(kv_put(&s, "bin", &binary));
    assert_eq!(get(&s, "/v1/kv/bin?raw").body, binary);
    assert_eq!(get(&s, "/v1/kv/bin").json()[0]["Value"], b64(&binary));
    // The native API shows text as before and bytes that are not text as base64.
    let (status, native) = s.get("/kv/bin");
    assert_eq!(status, 200);
    assert_eq!(native, json!({"key": "bin", "value_base64": b64(&binary)}));
    assert_eq!(s.get("/kv/app/config").1["value"], "again");
    // A native write reads back through the Consul face.
    s.put(
        "/kv/native",
        json!({"value": "from the native API", "flags": 7}),
    );
    let r = get(&s, "/v1/kv/native").json();
    assert_eq!(r[0]["Value"], b64(b"from the native API"));
    assert_eq!(r[0]["Flags"], 7);

    assert_eq!(get(&s, "/v1/status/leader").json(), json!("127.0.0.1:8300"));
    assert_eq!(
        get(&s, "/v1/status/peers").json(),
        json!(["127.0.0.1:8300"])
    );
    let r = get(&s, "/v1/acl/tokens");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("does not support"), "{}", r.text());
    assert!(r.index() >= 1);
}

#[test]
fn recurse_and_keys_list_a_prefix_with_its_index() {
    let s = start();
    for k in ["web/a", "web/b/c", "web/b/d", "web/bx", "other"] {
        assert!(kv_put(&s, k, k.as_bytes()));
    }
    let r = get(&s, "/v1/kv/web/?recurse");
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["web/a", "web/b/c", "web/b/d", "web/bx"]);
    let highest = s.state.store.get("web/bx").unwrap().modify_index;
    assert_eq!(r.index(), highest);
    // Presence flags: `recurse=` (the Go client), `recurse=1` (py-consul).
    assert_eq!(
        get(&s, "/v1/kv/web/?recurse=")
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        get(&s, "/v1/kv/web/?recurse=1")
            .json()
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        get(&s, "/v1/kv/web/?keys").json(),
        json!(["web/a", "web/b/c", "web/b/d", "web/bx"])
    );
    assert_eq!(
        get(&s, "/v1/kv/web/?keys&separator=/").json(),
        json!(["web/a", "web/b/", "web/bx"])
    );
    // Consul's misspelling is accepted too.
    assert_eq!(
        get(&s, "/v1/kv/web/?keys&seperator=/").json(),
        json!(["web/a", "web/b/", "web/bx"])
    );
    assert_eq!(
        get(&s, "/v1/kv/?keys&separator=/").json(),
        json!(["other", "web/"])
    );
    // Nothing under a prefix: 404 with the index.
    let r = get(&s, "/v1/kv/nothing/?recurse");
    assert_eq!((r.status, r.body.len()), (404, 0));
    assert!(r.index() >= 1);
    assert_eq!(get(&s, "/v1/kv/nothing/?keys").status, 404);
    // A delete under the prefix moves its index.
    assert!(call(&s, "DELETE", "/v1/kv/web/a", None)
        .json()
        .as_bool()
        .unwrap());
    let after = get(&s, "/v1/kv/web/?recurse").index();
    assert!(after > highest, "{after} > {highest}");
    // Delete a tree.
    let r = call(&s, "DELETE", "/v1/kv/web/?recurse", None);
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(get(&s, "/v1/kv/web/?recurse").status, 404);
    assert_eq!(get(&s, "/v1/kv/other").status, 200);
}

#[test]
fn cas_answers_true_or_false_never_409_and_bad_input_changes_nothing() {
    let s = start_with(Limits {
        max_value_bytes: 16,
        ..Limits::default()
    });
    assert!(kv_put(&s, "k?cas=0", b"one"));
    assert!(
        !kv_put(&s, "k?cas=0", b"two"),
        "create-only on a present key"
    );
    let index = get(&s, "/v1/kv/k").index();
    assert!(!kv_put(&s, &format!("k?cas={}", index + 100), b"two"));
    assert!(kv_put(&s, &format!("k?cas={index}"), b"two"));
    assert!(!kv_put(&s, &format!("k?cas={index}"), b"three"), "stale");
    assert_eq!(get(&s, "/v1/kv/k?raw").body, b"two");

    let now = get(&s, "/v1/kv/k").index();
    let del = call(&s, "DELETE", &format!("/v1/kv/k?cas={index}"), None);
    assert_eq!((del.status, del.json()), (200, json!(false)));
    let del = call(&s, "DELETE", &format!("/v1/kv/k?cas={now}"), None);
    assert_eq!((del.status, del.json()), (200, json!(true)));
    // Deleting an absent key is a success.
    assert_eq!(call(&s, "DELETE", "/v1/kv/k", None).json(), json!(true));

    assert!(kv_put(&s, "kept", b"v"));
    let before = s.state.store.global_index().high_water();
    for (method, path, body, status) in [
        ("PUT", "/v1/kv/", &b"x"[..], 400),
        ("PUT", "/v1/kv/a?cas=1&acquire=x", b"x", 400),
        ("PUT", "/v1/kv/a?flags=minus", b"x", 400),
        ("PUT", "/v1/kv/a?cas=-1", b"x", 400),
        ("PUT", "/v1/kv/a?acquire=not-a-uuid", b"x", 400),
        ("PUT", "/v1/kv/a%00b", b"x", 400),
        ("PUT", "/v1/kv/a", b"seventeen bytes!!", 413),
        ("DELETE", "/v1/kv/kept?recurse&cas=1", b"", 400),
        ("DELETE", "/v1/kv/", b"", 400),
        ("GET", "/v1/kv/", b"", 400),
        ("GET", "/v1/kv/kept?index=x", b"", 400),
        ("GET", "/v1/kv/kept?index=1&wait=forever", b"", 400),
    ] {
        let r = call(&s, method, path, Some(body));
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.index() >= 1, "{method} {path}");
    }
    assert_eq!(s.state.store.global_index().high_water(), before);
    assert_eq!(get(&s, "/v1/kv/kept?raw").body, b"v");
}

#[test]
fn a_blocking_read_waits_for_its_key_and_answers_the_same_index_when_the_wait_ends() {
    let s = start();
    assert!(kv_put(&s, "watched", b"1"));
    let index = get(&s, "/v1/kv/watched").index();
    // Unchanged: held for the wait (Go's duration format), then the same state and index.
    let began = Instant::now();
    let r = get(&s, &format!("/v1/kv/watched?index={index}&wait=300ms"));
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert_eq!((r.status, r.index()), (200, index));
    // A write to another key does not wake it; a write to it does.
    let base = s.base.clone();
    let writer = std::thread::spawn(move || {
        let c = server::Client::new(&base);
        std::thread::sleep(Duration::from_millis(200));
        c.send("PUT", "/v1/kv/unrelated", Some(b"x")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        c.send("PUT", "/v1/kv/watched", Some(b"2")).unwrap();
    });
    let began = Instant::now();
    let r = get(&s, &format!("/v1/kv/watched?index={index}&wait=5m"));
    let waited = began.elapsed();
    writer.join().unwrap();
    assert!(waited >= Duration::from_millis(350), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(r.index() > index);
    assert_eq!(r.json()[0]["Value"], b64(b"2"));
}

#[test]
fn a_transaction_commits_every_operation_at_one_index_or_nothing() {
    let s = start_with(Limits {
        max_txn_ops: 6,
        ..Limits::default()
    });
    assert!(kv_put(&s, "t/a", b"a0"));
    let a = get(&s, "/v1/kv/t/a").index();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/b", "Value": b64(b"b1"), "Flags": 3}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": b64(b"a1"), "Index": a}},
        {"KV": {"Verb": "get", "Key": "t/b"}},
        {"KV": {"Verb": "check-not-exists", "Key": "t/c"}},
        {"KV": {"Verb": "get-tree", "Key": "t/"}},
    ]);
    let r = put(&s, "/v1/txn", ops.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().unwrap();
    let at = s.state.store.get("t/b").unwrap().modify_index;
    assert_eq!(
        s.state.store.get("t/a").unwrap().modify_index,
        at,
        "one index"
    );
    assert_eq!(
        results[0],
        json!({"KV": {"LockIndex": 0, "Key": "t/b", "Flags": 3, "Value": null, "CreateIndex": at, "ModifyIndex": at}})
    );
    assert_eq!(results[1]["KV"]["ModifyIndex"], at);
    assert_eq!(results[1]["KV"]["CreateIndex"], a);
    // A get in the transaction sees the set before it.
    assert_eq!(results[2]["KV"]["Value"], b64(b"b1"));
    assert_eq!(
        results.len(),
        5,
        "check-not-exists gives no result; the tree gives two"
    );
    assert_eq!(results[3]["KV"]["Key"], "t/a");
    assert_eq!(results[4]["KV"]["Value"], b64(b"b1"));

    // A rollback lists every failed operation, and changes nothing.
    let before = s.state.store.global_index().high_water();
    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/d", "Value": b64(b"d")}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": b64(b"x"), "Index": a}},
        {"KV": {"Verb": "get", "Key": "t/missing"}},
        {"KV": {"Verb": "check-index", "Key": "t/b", "Index": 1}},
        {"KV": {"Verb": "delete-cas", "Key": "t/b", "Index": 1}},
    ]);
    let r = put(&s, "/v1/txn", ops.to_string().as_bytes());
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Results"], Value::Null);
    let failed: Vec<u64> = body["Errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["OpIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [1, 2, 3, 4]);
    assert_eq!(
        body["Errors"][0]["What"],
        "failed to set key \"t/a\", index is stale"
    );
    assert_eq!(s.state.store.global_index().high_water(), before);
    assert!(s.state.store.get("t/d").is_none());

    // Deletes: no result entry.
    let ops = json!([
        {"KV": {"Verb": "delete", "Key": "t/a"}},
        {"KV": {"Verb": "delete-tree", "Key": "t/"}},
    ]);
    let r = put(&s, "/v1/txn", ops.to_string().as_bytes());
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"Results": null, "Errors": null}))
    );
    assert!(s.state.store.listing("t/").entries.is_empty());

    // Bounds: too many operations is a 413; bad JSON, bad base64, an unknown verb are 400s.
    let seven: Vec<Value> = (0..7)
        .map(|i| json!({"KV": {"Verb": "set", "Key": format!("x{i}"), "Value": ""}}))
        .collect();
    let r = put(&s, "/v1/txn", json!(seven).to_string().as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "Transaction contains too many operations (7 > 6)");
    for bad in [
        "not json",
        r#"[{"KV": {"Verb": "set", "Key": "k", "Value": "***"}}]"#,
        r#"[{"KV": {"Verb": "frobnicate", "Key": "k"}}]"#,
        r#"[{"Node": {"Verb": "set"}}]"#,
        r#"[{"KV": {"Verb": "lock", "Key": "k"}}]"#,
    ] {
        let r = put(&s, "/v1/txn", bad.as_bytes());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(s.state.store.global_index().high_water(), before + 1);
}

/// A session's id from `PUT /v1/session/create`.
fn create_session(s: &Server, body: Value) -> String {
    let r = put(s, "/v1/session/create", body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["ID"].as_str().unwrap().to_string()
}

#[test]
fn a_session_locks_a_key_against_others_until_it_releases_it_or_is_destroyed() {
    let s = start();
    let s1 = create_session(&s, json!({"Name": "one", "LockDelay": "0s"}));
    let s2 = create_session(&s, json!({"Name": "two"}));
    assert!(kv_put(&s, &format!("lock?acquire={s1}"), b"held by one"));
    assert!(!kv_put(&s, &format!("lock?acquire={s2}"), b"two wants it"));
    let e = get(&s, "/v1/kv/lock").json();
    assert_eq!(e[0]["Session"], s1.as_str());
    assert_eq!(e[0]["LockIndex"], 1);
    assert_eq!(e[0]["Value"], b64(b"held by one"));
    // Re-acquiring by the holder updates the value and keeps the count.
    assert!(kv_put(&s, &format!("lock?acquire={s1}"), b"still one"));
    assert_eq!(get(&s, "/v1/kv/lock").json()[0]["LockIndex"], 1);
    // A plain write keeps the lock.
    assert!(kv_put(&s, "lock", b"plain"));
    assert_eq!(get(&s, "/v1/kv/lock").json()[0]["Session"], s1.as_str());
    // Only the holder releases.
    assert!(!kv_put(&s, &format!("lock?release={s2}"), b"x"));
    assert!(kv_put(&s, &format!("lock?release={s1}"), b"free"));
    let e = get(&s, "/v1/kv/lock").json();
    assert_eq!(e[0].get("Session"), None);
    assert_eq!(e[0]["LockIndex"], 1);
    assert!(kv_put(&s, &format!("lock?acquire={s2}"), b"two"));
    assert_eq!(get(&s, "/v1/kv/lock").json()[0]["LockIndex"], 2);

    // info, list, node, renew.
    let info = get(&s, &format!("/v1/session/info/{s2}")).json();
    assert_eq!(info[0]["ID"], s2.as_str());
    assert_eq!(info[0]["Name"], "two");
    assert_eq!(info[0]["Behavior"], "release");
    assert_eq!(info[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(
        get(&s, "/v1/session/list").json().as_array().unwrap().len(),
        2
    );
    assert_eq!(
        get(&s, "/v1/session/node/caskv")
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let renewed = put(&s, &format!("/v1/session/renew/{s2}"), b"");
    assert_eq!(
        (renewed.status, &renewed.json()[0]["ID"]),
        (200, &json!(s2))
    );

    // Destroying the holder releases its lock at a fresh index; its lock-delay (15 s by
    // default) keeps others out meanwhile.
    let before = get(&s, "/v1/kv/lock").index();
    assert_eq!(
        put(&s, &format!("/v1/session/destroy/{s2}"), b"").json(),
        json!(true)
    );
    let e = get(&s, "/v1/kv/lock");
    assert!(e.index() > before);
    assert_eq!(e.json()[0].get("Session"), None);
    assert!(!kv_put(&s, &format!("lock?acquire={s1}"), b"too soon"));
    assert_eq!(get(&s, &format!("/v1/session/info/{s2}")).json(), json!([]));
    assert_eq!(put(&s, &format!("/v1/session/renew/{s2}"), b"").status, 404);
    // An acquire with a session that is gone is an error, and writes nothing.
    let r = put(&s, &format!("/v1/kv/other?acquire={s2}"), b"x");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(get(&s, "/v1/kv/other").status, 404);

    // Session records stay out of every listing.
    assert_eq!(s.get("/kv").1, json!(["lock"]));
    assert_eq!(get(&s, "/v1/kv/?keys").json(), json!(["lock"]));
}

#[test]
fn an_expired_or_destroyed_session_releases_or_deletes_what_it_holds() {
    let s = start_with(Limits {
        min_session_ttl: Duration::from_millis(500),
        ..Limits::default()
    });
    // Bounds of a session's TTL and behaviour.
    let r = put(&s, "/v1/session/create", br#"{"TTL": "100ms"}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Invalid Session TTL"), "{}", r.text());
    assert_eq!(
        put(&s, "/v1/session/create", br#"{"TTL": "25h"}"#).status,
        400
    );
    assert_eq!(
        put(&s, "/v1/session/create", br#"{"Behavior": "explode"}"#).status,
        400
    );
    assert_eq!(put(&s, "/v1/session/create", b"{").status, 400);
    // Member names in any case, as Consul's decoder reads them (py-consul sends lowercase).
    let lower = create_session(
        &s,
        json!({"name": "py", "ttl": "10s", "behavior": "delete", "lockdelay": "1s"}),
    );
    let info = get(&s, &format!("/v1/session/info/{lower}")).json();
    assert_eq!(
        (
            &info[0]["Name"],
            &info[0]["TTL"],
            &info[0]["Behavior"],
            &info[0]["LockDelay"]
        ),
        (
            &json!("py"),
            &json!("10s"),
            &json!("delete"),
            &json!(1_000_000_000u64)
        )
    );
    let ops = json!([{"kv": {"verb": "set", "key": "lowercase", "value": b64(b"ok")}}]);
    assert_eq!(put(&s, "/v1/txn", ops.to_string().as_bytes()).status, 200);
    assert_eq!(get(&s, "/v1/kv/lowercase?raw").body, b"ok");

    let ttl = create_session(&s, json!({"TTL": "1s", "LockDelay": 0}));
    assert!(kv_put(&s, &format!("leader?acquire={ttl}"), b"me"));
    // Renewed in time, it lives on.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            put(&s, &format!("/v1/session/renew/{ttl}"), b"").status,
            200
        );
    }
    assert_eq!(get(&s, "/v1/kv/leader").json()[0]["Session"], ttl.as_str());
    // Left alone, it expires and its lock goes, within the TTL plus the reaper's tick.
    let began = Instant::now();
    while get(&s, "/v1/kv/leader").json()[0].get("Session").is_some() {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the lock outlived its TTL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&s, "/v1/kv/leader?raw").body, b"me");
    assert_eq!(
        put(&s, &format!("/v1/session/renew/{ttl}"), b"").status,
        404
    );
    // LockDelay 0: free at once.
    let next = create_session(&s, json!({"LockDelay": "0s"}));
    assert!(kv_put(&s, &format!("leader?acquire={next}"), b"next"));

    // Behavior delete: the held keys go with the session, at one index.
    let del = create_session(&s, json!({"Behavior": "delete"}));
    assert!(kv_put(&s, &format!("eph/a?acquire={del}"), b"a"));
    assert!(kv_put(&s, &format!("eph/b?acquire={del}"), b"b"));
    assert_eq!(
        put(&s, &format!("/v1/session/destroy/{del}"), b"").json(),
        json!(true)
    );
    assert_eq!(get(&s, "/v1/kv/eph/?recurse").status, 404);
    // Destroying a session that does not exist is a success too.
    assert_eq!(
        put(
            &s,
            "/v1/session/destroy/00000000-0000-4000-8000-000000000000",
            b""
        )
        .json(),
        json!(true)
    );
}

#[test]
fn sessions_and_locks_survive_a_restart_with_a_fresh_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let limits = || Limits {
        min_session_ttl: Duration::from_millis(500),
        ..Limits::default()
    };
    let open = || {
        AppState::open(
            dir.path(),
            FsyncPolicy::Always,
            limits(),
            Duration::from_secs(30),
        )
        .expect("open the data directory")
    };
    let (id, ttl_id, index) = {
        let mut s = Server::spawn(open(), ConnLimits::default());
        let id = create_session(&s, json!({"Name": "durable"}));
        let ttl_id = create_session(&s, json!({"Name": "short", "TTL": "2s"}));
        assert!(kv_put(&s, &format!("locked?acquire={id}"), b"v"));
        assert!(kv_put(&s, &format!("short?acquire={ttl_id}"), b"w"));
        let index = get(&s, "/v1/kv/locked").index();
        s.stop();
        (id, ttl_id, index)
    };
    let s = Server::spawn(open(), ConnLimits::default());
    let e = get(&s, "/v1/kv/locked");
    assert_eq!((e.index(), &e.json()[0]["Session"]), (index, &json!(id)));
    assert_eq!(
        get(&s, &format!("/v1/session/info/{id}")).json()[0]["Name"],
        "durable"
    );
    assert_eq!(
        get(&s, "/v1/session/list").json().as_array().unwrap().len(),
        2
    );
    assert_eq!(
        get(&s, &format!("/v1/session/info/{ttl_id}")).json()[0]["TTL"],
        "2s"
    );
    // The TTL runs again from the restart, and then the lock goes.
    let began = Instant::now();
    while get(&s, "/v1/kv/short").json()[0].get("Session").is_some() {
        assert!(
            began.elapsed() < Duration::from_secs(6),
            "the lock outlived its TTL"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        get(&s, "/v1/session/list").json().as_array().unwrap().len(),
        1
    );
}

#[test]
fn eight_clients_incrementing_one_key_with_cas_lose_no_update() {
    let s = start();
    assert!(kv_put(&s, "counter", b"0"));
    let per_client = 40;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                let c = server::Client::new(&base);
                let mut done = 0;
                while done < per_client {
                    let (_, text) = c.send("GET", "/v1/kv/counter", None).unwrap();
                    let e: Value = serde_json::from_str(&text).unwrap();
                    let index = e[0]["ModifyIndex"].as_u64().unwrap();
                    let value: u64 = {
                        use base64::Engine;
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(e[0]["Value"].as_str().unwrap())
                            .unwrap();
                        String::from_utf8(raw).unwrap().parse().unwrap()
                    };
                    let next = (value + 1).to_string();
                    let (status, ok) = c
                        .send(
                            "PUT",
                            &format!("/v1/kv/counter?cas={index}"),
                            Some(next.as_bytes()),
                        )
                        .unwrap();
                    assert_eq!(status, 200);
                    if ok == "true" {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        get(&s, "/v1/kv/counter?raw").body,
        (8 * per_client).to_string().as_bytes()
    );
}

#[test]
fn no_lock_outlives_a_session_destroyed_while_it_acquires() {
    for round in 0..5 {
        let s = start();
        let id = create_session(&s, json!({"LockDelay": "0s"}));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let base = s.base.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    let c = server::Client::new(&base);
                    let mut acquired = 0;
                    for i in 0..200 {
                        let key = format!("/v1/kv/race/{t}/{}", i % 8);
                        let (status, ok) = c
                            .send("PUT", &format!("{key}?acquire={id}"), Some(b"v"))
                            .unwrap();
                        match (status, ok.as_str()) {
                            (200, "true") => acquired += 1,
                            (200, "false") => {}
                            // The session is gone: every later acquire is refused too.
                            (500, _) => break,
                            other => panic!("acquire: {other:?}"),
                        }
                        if i % 3 == 0 {
                            c.send("PUT", &format!("{key}?release={id}"), Some(b"r"))
                                .unwrap();
                        }
                    }
                    acquired
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 * (round + 1)));
        assert_eq!(
            put(&s, &format!("/v1/session/destroy/{id}"), b"").json(),
            json!(true)
        );
        for t in threads {
            t.join().unwrap();
        }
        let held: Vec<(String, Option<String>)> = s
            .state
            .store
            .listing("race/")
            .entries
            .into_iter()
            .map(|(k, e)| (k, e.value.session().map(|s| s.to_string())))
            .filter(|(_, session)| session.is_some())
            .collect();
        assert!(
            held.is_empty(),
            "round {round}: locks of a destroyed session: {held:?}"
        );
    }
}

#[test]
fn agent_services_outlive_the_service_ttl_and_a_restart_until_deregistered() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        AppState::open(
            dir.path(),
            FsyncPolicy::Always,
            Limits::default(),
            Duration::from_secs(1),
        )
        .expect("open the data directory")
    };
    let register = json!({"Name": "web", "ID": "web-1", "Address": "10.0.0.1", "Port": 80,
                          "Tags": ["v1"], "Check": {"TTL": "30s", "Status": "passing"}});
    {
        let mut s = Server::spawn(open(), ConnLimits::default());
        let r = put(
            &s,
            "/v1/agent/service/register",
            register.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(1500));
        assert!(get(&s, "/v1/agent/services").json().get("web-1").is_some());
        s.stop();
    }
    let s = Server::spawn(open(), ConnLimits::default());
    // No request touches the agent endpoints for longer than the registry's TTL.
    std::thread::sleep(Duration::from_millis(2500));
    let services = get(&s, "/v1/agent/services").json();
    assert_eq!(services["web-1"]["Service"], "web", "{services}");
    assert_eq!(services["web-1"]["Tags"], json!(["v1"]));
    let healthy = get(&s, "/v1/health/service/web?passing").json();
    assert_eq!(healthy.as_array().unwrap().len(), 1, "{healthy}");
    assert_eq!(get(&s, "/v1/catalog/services").json()["web"], json!(["v1"]));
    let r = put(&s, "/v1/agent/service/deregister/web-1", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&s, "/v1/agent/services").json(), json!({}));
}

#[test]
fn the_hot_consul_read_answers_what_the_router_answers() {
    let s = start();
    assert!(kv_put(&s, "plain", b"v"));
    assert!(kv_put(&s, "flags?flags=5", b"with \"quotes\""));
    assert!(kv_put(&s, "bin", &[0xff, 0, 1]));
    assert!(kv_put(&s, "empty", b""));
    let id = create_session(&s, json!({"LockDelay": "0s"}));
    assert!(kv_put(&s, &format!("locked?acquire={id}"), b"l"));
    assert_eq!(call(&s, "DELETE", "/v1/kv/gone", None).json(), json!(true));
    let shown = |r: &Resp| {
        let h = |n: &str| r.headers.get(n).cloned();
        (
            r.status,
            h("content-type"),
            h("x-consul-index"),
            h("x-consul-knownleader"),
            h("x-consul-lastcontact"),
            h("content-length"),
            r.body.clone(),
        )
    };
    for key in [
        "plain", "flags", "bin", "empty", "locked", "gone", "never", "a/b/c",
    ] {
        // The hot path takes the first; `?dc=dc1` (ignored, one datacenter) sends the same
        // read through the router.
        let hot = get(&s, &format!("/v1/kv/{key}"));
        let routed = get(&s, &format!("/v1/kv/{key}?dc=dc1"));
        assert_eq!(shown(&hot), shown(&routed), "{key}");
    }
}

#[test]
fn reviewed_edges_reserved_meta_checks_bound_delete_cas_zero_and_a_double_destroy() {
    let s = start();
    // The native API may not forge the Consul face's own state.
    let (status, body) = s.post(
        "/services",
        json!({"name": "evil", "address": "10.0.0.9", "port": 1, "meta": {"consul-service-name": "payments"}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(s.state.registry.get("evil").is_none());
    // At most 64 checks a registration.
    let many: Vec<Value> = (0..65).map(|_| json!({"TTL": "10s"})).collect();
    let r = put(
        &s,
        "/v1/agent/service/register",
        json!({"Name": "web", "Checks": many})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // DELETE ?cas=0 deletes nothing: true only when the key is absent (Consul's rule).
    assert!(kv_put(&s, "k", b"v"));
    assert_eq!(
        call(&s, "DELETE", "/v1/kv/k?cas=0", None).json(),
        json!(false)
    );
    assert_eq!(
        call(&s, "DELETE", "/v1/kv/absent?cas=0", None).json(),
        json!(true)
    );
    assert_eq!(get(&s, "/v1/kv/k?raw").body, b"v");
    // Two destroys of one session at once: both answer true, and the lock goes.
    for _ in 0..10 {
        let id = create_session(&s, json!({"LockDelay": "0s"}));
        assert!(kv_put(&s, &format!("held?acquire={id}"), b"h"));
        let both: Vec<_> = (0..2)
            .map(|_| {
                let base = s.base.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    server::Client::new(&base)
                        .send("PUT", &format!("/v1/session/destroy/{id}"), Some(b""))
                        .unwrap()
                })
            })
            .collect();
        for t in both {
            assert_eq!(t.join().unwrap(), (200, "true".to_string()));
        }
        assert_eq!(get(&s, "/v1/kv/held").json()[0].get("Session"), None);
    }
}

#[test]
fn an_evicted_session_record_ends_the_session_and_its_locks() {
    let s = start_with(Limits {
        max_entries: Some(64),
        ..Limits::default()
    });
    let id = create_session(&s, json!({"LockDelay": "0s"}));
    assert!(kv_put(&s, &format!("lock?acquire={id}"), b"l"));
    // Fill the bounded store until the session's record is evicted.
    // Looked at through a listing, which does not count as a read for the eviction policy.
    let record_gone = || {
        s.state
            .store
            .listing("\0session/")
            .entries
            .iter()
            .all(|(k, _)| !k.ends_with(id.as_str()))
    };
    let mut n = 0;
    while !record_gone() {
        assert!(n < 20_000, "the record was never evicted");
        assert!(kv_put(&s, &format!("fill/{n}"), b"x"));
        n += 1;
    }
    // The reaper ends the session: a lock it held (if the key itself is still there) goes.
    let began = Instant::now();
    loop {
        let e = get(&s, "/v1/kv/lock");
        if e.status == 404 || e.json()[0].get("Session").is_none() {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the lock outlived its session"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = put(&s, &format!("/v1/kv/again?acquire={id}"), b"x");
    assert_eq!(r.status, 500, "{}", r.text());
}

#[test]
fn a_session_record_is_bounded_as_a_value_is() {
    let s = start_with(Limits {
        max_value_bytes: 1024,
        ..Limits::default()
    });
    let before = s.state.store.global_index().high_water();
    let name = "n".repeat(2048);
    let r = put(
        &s,
        "/v1/session/create",
        json!({"Name": name}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(s.state.store.global_index().high_water(), before);
    assert_eq!(get(&s, "/v1/session/list").json(), json!([]));
}
