//! The Consul-compatible face: `/v1/kv`, `/v1/txn`, `/v1/session`, the agent, catalog and health
//! service endpoints, and `/v1/status`, mapped onto the same store, registry and index as the
//! native API (SPEC §3), so that an unchanged Consul client works against `caskv serve`.
//!
//! Consul's HTTP API documentation is the contract: field names, status codes and bodies are
//! Consul's (a failed CAS is `200 false`, not the native 409; errors are plain text). Every
//! response of a `/v1/` handler carries `X-Consul-Index` (never 0), `X-Consul-KnownLeader: true`
//! and `X-Consul-LastContact: 0`, as a single node that is always its own leader; the refusals
//! of the layers in front of every route (an unknown token's 401, a body over the limit or too
//! slow) keep the native API's JSON and headers.
//!
//! What is Consul's and not the native API's lives here: sessions and the locks they hold.
//! Session records are keys of the KV store in a namespace no client can name (keys starting
//! with NUL, which every key check refuses), so that a lock and the session it checks commit in
//! one batch at one index, and persist and recover with the store. Listings and the change feed
//! leave that namespace out ([`is_internal`]).

mod agent;
mod kv;
mod session;
mod txn;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use axum::Router;

use super::metrics::{Op as Metric, Status};
use super::AppState;

pub(crate) use agent::keep as keep_agent_services;
pub(crate) use session::{reap as reap_sessions, Sessions};

/// The node name this server answers with (a single node is its own leader and only peer).
pub(crate) const NODE: &str = "caskv";
/// The address `/v1/status/leader` and `/v1/status/peers` answer with (Consul's server RPC
/// port; nothing listens there: clients only compare it).
const PEER: &str = "127.0.0.1:8300";

/// The first character of every internal key (session records). No client key holds a NUL
/// ([`Limits::check_key`](super::Limits::check_key) refuses it), so no client can read or write
/// one.
pub(crate) const INTERNAL: char = '\0';

/// Whether `key` is an internal record, which listings, counts and the change feed leave out.
#[inline]
pub(crate) fn is_internal(key: &str) -> bool {
    key.starts_with(INTERNAL)
}

/// `X-Consul-Index`: the index of the state a response shows.
pub(crate) const CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
const KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
const LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");

/// The `/v1/` routes, with the headers every Consul response carries.
pub(super) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/kv",
            get(kv::get_all).put(kv::missing_key).delete(kv::delete_all),
        )
        .route(
            "/v1/kv/",
            get(kv::get_all).put(kv::missing_key).delete(kv::delete_all),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(txn::txn))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/list", get(session::list))
        .route("/v1/session/node/{node}", get(session::list_node))
        .route("/v1/status/leader", get(leader))
        .route("/v1/status/peers", get(peers))
        .merge(agent::routes())
        .route("/v1", any(unsupported))
        .route("/v1/", any(unsupported))
        .route("/v1/{*rest}", any(unsupported))
        .layer(middleware::from_fn_with_state(state, consul_headers))
}

/// Adds the headers every Consul response carries; `X-Consul-Index` defaults to the last index
/// handed out where the handler set none.
async fn consul_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    if !headers.contains_key(&CONSUL_INDEX) {
        let at = state.store.global_index().high_water();
        headers.insert(CONSUL_INDEX, HeaderValue::from(at.max(1)));
    }
    leader_headers(headers);
    response
}

/// `X-Consul-KnownLeader: true` and `X-Consul-LastContact: 0`.
pub(crate) fn leader_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(KNOWN_LEADER, HeaderValue::from_static("true"));
    headers.insert(LAST_CONTACT, HeaderValue::from_static("0"));
}

/// `GET /v1/kv/{key}` without a query, for the hot path (`app.rs`): the body (`None`: a 404,
/// which has none) and the index to answer with, as the router's handler answers.
pub(crate) fn plain_read(state: &AppState, key: &str) -> (Option<Vec<u8>>, u64) {
    match state.store.get(key) {
        Some(e) => {
            let mut body = Vec::with_capacity(160 + key.len() + e.value.len() * 4 / 3);
            // Writing into a `Vec` cannot fail.
            let _ = serde_json::to_writer(&mut body, &[kv::DirEntry::of(key, &e, true)]);
            (Some(body), e.modify_index)
        }
        None => (None, state.store.state(key).index),
    }
}

/// A Consul error: its status and plain-text body, or a native error response passed through
/// as it is (an ACL refusal with its audit note, a storage failure, a bound's 400 or 413: Consul's
/// clients map these by status).
#[derive(Debug)]
pub(crate) enum Failure {
    /// Consul's plain-text error.
    Text(StatusCode, String),
    /// The native API's error response.
    Native(super::ApiError),
}

impl Failure {
    pub(crate) fn bad_request(text: impl Into<String>) -> Self {
        Failure::Text(StatusCode::BAD_REQUEST, text.into())
    }

    pub(crate) fn not_found(text: impl Into<String>) -> Self {
        Failure::Text(StatusCode::NOT_FOUND, text.into())
    }

    pub(crate) fn internal(text: impl Into<String>) -> Self {
        Failure::Text(StatusCode::INTERNAL_SERVER_ERROR, text.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Text(status, text) => (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text,
            )
                .into_response(),
            Failure::Native(e) => e.into_response(),
        }
    }
}

impl From<super::acl::Denied> for Failure {
    fn from(denied: super::acl::Denied) -> Self {
        Failure::Native(denied.into())
    }
}

impl From<super::ApiError> for Failure {
    fn from(e: super::ApiError) -> Self {
        Failure::Native(e)
    }
}

/// A write through the write path, waited for: `Some(index)` once acknowledged, `None` when
/// its condition did not hold (a CAS that lost, an absent key), a failure otherwise (`noun`
/// names what the error is about: "key" or "service"). Every Consul write ends here.
pub(crate) async fn settle<V>(
    write: Result<crate::persist::Pending<u64>, crate::Error<String, V>>,
    noun: &'static str,
) -> Result<Option<u64>, Failure> {
    match write {
        Ok(pending) => pending
            .await
            .map(Some)
            .map_err(|e| Failure::Native(super::ApiError::Storage(e.to_string()))),
        Err(e) if e.is_conflict() || e.is_not_found() => Ok(None),
        Err(e) => Err(Failure::Native(super::ApiError::from_store(e, noun))),
    }
}

/// Commits `ops` in batches of at most `--max-batch` keys; `false` when one of them did not
/// hold its conditions (the batches before it stay committed: callers scan again and retry).
pub(crate) async fn commit_in_batches(
    state: &AppState,
    ops: Vec<crate::Op<String, super::KvValue>>,
) -> Result<bool, Failure> {
    for chunk in ops.chunks(state.limits.max_batch.max(1)) {
        if settle(state.db().batch(chunk.to_vec()), "key")
            .await?
            .is_none()
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A response with `X-Consul-Index: index` (at least 1).
pub(crate) fn at_index(mut response: Response, index: u64) -> Response {
    response
        .headers_mut()
        .insert(CONSUL_INDEX, HeaderValue::from(index.max(1)));
    response
}

/// JSON `body` as Consul writes it.
pub(crate) fn json<T: serde::Serialize>(body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            [(header::CONTENT_TYPE, "application/json")],
            axum::body::Bytes::from(bytes),
        )
            .into_response(),
        Err(e) => Failure::internal(format!("could not encode the response: {e}")).into_response(),
    }
}

/// Runs a Consul handler, counts it under `op` (a `200 false` counts as a CAS conflict), and
/// turns its failure into Consul's plain-text response.
pub(crate) async fn metered(
    state: &AppState,
    op: Metric,
    work: impl std::future::Future<Output = Result<Response, Failure>>,
) -> Response {
    let start = std::time::Instant::now();
    let response = match work.await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    let status = match response.status().as_u16() {
        200..=299 if response.extensions().get::<Refused>().is_some() => Status::CasConflict,
        200..=299 => Status::Success,
        404 => Status::NotFound,
        409 => Status::CasConflict,
        _ => Status::Error,
    };
    state.metrics.record(op, status, start.elapsed());
    response
}

/// Marks a `200 false` answer (a CAS, lock or release that did not apply) for the metrics.
#[derive(Clone, Copy)]
pub(crate) struct Refused;

/// `true` or `false`, as Consul answers a write.
pub(crate) fn verdict(applied: bool) -> Response {
    let mut response = json(&applied);
    if !applied {
        response.extensions_mut().insert(Refused);
    }
    response
}

/// Whether a presence flag (`?recurse`, `?keys`, `?raw`, `?passing`) is in the query: Consul
/// reads these by presence, whatever their value (`recurse=`, `recurse=1`, `recurse=true`).
pub(crate) fn present(params: &super::extract::Params, name: &str) -> bool {
    params.0.contains_key(name)
}

/// Parses a JSON object the way Consul's Go decoder matches struct fields: whatever the case of
/// its member names (py-consul sends `{"name", "ttl", "lockdelay"}`, the Go client `{"Name",
/// "TTL", "LockDelay"}`). The top level's names are lowercased before `T`, whose fields are
/// named in lowercase, reads them; nested objects (user maps such as `Meta`) keep their names.
pub(crate) fn from_json_any_case<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)?;
    let value = match value {
        serde_json::Value::Object(members) => serde_json::Value::Object(
            members
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        ),
        other => other,
    };
    serde_json::from_value(value)
}

/// `GET /v1/status/leader`: this node.
async fn leader() -> Response {
    json(&PEER)
}

/// `GET /v1/status/peers`: this node alone.
async fn peers() -> Response {
    json(&[PEER])
}

/// Anything else under `/v1/`: a 404 naming the endpoint as not supported.
async fn unsupported(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    Failure::not_found(format!(
        "caskv does not support the Consul endpoint {method} {}; see README \"Using Consul clients\" for what it serves",
        uri.path()
    ))
    .into_response()
}
