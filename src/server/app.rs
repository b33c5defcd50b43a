//! [`App`]: what every connection serves — the hot KV read answered by hand, everything else
//! through the axum [`router`](super::router).
//!
//! # Why a hand-written hot path
//! `GET /kv/{key}` is most of what a cache's clients send. Through axum it pays for the router's
//! per-request service clone and match, four middleware layers (identify, the `Content-Length`
//! check, the body buffer, the body limit), an extractor per argument and a `serde_json::Value`
//! tree per answer: about half of what the request costs the server beyond hyper itself
//! (issue #14, `BENCHMARKS.md`). Here the same request is matched on its method and path once,
//! looked up with a borrowed read (`Store::get_with`, no clone of the value) and written
//! straight into the response's bytes. Everything the hot path does not take — a query other
//! than `metadata=`, a percent-escaped path, a body, an ACL file, any other route — goes to the
//! router unchanged, so every rule (limits, 401/403, the SPEC's bodies) has one home.
//!
//! The hot path takes three requests: `GET /kv/{key}` (`?metadata=`), `PUT /kv/{key}` (its
//! body read under the router's limit and deadline, then the router's own write; a body that
//! does not parse goes to the router, which says what is wrong with it), and Consul's
//! `GET /v1/kv/{key}` without a query. What it answers is byte-for-byte what the router would
//! (`tests/http_api.rs` and `tests/consul_compat.rs` check both on a real listener), with the
//! same metrics and the same index headers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::service::TowerToHyperService;

use super::error::ApiError;
use super::kv::{put_value_bytes, write, PutBody};
use super::metrics::{Op as Metric, Status};
use super::watch::INDEX_HEADER;
use super::{consul, read_whole, router, AppState};

/// The service of every connection: see the module docs.
///
/// # Example
/// ```
/// use caskv::server::{App, AppState, Limits};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let state = AppState::new(Limits::default(), Duration::from_secs(30));
/// let app = App::new(state, Duration::from_secs(30));
/// let get = axum::http::Request::get("/kv/missing")
///     .body(axum::body::Body::empty())
///     .unwrap();
/// // Taken by the hot path: a 404 with the key's index, as the router would answer.
/// let answer = app.handle(get).await;
/// assert_eq!(answer.status(), 404);
/// assert_eq!(answer.headers()["x-caskv-index"], "1");
/// # }
/// ```
#[derive(Clone)]
pub struct App {
    state: AppState,
    router: TowerToHyperService<Router>,
    /// The deadline of a request body (the router's own is the same).
    body_timeout: Duration,
}

impl App {
    /// The whole API over `state`, with the body deadline `body_timeout`.
    pub fn new(state: AppState, body_timeout: Duration) -> App {
        App {
            router: TowerToHyperService::new(router(state.clone(), body_timeout)),
            state,
            body_timeout,
        }
    }

    /// Answers one request (what a connection does with each one it reads; tests and fuzz
    /// targets call it directly).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        match hyper::service::Service::call(self, req).await {
            Ok(response) => response.map(|body| match body {
                AppBody::Routed(body) => body,
                written => Body::new(written),
            }),
            Err(never) => match never {},
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for App
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<B>) -> Answer {
        if let Some(response) = hot_get(&self.state, &req) {
            return Answer::Ready(Some(response));
        }
        if let Some(response) = hot_consul_get(&self.state, &req) {
            return Answer::Ready(Some(response));
        }
        if let Some(key) = hot_put_key(&self.state, &req) {
            let (state, router, deadline) =
                (self.state.clone(), self.router.clone(), self.body_timeout);
            return Answer::Routed(Box::pin(async move {
                let (parts, body) = req.into_parts();
                let bytes = match read_whole(body, state.limits.max_body_bytes, deadline).await {
                    Ok(bytes) => bytes,
                    Err(e) => return Ok(routed(e.into_response())),
                };
                match serde_json::from_slice::<PutBody>(&bytes) {
                    Ok(body) => {
                        // What `metered` does for the router's handlers.
                        let start = Instant::now();
                        let result = write(&state, &key, body).await;
                        let status = result
                            .as_ref()
                            .map_or_else(ApiError::status, |_| Status::Success);
                        state.metrics.record(Metric::KvSet, status, start.elapsed());
                        Ok(match result {
                            Ok(index) => key_set(&key, index),
                            Err(e) => routed(e.into_response()),
                        })
                    }
                    // Whatever is wrong with it, the router says so in its own words.
                    Err(_) => router
                        .call(Request::from_parts(parts, Body::from(bytes)))
                        .await
                        .map(routed),
                }
            }));
        }
        let answer = self.router.call(req.map(Body::new));
        Answer::Routed(Box::pin(async move { answer.await.map(routed) }))
    }
}

/// A router's response as an [`App`] response.
fn routed(response: Response<Body>) -> Response<AppBody> {
    response.map(AppBody::Routed)
}

/// The future of [`App`]'s answer: ready at once from the hot path, or the router's.
pub enum Answer {
    /// Answered by the hot path.
    Ready(Option<Response<AppBody>>),
    /// Answered by the router (or by the hot write, which waits for its acknowledgement).
    Routed(Pin<Box<dyn Future<Output = Result<Response<AppBody>, Infallible>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<AppBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Ready(response) => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| routed(StatusCode::INTERNAL_SERVER_ERROR.into_response())))),
            Answer::Routed(routed) => routed.as_mut().poll(cx),
        }
    }
}

/// The body of an [`App`] answer: bytes the hot path wrote (one frame, its length known, no
/// box), or the router's body.
pub enum AppBody {
    /// Written by the hot path; taken by the first poll.
    Written(Option<bytes::Bytes>),
    /// The router's.
    Routed(Body),
}

impl hyper::body::Body for AppBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        match self.get_mut() {
            AppBody::Written(bytes) => {
                Poll::Ready(bytes.take().map(|b| Ok(hyper::body::Frame::data(b))))
            }
            AppBody::Routed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Written(bytes) => bytes.is_none(),
            AppBody::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            AppBody::Written(bytes) => {
                hyper::body::SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            AppBody::Routed(body) => body.size_hint(),
        }
    }
}

/// A JSON answer the hot path wrote.
fn written(json: Vec<u8>, index: u64) -> Response<AppBody> {
    let mut response = Response::new(AppBody::Written(
        (!json.is_empty()).then(|| bytes::Bytes::from(json)),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if index != 0 {
        headers.insert(INDEX_HEADER, HeaderValue::from(index));
    }
    response
}

/// `{"key","message":"key set","modify_index"}`: the answer to a `PUT /kv/{key}`, as the
/// router's handler writes it.
fn key_set(key: &str, index: u64) -> Response<AppBody> {
    let mut json = Vec::with_capacity(64 + key.len());
    json.extend_from_slice(b"{\"key\":");
    push_str(&mut json, key);
    json.extend_from_slice(b",\"message\":\"key set\",\"modify_index\":");
    push_u64(&mut json, index);
    json.push(b'}');
    written(json, 0)
}

/// The key of a `PUT /kv/{key}` the hot path takes: no query, no ACL file, no percent escapes,
/// and a declared `Content-Length` within the body limit (anything else, the router checks).
fn hot_put_key<B>(state: &AppState, req: &Request<B>) -> Option<String> {
    if req.method() != Method::PUT || state.acl.is_some() || req.uri().query().is_some() {
        return None;
    }
    let key = plain_key(state, req.uri().path())?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()?;
    (declared <= state.limits.max_body_bytes).then(|| key.to_string())
}

/// Whether `req` is a read the hot path may take: a `GET` without a body, on a server without an
/// ACL file (the router's `identify` layer then has nothing to do).
fn plain_get<B: hyper::body::Body>(state: &AppState, req: &Request<B>) -> bool {
    req.method() == Method::GET && state.acl.is_none() && req.body().is_end_stream()
}

/// The key of a `/kv/{key}` path, when it needs no decoding and is within the key bound.
fn plain_key<'a>(state: &AppState, path: &'a str) -> Option<&'a str> {
    let key = path.strip_prefix("/kv/")?;
    (!key.is_empty() && !key.contains('%') && key.len() <= state.limits.max_key_bytes)
        .then_some(key)
}

/// `GET /v1/kv/{key}` with no query, no body, no ACL file and no percent escapes: Consul's read
/// of one key, answered as the router's Consul handler answers it (`consul::plain_read`).
fn hot_consul_get<B: hyper::body::Body>(
    state: &AppState,
    req: &Request<B>,
) -> Option<Response<AppBody>> {
    if !plain_get(state, req) || req.uri().query().is_some() {
        return None;
    }
    let key = plain_key(state, req.uri().path().strip_prefix("/v1")?)?;
    let start = Instant::now();
    let (body, index) = consul::plain_read(state, key);
    let (mut response, status) = match body {
        Some(json) => (written(json, 0), Status::Success),
        None => {
            let mut response = Response::new(AppBody::Written(None));
            *response.status_mut() = StatusCode::NOT_FOUND;
            (response, Status::NotFound)
        }
    };
    let headers = response.headers_mut();
    headers.insert(consul::CONSUL_INDEX, HeaderValue::from(index.max(1)));
    consul::leader_headers(headers);
    state
        .metrics
        .record(Metric::ConsulKvGet, status, start.elapsed());
    Some(response)
}

/// `GET /kv/{key}` (`?metadata=true|false|1|0`) on a server without an ACL file, with no body
/// and no percent escapes in the path; `None` for anything else (the router takes it).
fn hot_get<B: hyper::body::Body>(state: &AppState, req: &Request<B>) -> Option<Response<AppBody>> {
    if !plain_get(state, req) {
        return None;
    }
    let uri = req.uri();
    let key = plain_key(state, uri.path())?;
    let metadata = match uri.query() {
        None => false,
        Some("metadata=true" | "metadata=1" | "metadata") => true,
        Some("metadata=false" | "metadata=0") => false,
        Some(_) => return None,
    };
    let start = Instant::now();
    let mut body = Vec::with_capacity(128);
    let found = state.store.get_with(key, |e| {
        body.extend_from_slice(b"{");
        if metadata {
            body.extend_from_slice(b"\"create_index\":");
            push_u64(&mut body, e.create_index);
            if let Some(at) = e.expires_at() {
                body.extend_from_slice(b",\"expires_at\":");
                push_str(&mut body, &super::kv::rfc3339_millis(at));
            }
            body.extend_from_slice(b",\"flags\":");
            push_u64(&mut body, e.flags);
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(b"\"key\":");
        push_str(&mut body, key);
        if metadata {
            body.extend_from_slice(b",\"modify_index\":");
            push_u64(&mut body, e.modify_index);
        }
        put_value_bytes(&mut body, e.value);
        body.extend_from_slice(b"}");
        e.modify_index
    });
    let (response, status) = match found {
        Some(index) => (written(body, index.max(1)), Status::Success),
        None => {
            let index = state.store.state(key).index;
            let mut response = ApiError::KeyNotFound(key.to_string()).into_response();
            response
                .headers_mut()
                .insert(INDEX_HEADER, HeaderValue::from(index.max(1)));
            (routed(response), Status::NotFound)
        }
    };
    state.metrics.record(Metric::KvGet, status, start.elapsed());
    Some(response)
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "{n}");
}

/// `text` as a JSON string (escaped as serde_json escapes it).
pub(crate) fn push_str(out: &mut Vec<u8>, text: &str) {
    // Writing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Limits;

    fn get(path: &str) -> Request<http_body_util::Empty<bytes::Bytes>> {
        Request::get(path)
            .body(http_body_util::Empty::new())
            .expect("a request")
    }

    #[test]
    fn the_hot_path_takes_plain_reads_and_leaves_the_rest_to_the_router() {
        let state = AppState::new(Limits::default(), Duration::from_secs(30));
        state.store.set("k".into(), "v".into());
        for taken in [
            "/kv/k",
            "/kv/k?metadata=true",
            "/kv/k?metadata=0",
            "/kv/missing",
        ] {
            assert!(hot_get(&state, &get(taken)).is_some(), "{taken}");
        }
        for left in [
            "/kv/k?recurse=true",
            "/kv/k?index=3",
            "/kv/a%20b",
            "/kv/",
            "/kv",
            "/v1/kv/k",
            "/services/k",
        ] {
            assert!(hot_get(&state, &get(left)).is_none(), "{left}");
        }
        let with_body = Request::get("/kv/k")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .expect("a request");
        assert!(hot_get(&state, &with_body).is_none());
        assert!(hot_consul_get(&state, &get("/v1/kv/k")).is_some());
        assert!(hot_consul_get(&state, &get("/v1/kv/missing")).is_some());
        for left in [
            "/v1/kv/k?raw",
            "/v1/kv/k?recurse",
            "/v1/kv/",
            "/kv/k",
            "/v1/kv/a%2Fb",
        ] {
            assert!(hot_consul_get(&state, &get(left)).is_none(), "{left}");
        }
        let put = Request::put("/kv/k")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a request");
        assert!(hot_get(&state, &put).is_none());
    }
}
