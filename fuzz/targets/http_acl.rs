//! `http_acl`: requests with tokens (right, wrong, malformed, absent; in `Authorization` or
//! `X-Caskv-Token`) against the real service (`App`) of a server with an ACL file.
//!
//! The ACL file is fixed (tokens with rules at several prefix lengths, a deny inside a write,
//! anonymous rules, a metrics rule, a management token). The harness decides each request's
//! verdict on its own, from a second, plain implementation of the rules (the longest matching
//! prefix by scanning every rule), and checks the server against it:
//! - an unknown, empty or malformed token is a 401; no token where the anonymous rules deny is
//!   a 401; a token whose rules deny is a 403; an allowed request is neither;
//! - a refused request changes nothing (the store's entries and the high-water mark are compared
//!   before and after), and its body names no token and no key;
//! - a listing shows exactly the keys the caller may read among those the store holds;
//! - a batch naming one forbidden key is refused whole.

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::http::{header, Method, Request};
use caskv::server::{App, AppState, KvValue, Limits};
use serde_json::{json, Value};

/// The most requests one input sends.
const MAX_REQUESTS: usize = 32;

/// Keys: prefixes of each other and of the rules, under and around them.
const KEYS: [&str; 9] = [
    "app/a",
    "app/secrets/x",
    "app/secrets",
    "app",
    "other/y",
    "public/p",
    "publi",
    "svc/web",
    "zz",
];

/// Services.
const SERVICES: [&str; 4] = ["app-api", "web", "webx", "db"];

/// Tokens a request may carry: the file's three, then ones it does not know.
const TOKENS: [&str; 6] = [
    "app-token",
    "reader-token",
    "ops-token",
    "bogus",
    "app-token ",
    "APP-TOKEN",
];

/// The ACL file.
fn acl_file() -> Value {
    json!({
        "default": "deny",
        "anonymous": { "kv": { "public/": "read", "publi": "deny" }, "services": { "web": "read" } },
        "tokens": [
            { "name": "app", "secret": "app-token",
              "kv": { "": "read", "app/": "write", "app/secrets": "deny", "app/secrets/x": "write" },
              "services": { "app": "write" } },
            { "name": "reader", "secret": "reader-token",
              "kv": { "app/": "read", "zz": "deny" }, "metrics": "read" },
            { "name": "ops", "secret": "ops-token",
              "kv": { "": "write" }, "services": { "": "write" }, "metrics": "read",
              "management": true }
        ]
    })
}

/// A rule: 0 deny, 1 read, 2 write.
type Rule = u8;

fn rule_of(text: &Value) -> Rule {
    match text.as_str() {
        Some("read") => 1,
        Some("write") => 2,
        _ => 0,
    }
}

/// The harness's own reading of the file: the longest matching prefix, by scanning them all.
fn decide(rules: &Value, name: &str, otherwise: Rule) -> Rule {
    let mut best: Option<(usize, Rule)> = None;
    if let Some(map) = rules.as_object() {
        for (prefix, rule) in map {
            if name.starts_with(prefix.as_str()) && best.is_none_or(|(len, _)| prefix.len() > len) {
                best = Some((prefix.len(), rule_of(rule)));
            }
        }
    }
    best.map_or(otherwise, |(_, r)| r)
}

/// Who a request is, to the model.
#[derive(Clone, Copy, Debug)]
enum Caller {
    /// No token (its rules are the file's `anonymous`).
    Anonymous,
    /// A token of the file (its index in `tokens`).
    Token(usize),
    /// An unknown, empty or malformed token.
    Invalid,
}

/// The verdict on needing `need` (1 read, 2 write) of `name` in `namespace` ("kv",
/// "services"): `None` allowed, else the status.
fn verdict(file: &Value, caller: Caller, namespace: &str, name: &str, need: Rule) -> Option<u16> {
    let (rules, otherwise, denied) = match caller {
        Caller::Invalid => return Some(401),
        Caller::Anonymous => (&file["anonymous"][namespace], 0, 401),
        Caller::Token(i) => (
            &file["tokens"][i][namespace],
            rule_of(&file["default"]),
            403,
        ),
    };
    (decide(rules, name, otherwise) < need).then_some(denied)
}

#[derive(Arbitrary, Debug)]
struct Input {
    requests: Vec<Req>,
}

#[derive(Arbitrary, Debug)]
struct Req {
    credential: Credential,
    op: Op,
}

/// How the request presents itself.
#[derive(Arbitrary, Debug)]
enum Credential {
    None,
    /// `Authorization: Bearer TOKENS[i]`.
    Bearer(u8),
    /// `X-Caskv-Token: TOKENS[i]`.
    Header(u8),
    /// Both headers: `Authorization` wins.
    Both(u8, u8),
    /// `Authorization: <scheme> <token>` with another scheme, or no token.
    OtherScheme(bool),
    /// `X-Caskv-Token` empty.
    EmptyHeader,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Get(u8),
    Put(u8, u8),
    Delete(u8),
    List(Option<u8>),
    BatchSet(Vec<u8>),
    BatchGet(Vec<u8>),
    BatchDelete(Vec<u8>),
    ServiceRegister(u8),
    ServiceGet(u8),
    ServiceList,
    Metrics,
    Reload,
    Health,
}

fn key(i: u8) -> &'static str {
    KEYS[usize::from(i) % KEYS.len()]
}

fn service(i: u8) -> &'static str {
    SERVICES[usize::from(i) % SERVICES.len()]
}

/// The caller a credential makes, and the headers that present it.
fn present(c: &Credential) -> (Caller, Vec<(&'static str, String)>) {
    // The server trims a token: "app-token " is app's token there; "APP-TOKEN" is nobody's.
    let token = |i: u8| {
        let i = usize::from(i) % TOKENS.len();
        let caller = match TOKENS[i].trim() {
            t if t == TOKENS[0] => Caller::Token(0),
            t if t == TOKENS[1] => Caller::Token(1),
            t if t == TOKENS[2] => Caller::Token(2),
            _ => Caller::Invalid,
        };
        (caller, TOKENS[i])
    };
    match c {
        Credential::None => (Caller::Anonymous, vec![]),
        Credential::Bearer(i) => {
            let (caller, t) = token(*i);
            (caller, vec![("authorization", format!("Bearer {t}"))])
        }
        Credential::Header(i) => {
            let (caller, t) = token(*i);
            (caller, vec![("x-caskv-token", t.to_string())])
        }
        Credential::Both(a, b) => {
            let (caller, t) = token(*a);
            let (_, other) = token(*b);
            (
                caller,
                vec![
                    ("authorization", format!("Bearer {t}")),
                    ("x-caskv-token", other.to_string()),
                ],
            )
        }
        Credential::OtherScheme(with_token) => {
            let value = if *with_token {
                "Basic app-token"
            } else {
                "Bearer"
            };
            (Caller::Invalid, vec![("authorization", value.to_string())])
        }
        Credential::EmptyHeader => (Caller::Invalid, vec![("x-caskv-token", String::new())]),
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    app: App,
    state: AppState,
    file: Value,
}

impl Harness {
    fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, value.as_str());
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .rt
            .block_on(self.app.handle(req.body(body).expect("a valid request")));
        let status = resp.status().as_u16();
        let bytes = self
            .rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .expect("a readable body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn snapshot(&self) -> (Vec<(String, String, u64)>, u64) {
        let mut entries: Vec<_> = self
            .state
            .store
            .entries()
            .into_iter()
            .map(|(k, e)| {
                let text = String::from_utf8_lossy(e.value.as_bytes()).into_owned();
                (k, text, e.modify_index)
            })
            .collect();
        entries.sort();
        (entries, self.state.store.global_index().high_water())
    }
}

/// Replays one input: see the module docs. Panics on any violation.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.requests.truncate(MAX_REQUESTS);
    let file = acl_file();
    let dir = std::env::temp_dir().join(format!(
        "caskv-fuzz-acl-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("acl.json");
    std::fs::write(&path, file.to_string()).expect("the ACL file written");
    let state = AppState::new(Limits::default(), Duration::from_secs(3600))
        .with_acl_file(&path)
        .expect("the harness's ACL file is valid");
    let h = Harness {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        app: App::new(state.clone(), Duration::from_secs(5)),
        state,
        file,
    };
    // Some keys and services to read, list and refuse.
    for k in ["app/a", "app/secrets/x", "other/y", "public/p", "zz"] {
        h.state
            .store
            .set(k.to_string(), KvValue::text("seed".to_string()));
    }
    for req in &input.requests {
        check(&h, req);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends one request and checks it against the model.
fn check(h: &Harness, req: &Req) {
    let (caller, headers) = present(&req.credential);
    let before = h.snapshot();
    let kv = |k: &str, need| verdict(&h.file, caller, "kv", k, need);
    let (method, uri, body, expected): (Method, String, Option<Value>, Option<u16>) = match &req.op
    {
        Op::Get(k) => (
            Method::GET,
            format!("/kv/{}", key(*k)),
            None,
            kv(key(*k), 1),
        ),
        Op::Put(k, v) => (
            Method::PUT,
            format!("/kv/{}", key(*k)),
            Some(json!({"value": v.to_string()})),
            kv(key(*k), 2),
        ),
        Op::Delete(k) => (
            Method::DELETE,
            format!("/kv/{}", key(*k)),
            None,
            kv(key(*k), 2),
        ),
        Op::List(prefix) => {
            let uri = match prefix {
                Some(p) => format!("/kv/?prefix={}", key(*p)),
                None => "/kv/".to_string(),
            };
            let expected = match caller {
                Caller::Invalid => Some(401),
                _ => None,
            };
            (Method::GET, uri, None, expected)
        }
        Op::BatchSet(ks) | Op::BatchGet(ks) | Op::BatchDelete(ks) => {
            let mut names: Vec<&str> = ks.iter().take(4).map(|k| key(*k)).collect();
            names.sort_unstable();
            names.dedup();
            let (path, need, body) = match &req.op {
                Op::BatchSet(_) => {
                    let items: BTreeMap<&str, &str> = names.iter().map(|k| (*k, "b")).collect();
                    ("/batch/kv/set", 2, json!({ "items": items }))
                }
                Op::BatchGet(_) => ("/batch/kv/get", 1, json!({ "keys": names })),
                _ => ("/batch/kv/delete", 2, json!({ "keys": names })),
            };
            // The batch is refused by its first forbidden key's verdict (all are the same kind
            // for one caller), unless the body is refused first (an empty batch is fine here).
            let expected = names.iter().find_map(|k| kv(k, need));
            let expected = match caller {
                Caller::Invalid => Some(401),
                _ => expected,
            };
            (Method::POST, path.to_string(), Some(body), expected)
        }
        Op::ServiceRegister(s) => (
            Method::POST,
            "/services".to_string(),
            Some(json!({"name": service(*s), "address": "10.0.0.1", "port": 80})),
            verdict(&h.file, caller, "services", service(*s), 2),
        ),
        Op::ServiceGet(s) => (
            Method::GET,
            format!("/services/{}", service(*s)),
            None,
            verdict(&h.file, caller, "services", service(*s), 1),
        ),
        Op::ServiceList => (
            Method::GET,
            "/services".to_string(),
            None,
            matches!(caller, Caller::Invalid).then_some(401),
        ),
        Op::Metrics => {
            let expected = match caller {
                Caller::Invalid => Some(401),
                Caller::Anonymous => Some(401),
                Caller::Token(i) => (rule_of(&h.file["tokens"][i]["metrics"]) < 1).then_some(403),
            };
            (Method::GET, "/metrics".to_string(), None, expected)
        }
        Op::Reload => {
            let expected = match caller {
                Caller::Invalid | Caller::Anonymous => Some(401),
                Caller::Token(i) => {
                    (h.file["tokens"][i]["management"] != json!(true)).then_some(403)
                }
            };
            (Method::POST, "/admin/reload".to_string(), None, expected)
        }
        Op::Health => (Method::GET, "/health".to_string(), None, None),
    };
    let shown = format!("{method} {uri} as {caller:?} ({:?})", req.credential);
    let (status, text) = h.send(method, &uri, &headers, body);
    assert!(status < 500, "{shown}: {status} {text}");
    match expected {
        Some(refused) => {
            assert_eq!(status, refused, "{shown}: {text}");
            assert_eq!(
                h.snapshot(),
                before,
                "{shown}: a refused request changed the store"
            );
            let lowered = text.to_lowercase();
            for secret in TOKENS.iter().chain(KEYS.iter()).filter(|s| s.len() > 3) {
                assert!(
                    !lowered.contains(&secret.to_lowercase()),
                    "{shown}: the refusal names {secret:?}: {text}"
                );
            }
        }
        None => assert!(
            status != 401 && status != 403,
            "{shown}: refused with {status} where the rules allow it: {text}"
        ),
    }
    // A listing shows exactly what the caller may read of what the store holds.
    if status == 200 && matches!(req.op, Op::List(None)) {
        let shown_keys: Vec<String> = serde_json::from_str(&text).expect("a JSON list");
        let mut want: Vec<String> = h
            .state
            .store
            .keys()
            .into_iter()
            .filter(|k| kv(k, 1).is_none())
            .collect();
        want.sort();
        assert_eq!(shown_keys, want, "{shown}");
    }
}
