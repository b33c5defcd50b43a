//! `http_request`: request sequences from `arbitrary` sent to the real router in-process.
//!
//! Every input builds a fresh `App::new(AppState::new(Limits::default(), ttl), 5 s)` (what every
//! connection of `caskv serve` serves: the hot read path, then the router) and sends it
//! requests with `App::handle` on a current-thread tokio runtime. Requests are of
//! four kinds:
//! - **KV** (`PUT`/`GET`/`DELETE /kv/{key}`, `GET /kv/?prefix=`): keys from a list of awkward
//!   ones (`/`, `%`, `..`, spaces, NUL, non-ASCII, empty, around the 512-byte bound) or
//!   arbitrary, percent-encoded three ways; values up to just over the value bound; CAS
//!   indices current, 0, near or arbitrary. A model (a map plus the index counter) predicts the
//!   status, the body's fields and every index exactly.
//! - **Batch** (`POST /batch/kv/…`): the five batch endpoints with keys valid, invalid,
//!   absent and repeated (objects with a member named twice are written as text), expected
//!   indices present, missing or extra; the model predicts the status and every change.
//! - **Service**: the registry endpoints and their aliases with generated bodies (invariants
//!   only, as for raw requests).
//! - **Raw**: any method, a path built from route prefixes and segments (`%`-escapes valid and
//!   not, `.`, `..`, empty and very long segments), any query, headers (`Content-Length` true,
//!   huge or garbage) and a body that is arbitrary bytes or JSON-ish objects with the API's field
//!   names and values of every type.
//!
//! For every response: never a 5xx (nor a panic); every body but a successful `/metrics` (and
//! an empty `HEAD` body) is JSON with a JSON content type; every 4xx body has `error` and
//! `message` strings. A request that was not a successful write changes nothing: the store's
//! entries, the global index's high-water mark and the registry's services are compared before
//! and after each unmodelled request, and the model is compared with `entries()` after each
//! modelled one. At the end every touched key is read back through the router.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use caskv::server::{App, AppState, Limits};
use serde_json::{json, Value};

/// The most requests one input sends.
const MAX_REQUESTS: usize = 24;
/// The default bounds of `Limits` (checked against `Limits::default()` at start-up).
const MAX_KEY: usize = 512;
const MAX_VALUE: usize = 512 * 1024;
/// Long enough that no registration expires during a run.
const SERVICE_TTL: Duration = Duration::from_secs(3600);

/// Keys that stress routing and decoding. The empty key is the list route (GET) or a 400.
const KEYS: [&str; 20] = [
    "a",
    "b",
    "a/b",
    "d/1",
    "d/2",
    "a b",
    "%",
    "%2F",
    "..",
    ".",
    "a/../b",
    "x/",
    "/x",
    "a?b#c",
    "ü/é",
    "a+b",
    "nul\0",
    "",
    "k\n",
    "~!$&'()*,;=:@",
];

#[derive(Arbitrary, Debug)]
struct Input {
    requests: Vec<Req>,
}

#[derive(Arbitrary, Debug)]
enum Req {
    Kv(KvReq),
    Batch(BatchReq),
    Service(ServiceReq),
    Raw(RawReq),
}

/// A key: one of [`KEYS`], one around the length bound, or any string.
#[derive(Arbitrary, Debug, Clone)]
enum FuzzKey {
    Fixed(u8),
    /// 500–523 bytes of `k`, or of `é` (two bytes each) when `wide`.
    Long {
        len: u8,
        wide: bool,
    },
    Any(String),
}

impl FuzzKey {
    fn name(&self) -> String {
        match self {
            FuzzKey::Fixed(i) => KEYS[usize::from(*i) % KEYS.len()].to_string(),
            FuzzKey::Long { len, wide } => {
                let bytes = 500 + usize::from(len % 24);
                if *wide {
                    let mut s = "é".repeat(bytes / 2);
                    if bytes % 2 == 1 {
                        s.push('k');
                    }
                    s
                } else {
                    "k".repeat(bytes)
                }
            }
            FuzzKey::Any(s) => s.clone(),
        }
    }
}

/// How a key is percent-encoded into a path.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Enc {
    /// Only what a path cannot hold (`/` stays).
    Minimal,
    /// Everything but ASCII letters, digits and `/`.
    Most,
    /// Every byte, `/` as `%2F` and letters included.
    Everything,
}

/// How a CAS index is chosen.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pick {
    Current,
    Zero,
    Offset(i8),
    Exact(u64),
}

/// A value: short, or around the value bound (one byte under, at, one over).
#[derive(Arbitrary, Debug)]
enum FuzzValue {
    Short(String),
    NearBound(u8),
}

impl FuzzValue {
    fn text(&self) -> String {
        match self {
            FuzzValue::Short(s) => s.clone(),
            FuzzValue::NearBound(n) => "v".repeat(MAX_VALUE - 1 + usize::from(n % 3)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum KvReq {
    Put {
        key: FuzzKey,
        enc: Enc,
        value: FuzzValue,
        cas: Option<Pick>,
        flags: Option<u64>,
    },
    Get {
        key: FuzzKey,
        enc: Enc,
        metadata: Option<bool>,
    },
    Delete {
        key: FuzzKey,
        enc: Enc,
        cas: Option<Pick>,
    },
    List {
        prefix: Option<FuzzKey>,
        slash: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum BatchReq {
    Get(Vec<FuzzKey>),
    Set(Vec<(FuzzKey, String)>),
    Delete(Vec<FuzzKey>),
    SetCas {
        items: Vec<(FuzzKey, String)>,
        expected: Vec<(FuzzKey, Pick)>,
    },
    DeleteCas {
        keys: Vec<FuzzKey>,
        expected: Vec<(FuzzKey, Pick)>,
    },
}

/// Service names: a few valid ones (so that a registration and a later request meet), or any
/// key.
const SERVICES: [&str; 3] = ["web", "db", "a b/ü"];

#[derive(Arbitrary, Debug)]
enum ServiceName {
    Fixed(u8),
    Key(FuzzKey),
}

impl ServiceName {
    fn name(&self) -> String {
        match self {
            ServiceName::Fixed(i) => SERVICES[usize::from(*i) % SERVICES.len()].to_string(),
            ServiceName::Key(k) => k.name(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Address {
    Valid,
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Port {
    Valid(u16),
    /// Over `u16::MAX` must be a 400.
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum ServiceReq {
    Register {
        alias: bool,
        name: ServiceName,
        address: Address,
        port: Port,
        tags: Vec<String>,
        meta: Vec<(String, String)>,
        cas: Option<u64>,
    },
    Get {
        name: ServiceName,
        metadata: Option<bool>,
    },
    Deregister {
        alias: bool,
        name: ServiceName,
        cas: Option<u64>,
    },
    Heartbeat {
        alias: bool,
        name: ServiceName,
    },
    List {
        slash: bool,
    },
}

#[derive(Arbitrary, Debug)]
enum FuzzMethod {
    Get,
    Put,
    Post,
    Delete,
    Head,
    Options,
    Patch,
    Trace,
    Connect,
    Other(String),
}

impl FuzzMethod {
    fn method(&self) -> Option<Method> {
        Some(match self {
            FuzzMethod::Get => Method::GET,
            FuzzMethod::Put => Method::PUT,
            FuzzMethod::Post => Method::POST,
            FuzzMethod::Delete => Method::DELETE,
            FuzzMethod::Head => Method::HEAD,
            FuzzMethod::Options => Method::OPTIONS,
            FuzzMethod::Patch => Method::PATCH,
            FuzzMethod::Trace => Method::TRACE,
            FuzzMethod::Connect => Method::CONNECT,
            FuzzMethod::Other(s) => Method::from_bytes(s.as_bytes()).ok()?,
        })
    }
}

/// Where a raw path starts.
const ROUTES: [&str; 18] = [
    "",
    "kv",
    "kv/",
    "batch/kv/get",
    "batch/kv/set",
    "batch/kv/delete",
    "batch/kv/set-cas",
    "batch/kv/delete-cas",
    "batch/kv",
    "services",
    "services/",
    "register",
    "deregister/",
    "heartbeat/",
    "health",
    "metrics",
    "kv//",
    "services/a/heartbeat",
];

#[derive(Arbitrary, Debug)]
enum Segment {
    /// Text, with what a URI cannot hold escaped; a `%` stays as it is.
    Text(String),
    /// A valid escape of one byte.
    Escape(u8),
    /// `%` followed by at most one more character.
    BadEscape(Option<char>),
    Dot,
    DotDot,
    Empty,
    /// Up to 2047 bytes.
    Long(u16),
}

#[derive(Arbitrary, Debug)]
enum FuzzHeader {
    /// The body's true length.
    ContentLengthTrue,
    /// Over the body limit.
    ContentLengthHuge,
    ContentLength(String),
    ContentType(String),
    TransferEncoding(String),
    Other(String, String),
}

/// A JSON scalar (no recursion, so inputs cannot nest deeply by accident).
#[derive(Arbitrary, Debug)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// Digits only: a number far out of any integer type.
    BigNum(u8),
}

/// A JSON value of at most two levels, or a deep nest of arrays.
#[derive(Arbitrary, Debug)]
enum JsonPart {
    Scalar(Scalar),
    Array(Vec<Scalar>),
    /// An object; member names may repeat.
    Object(Vec<(String, Scalar)>),
    Nested(u8),
}

/// The API's field names, so that generated objects look like real bodies.
#[derive(Arbitrary, Debug)]
enum Field {
    Value,
    Cas,
    Flags,
    Keys,
    Items,
    ExpectedIndices,
    Name,
    Address,
    Port,
    Tags,
    Meta,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum RawBody {
    None,
    Bytes(Vec<u8>),
    /// A JSON object built from fields (names may repeat).
    Object(Vec<(Field, JsonPart)>),
    /// Any JSON value at the top level.
    Part(JsonPart),
}

#[derive(Arbitrary, Debug)]
struct RawReq {
    method: FuzzMethod,
    route: u8,
    segments: Vec<Segment>,
    query: Option<String>,
    headers: Vec<FuzzHeader>,
    body: RawBody,
}

/// One entry of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEntry {
    value: String,
    flags: u64,
    modify_index: u64,
    create_index: u64,
}

/// The KV state the requests should leave, and the last index handed out.
#[derive(Default)]
struct Model {
    map: BTreeMap<String, ModelEntry>,
    last: u64,
    /// Every key a modelled request named, to read back at the end.
    touched: BTreeSet<String>,
}

impl Model {
    fn next(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    fn index_of(&self, key: &str) -> u64 {
        self.map.get(key).map_or(0, |e| e.modify_index)
    }

    fn resolve(&self, pick: Pick, key: &str) -> u64 {
        match pick {
            Pick::Current => self.index_of(key),
            Pick::Zero => 0,
            Pick::Offset(d) => self.index_of(key).wrapping_add_signed(i64::from(d)),
            Pick::Exact(n) => n,
        }
    }

    fn index_ok(&self, key: &str, expected: u64) -> bool {
        match self.map.get(key) {
            None => expected == 0,
            Some(e) => expected != 0 && e.modify_index == expected,
        }
    }

    fn write(&mut self, key: &str, value: String, flags: Option<u64>, index: u64) {
        let (create, kept) = match self.map.get(key) {
            Some(e) => (e.create_index, e.flags),
            None => (index, 0),
        };
        self.map.insert(
            key.to_string(),
            ModelEntry {
                value,
                flags: flags.unwrap_or(kept),
                modify_index: index,
                create_index: create,
            },
        );
    }

    /// Takes the store's state as the model's, after a request the model does not predict.
    fn resync(&mut self, state: &AppState) {
        self.map = entries(state).into_iter().collect();
        self.last = state.store.global_index().high_water();
    }
}

fn entries(state: &AppState) -> Vec<(String, ModelEntry)> {
    state
        .store
        .entries()
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                ModelEntry {
                    value: String::from_utf8_lossy(e.value.as_bytes()).into_owned(),
                    flags: e.flags,
                    modify_index: e.modify_index,
                    create_index: e.create_index,
                },
            )
        })
        .collect()
}

/// Everything a request could change: KV entries, the high-water mark, and the registry's
/// services with their indices (not their deadlines, which a heartbeat moves).
#[derive(Debug, PartialEq)]
struct Snapshot {
    entries: Vec<(String, ModelEntry)>,
    high_water: u64,
    services: Vec<(Value, u64, u64)>,
}

fn snapshot(state: &AppState) -> Snapshot {
    Snapshot {
        entries: entries(state),
        high_water: state.store.global_index().high_water(),
        services: state
            .registry
            .list()
            .into_iter()
            .map(|e| {
                (
                    serde_json::to_value(&e.service).unwrap(),
                    e.modify_index,
                    e.create_index,
                )
            })
            .collect(),
    }
}

/// A key as the server accepts it: 1..=512 bytes, no NUL.
fn key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && !key.contains('\0')
}

fn percent(out: &mut String, b: u8) {
    write!(out, "%{b:02X}").unwrap();
}

/// `key` as a path, percent-encoded as `enc` says.
fn encode_key(key: &str, enc: Enc) -> String {
    let mut out = String::new();
    for &b in key.as_bytes() {
        let keep = match enc {
            Enc::Minimal => b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b),
            Enc::Most => b.is_ascii_alphanumeric() || b == b'/',
            Enc::Everything => false,
        };
        if keep {
            out.push(char::from(b));
        } else {
            percent(&mut out, b);
        }
    }
    out
}

/// `value` for a query string: letters and digits as they are, every other byte escaped.
fn encode_query(value: &str) -> String {
    let mut out = String::new();
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            percent(&mut out, b);
        }
    }
    out
}

/// Text for a raw URI: escapes what a URI cannot hold, keeps `%` and `keep` as they are.
fn encode_raw(text: &str, keep: &[u8]) -> String {
    let mut out = String::new();
    for &b in text.as_bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}#?".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            percent(&mut out, b);
        }
    }
    out
}

fn scalar_text(s: &Scalar) -> String {
    match s {
        Scalar::Null => "null".into(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::UInt(u) => u.to_string(),
        Scalar::Float(f) if f.is_finite() => format!("{f:?}"),
        Scalar::Float(_) => "1e999".into(),
        Scalar::Str(s) => json!(s).to_string(),
        Scalar::BigNum(n) => "9".repeat(20 + usize::from(*n)),
    }
}

/// A JSON object as text, so that a member name may repeat.
fn object_text(members: impl IntoIterator<Item = (String, String)>) -> String {
    let members: Vec<String> = members
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", json!(k)))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn part_text(p: &JsonPart) -> String {
    match p {
        JsonPart::Scalar(s) => scalar_text(s),
        JsonPart::Array(items) => format!(
            "[{}]",
            items.iter().map(scalar_text).collect::<Vec<_>>().join(",")
        ),
        JsonPart::Object(members) => {
            object_text(members.iter().map(|(k, v)| (k.clone(), scalar_text(v))))
        }
        JsonPart::Nested(n) => {
            let depth = usize::from(*n);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
    }
}

fn field_name(f: &Field) -> String {
    match f {
        Field::Value => "value".into(),
        Field::Cas => "cas".into(),
        Field::Flags => "flags".into(),
        Field::Keys => "keys".into(),
        Field::Items => "items".into(),
        Field::ExpectedIndices => "expected_indices".into(),
        Field::Name => "name".into(),
        Field::Address => "address".into(),
        Field::Port => "port".into(),
        Field::Tags => "tags".into(),
        Field::Meta => "meta".into(),
        Field::Other(s) => s.clone(),
    }
}

/// A response, read whole.
struct Reply {
    status: u16,
    body: Vec<u8>,
    json: Option<Value>,
}

impl Reply {
    fn field(&self, name: &str) -> &Value {
        &self.json.as_ref().expect("a JSON body")[name]
    }
}

/// The server's service and the runtime it runs on.
struct Client {
    rt: tokio::runtime::Runtime,
    app: App,
    state: AppState,
}

impl Client {
    /// Sends one request and checks what every response must satisfy. `None` when the request
    /// cannot be built (an invalid URI, method or header: no client could send it).
    fn send(
        &self,
        method: Method,
        uri: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Option<Reply> {
        let mut req = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Body::from(body)).ok()?;
        let path = req.uri().path().to_string();
        let shown = format!("{method} {uri}");
        let resp = self.rt.block_on(self.app.handle(req));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("<not text>").to_string());
        let body = self
            .rt
            .block_on(axum::body::to_bytes(resp.into_body(), usize::MAX))
            .expect("the response body could be read")
            .to_vec();
        let text = String::from_utf8_lossy(&body);
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "{shown}: status {status}: {text}"
        );
        if method == Method::HEAD && body.is_empty() {
            return Some(Reply {
                status,
                body,
                json: None,
            });
        }
        if status == 200 && path == "/metrics" {
            assert!(
                content_type
                    .as_deref()
                    .is_some_and(|t| t.starts_with("text/plain")),
                "{shown}: metrics content type {content_type:?}"
            );
            return Some(Reply {
                status,
                body,
                json: None,
            });
        }
        let json: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{shown}: status {status}, body is not JSON ({e}): {text}"));
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "{shown}: status {status}: {text}"
        );
        if status >= 400 {
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{shown}: status {status}, error body without error/message strings: {text}"
            );
        }
        Some(Reply {
            status,
            body,
            json: Some(json),
        })
    }

    fn send_json(&self, method: Method, uri: &str, body: String) -> Reply {
        let headers = vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )];
        self.send(method, uri, headers, body.into_bytes())
            .unwrap_or_else(|| panic!("the request to {uri} could not be built"))
    }
}

/// Replays one input: see the module docs. Panics on any violation.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    input.requests.truncate(MAX_REQUESTS);
    let limits = Limits::default();
    assert_eq!(
        (limits.max_key_bytes, limits.max_value_bytes),
        (MAX_KEY, MAX_VALUE),
        "the harness assumes the default bounds"
    );
    let state = AppState::new(limits, SERVICE_TTL);
    let client = Client {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        app: App::new(state.clone(), Duration::from_secs(5)),
        state,
    };
    let mut model = Model::default();
    for req in &input.requests {
        match req {
            Req::Kv(r) => kv(&client, &mut model, r),
            Req::Batch(r) => batch(&client, &mut model, r),
            Req::Service(r) => unmodelled(&client, &mut model, service_request(r)),
            Req::Raw(r) => unmodelled(&client, &mut model, raw_request(r)),
        }
        assert_eq!(
            entries(&client.state),
            model.map.clone().into_iter().collect::<Vec<_>>(),
            "the store after {req:?}"
        );
        assert_eq!(
            client.state.store.global_index().high_water(),
            model.last,
            "the high-water mark after {req:?}"
        );
    }
    // Every key a modelled request named reads back through the router as the model has it.
    for key in &model.touched {
        if !key_ok(key) {
            continue;
        }
        let uri = format!("/kv/{}?metadata=true", encode_key(key, Enc::Most));
        let reply = client.send_json(Method::GET, &uri, String::new());
        match model.map.get(key) {
            Some(e) => {
                assert_eq!(reply.status, 200, "{uri}");
                assert_entry(&reply, key, e, true);
            }
            None => assert_eq!(reply.status, 404, "{uri}"),
        }
    }
}

/// A request the model does not predict: whatever it did, a failure changed nothing, and only
/// a successful PUT, POST or DELETE may change anything. The model then takes the store's state.
fn unmodelled(client: &Client, model: &mut Model, req: Option<(Method, String, Headers, Vec<u8>)>) {
    let Some((method, uri, headers, body)) = req else {
        return;
    };
    let before = snapshot(&client.state);
    let Some(reply) = client.send(method.clone(), &uri, headers, body) else {
        return;
    };
    let after = snapshot(&client.state);
    if before != after {
        assert!(
            (200..300).contains(&reply.status)
                && [Method::PUT, Method::POST, Method::DELETE].contains(&method),
            "{method} {uri} answered {} and changed the state:\nbefore {before:?}\nafter {after:?}\n{}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    model.resync(&client.state);
}

type Headers = Vec<(HeaderName, HeaderValue)>;

fn service_request(r: &ServiceReq) -> Option<(Method, String, Headers, Vec<u8>)> {
    let path_name = |name: &ServiceName| encode_key(&name.name(), Enc::Most);
    let (method, uri, body) = match r {
        ServiceReq::Register {
            alias,
            name,
            address,
            port,
            tags,
            meta,
            cas,
        } => {
            let address = match address {
                Address::Valid => "10.0.0.1".to_string(),
                Address::Any(a) => a.clone(),
            };
            let port = match port {
                Port::Valid(p) => u32::from(*p),
                Port::Any(p) => *p,
            };
            let mut body = json!({
                "name": name.name(),
                "address": address,
                "port": port,
                "tags": tags,
                "meta": meta.iter().cloned().collect::<BTreeMap<String, String>>(),
            });
            if let Some(c) = cas {
                body["cas"] = json!(c);
            }
            let (method, uri) = if *alias {
                (Method::PUT, "/register")
            } else {
                (Method::POST, "/services")
            };
            (method, uri.to_string(), body.to_string())
        }
        ServiceReq::Get { name, metadata } => {
            let query = match metadata {
                Some(m) => format!("?metadata={m}"),
                None => String::new(),
            };
            (
                Method::GET,
                format!("/services/{}{query}", path_name(name)),
                String::new(),
            )
        }
        ServiceReq::Deregister { alias, name, cas } => {
            let query = cas.map_or(String::new(), |c| format!("?cas={c}"));
            let prefix = if *alias { "/deregister" } else { "/services" };
            (
                Method::DELETE,
                format!("{prefix}/{}{query}", path_name(name)),
                String::new(),
            )
        }
        ServiceReq::Heartbeat { alias, name } => {
            let uri = if *alias {
                format!("/heartbeat/{}", path_name(name))
            } else {
                format!("/services/{}/heartbeat", path_name(name))
            };
            (Method::PUT, uri, String::new())
        }
        ServiceReq::List { slash } => {
            let uri = if *slash { "/services/" } else { "/services" };
            (Method::GET, uri.to_string(), String::new())
        }
    };
    let headers = vec![(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    )];
    Some((method, uri, headers, body.into_bytes()))
}

fn raw_request(r: &RawReq) -> Option<(Method, String, Headers, Vec<u8>)> {
    let method = r.method.method()?;
    let mut path = format!("/{}", ROUTES[usize::from(r.route) % ROUTES.len()]);
    for (i, seg) in r.segments.iter().take(16).enumerate() {
        if i > 0 || !path.ends_with('/') {
            path.push('/');
        }
        match seg {
            Segment::Text(t) => path += &encode_raw(t, b"%"),
            Segment::Escape(b) => percent(&mut path, *b),
            Segment::BadEscape(c) => {
                path.push('%');
                if let Some(c) = c {
                    path += &encode_raw(&c.to_string(), b"%");
                }
            }
            Segment::Dot => path.push('.'),
            Segment::DotDot => path += "..",
            Segment::Empty => {}
            Segment::Long(n) => path += &"k".repeat(usize::from(n % 2048)),
        }
    }
    if let Some(q) = &r.query {
        path.push('?');
        path += &encode_raw(q, b"%&=+");
    }
    let body: Vec<u8> = match &r.body {
        RawBody::None => Vec::new(),
        RawBody::Bytes(b) => b.clone(),
        RawBody::Object(fields) => {
            object_text(fields.iter().map(|(f, p)| (field_name(f), part_text(p)))).into_bytes()
        }
        RawBody::Part(p) => part_text(p).into_bytes(),
    };
    let mut headers = Vec::new();
    for h in r.headers.iter().take(8) {
        let (name, value) = match h {
            FuzzHeader::ContentLengthTrue => (header::CONTENT_LENGTH, body.len().to_string()),
            FuzzHeader::ContentLengthHuge => (header::CONTENT_LENGTH, "2000000".to_string()),
            FuzzHeader::ContentLength(v) => (header::CONTENT_LENGTH, v.clone()),
            FuzzHeader::ContentType(v) => (header::CONTENT_TYPE, v.clone()),
            FuzzHeader::TransferEncoding(v) => (header::TRANSFER_ENCODING, v.clone()),
            FuzzHeader::Other(n, v) => match HeaderName::from_bytes(n.as_bytes()) {
                Ok(name) => (name, v.clone()),
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.push((name, value));
        }
    }
    Some((method, path, headers, body))
}

/// Checks a 200 entry body of `GET /kv/{key}` against the model.
fn assert_entry(reply: &Reply, key: &str, e: &ModelEntry, metadata: bool) {
    let mut want = json!({"key": key, "value": e.value});
    if metadata {
        want["modify_index"] = json!(e.modify_index);
        want["create_index"] = json!(e.create_index);
        want["flags"] = json!(e.flags);
    }
    assert_eq!(reply.json.as_ref(), Some(&want), "entry of {key:?}");
}

/// Checks a 4xx reply's status and `error` (and, for KV errors, its `key`).
fn assert_error(reply: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(
        reply.status,
        status,
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.field("error"), error, "{what}");
}

fn kv(client: &Client, model: &mut Model, r: &KvReq) {
    match r {
        KvReq::Put {
            key,
            enc,
            value,
            cas,
            flags,
        } => {
            let key = key.name();
            model.touched.insert(key.clone());
            let value = value.text();
            let expected = cas.map(|p| model.resolve(p, &key));
            let mut body = json!({"value": value});
            if let Some(e) = expected {
                body["cas"] = json!(e);
            }
            if let Some(f) = flags {
                body["flags"] = json!(f);
            }
            let uri = format!("/kv/{}", encode_key(&key, *enc));
            let reply = client.send_json(Method::PUT, &uri, body.to_string());
            let what = format!("PUT {uri} cas {expected:?}");
            if !key_ok(&key) {
                return assert_error(&reply, 400, "bad request", &what);
            }
            if value.len() > MAX_VALUE {
                return assert_error(&reply, 413, "payload too large", &what);
            }
            match expected {
                Some(e) if !model.index_ok(&key, e) => {
                    assert_index_failure(&reply, model, &key, e, &what);
                }
                _ => {
                    assert_eq!(reply.status, 200, "{what}");
                    let index = model.next();
                    let want = json!({"message": "key set", "key": key, "modify_index": index});
                    assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
                    model.write(&key, value, *flags, index);
                }
            }
        }
        KvReq::Get { key, enc, metadata } => {
            let key = key.name();
            model.touched.insert(key.clone());
            let query = match metadata {
                Some(m) => format!("?metadata={m}"),
                None => String::new(),
            };
            let uri = format!("/kv/{}{query}", encode_key(&key, *enc));
            let reply = client.send_json(Method::GET, &uri, String::new());
            let what = format!("GET {uri}");
            if key.is_empty() {
                // `GET /kv/` is the listing.
                assert_eq!(reply.status, 200, "{what}");
                let keys: Vec<&String> = model.map.keys().collect();
                assert_eq!(reply.json, Some(json!(keys)), "{what}");
            } else if !key_ok(&key) {
                assert_error(&reply, 400, "bad request", &what);
            } else {
                match model.map.get(&key) {
                    Some(e) => {
                        assert_eq!(reply.status, 200, "{what}");
                        assert_entry(&reply, &key, e, metadata == &Some(true));
                    }
                    None => {
                        assert_error(&reply, 404, "not found", &what);
                        assert_eq!(reply.field("key"), &json!(key), "{what}");
                    }
                }
            }
        }
        KvReq::Delete { key, enc, cas } => {
            let key = key.name();
            model.touched.insert(key.clone());
            let expected = cas.map(|p| model.resolve(p, &key));
            let query = expected.map_or(String::new(), |e| format!("?cas={e}"));
            let uri = format!("/kv/{}{query}", encode_key(&key, *enc));
            let reply = client.send_json(Method::DELETE, &uri, String::new());
            let what = format!("DELETE {uri}");
            if !key_ok(&key) || expected == Some(0) {
                return assert_error(&reply, 400, "bad request", &what);
            }
            let holds = match expected {
                None => model.map.contains_key(&key),
                Some(e) => model.index_ok(&key, e),
            };
            if holds {
                assert_eq!(reply.status, 200, "{what}");
                let index = model.next();
                let want = json!({"message": "key deleted", "key": key, "modify_index": index});
                assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
                model.map.remove(&key);
            } else {
                match expected {
                    None => {
                        assert_error(&reply, 404, "not found", &what);
                        assert_eq!(reply.field("key"), &json!(key), "{what}");
                    }
                    Some(e) => assert_index_failure(&reply, model, &key, e, &what),
                }
            }
        }
        KvReq::List { prefix, slash } => {
            let base = if *slash { "/kv/" } else { "/kv" };
            let prefix = prefix.as_ref().map(FuzzKey::name);
            let uri = match &prefix {
                Some(p) => format!("{base}?prefix={}", encode_query(p)),
                None => base.to_string(),
            };
            let reply = client.send_json(Method::GET, &uri, String::new());
            assert_eq!(reply.status, 200, "GET {uri}");
            let keys: Vec<&String> = model
                .map
                .keys()
                .filter(|k| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
                .collect();
            assert_eq!(reply.json, Some(json!(keys)), "GET {uri}");
        }
    }
}

/// A failed index condition of a single-key request: 404 when the key is absent, else 409
/// naming the expected and the current index.
fn assert_index_failure(reply: &Reply, model: &Model, key: &str, expected: u64, what: &str) {
    match model.map.get(key) {
        None => {
            assert_error(reply, 404, "not found", what);
            assert_eq!(reply.field("key"), &json!(key), "{what}");
        }
        Some(e) => {
            assert_error(reply, 409, "CAS conflict", what);
            assert_eq!(reply.field("key"), &json!(key), "{what}");
            assert_eq!(reply.field("expected"), &json!(expected), "{what}");
            assert_eq!(reply.field("current"), &json!(e.modify_index), "{what}");
        }
    }
}

/// The first key named twice, if any.
fn repeated<'a>(keys: impl IntoIterator<Item = &'a String>) -> bool {
    let mut seen = BTreeSet::new();
    keys.into_iter().any(|k| !seen.insert(k))
}

/// `check_keys` of the server: 1..=1000 keys, each valid.
fn keys_ok<'a>(keys: impl ExactSizeIterator<Item = &'a String>) -> bool {
    let n = keys.len();
    let mut all = true;
    for k in keys {
        all &= key_ok(k);
    }
    (1..=caskv::defaults::MAX_BATCH).contains(&n) && all
}

/// The expected status of a batch whose conditions failed: 404 when every failing key is absent
/// (and was not expected absent), else 409.
fn conflict_status(failing: &[(String, Option<u64>, Option<u64>)]) -> u16 {
    if failing
        .iter()
        .all(|(_, expected, current)| current.is_none() && *expected != Some(0))
    {
        404
    } else {
        409
    }
}

/// Checks a failed batch's `conflicts` (key order) against `failing` (key, expected, current).
fn assert_conflicts(reply: &Reply, failing: &[(String, Option<u64>, Option<u64>)], what: &str) {
    let status = conflict_status(failing);
    let error = if status == 404 {
        "not found"
    } else {
        "CAS conflict"
    };
    assert_error(reply, status, error, what);
    let want: Vec<Value> = failing
        .iter()
        .map(|(k, e, c)| json!({"key": k, "expected": e, "current": c}))
        .collect();
    assert_eq!(reply.field("conflicts"), &json!(want), "{what}");
}

fn batch(client: &Client, model: &mut Model, r: &BatchReq) {
    let names =
        |keys: &[FuzzKey]| -> Vec<String> { keys.iter().take(8).map(FuzzKey::name).collect() };
    match r {
        BatchReq::Get(keys) => {
            let keys = names(keys);
            model.touched.extend(keys.iter().cloned());
            let body = json!({ "keys": keys }).to_string();
            let reply = client.send_json(Method::POST, "/batch/kv/get", body);
            let what = format!("batch get {keys:?}");
            if !keys_ok(keys.iter()) {
                return assert_error(&reply, 400, "bad request", &what);
            }
            assert_eq!(reply.status, 200, "{what}");
            let mut found = serde_json::Map::new();
            let mut not_found: Vec<&String> = Vec::new();
            for k in &keys {
                match model.map.get(k) {
                    Some(e) => {
                        found.insert(
                            k.clone(),
                            json!({"value": e.value, "modify_index": e.modify_index,
                                   "create_index": e.create_index, "flags": e.flags}),
                        );
                    }
                    None if !not_found.contains(&k) => not_found.push(k),
                    None => {}
                }
            }
            let want = json!({"found": found, "not_found": not_found});
            assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
        }
        BatchReq::Set(items) => {
            let items: Vec<(String, String)> = items
                .iter()
                .take(8)
                .map(|(k, v)| (k.name(), v.clone()))
                .collect();
            model.touched.extend(items.iter().map(|(k, _)| k.clone()));
            let body = object_text([(
                "items".to_string(),
                object_text(items.iter().map(|(k, v)| (k.clone(), json!(v).to_string()))),
            )]);
            let reply = client.send_json(Method::POST, "/batch/kv/set", body);
            let what = format!("batch set {items:?}");
            if repeated(items.iter().map(|(k, _)| k)) || !keys_ok(items.iter().map(|(k, _)| k)) {
                return assert_error(&reply, 400, "bad request", &what);
            }
            assert_eq!(reply.status, 200, "{what}");
            let index = model.next();
            for (k, v) in &items {
                model.write(k, v.clone(), None, index);
            }
            let mut keys: Vec<&String> = items.iter().map(|(k, _)| k).collect();
            keys.sort();
            let want = json!({"message": "keys set", "count": keys.len(), "keys": keys, "modify_index": index});
            assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
        }
        BatchReq::Delete(keys) => {
            let keys = names(keys);
            model.touched.extend(keys.iter().cloned());
            let body = json!({ "keys": keys }).to_string();
            let reply = client.send_json(Method::POST, "/batch/kv/delete", body);
            let what = format!("batch delete {keys:?}");
            if !keys_ok(keys.iter()) || repeated(&keys) {
                return assert_error(&reply, 400, "bad request", &what);
            }
            let mut failing: Vec<(String, Option<u64>, Option<u64>)> = keys
                .iter()
                .filter(|k| !model.map.contains_key(*k))
                .map(|k| (k.clone(), None, None))
                .collect();
            failing.sort();
            if !failing.is_empty() {
                return assert_conflicts(&reply, &failing, &what);
            }
            assert_eq!(reply.status, 200, "{what}");
            let index = model.next();
            for k in &keys {
                model.map.remove(k);
            }
            let mut sorted = keys.clone();
            sorted.sort();
            let want = json!({"message": "keys deleted", "count": sorted.len(), "keys": sorted, "modify_index": index});
            assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
        }
        BatchReq::SetCas { items, expected } => {
            let items: Vec<(String, String)> = items
                .iter()
                .take(8)
                .map(|(k, v)| (k.name(), v.clone()))
                .collect();
            let expected: Vec<(String, u64)> = expected
                .iter()
                .take(8)
                .map(|(k, p)| {
                    let k = k.name();
                    let e = model.resolve(*p, &k);
                    (k, e)
                })
                .collect();
            model.touched.extend(items.iter().map(|(k, _)| k.clone()));
            let body = object_text([
                (
                    "items".to_string(),
                    object_text(items.iter().map(|(k, v)| (k.clone(), json!(v).to_string()))),
                ),
                (
                    "expected_indices".to_string(),
                    object_text(expected.iter().map(|(k, e)| (k.clone(), e.to_string()))),
                ),
            ]);
            let reply = client.send_json(Method::POST, "/batch/kv/set-cas", body);
            let what = format!("batch set-cas {items:?} expected {expected:?}");
            let expected_of: BTreeMap<&String, u64> =
                expected.iter().map(|(k, e)| (k, *e)).collect();
            let item_keys: BTreeSet<&String> = items.iter().map(|(k, _)| k).collect();
            let bad = repeated(items.iter().map(|(k, _)| k))
                || repeated(expected.iter().map(|(k, _)| k))
                || !keys_ok(items.iter().map(|(k, _)| k))
                || item_keys.iter().any(|k| !expected_of.contains_key(*k))
                || expected_of.keys().any(|k| !item_keys.contains(*k));
            if bad {
                return assert_error(&reply, 400, "bad request", &what);
            }
            let mut failing: Vec<(String, Option<u64>, Option<u64>)> = items
                .iter()
                .filter(|(k, _)| !model.index_ok(k, expected_of[k]))
                .map(|(k, _)| {
                    let current = model.map.get(k).map(|e| e.modify_index);
                    (k.clone(), Some(expected_of[k]), current)
                })
                .collect();
            failing.sort();
            if !failing.is_empty() {
                return assert_conflicts(&reply, &failing, &what);
            }
            assert_eq!(reply.status, 200, "{what}");
            let index = model.next();
            for (k, v) in &items {
                model.write(k, v.clone(), None, index);
            }
            let new_indices: serde_json::Map<String, Value> = items
                .iter()
                .map(|(k, _)| (k.clone(), json!(index)))
                .collect();
            let want =
                json!({"message": "keys set", "new_indices": new_indices, "count": items.len()});
            assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
        }
        BatchReq::DeleteCas { keys, expected } => {
            let keys = names(keys);
            let expected: Vec<(String, u64)> = expected
                .iter()
                .take(8)
                .map(|(k, p)| {
                    let k = k.name();
                    let e = model.resolve(*p, &k);
                    (k, e)
                })
                .collect();
            model.touched.extend(keys.iter().cloned());
            let body = object_text([
                ("keys".to_string(), json!(keys).to_string()),
                (
                    "expected_indices".to_string(),
                    object_text(expected.iter().map(|(k, e)| (k.clone(), e.to_string()))),
                ),
            ]);
            let reply = client.send_json(Method::POST, "/batch/kv/delete-cas", body);
            let what = format!("batch delete-cas {keys:?} expected {expected:?}");
            let expected_of: BTreeMap<&String, u64> =
                expected.iter().map(|(k, e)| (k, *e)).collect();
            let bad = repeated(expected.iter().map(|(k, _)| k))
                || !keys_ok(keys.iter())
                || keys.iter().any(|k| !expected_of.contains_key(k))
                || repeated(&keys)
                || keys.iter().any(|k| expected_of[k] == 0);
            if bad {
                return assert_error(&reply, 400, "bad request", &what);
            }
            let mut failing: Vec<(String, Option<u64>, Option<u64>)> = keys
                .iter()
                .filter(|k| !model.index_ok(k, expected_of[k]))
                .map(|k| {
                    let current = model.map.get(k).map(|e| e.modify_index);
                    (k.clone(), Some(expected_of[k]), current)
                })
                .collect();
            failing.sort();
            if !failing.is_empty() {
                return assert_conflicts(&reply, &failing, &what);
            }
            assert_eq!(reply.status, 200, "{what}");
            let index = model.next();
            for k in &keys {
                model.map.remove(k);
            }
            let mut sorted = keys.clone();
            sorted.sort();
            let want = json!({"message": "keys deleted", "count": sorted.len(), "keys": sorted, "modify_index": index});
            assert_eq!(reply.json.as_ref(), Some(&want), "{what}");
        }
    }
}
