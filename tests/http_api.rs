//! The HTTP API of SPEC §3 against the real router and connection loop on an ephemeral loopback
//! port, driven by a real HTTP client (`ureq`) and, for requests no client would send, by raw
//! `TcpStream`s. Every test starts its own server, so counters and indices start from zero.

#[path = "support/raw.rs"]
mod raw;
#[path = "support/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

use caskv::server::{AppState, ConnLimits, Limits};
use raw::{answered, request, Conn};
use serde_json::{json, Value};
use server::{assert_error, Server};

struct Config {
    limits: Limits,
    service_ttl: Duration,
    body_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            service_ttl: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
        }
    }
}

impl Server {
    fn start() -> Server {
        Server::with(Config::default())
    }

    /// `support/server.rs`'s server with these limits, TTL and body timeout.
    fn with(config: Config) -> Server {
        Server::spawn(
            AppState::new(config.limits, config.service_ttl),
            ConnLimits {
                body_timeout: config.body_timeout,
                shutdown_grace: Duration::from_secs(5),
                ..ConnLimits::default()
            },
        )
    }

    /// `PUT /kv/{key}` that must succeed; returns its `modify_index`.
    fn set(&self, key: &str, body: Value) -> u64 {
        let (status, reply) = self.put(&format!("/kv/{key}"), body);
        assert_eq!(status, 200, "PUT /kv/{key}: {reply}");
        reply["modify_index"].as_u64().expect("modify_index")
    }

    /// `GET /kv/{key}?metadata=true` that must succeed.
    fn meta(&self, key: &str) -> Value {
        let (status, reply) = self.get(&format!("/kv/{key}?metadata=true"));
        assert_eq!(status, 200, "GET /kv/{key}?metadata=true: {reply}");
        reply
    }

    fn metrics(&self) -> String {
        let reply = self.request("GET", "/metrics", None);
        assert_eq!(reply.status, 200);
        reply.text
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn metric(&self, series: &str) -> u64 {
        metric_in(&self.metrics(), series)
    }

    fn high_water(&self) -> u64 {
        self.metric("caskv_index_high_water")
    }

    /// Everything a client can see of the KV store and the index: a rejected request must leave
    /// this unchanged.
    fn snapshot(&self) -> Value {
        let (status, keys) = self.get("/kv/");
        assert_eq!(status, 200);
        let entries: Vec<Value> = keys
            .as_array()
            .unwrap()
            .iter()
            .map(|k| self.meta(&encode(k.as_str().unwrap())))
            .collect();
        let (status, services) = self.get("/services");
        assert_eq!(status, 200);
        json!({"entries": entries, "services": services, "high_water": self.high_water()})
    }
}

fn metric_in(text: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"));
    line[prefix.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("sample {line:?}: {e}"))
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sorted(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

/// Batch `conflicts`, sorted by key.
fn conflicts(body: &Value) -> Vec<Value> {
    let mut cs = body["conflicts"]
        .as_array()
        .unwrap_or_else(|| panic!("no conflicts array: {body}"))
        .clone();
    cs.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    cs
}

// ---------------------------------------------------------------------------------------------
// KV

#[test]
fn health_is_ok() {
    let s = Server::start();
    assert_eq!(s.get("/health"), (200, json!({"status": "ok"})));
}

#[test]
fn a_ttl_in_the_put_body_expires_the_key_and_metadata_shows_its_deadline() {
    let s = Server::start();
    let before = SystemTime::now();
    let a = s.set("a", json!({"value": "1", "ttl": "1h 30m"}));
    let meta = s.meta("a");
    let at = humantime::parse_rfc3339(meta["expires_at"].as_str().expect("expires_at"))
        .expect("RFC 3339");
    let from_now = at.duration_since(before).unwrap();
    assert!(
        from_now > Duration::from_secs(5390) && from_now <= Duration::from_secs(5401),
        "{meta}"
    );
    assert_eq!(meta["modify_index"], a);
    assert_eq!(meta["value"], "1");
    // "0s" means none, as does a plain PUT that names no TTL (it clears one).
    s.set("zero", json!({"value": "z", "ttl": "0s"}));
    assert!(s.meta("zero").get("expires_at").is_none());
    s.set("a", json!({"value": "2"}));
    assert!(s.meta("a").get("expires_at").is_none());
    // A CAS carries a TTL too; a short one is gone once it has passed.
    let b = s.set("b", json!({"value": "x", "cas": 0, "ttl": "150ms"}));
    assert_eq!(s.meta("b")["create_index"], b);
    std::thread::sleep(Duration::from_millis(300));
    assert_error(&s.get("/kv/b"), 404);
    assert_eq!(s.get("/kv/"), (200, json!(["a", "zero"])));
    // Expired, so create-only succeeds, at a fresh index above the expiry's own.
    let b2 = s.set("b", json!({"value": "y", "cas": 0}));
    assert!(b2 > b + 1, "{b} then {b2}");
    // Bad TTLs are 400s in the SPEC's shape, and change nothing.
    for bad in [
        json!("soon"),
        json!("-5s"),
        json!("30"),
        json!(30),
        json!("400d"),
    ] {
        let reply = s.put("/kv/b", json!({"value": "z", "ttl": bad}));
        assert_error(&reply, 400);
    }
    assert_eq!(s.meta("b")["value"], "y");
}

#[test]
fn max_entries_makes_the_store_a_cache_and_the_metrics_count_it() {
    let s = Server::with(Config {
        limits: Limits {
            max_entries: Some(10),
            ..Limits::default()
        },
        ..Config::default()
    });
    for i in 0..10 {
        s.set(&format!("hot{i}"), json!({"value": "h"}));
    }
    // Read the first ten (three times each), so that the policy keeps them through what
    // follows.
    for _ in 0..3 {
        for i in 0..10 {
            assert_eq!(s.get(&format!("/kv/hot{i}")).0, 200);
        }
    }
    for i in 0..40 {
        s.set(&format!("cold{i}"), json!({"value": "c"}));
        let (status, keys) = s.get("/kv/");
        assert_eq!(status, 200);
        assert!(keys.as_array().unwrap().len() <= 10, "{keys}");
    }
    assert_error(&s.get("/kv/never"), 404);
    let hot_left = (0..10)
        .filter(|i| s.get(&format!("/kv/hot{i}")).0 == 200)
        .count();
    // A one-time key the ghost mistakes for a returning one (a Bloom filter's false hit, about
    // 2 %) enters the main queue and may cost one of them.
    assert!(hot_left >= 8, "only {hot_left} of the keys read were kept");
    assert_eq!(s.metric("caskv_cache_entries"), 10);
    assert_eq!(s.metric("caskv_cache_weight"), 10);
    assert_eq!(
        s.metric("caskv_cache_evictions_total{cause=\"capacity\"}"),
        40
    );
    assert_eq!(
        s.metric("caskv_cache_evictions_total{cause=\"expired\"}"),
        0
    );
    assert!(s.metric("caskv_cache_hits_total") >= 38);
    assert!(s.metric("caskv_cache_misses_total") >= 1);
}

#[test]
fn max_memory_bounds_the_bytes_of_keys_and_values() {
    let s = Server::with(Config {
        limits: Limits {
            max_memory: Some(2_000),
            ..Limits::default()
        },
        ..Config::default()
    });
    for i in 0..100 {
        s.set(&format!("k{i:03}"), json!({"value": "v".repeat(90)}));
    }
    let weight = s.metric("caskv_cache_weight");
    assert!(weight <= 2_000 && weight > 1_500, "{weight} bytes held");
    let (_, keys) = s.get("/kv/");
    let held = keys.as_array().unwrap().len() as u64;
    // Each entry weighs its 4-byte key and its 90-byte value.
    assert_eq!(weight, held * 94);
}

#[test]
fn put_get_list_and_delete() {
    let s = Server::start();
    assert_eq!(s.get("/kv/"), (200, json!([])));

    let (status, body) = s.put("/kv/b", json!({"value": "2"}));
    assert_eq!(status, 200);
    let b = body["modify_index"].as_u64().unwrap();
    assert_eq!(
        body,
        json!({"message": "key set", "key": "b", "modify_index": b})
    );
    let a = s.set("a", json!({"value": "1"}));
    let c = s.set("c/d", json!({"value": "3"}));
    assert!(b < a && a < c, "indices increase: {b} {a} {c}");

    assert_eq!(s.get("/kv/a"), (200, json!({"key": "a", "value": "1"})));
    assert_eq!(
        s.get("/kv/a?metadata=false"),
        (200, json!({"key": "a", "value": "1"}))
    );
    assert_eq!(
        s.get("/kv/a?metadata=true"),
        (
            200,
            json!({"key": "a", "value": "1", "modify_index": a, "create_index": a, "flags": 0})
        )
    );
    assert_eq!(s.get("/kv/"), (200, json!(["a", "b", "c/d"])));
    assert_eq!(s.get("/kv/?prefix=c"), (200, json!(["c/d"])));
    assert_eq!(s.get("/kv/?prefix=zzz"), (200, json!([])));

    // An update keeps create_index and takes a fresh modify_index.
    let a2 = s.set("a", json!({"value": "one"}));
    assert!(a2 > c);
    assert_eq!(
        s.meta("a"),
        json!({"key": "a", "value": "one", "modify_index": a2, "create_index": a, "flags": 0})
    );

    let (status, body) = s.delete("/kv/a");
    assert_eq!(status, 200);
    let d = body["modify_index"].as_u64().unwrap();
    assert!(d > a2);
    assert_eq!(
        body,
        json!({"message": "key deleted", "key": "a", "modify_index": d})
    );
    assert_eq!(s.get("/kv/").1, json!(["b", "c/d"]));

    // Re-created: a new create_index, above the delete's (indices are never reused).
    let a3 = s.set("a", json!({"value": "again"}));
    assert!(a3 > d);
    assert_eq!(s.meta("a")["create_index"], json!(a3));
}

#[test]
fn not_found_has_the_exact_body() {
    let s = Server::start();
    let expected =
        json!({"error": "not found", "message": "key 'my-key' not found", "key": "my-key"});
    assert_eq!(s.get("/kv/my-key"), (404, expected.clone()));
    assert_eq!(s.get("/kv/my-key?metadata=true"), (404, expected.clone()));
    assert_eq!(s.delete("/kv/my-key"), (404, expected.clone()));
    assert_eq!(s.delete("/kv/my-key?cas=3"), (404, expected.clone()));
    // A CAS set with N ≥ 1 on an absent key is "not found" too.
    assert_eq!(
        s.put("/kv/my-key", json!({"value": "v", "cas": 3})),
        (404, expected)
    );
    assert_eq!(s.get("/kv/").1, json!([]));
    assert_eq!(s.high_water(), 0, "no failed request took an index");
}

#[test]
fn cas_conflict_has_the_exact_body() {
    let s = Server::start();
    // Bring my-key's modify_index to exactly 50 (every write takes the next index).
    let mut index = 0;
    while index < 50 {
        index = s.set("my-key", json!({"value": format!("v{index}")}));
    }
    assert_eq!(index, 50);
    let expected = json!({
        "error": "CAS conflict",
        "message": "CAS conflict for key 'my-key': expected ModifyIndex 42, but current is 50",
        "key": "my-key",
        "expected": 42,
        "current": 50
    });
    assert_eq!(
        s.put("/kv/my-key", json!({"value": "x", "cas": 42})),
        (409, expected.clone())
    );
    assert_eq!(s.delete("/kv/my-key?cas=42"), (409, expected));
    // Create-only on a present key.
    let (status, body) = s.put("/kv/my-key", json!({"value": "x", "cas": 0}));
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({
            "error": "CAS conflict",
            "message": "CAS conflict for key 'my-key': expected ModifyIndex 0, but current is 50",
            "key": "my-key",
            "expected": 0,
            "current": 50
        })
    );
    assert_eq!(s.meta("my-key")["modify_index"], json!(50));
    assert_eq!(s.high_water(), 50);
}

#[test]
fn cas_set_and_cas_delete() {
    let s = Server::start();
    // cas=0: create-only.
    let a = s.set("k", json!({"value": "1", "cas": 0}));
    // cas=N: the current index wins.
    let b = s.set("k", json!({"value": "2", "cas": a}));
    assert!(b > a);
    assert_eq!(s.put("/kv/k", json!({"value": "3", "cas": a})).0, 409);
    assert_eq!(s.meta("k")["value"], json!("2"));

    assert_eq!(s.delete(&format!("/kv/k?cas={a}")).0, 409);
    let (status, body) = s.delete(&format!("/kv/k?cas={b}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], json!("key deleted"));
    assert!(body["modify_index"].as_u64().unwrap() > b);
    assert_eq!(s.get("/kv/k").0, 404);
    // Absent again: create-only succeeds again.
    s.set("k", json!({"value": "new", "cas": 0}));
}

#[test]
fn flags_are_stored_kept_and_honoured_by_cas() {
    let s = Server::start();
    s.set("f", json!({"value": "a", "flags": 7}));
    assert_eq!(s.meta("f")["flags"], json!(7));
    // A set without flags keeps them.
    s.set("f", json!({"value": "b"}));
    assert_eq!(s.meta("f")["flags"], json!(7));
    // A CAS set honours given flags and keeps them when omitted.
    let m = s.meta("f")["modify_index"].as_u64().unwrap();
    let m = s.set("f", json!({"value": "c", "cas": m, "flags": 9}));
    assert_eq!(s.meta("f")["flags"], json!(9));
    s.set("f", json!({"value": "d", "cas": m}));
    assert_eq!(s.meta("f")["flags"], json!(9));
    // Explicit zero.
    s.set("f", json!({"value": "e", "flags": 0}));
    assert_eq!(s.meta("f")["flags"], json!(0));
    // A new key without flags gets 0; create-only with flags keeps them.
    s.set("g", json!({"value": "x"}));
    assert_eq!(s.meta("g")["flags"], json!(0));
    s.set("h", json!({"value": "x", "cas": 0, "flags": u64::MAX}));
    assert_eq!(s.meta("h")["flags"], json!(u64::MAX));
}

#[test]
fn keys_with_slashes_and_percent_encoding() {
    let s = Server::start();
    let i = s.set("locks/my-resource", json!({"value": "held"}));
    let (status, body) = s.get("/kv/locks/my-resource?metadata=true");
    assert_eq!(status, 200);
    assert_eq!(body["key"], json!("locks/my-resource"));
    assert_eq!(body["modify_index"], json!(i));
    assert_eq!(
        s.get("/kv/?prefix=locks/"),
        (200, json!(["locks/my-resource"]))
    );

    // Percent-encoded keys are decoded: a space, non-ASCII, and reserved characters.
    s.set("hello%20world", json!({"value": "1"}));
    assert_eq!(
        s.get("/kv/hello%20world"),
        (200, json!({"key": "hello world", "value": "1"}))
    );
    s.set("%C3%A9t%C3%A9", json!({"value": "summer"}));
    assert_eq!(
        s.get("/kv/%C3%A9t%C3%A9").1,
        json!({"key": "été", "value": "summer"})
    );
    s.set("q%3Fx%26y%3Dz%23h", json!({"value": "odd"}));
    assert_eq!(
        s.get("/kv/q%3Fx%26y%3Dz%23h").1,
        json!({"key": "q?x&y=z#h", "value": "odd"})
    );
    // An encoded slash names the same key as a literal one.
    assert_eq!(
        s.get("/kv/locks%2Fmy-resource").1["key"],
        json!("locks/my-resource")
    );
    // The prefix is decoded too.
    assert_eq!(s.get("/kv/?prefix=hello%20").1, json!(["hello world"]));
    assert_eq!(
        s.get("/kv/").1,
        json!(["hello world", "locks/my-resource", "q?x&y=z#h", "été"])
    );

    let (status, body) = s.delete("/kv/locks/my-resource");
    assert_eq!((status, &body["key"]), (200, &json!("locks/my-resource")));
    assert_eq!(s.get("/kv/locks/my-resource").0, 404);
}

#[test]
fn key_and_value_bounds() {
    let s = Server::start();
    let longest = "k".repeat(512);
    s.set(&longest, json!({"value": "ok"}));
    assert_eq!(s.meta(&longest)["key"], json!(longest));
    let value = "v".repeat(512 * 1024);
    s.set("big", json!({"value": value}));
    assert_eq!(s.meta("big")["value"].as_str().unwrap().len(), 512 * 1024);
    // A 512-byte key of multi-byte characters is fine; one byte over is not.
    let multibyte = "é".repeat(256);
    s.set(&encode(&multibyte), json!({"value": "ok"}));
    let before = s.snapshot();
    assert_error(
        &s.put(&format!("/kv/{longest}x"), json!({"value": "v"})),
        400,
    );
    assert_error(&s.get(&format!("/kv/{longest}x")), 400);
    assert_error(&s.delete(&format!("/kv/{longest}x")), 400);
    let over = "v".repeat(512 * 1024 + 1);
    assert_error(&s.put("/kv/big", json!({"value": over})), 413);
    assert_eq!(s.snapshot(), before);
}

#[test]
fn bad_input_is_a_json_error_and_changes_nothing() {
    let s = Server::start();
    s.set("k", json!({"value": "v", "flags": 3}));
    s.set("other", json!({"value": "w"}));
    let before = s.snapshot();
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("PUT", "/kv/k", Some("{not json"), 400),
        ("PUT", "/kv/k", Some(""), 400),
        ("PUT", "/kv/k", Some("[]"), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x""#), 400),
        ("PUT", "/kv/k", Some(r#"{}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"flags": 1}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": 5}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": null}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x", "cas": "1"}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x", "cas": -1}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x", "cas": 1.5}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x", "flags": "7"}"#), 400),
        ("PUT", "/kv/k", Some(r#"{"value": "x", "flags": -7}"#), 400),
        ("PUT", "/kv/new", Some("{not json"), 400),
        ("DELETE", "/kv/k?cas=abc", None, 400),
        ("DELETE", "/kv/k?cas=-1", None, 400),
        ("DELETE", "/kv/k?cas=", None, 400),
        ("DELETE", "/kv/k?cas=0", None, 400),
        ("GET", "/kv/k?metadata=maybe", None, 400),
        ("GET", "/kv/%FF", None, 400),
        ("PUT", "/kv/%FF", Some(r#"{"value": "x"}"#), 400),
        ("PUT", "/kv/a%00b", Some(r#"{"value": "x"}"#), 400),
        ("GET", "/kv/a%00b", None, 400),
        ("POST", "/batch/kv/get", Some(r#"{"keys": "k"}"#), 400),
        ("POST", "/batch/kv/set", Some(r#"{"items": {"k": 1}}"#), 400),
        ("POST", "/batch/kv/set", Some(r#"{"items": ["k"]}"#), 400),
        ("POST", "/batch/kv/delete", Some(r#"{"key": ["k"]}"#), 400),
        (
            "POST",
            "/batch/kv/set-cas",
            Some(r#"{"items": {"k": "x"}}"#),
            400,
        ),
        (
            "POST",
            "/batch/kv/delete-cas",
            Some(r#"{"keys": ["k"], "expected_indices": {"k": "1"}}"#),
            400,
        ),
        ("GET", "/nope", None, 404),
        ("PATCH", "/kv/k", Some(r#"{"value": "x"}"#), 405),
        ("POST", "/kv/k", Some(r#"{"value": "x"}"#), 405),
        ("GET", "/batch/kv/set", None, 405),
        ("PUT", "/batch/kv/delete", Some(r#"{"keys": ["k"]}"#), 405),
        ("POST", "/health", Some("{}"), 405),
        ("DELETE", "/services", None, 405),
    ];
    for &(method, path, body, status) in cases {
        let reply = s.request(method, path, body.map(str::as_bytes));
        let what = format!("{method} {path} {body:?} → {} {}", reply.status, reply.text);
        assert_eq!(reply.status, status, "{what}");
        let json = reply.json();
        for field in ["error", "message"] {
            assert!(
                json[field].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: no {field}"
            );
        }
        assert_eq!(s.snapshot(), before, "{what} changed the store");
    }
}

#[test]
fn empty_key_is_400() {
    let s = Server::start();
    s.set("k", json!({"value": "v"}));
    let before = s.snapshot();
    for path in ["/kv/", "/kv"] {
        assert_error(&s.put(path, json!({"value": "x"})), 400);
        assert_error(&s.put(path, json!({"value": "x", "cas": 0})), 400);
        assert_error(&s.delete(path), 400);
        assert_error(&s.delete(&format!("{path}?cas=1")), 400);
    }
    assert_eq!(s.snapshot(), before);
}

/// Regression: a key repeated in a batch's `items` object was silently collapsed (200, the last
/// value won) instead of being the bad request SPEC §2 names.
#[test]
fn repeated_key_in_batch_items_is_400() {
    let s = Server::start();
    s.set("x", json!({"value": "0"}));
    let before = s.snapshot();
    for (path, body) in [
        ("/batch/kv/set", r#"{"items": {"x": "1", "x": "2"}}"#),
        (
            "/batch/kv/set-cas",
            r#"{"items": {"y": "1", "y": "2"}, "expected_indices": {"y": 0}}"#,
        ),
        (
            "/batch/kv/set-cas",
            r#"{"items": {"x": "1"}, "expected_indices": {"x": 1, "x": 1}}"#,
        ),
    ] {
        let reply = s.request("POST", path, Some(body.as_bytes()));
        assert_error(&(reply.status, reply.json()), 400);
        assert_eq!(s.snapshot(), before, "POST {path} {body} changed the store");
    }
}

#[test]
fn oversized_bodies_are_refused_with_413() {
    let s = Server::start();
    s.set("k", json!({"value": "v"}));
    let before = s.snapshot();
    // An honest Content-Length over 1 MiB, with the body sent.
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(1024 * 1024 + 10));
    let reply = answered(s.addr, request("PUT", b"/kv/k", Some(huge.as_bytes())));
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.json()["message"].is_string());
    // A body over the value limit but under the body limit.
    let reply = s.request(
        "PUT",
        "/kv/k",
        Some(format!(r#"{{"value": "{}"}}"#, "x".repeat(600 * 1024)).as_bytes()),
    );
    assert_error(&(reply.status, reply.json()), 413);
    // A batch with one oversized value.
    let (status, body) = s.post(
        "/batch/kv/set",
        json!({"items": {"k": "small", "z": "x".repeat(512 * 1024 + 1)}}),
    );
    assert_error(&(status, body), 413);
    assert_eq!(s.snapshot(), before);
}

#[test]
fn declared_huge_body_is_refused_before_it_is_sent() {
    let s = Server::start();
    let start = Instant::now();
    let reply = answered(
        s.addr,
        b"PUT /kv/big HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100000000\r\n\r\n"
            .to_vec(),
    );
    let elapsed = start.elapsed();
    assert_eq!(reply.status, 413, "{}", reply.text());
    let body = reply.json();
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "413 took {elapsed:?}: the server waited for the body"
    );
    assert_eq!(s.get("/kv/big").0, 404);
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let s = Server::start();
    let mut conn = Conn::open(s.addr);
    conn.send(
        b"PUT /kv/big HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    );
    // 1.25 MiB in 64 KiB chunks; the server may stop reading (and answer) part-way.
    let chunk = vec![b'x'; 64 * 1024];
    let mut writer = conn.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let first = br#"{"value": "xxxx"#;
        let _ = writer.write_all(format!("{:x}\r\n", first.len()).as_bytes());
        let _ = writer.write_all(first);
        let _ = writer.write_all(b"\r\n");
        for _ in 0..20 {
            let head = format!("{:x}\r\n", chunk.len());
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(&chunk).is_err()
                || writer.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = writer.write_all(b"2\r\n\"}\r\n0\r\n\r\n");
    });
    let reply = conn.reply().expect("a 413");
    assert_eq!(reply.status, 413, "{}", reply.text());
    let body = reply.json();
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    drop(conn);
    sender.join().unwrap();
    assert_eq!(s.get("/kv/big").0, 404);
}

#[test]
fn malformed_requests_on_the_wire_get_an_answer_not_a_hang() {
    let s = Server::start();
    // Raw bytes that are not UTF-8 in the request target.
    let reply = answered(
        s.addr,
        b"GET /kv/\xff\xfe HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    // A percent-escape that decodes to invalid UTF-8, sent verbatim.
    let reply = answered(
        s.addr,
        b"GET /kv/%FF%FE HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_vec(),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.json()["error"].is_string());
    // Not HTTP at all.
    let mut conn = Conn::open(s.addr);
    conn.send(b"HELLO THERE\r\n\r\n");
    let mut rest = Vec::new();
    let _ = conn.stream.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 400"),
        "unexpected answer: {text}"
    );
    // A declared length that is not a number.
    let reply = answered(
        s.addr,
        b"PUT /kv/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n".to_vec(),
    );
    assert_eq!(reply.status, 400);
    // The server is still healthy and unchanged.
    assert_eq!(s.get("/health").0, 200);
    assert_eq!(s.get("/kv/").1, json!([]));
}

#[test]
fn body_that_never_arrives_times_out() {
    let s = Server::with(Config {
        body_timeout: Duration::from_millis(300),
        ..Config::default()
    });
    let mut conn = Conn::open(s.addr);
    let start = Instant::now();
    conn.send(b"PUT /kv/slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20\r\n\r\n{\"va");
    let reply = conn.reply().expect("an answer");
    assert!(
        (400..500).contains(&reply.status),
        "status {} {}",
        reply.status,
        reply.text()
    );
    assert!(reply.json()["error"].is_string());
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(s.get("/kv/slow").0, 404);
}

#[test]
fn unknown_routes_and_wrong_methods_are_json() {
    let s = Server::start();
    for path in [
        "/nope",
        "/kv-x",
        "/batch/kv/unknown",
        "/services/a/b/c",
        "/v2/kv/x",
    ] {
        assert_error(&s.get(path), 404);
    }
    for (method, path) in [
        ("PATCH", "/kv/x"),
        ("GET", "/batch/kv/set"),
        ("GET", "/batch/kv/get"),
        ("DELETE", "/batch/kv/delete"),
        ("PUT", "/services/x"),
        ("POST", "/heartbeat/x"),
        ("GET", "/register"),
    ] {
        let reply = s.request(method, path, None);
        assert_error(&(reply.status, reply.json()), 405);
    }
}

// ---------------------------------------------------------------------------------------------
// Batch

#[test]
fn batch_set_get_delete_commit_at_one_index() {
    let s = Server::start();
    let (status, body) = s.post(
        "/batch/kv/set",
        json!({"items": {"b": "2", "a": "1", "c/x": "3"}}),
    );
    assert_eq!(status, 200, "{body}");
    let m = body["modify_index"].as_u64().unwrap();
    assert_eq!(sorted(&body["keys"]), ["a", "b", "c/x"]);
    assert_eq!(body["count"], json!(3));
    assert!(body["message"].is_string());
    assert_eq!(s.high_water(), m, "a batch takes one index");

    let (status, body) = s.post("/batch/kv/get", json!({"keys": ["a", "zz", "c/x", "b"]}));
    assert_eq!(status, 200);
    let entry = |v: &str| json!({"value": v, "modify_index": m, "create_index": m, "flags": 0});
    assert_eq!(
        body,
        json!({
            "found": {"a": entry("1"), "b": entry("2"), "c/x": entry("3")},
            "not_found": ["zz"]
        })
    );
    assert_eq!(s.set("d", json!({"value": "4"})), m + 1);

    // Batch set keeps flags of existing keys.
    s.set("a", json!({"value": "1", "flags": 5}));
    let (status, body) = s.post("/batch/kv/set", json!({"items": {"a": "10", "e": "5"}}));
    assert_eq!(status, 200);
    let n = body["modify_index"].as_u64().unwrap();
    assert_eq!(
        s.meta("a"),
        json!({"key": "a", "value": "10", "modify_index": n, "create_index": m, "flags": 5})
    );
    assert_eq!(s.meta("e")["modify_index"], json!(n));

    let (status, body) = s.post("/batch/kv/delete", json!({"keys": ["b", "a"]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(sorted(&body["keys"]), ["a", "b"]);
    assert_eq!(body["count"], json!(2));
    let del = body["modify_index"].as_u64().unwrap();
    assert_eq!(s.high_water(), del);
    assert_eq!(s.get("/kv/").1, json!(["c/x", "d", "e"]));
}

#[test]
fn batch_set_cas_and_delete_cas() {
    let s = Server::start();
    let a = s.set("a", json!({"value": "1"}));
    let b = s.set("b", json!({"value": "2"}));
    let (status, body) = s.post(
        "/batch/kv/set-cas",
        json!({"items": {"a": "10", "b": "20", "n": "new"}, "expected_indices": {"a": a, "b": b, "n": 0}}),
    );
    assert_eq!(status, 200, "{body}");
    let m = body["new_indices"]["a"].as_u64().unwrap();
    assert_eq!(body["new_indices"], json!({"a": m, "b": m, "n": m}));
    assert_eq!(body["count"], json!(3));
    assert!(body["message"].is_string());
    assert_eq!(s.high_water(), m);
    assert_eq!(s.meta("n")["create_index"], json!(m));
    assert_eq!(s.meta("a")["create_index"], json!(a));
    assert_eq!(s.meta("b")["value"], json!("20"));

    let (status, body) = s.post(
        "/batch/kv/delete-cas",
        json!({"keys": ["a", "n"], "expected_indices": {"a": m, "n": m}}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(sorted(&body["keys"]), ["a", "n"]);
    assert_eq!(body["count"], json!(2));
    assert_eq!(body["modify_index"], json!(m + 1));
    assert_eq!(s.get("/kv/").1, json!(["b"]));
}

#[test]
fn failing_batches_change_nothing_and_list_every_failing_key() {
    let s = Server::start();
    let a = s.set("a", json!({"value": "1"}));
    let b = s.set("b", json!({"value": "2"}));
    let c = s.set("c", json!({"value": "3", "flags": 4}));
    let a2 = s.set("a", json!({"value": "1b"}));
    let before = s.snapshot();

    // set-cas: a stale, b right, c create-only but present, q expected but absent.
    let (status, body) = s.post(
        "/batch/kv/set-cas",
        json!({
            "items": {"a": "x", "b": "x", "c": "x", "q": "x"},
            "expected_indices": {"a": a, "b": b, "c": 0, "q": 7}
        }),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], json!("CAS conflict"));
    assert!(body["message"].is_string());
    assert_eq!(
        conflicts(&body),
        [
            json!({"key": "a", "expected": a, "current": a2}),
            json!({"key": "c", "expected": 0, "current": c}),
            json!({"key": "q", "expected": 7, "current": null}),
        ]
    );
    assert_eq!(s.snapshot(), before);

    // delete-cas: one stale and one absent → 409 (not only absent keys fail).
    let (status, body) = s.post(
        "/batch/kv/delete-cas",
        json!({"keys": ["a", "b", "ghost"], "expected_indices": {"a": a, "b": b, "ghost": 2}}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        conflicts(&body),
        [
            json!({"key": "a", "expected": a, "current": a2}),
            json!({"key": "ghost", "expected": 2, "current": null}),
        ]
    );
    assert_eq!(s.snapshot(), before);

    // Only absent keys fail → 404.
    let (status, body) = s.post(
        "/batch/kv/delete-cas",
        json!({"keys": ["b", "ghost"], "expected_indices": {"b": b, "ghost": 3}}),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], json!("not found"));
    assert!(body["message"].is_string());
    assert_eq!(
        conflicts(&body),
        [json!({"key": "ghost", "expected": 3, "current": null})]
    );
    assert_eq!(s.snapshot(), before);

    let (status, body) = s.post(
        "/batch/kv/set-cas",
        json!({"items": {"b": "x", "ghost": "x"}, "expected_indices": {"b": b, "ghost": 3}}),
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        conflicts(&body),
        [json!({"key": "ghost", "expected": 3, "current": null})]
    );
    assert_eq!(s.snapshot(), before);

    let (status, body) = s.post(
        "/batch/kv/delete",
        json!({"keys": ["c", "ghost", "ghost2"]}),
    );
    assert_eq!(status, 404, "{body}");
    let cs = conflicts(&body);
    assert_eq!(
        cs.iter().map(|c| c["key"].clone()).collect::<Vec<_>>(),
        [json!("ghost"), json!("ghost2")]
    );
    assert!(cs.iter().all(|c| c["current"].is_null()), "{body}");
    assert_eq!(s.snapshot(), before);
}

#[test]
fn malformed_batches_are_400_and_change_nothing() {
    let s = Server::start();
    let a = s.set("a", json!({"value": "1"}));
    s.set("b", json!({"value": "2"}));
    let before = s.snapshot();
    let many: Vec<String> = (0..1001).map(|i| format!("k{i:04}")).collect();
    let many_items: serde_json::Map<String, Value> =
        many.iter().map(|k| (k.clone(), json!("v"))).collect();
    let many_expected: serde_json::Map<String, Value> =
        many.iter().map(|k| (k.clone(), json!(0))).collect();
    let cases = [
        // A key without an expected index.
        (
            "/batch/kv/set-cas",
            json!({"items": {"a": "x", "b": "y"}, "expected_indices": {"a": a}}),
        ),
        (
            "/batch/kv/delete-cas",
            json!({"keys": ["a", "b"], "expected_indices": {"a": a}}),
        ),
        ("/batch/kv/delete-cas", json!({"keys": ["a"]})),
        // The same key twice.
        ("/batch/kv/delete", json!({"keys": ["a", "b", "a"]})),
        (
            "/batch/kv/delete-cas",
            json!({"keys": ["a", "a"], "expected_indices": {"a": a}}),
        ),
        // Empty batches.
        ("/batch/kv/get", json!({"keys": []})),
        ("/batch/kv/set", json!({"items": {}})),
        ("/batch/kv/delete", json!({"keys": []})),
        (
            "/batch/kv/set-cas",
            json!({"items": {}, "expected_indices": {}}),
        ),
        (
            "/batch/kv/delete-cas",
            json!({"keys": [], "expected_indices": {}}),
        ),
        // Over 1000 keys.
        ("/batch/kv/get", json!({"keys": many})),
        ("/batch/kv/set", json!({"items": many_items})),
        ("/batch/kv/delete", json!({"keys": many})),
        (
            "/batch/kv/set-cas",
            json!({"items": many_items, "expected_indices": many_expected}),
        ),
        (
            "/batch/kv/delete-cas",
            json!({"keys": many, "expected_indices": many_expected}),
        ),
        // Bad keys.
        ("/batch/kv/set", json!({"items": {"": "x"}})),
        (
            "/batch/kv/set",
            json!({"items": {"ok": "x", "nul\u{0}": "x"}}),
        ),
        (
            "/batch/kv/set",
            json!({"items": {"ok": "x", "k".repeat(513): "x"}}),
        ),
        ("/batch/kv/get", json!({"keys": [""]})),
        ("/batch/kv/delete", json!({"keys": ["a", ""]})),
        // Missing fields.
        ("/batch/kv/set", json!({})),
        ("/batch/kv/get", json!({})),
        ("/batch/kv/set-cas", json!({"expected_indices": {"a": a}})),
    ];
    for (path, body) in cases {
        let reply = s.post(path, body.clone());
        let shown: String = body.to_string().chars().take(120).collect();
        assert_eq!(reply.0, 400, "POST {path} {shown}: {}", reply.1);
        assert_error(&reply, 400);
        assert_eq!(
            s.snapshot(),
            before,
            "POST {path} {shown} changed the store"
        );
    }
}

#[test]
fn batch_of_exactly_the_limit_is_accepted() {
    let s = Server::start();
    let items: serde_json::Map<String, Value> = (0..1000)
        .map(|i| (format!("k{i:04}"), json!("v")))
        .collect();
    let (status, body) = s.post("/batch/kv/set", json!({ "items": items }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], json!(1000));
    assert_eq!(body["modify_index"], json!(1));
    assert_eq!(s.metric("kv_entries"), 1000);
    let keys: Vec<String> = items.keys().cloned().collect();
    let (status, body) = s.post("/batch/kv/get", json!({ "keys": keys }));
    assert_eq!(status, 200);
    let found = body["found"].as_object().unwrap();
    assert_eq!(found.len(), 1000);
    assert!(found.values().all(|e| e["modify_index"] == json!(1)));
}

// ---------------------------------------------------------------------------------------------
// Service registry

fn web(port: u16) -> Value {
    json!({"name": "web", "address": "10.0.0.1", "port": port, "tags": ["blue", "v2"], "meta": {"zone": "a"}})
}

fn parse_time(v: &Value) -> SystemTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

#[test]
fn register_get_list_and_deregister_with_cas() {
    let s = Server::start();
    assert_eq!(s.get("/services"), (200, json!([])));

    // Create-only.
    let mut create = web(80);
    create["cas"] = json!(0);
    let (status, body) = s.post("/services", create);
    assert_eq!(status, 200, "{body}");
    let r1 = body["modify_index"].as_u64().unwrap();
    assert_eq!(
        body,
        json!({"message": "service registered", "service": web(80), "modify_index": r1})
    );

    // Create-only again: a conflict naming the service.
    let mut again = web(81);
    again["cas"] = json!(0);
    let (status, body) = s.post("/services", again);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], json!("CAS conflict"));
    assert_eq!(body["key"], json!("web"));
    assert_eq!(body["expected"], json!(0));
    assert_eq!(body["current"], json!(r1));
    assert_eq!(
        body["message"],
        json!(format!(
            "CAS conflict for service 'web': expected ModifyIndex 0, but current is {r1}"
        ))
    );

    // Update at the current index; a stale index conflicts.
    let mut update = web(82);
    update["cas"] = json!(r1);
    let (status, body) = s.post("/services", update.clone());
    assert_eq!(status, 200, "{body}");
    let r2 = body["modify_index"].as_u64().unwrap();
    assert!(r2 > r1);
    assert_eq!(body["service"], web(82));
    let (status, body) = s.post("/services", update);
    assert_eq!(status, 409);
    assert_eq!(
        (&body["expected"], &body["current"]),
        (&json!(r1), &json!(r2))
    );

    // cas=N on an absent service is "not found".
    let mut ghost = web(1);
    ghost["name"] = json!("ghost");
    ghost["cas"] = json!(5);
    assert_error(&s.post("/services", ghost), 404);

    // Without cas, always writes; minimal service omits nothing required.
    let (status, body) = s.post(
        "/services",
        json!({"name": "api", "address": "10.0.0.2", "port": 8080}),
    );
    assert_eq!(status, 200, "{body}");
    let api = body["modify_index"].as_u64().unwrap();
    s.post(
        "/services",
        json!({"name": "db", "address": "10.0.0.3", "port": 5432}),
    );

    let (status, list) = s.get("/services");
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "db", "web"]);
    assert_eq!(list[2], web(82));
    assert_eq!(s.get("/services/"), (200, list));

    assert_eq!(s.get("/services/web"), (200, web(82)));
    let (status, meta) = s.get("/services/web?metadata=true");
    assert_eq!(status, 200);
    let keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["create_index", "expires_at", "modify_index", "service"]
    );
    assert_eq!(meta["service"], web(82));
    assert_eq!(meta["modify_index"], json!(r2));
    assert_eq!(meta["create_index"], json!(r1));
    let expires = parse_time(&meta["expires_at"]);
    let now = SystemTime::now();
    assert!(
        expires > now + Duration::from_secs(25) && expires <= now + Duration::from_secs(31),
        "expires_at {:?} is not about 30 s from now",
        meta["expires_at"]
    );

    // Deregister with a stale cas conflicts; with cas=0 is a bad request; the right one works.
    let (status, body) = s.delete(&format!("/services/web?cas={r1}"));
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        (&body["expected"], &body["current"]),
        (&json!(r1), &json!(r2))
    );
    assert_error(&s.delete("/services/web?cas=0"), 400);
    assert_error(&s.delete("/services/web?cas=x"), 400);
    let (status, body) = s.delete(&format!("/services/web?cas={r2}"));
    assert_eq!(status, 200, "{body}");
    let d = body["modify_index"].as_u64().unwrap();
    assert_eq!(
        body,
        json!({"message": "service deregistered", "name": "web", "modify_index": d})
    );
    assert!(d > api);
    let (status, body) = s.get("/services/web");
    assert_error(&(status, body.clone()), 404);
    assert_eq!(body["message"], json!("service 'web' not found"));
    assert_error(&s.get("/services/web?metadata=true"), 404);
    assert_error(&s.delete("/services/web"), 404);

    // Plain deregister.
    let (status, body) = s.delete("/services/db");
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.get("/services").1.as_array().unwrap().len(), 1);
}

#[test]
fn konsul_aliases_and_heartbeat() {
    let s = Server::start();
    let (status, body) = s.put("/register", web(80));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], json!("service registered"));
    let r = body["modify_index"].as_u64().unwrap();
    let before = parse_time(&s.get("/services/web?metadata=true").1["expires_at"]);

    // expires_at has one-second resolution: wait past a second so a renewal must move it.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = s.put("/heartbeat/web", json!({}));
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["expires_at", "message", "service"]);
    assert_eq!(body["message"], json!("heartbeat updated"));
    assert_eq!(body["service"], web(80));
    let renewed = parse_time(&body["expires_at"]);
    assert!(renewed > before, "heartbeat did not move expires_at");

    let reply = s.request("PUT", "/services/web/heartbeat", None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    let later = parse_time(&reply.json()["expires_at"]);
    assert!(later >= renewed);

    let meta = s.get("/services/web?metadata=true").1;
    assert_eq!(
        meta["modify_index"],
        json!(r),
        "a heartbeat is not a new version"
    );
    assert_eq!(parse_time(&meta["expires_at"]), later);
    assert_eq!(s.high_water(), r, "a heartbeat takes no index");

    assert_error(&s.put("/heartbeat/ghost", json!({})), 404);
    assert_error(&s.call("PUT", "/services/ghost/heartbeat", None), 404);

    let (status, body) = s.delete("/deregister/web");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], json!("service deregistered"));
    assert_eq!(body["name"], json!("web"));
    assert_eq!(body["modify_index"], json!(r + 1));
    assert_error(&s.delete("/deregister/web"), 404);
    assert_error(&s.put("/heartbeat/web", json!({})), 404);
    assert_eq!(s.get("/services"), (200, json!([])));
}

#[test]
fn bad_service_input_is_400_and_changes_nothing() {
    let s = Server::start();
    s.post("/services", web(80));
    s.set("k", json!({"value": "v"}));
    let before = s.snapshot();
    let cases = [
        json!({"address": "10.0.0.1", "port": 80}),
        json!({"name": "x", "port": 80}),
        json!({"name": "x", "address": "10.0.0.1"}),
        json!({"name": "x", "address": "10.0.0.1", "port": "80"}),
        json!({"name": "x", "address": "10.0.0.1", "port": 70000}),
        json!({"name": "x", "address": "10.0.0.1", "port": -1}),
        json!({"name": "", "address": "10.0.0.1", "port": 80}),
        json!({"name": "n".repeat(513), "address": "10.0.0.1", "port": 80}),
        json!({"name": "x", "address": "10.0.0.1", "port": 80, "tags": "a"}),
        json!({"name": "x", "address": "10.0.0.1", "port": 80, "cas": "0"}),
        json!({"name": "web", "address": "10.0.0.9", "port": 80, "cas": -1}),
        json!([]),
    ];
    for body in cases {
        let reply = s.post("/services", body.clone());
        assert_eq!(reply.0, 400, "POST /services {body}: {}", reply.1);
        assert_error(&reply, 400);
        assert_eq!(
            s.snapshot(),
            before,
            "POST /services {body} changed the store"
        );
    }
    let reply = s.request("POST", "/services", Some(b"{nope"));
    assert_error(&(reply.status, reply.json()), 400);
    assert_error(&s.get("/services/web?metadata=maybe"), 400);
    assert_error(&s.get("/services/%FF"), 400);
    assert_eq!(s.snapshot(), before);
}

#[test]
fn expired_service_is_gone_and_its_expiry_took_an_index() {
    let s = Server::with(Config {
        service_ttl: Duration::from_millis(400),
        ..Config::default()
    });
    let (status, body) = s.post("/services", web(80));
    assert_eq!(status, 200, "{body}");
    let r = body["modify_index"].as_u64().unwrap();
    assert_eq!(s.get("/services/web").0, 200);
    assert_eq!(s.metric("services_registered"), 1);

    std::thread::sleep(Duration::from_millis(600));
    assert_error(&s.get("/services/web"), 404);
    assert_error(&s.get("/services/web?metadata=true"), 404);
    assert_eq!(s.get("/services"), (200, json!([])));
    assert_error(&s.put("/heartbeat/web", json!({})), 404);
    assert_error(&s.delete("/services/web"), 404);
    assert_eq!(s.metric("services_registered"), 0);
    // The expiry took r + 1, so the next write takes r + 2.
    assert_eq!(s.high_water(), r + 1);
    assert_eq!(s.set("after", json!({"value": "x"})), r + 2);
    // An expired service counts as absent for create-only.
    let mut again = web(81);
    again["cas"] = json!(0);
    let (status, body) = s.post("/services", again);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["modify_index"], json!(r + 3));
    assert_eq!(
        s.get("/services/web?metadata=true").1["create_index"],
        json!(r + 3)
    );
}

#[test]
fn heartbeats_keep_a_service_alive_past_its_ttl() {
    let s = Server::with(Config {
        service_ttl: Duration::from_millis(1000),
        ..Config::default()
    });
    let r = s.post("/services", web(80)).1["modify_index"]
        .as_u64()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1600) {
        let (status, body) = s.put("/heartbeat/web", json!({}));
        assert_eq!(status, 200, "heartbeat at {:?}: {body}", start.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    let meta = s.get("/services/web?metadata=true").1;
    assert_eq!(meta["modify_index"], json!(r));
    assert_eq!(s.high_water(), r);
    // Without heartbeats it lapses.
    std::thread::sleep(Duration::from_millis(1300));
    assert_error(&s.get("/services/web"), 404);
    assert_eq!(s.high_water(), r + 1);
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[test]
fn metrics_count_operations_by_outcome() {
    let s = Server::start();
    s.set("k", json!({"value": "1"}));
    assert_eq!(s.put("/kv/k", json!({"value": "2", "cas": 0})).0, 409);
    assert_eq!(s.get("/kv/k").0, 200);
    assert_eq!(s.get("/kv/absent").0, 404);
    assert_eq!(s.get("/kv/k?metadata=maybe").0, 400);
    assert_eq!(s.get("/kv/").0, 200);
    assert_eq!(s.post("/services", web(80)).0, 200);
    assert_eq!(s.get("/services/nope").0, 404);
    assert_eq!(s.post("/batch/kv/set", json!({"items": {"x": "1"}})).0, 200);

    let reply = s.request("GET", "/metrics", None);
    assert_eq!(reply.status, 200);
    let text = reply.text;
    let count = |series: &str| metric_in(&text, series);
    assert_eq!(
        count(r#"kv_operations_total{operation="set",status="cas_conflict"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="set",status="success"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="get",status="success"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="get",status="not_found"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="get",status="error"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="list",status="success"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="batch_set",status="success"}"#),
        1
    );
    assert_eq!(
        count(r#"kv_operations_total{operation="delete",status="success"}"#),
        0
    );
    assert_eq!(
        count(r#"service_operations_total{operation="register",status="success"}"#),
        1
    );
    assert_eq!(
        count(r#"service_operations_total{operation="get",status="not_found"}"#),
        1
    );
    for op in [
        "get",
        "set",
        "delete",
        "list",
        "batch_get",
        "batch_set",
        "batch_delete",
        "batch_set_cas",
        "batch_delete_cas",
    ] {
        for status in ["success", "not_found", "cas_conflict", "error"] {
            count(&format!(
                r#"kv_operations_total{{operation="{op}",status="{status}"}}"#
            ));
        }
    }
    for op in ["register", "deregister", "heartbeat", "get", "list"] {
        for status in ["success", "not_found", "cas_conflict", "error"] {
            count(&format!(
                r#"service_operations_total{{operation="{op}",status="{status}"}}"#
            ));
        }
    }
    assert_eq!(count("kv_entries"), 2);
    assert_eq!(count("services_registered"), 1);
    assert_eq!(count("caskv_index_high_water"), 3);
    // Latency histograms: a TYPE line, cumulative buckets ending in +Inf, a count and a sum.
    let histogram = text
        .lines()
        .find_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .expect("a histogram family");
    let set_buckets: Vec<u64> = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!("{histogram}_bucket{{"))
                && l.contains(r#"operation="set""#)
                && l.contains(r#"kind="kv""#)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(set_buckets.len() > 2, "{text}");
    assert!(
        set_buckets.windows(2).all(|w| w[0] <= w[1]),
        "buckets are cumulative"
    );
    assert_eq!(*set_buckets.last().unwrap(), 2);
    assert!(text.contains(&format!(
        "{histogram}_bucket{{kind=\"kv\",operation=\"set\",le=\"+Inf\"}} 2"
    )));
    assert!(text.contains(&format!(
        "{histogram}_count{{kind=\"kv\",operation=\"set\"}} 2"
    )));
    assert!(text.contains(&format!("{histogram}_sum{{kind=\"kv\",operation=\"set\"}}")));
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn concurrent_cas_increments_lose_no_update() {
    const THREADS: usize = 8;
    const SUCCESSES: u64 = 50;
    let s = Server::start();
    s.set("counter", json!({"value": "0"}));
    let (total_ok, total_conflicts) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = &s;
                scope.spawn(move || {
                    let (mut ok, mut conflicts) = (0u64, 0u64);
                    let mut attempts = 0;
                    while ok < SUCCESSES {
                        attempts += 1;
                        assert!(attempts < 100_000, "no progress");
                        let meta = s.meta("counter");
                        let n: u64 = meta["value"].as_str().unwrap().parse().unwrap();
                        let m = meta["modify_index"].as_u64().unwrap();
                        let (status, body) = s.put(
                            "/kv/counter",
                            json!({"value": (n + 1).to_string(), "cas": m}),
                        );
                        match status {
                            200 => ok += 1,
                            409 => {
                                assert_eq!(body["expected"], json!(m));
                                assert!(body["current"].as_u64().unwrap() > m, "{body}");
                                conflicts += 1;
                            }
                            other => panic!("unexpected {other}: {body}"),
                        }
                    }
                    (ok, conflicts)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
    });
    assert_eq!(total_ok, THREADS as u64 * SUCCESSES);
    let meta = s.meta("counter");
    assert_eq!(meta["value"], json!(total_ok.to_string()));
    // One create plus one index per successful increment. Not `==`: a CAS that passes its
    // check and then loses the race to swap the cell has already drawn an index, which is
    // skipped (gaps are allowed; reuse is not).
    let last = meta["modify_index"].as_u64().unwrap();
    assert!(last > total_ok, "{last} <= {total_ok}");
    assert_eq!(s.high_water(), last);
    assert_eq!(
        s.metric(r#"kv_operations_total{operation="set",status="success"}"#),
        1 + total_ok
    );
    assert_eq!(
        s.metric(r#"kv_operations_total{operation="set",status="cas_conflict"}"#),
        total_conflicts
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown

#[test]
fn graceful_shutdown_finishes_in_flight_requests_then_refuses() {
    let mut s = Server::start();
    s.set("before", json!({"value": "x"}));
    let body = br#"{"value": "finished"}"#;
    let mut conn = Conn::open(s.addr);
    let head = format!(
        "PUT /kv/slow HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes());
    // The interim 100 comes once the handler starts reading the body: the request is in flight.
    let interim = conn.head().expect("an interim response");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    conn.send(&body[..6]);
    conn.stream.flush().unwrap();

    s.begin_shutdown();
    // New connections are refused once the loop has seen the shutdown.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&s.addr, Duration::from_millis(500)) {
            Err(_) => break,
            Ok(probe) => drop(probe),
        }
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The in-flight request still completes.
    conn.send(&body[6..]);
    let reply = conn.reply().expect("the in-flight request's answer");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = reply.json();
    assert_eq!(reply["message"], json!("key set"));
    assert_eq!(reply["key"], json!("slow"));
    assert_eq!(reply["modify_index"], json!(2));

    let start = Instant::now();
    s.stop();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown lingered"
    );
    assert!(TcpStream::connect(s.addr).is_err(), "accepting after stop");
    let entry = s
        .state
        .store
        .get("slow")
        .expect("the in-flight write landed");
    assert_eq!(entry.value.as_str(), Some("finished"));
}

/// The raw bytes of one answer on a fresh connection: status line, the headers that carry
/// meaning (content type, `x-caskv-index`), and the body.
fn raw_answer(s: &Server, path: &str) -> (String, Option<String>, Option<String>, Vec<u8>) {
    let mut conn = Conn::open(s.addr);
    conn.send(&request("GET", path.as_bytes(), None));
    let reply = conn.reply().expect("an answer");
    let header = |name: &str| reply.header(name).map(str::to_string);
    (
        reply.status.to_string(),
        header("content-type"),
        header("x-caskv-index"),
        reply.body.clone(),
    )
}

#[test]
fn the_hot_read_path_answers_byte_for_byte_what_the_router_answers() {
    let s = Server::start();
    s.set("plain", json!({"value": "v"}));
    s.set(
        "flagged",
        json!({"value": "quote \" and \\ and \u{1}", "flags": 9}),
    );
    s.set("timed", json!({"value": "t", "ttl": "1h"}));
    s.set("dir/nested/key", json!({"value": "n"}));
    // Bytes that are not text, through the Consul face.
    let (status, _) = s
        .send("PUT", "/v1/kv/binary", Some(&[0xff, 0x00, 0x80][..]))
        .unwrap();
    assert_eq!(status, 200);
    s.delete("/kv/plain-gone");
    for key in [
        "plain",
        "flagged",
        "timed",
        "dir/nested/key",
        "binary",
        "missing",
        "plain-gone",
    ] {
        for query in [
            "",
            "?metadata=true",
            "?metadata=1",
            "?metadata",
            "?metadata=false",
        ] {
            // The hot path takes these; an extra parameter sends the same read to the router.
            let hot = raw_answer(&s, &format!("/kv/{key}{query}"));
            let sep = if query.is_empty() { "?" } else { "&" };
            let routed = raw_answer(&s, &format!("/kv/{key}{query}{sep}_=routed"));
            assert_eq!(hot, routed, "/kv/{key}{query}");
        }
    }
    // Both count as the same operation: 5 present keys and 2 absent ones, 5 queries, 2 paths.
    let (_, metrics) = s.send("GET", "/metrics", None).unwrap();
    for line in [
        r#"kv_operations_total{operation="get",status="success"} 50"#,
        r#"kv_operations_total{operation="get",status="not_found"} 20"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// One `PUT` on a fresh connection: status and body, with every `modify_index`/`current`
/// index replaced by 0 (two writes of the same request differ only there).
fn raw_put(s: &Server, path: &str, body: &[u8]) -> (u16, Value) {
    let mut conn = Conn::open(s.addr);
    conn.send(&request("PUT", path.as_bytes(), Some(body)));
    let reply = conn.reply().expect("an answer");
    let mut json = reply.json();
    for field in ["modify_index", "current"] {
        if json.get(field).is_some_and(Value::is_u64) {
            json[field] = json!(0);
        }
    }
    (reply.status, json)
}

#[test]
fn the_hot_write_path_answers_what_the_router_answers() {
    let s = Server::with(Config {
        limits: Limits {
            max_value_bytes: 8,
            ..Limits::default()
        },
        ..Config::default()
    });
    for body in [
        &br#"{"value":"v"}"#[..],
        br#"{"value":"v","flags":3,"ttl":"1h"}"#,
        br#"{"value":"v","cas":0}"#,
        br#"{"value":"v","cas":999999}"#,
        br#"{"value":"far too long a value"}"#,
        br#"{"value":"v","ttl":"soon"}"#,
        br#"{"value":5}"#,
        br#"{"value":"v""#,
        b"",
    ] {
        for key in ["hot-a", "hot-b"] {
            // The hot path takes the first; a query sends the second through the router.
            let hot = raw_put(&s, &format!("/kv/{key}"), body);
            let routed = raw_put(&s, &format!("/kv/{key}?_=routed"), body);
            let shown = String::from_utf8_lossy(body);
            assert_eq!(hot.0, routed.0, "{shown}");
            let mut routed_body = routed.1.clone();
            if let Some(k) = routed_body.get_mut("key") {
                *k = json!(key.replace("hot-b", "hot-a"));
            }
            let mut hot_body = hot.1.clone();
            if let Some(k) = hot_body.get_mut("key") {
                *k = json!(key.replace("hot-b", "hot-a"));
            }
            assert_eq!(hot_body, routed_body, "{shown}");
        }
    }
}
