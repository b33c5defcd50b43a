//! `caskv serve`: the HTTP API of SPEC §3 on hyper/tokio.
//!
//! [`router`] builds the whole API once (tests drive it on a real listener); [`serve`] runs the
//! connection loop: a bound on concurrent connections, a header-read timeout (hyper's, with a
//! timer installed), a body timeout, and graceful shutdown that lets in-flight requests finish.

pub mod acl;
mod app;
mod consul;
mod error;
mod extract;
mod kv;
mod limits;
pub mod metrics;
mod services;
pub mod tls;
mod value;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use acl::Acl;
pub use app::App;
pub use error::ApiError;
pub use limits::Limits;
use metrics::{Metrics, Op as Metric, Status};
pub use value::{KvValue, SessionId};

use crate::persist::{FsyncPolicy, Options, Pending, PersistError};
use crate::{defaults, Db, Error, Registry, Store};

/// Everything a handler can reach. Cloning it (axum does, per request) is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    /// The KV store, for reads (writes go through [`AppState::db`]).
    pub store: Arc<Store<String, KvValue>>,
    /// The service registry (sharing the store's global index), for reads and heartbeats.
    pub registry: Arc<Registry>,
    /// Operation counters and latency histograms.
    pub metrics: Arc<Metrics>,
    /// Size bounds.
    pub limits: Limits,
    /// The one write path, in memory or on disk.
    db: Db<String, KvValue>,
    /// The access rules and the file they came from (`None`: every request may do anything).
    acl: Option<AclSource>,
    /// Set when the server begins to shut down: blocking reads answer, feed streams end.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Consul sessions' deadlines and lock-delays (their records live in the store).
    pub(crate) sessions: consul::Sessions,
}

/// An ACL file and the table last read from it.
struct AclSource {
    path: std::path::PathBuf,
    table: arc_swap::ArcSwap<Acl>,
}

impl AppState {
    /// A fresh in-memory state with these bounds and service TTL.
    pub fn new(limits: Limits, service_ttl: Duration) -> Self {
        AppState::serving(Db::memory(db_options(&limits, service_ttl)), limits)
    }

    /// A persistent state: opens (and recovers) the data directory `dir`.
    pub fn open(
        dir: &std::path::Path,
        fsync: FsyncPolicy,
        limits: Limits,
        service_ttl: Duration,
    ) -> Result<Self, PersistError> {
        limits.check_loggable()?;
        let db = Db::open(dir, db_options(&limits, service_ttl).fsync(fsync))?;
        Ok(AppState::serving(db, limits))
    }

    /// A state serving `db`, which [`db_options`] opened (services on).
    fn serving(db: Db<String, KvValue>, limits: Limits) -> Self {
        let (store, registry) = db.handles();
        let registry = registry.expect("the server's Db is opened with services on (db_options)");
        let sessions = consul::Sessions::load(&store, limits.min_session_ttl);
        AppState(Arc::new(Shared {
            store,
            registry,
            metrics: Arc::new(Metrics::new()),
            limits,
            db,
            acl: None,
            closing: tokio::sync::watch::Sender::new(false),
            sessions,
        }))
    }

    /// This state with access control: the rules of the ACL file at `path` (see [`acl`]),
    /// which [`AppState::reload_acl`] reads again. Call it before the state is shared.
    pub fn with_acl_file(self, path: &std::path::Path) -> Result<Self, String> {
        let acl = Acl::load(path)?;
        let mut shared = Arc::try_unwrap(self.0)
            .map_err(|_| "the ACL file must be set before the state is shared".to_string())?;
        shared.acl = Some(AclSource {
            path: path.to_path_buf(),
            table: arc_swap::ArcSwap::from_pointee(acl),
        });
        Ok(AppState(Arc::new(shared)))
    }

    /// Reads the ACL file again and swaps its rules in whole: requests already past their
    /// check finish under the old rules, the next ones get the new. A file that does not read
    /// or parse leaves the old rules in place. Returns how many tokens the new rules name.
    pub fn reload_acl(&self) -> Result<usize, String> {
        let Some(source) = &self.acl else {
            return Err("the server runs without an ACL file".into());
        };
        match Acl::load(&source.path) {
            Ok(acl) => {
                let tokens = acl.len();
                source.table.store(Arc::new(acl));
                tracing::info!(tokens, path = %source.path.display(), "ACL file reloaded");
                Ok(tokens)
            }
            Err(e) => {
                tracing::error!(error = %e, "ACL reload failed; the previous rules stay");
                Err(e)
            }
        }
    }

    /// Whether requests are checked against an ACL file.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// The write path every handler writes through.
    pub fn db(&self) -> &Db<String, KvValue> {
        &self.db
    }
}

/// The server's database: the bounds' batch size, and services on.
fn db_options(limits: &Limits, service_ttl: Duration) -> Options {
    let options = Options::default()
        .max_batch(limits.max_batch)
        .services(true)
        .service_ttl(service_ttl)
        .history(limits.history);
    match (limits.max_memory, limits.max_entries) {
        (Some(bytes), _) => options.max_memory(bytes),
        (None, Some(n)) => options.max_entries(n),
        (None, None) => options,
    }
}

/// Waits for a write made through the write path to be acknowledged (durable under the fsync
/// policy; at once in memory) and maps its errors for `noun` ("key" or "service"): what every
/// writing handler does after it built its request.
pub(crate) async fn acknowledged<V>(
    write: Result<Pending<u64>, Error<String, V>>,
    noun: &'static str,
) -> Result<u64, ApiError> {
    write
        .map_err(|e| ApiError::from_store(e, noun))?
        .await
        .map_err(|e| ApiError::Storage(e.to_string()))
}

/// Connection-level settings of [`serve`].
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Most connections served at once; further ones wait in the listen backlog. Default 1024.
    pub max_connections: usize,
    /// Time a client has to send a complete request head. Default 10 s.
    pub header_timeout: Duration,
    /// Time a client has to send a complete request body. Default 30 s.
    pub body_timeout: Duration,
    /// Time in-flight requests get to finish on shutdown. Default 10 s.
    pub shutdown_grace: Duration,
    /// TLS for every connection (`None`: plain HTTP). Its handshake must finish within
    /// `header_timeout`.
    pub tls: Option<Arc<tls::Tls>>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: defaults::MAX_CONNECTIONS,
            header_timeout: defaults::HEADER_TIMEOUT,
            body_timeout: defaults::BODY_TIMEOUT,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            tls: None,
        }
    }
}

/// Runs a handler body, counts it under `op`, and turns its error into the SPEC's response.
pub(crate) async fn metered(
    state: &AppState,
    op: Metric,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let start = Instant::now();
    let result = work.await;
    let status = match &result {
        Ok(_) => Status::Success,
        Err(e) => e.status(),
    };
    state.metrics.record(op, status, start.elapsed());
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The whole API, with its body limit and body deadline.
pub fn router(state: AppState, body_timeout: Duration) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let buffer = middleware::from_fn_with_state((body_limit, body_timeout), buffer_body);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(prometheus))
        .route(
            "/kv",
            get(kv::list).put(kv::empty_key).delete(kv::empty_key),
        )
        .route(
            "/kv/",
            get(kv::list).put(kv::empty_key).delete(kv::empty_key),
        )
        .route("/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/batch/kv/get", post(kv::batch_get))
        .route("/batch/kv/set", post(kv::batch_set))
        .route("/batch/kv/delete", post(kv::batch_delete))
        .route("/batch/kv/set-cas", post(kv::batch_set_cas))
        .route("/batch/kv/delete-cas", post(kv::batch_delete_cas))
        .route("/services", get(services::list).post(services::register))
        .route("/services/", get(services::list))
        .route(
            "/services/{name}",
            get(services::get).delete(services::deregister),
        )
        .route("/services/{name}/heartbeat", put(services::heartbeat))
        .route("/register", put(services::register))
        .route(
            "/deregister/{name}",
            axum::routing::delete(services::deregister),
        )
        .route("/heartbeat/{name}", put(services::heartbeat))
        .route("/admin/reload", post(reload))
        .route("/watch", get(watch::feed))
        .merge(consul::routes(state.clone()))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Layers run outermost (last added) first: find who is calling (401 for an unknown
        // token), refuse an oversized Content-Length, then read the body whole under its
        // deadline, then route.
        .layer(buffer)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), acl::identify))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `POST /admin/reload`: reads the ACL file again (a management token only).
async fn reload(State(state): State<AppState>, who: acl::Who) -> Response {
    let result = who.management().map_err(ApiError::from).and_then(|()| {
        state
            .reload_acl()
            .map_err(|e| ApiError::BadRequest(format!("the ACL file was not reloaded: {e}")))
    });
    match result {
        Ok(tokens) => {
            Json(json!({"message": "ACL file reloaded", "tokens": tokens})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn prometheus(State(state): State<AppState>, who: acl::Who) -> Response {
    if let Err(denied) = who.metrics() {
        return ApiError::from(denied).into_response();
    }
    let stats = state.store.cache_stats().unwrap_or_default();
    let weight = state.store.weight();
    let gauges = [
        (
            "kv_entries",
            "Keys present in the KV store (Consul session records left out).",
            state.store.len().saturating_sub(state.sessions.count()) as u64,
        ),
        (
            "caskv_cache_entries",
            "Keys the bounded KV store holds (0 without --max-entries or --max-memory).",
            if weight.is_some() {
                state.store.len() as u64
            } else {
                0
            },
        ),
        (
            "caskv_cache_weight",
            "What the bounded KV store's keys weigh: their number, or their bytes with --max-memory.",
            weight.unwrap_or(0),
        ),
        (
            "services_registered",
            "Live service registrations.",
            state.registry.len() as u64,
        ),
        (
            "caskv_index_high_water",
            "The last index handed out.",
            state.store.global_index().high_water(),
        ),
    ];
    let mut text = state.metrics.render(&gauges);
    cache_counters(&mut text, &stats);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The bounded KV store's counters (all 0 when it is unbounded), in Prometheus text.
fn cache_counters(out: &mut String, stats: &crate::CacheStats) {
    use std::fmt::Write as _;
    let name = "caskv_cache_evictions_total";
    let _ = writeln!(out, "# HELP {name} Keys deleted by the cache, by cause.");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name}{{cause=\"capacity\"}} {}", stats.evictions);
    let _ = writeln!(out, "{name}{{cause=\"expired\"}} {}", stats.expirations);
    for (name, help, value) in [
        (
            "caskv_cache_hits_total",
            "KV reads that found the key (bounded store only).",
            stats.hits,
        ),
        (
            "caskv_cache_misses_total",
            "KV reads that did not (bounded store only).",
            stats.misses,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::NoRoute(format!("no route for {method} {}", uri.path())).into_response()
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path())).into_response()
}

/// Refuses a body whose declared length is over the limit before reading any of it.
async fn refuse_oversized(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > state.limits.max_body_bytes as u64 => ApiError::TooLarge(format!(
            "the body is {len} bytes, over the limit of {}",
            state.limits.max_body_bytes
        ))
        .into_response(),
        _ => next.run(req).await,
    }
}

/// Reads every request body whole, before routing, under one deadline and the body limit.
///
/// - One deadline for the whole body (not per chunk): a client dripping a byte now and then
///   gets its 408 after `body_timeout` instead of holding a connection slot for as long as it
///   likes.
/// - Every body is consumed, even by handlers that ignore it (GET, DELETE, heartbeat), so
///   hyper can keep the connection alive instead of closing it after the response.
/// - A body over the limit is a 413 as soon as the limit is crossed (a declared
///   `Content-Length` over it was already refused by [`refuse_oversized`]).
async fn buffer_body(
    State((limit, deadline)): State<(usize, Duration)>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    // A request that declared no body (most GETs and DELETEs): nothing to wait for, no timer.
    if hyper::body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match read_whole(body, limit, deadline).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// Reads `body` whole, at most `limit` bytes, within `deadline`: 408, 413 or 400 otherwise.
pub(crate) async fn read_whole<B>(
    body: B,
    limit: usize,
    deadline: Duration,
) -> Result<axum::body::Bytes, ApiError>
where
    B: hyper::body::Body<Data = axum::body::Bytes>,
    B::Error: Into<axum::BoxError>,
{
    // A body that came in one frame (most: it arrived with its head) is that frame's bytes,
    // shared, not copied; more frames are joined.
    let read = async {
        let mut body = std::pin::pin!(Limited::new(body, limit));
        let mut first: Option<axum::body::Bytes> = None;
        let mut joined: Vec<u8> = Vec::new();
        while let Some(frame) = body.as_mut().frame().await {
            let Ok(data) = frame?.into_data() else {
                continue; // trailers
            };
            match &first {
                None => first = Some(data),
                Some(f) => {
                    if joined.is_empty() {
                        joined.extend_from_slice(f);
                    }
                    joined.extend_from_slice(&data);
                }
            }
        }
        Ok::<_, axum::BoxError>(if joined.is_empty() {
            first.unwrap_or_default()
        } else {
            axum::body::Bytes::from(joined)
        })
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge(
            format!("the request body exceeds the limit of {limit} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::BadRequest(format!(
            "could not read the request body: {e}"
        ))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (up to `conn.shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    app: App,
    conn: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(conn.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // half_close: a client that shuts down its write side after a complete request still gets
    // its response (hyper's default treats the half-close as an abort).
    // Pipelined requests are answered in order, each answer written as it is ready. hyper's
    // `pipeline_flush(true)`, which would write them together, was tried and is off: with it,
    // the 400 hyper writes for an unparsable request head never reached the client before the
    // connection closed (`tests/hostile.rs`, invalid UTF-8 and over-long URLs).
    http.timer(TokioTimer::new())
        .header_read_timeout(conn.header_timeout)
        .keep_alive(true)
        .half_close(true);
    tokio::pin!(shutdown);
    loop {
        // Wait for a free connection slot before accepting: excess clients queue in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app.clone();
        let Some(tls) = &conn.tls else {
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        // TLS: the handshake runs in the connection's own task (a slow client holds up only
        // itself), within the header timeout.
        let (acceptor, http, watcher) = (tls.acceptor(), http.clone(), graceful.watcher());
        let handshake_timeout = conn.header_timeout;
        tokio::spawn(async move {
            let mut stream = stream;
            let accepted = tokio::time::timeout(handshake_timeout, async {
                if tls::answer_plain_http(&mut stream).await {
                    return None;
                }
                acceptor.accept(stream).await.ok()
            })
            .await;
            let Ok(Some(stream)) = accepted else {
                tracing::debug!(%peer, "TLS handshake failed or timed out");
                return;
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(conn.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}

/// A server started by [`spawn`]: where it listens, and the way to stop it.
///
/// Dropping it begins a graceful shutdown too (the server stops accepting and lets in-flight
/// requests finish), but only [`shutdown`](Running::shutdown) waits for the end.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The address the server listens on (the port the OS chose for a `:0` bind).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets in-flight requests finish (up to
    /// [`ConnLimits::shutdown_grace`]), stops the service reaper, and returns once all of it is
    /// done. A persistent state's log is flushed and fsynced when its last handle goes.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // A panic inside the server task was logged by tokio; there is nothing to return.
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropping the sender resolves the server's shutdown future: a graceful stop begins.
        drop(self.stop.take());
    }
}

/// Serves `state` on `listener` as a task of the current tokio runtime, with the service
/// reaper beside it, until [`Running::shutdown`] (or the handle's drop). [`run`] is this plus
/// a wait for SIGINT/SIGTERM; the tests start their servers through it too.
///
/// # Panics
/// Outside a tokio runtime.
///
/// # Example
/// ```no_run
/// use std::time::Duration;
/// use caskv::server::{spawn, AppState, ConnLimits, Limits};
///
/// # async fn demo() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let state = AppState::new(Limits::default(), Duration::from_secs(30));
/// let server = spawn(listener, state, ConnLimits::default())?;
/// println!("serving on {}", server.addr());
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub fn spawn(listener: TcpListener, state: AppState, conn: ConnLimits) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reaper = tokio::spawn(reap(state.clone()));
    let sessions = tokio::spawn(consul::reap_sessions(state.clone()));
    consul::keep_agent_services(&state);
    let closing = state.closing.clone();
    let app = App::new(state, conn.body_timeout);
    let task = tokio::spawn(async move {
        serve(listener, app, conn, async {
            // A send or the handle's drop: either way, stop; held reads answer now and feed
            // streams end, so the graceful shutdown does not wait out their waits.
            let _ = stopped.await;
            closing.send_replace(true);
        })
        .await;
        reaper.abort();
        sessions.abort();
        let _ = reaper.await;
        let _ = sessions.await;
    });
    Ok(Running {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// Binds `addr` and serves `state` (in memory, or persistent from [`AppState::open`]) until
/// SIGINT/SIGTERM. A persistent state's log is flushed and fsynced when the last request ends.
pub async fn run(addr: SocketAddr, state: AppState, conn: ConnLimits) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mode = match state.db().fsync_policy() {
        Some(fsync) => format!("persistent, fsync {fsync:?}"),
        None => "in memory".to_string(),
    };
    // Always: without an ACL file or TLS there is nothing to reload, but a SIGHUP (a reload by
    // habit, a closed terminal) must not end the server as its default action would.
    // Registered here, before the server listens, so that no SIGHUP can come before it.
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => drop(tokio::spawn(reload_on_hangup(
            hangups,
            state.clone(),
            conn.tls.clone(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: nothing will be reloaded on it")
        }
    }
    let server = spawn(listener, state, conn)?;
    tracing::info!(addr = %server.addr(), mode, "caskv serving");
    shutdown_signal().await;
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the ACL file and the TLS files on every SIGHUP (a bad file is logged and what
/// was read before stays).
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    state: AppState,
    tls: Option<Arc<tls::Tls>>,
) {
    while hangups.recv().await.is_some() {
        if !state.has_acl() && tls.is_none() {
            tracing::info!("SIGHUP: no ACL file or TLS certificate to reload");
        }
        if state.has_acl() {
            let _ = state.reload_acl();
        }
        if let Some(tls) = &tls {
            let _ = tls.reload();
        }
    }
}

/// Expires services and deletes expired keys in the background, once a second (reads see
/// both as gone at once; this gives each its delete, logged, and frees its memory). The key
/// scan is skipped while no key was ever written with a TTL.
pub async fn reap(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let reaped = state.registry.reap_expired();
        if reaped > 0 {
            tracing::info!(reaped, "expired services removed");
        }
        match state.db().purge_expired() {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired keys deleted"),
            // The log has failed: writes are refused with 503 already; nothing to do here.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::testing::breakable_disk;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    async fn send(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let req = HttpRequest::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_answers_503_and_refuses_later_writes_but_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let options = breakable_disk(Options::default().services(true), broken.clone());
        let state = AppState::serving(Db::open(dir.path(), options).unwrap(), Limits::default());
        let app = router(state, Duration::from_secs(5));
        let (status, _) = send(&app, "PUT", "/kv/a", r#"{"value":"1"}"#).await;
        assert_eq!(status, StatusCode::OK);

        broken.store(true, Ordering::SeqCst);
        let (status, body) = send(&app, "PUT", "/kv/b", r#"{"value":"2"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("storage unavailable"), "{body}");
        // The cause (an OS error, a path) is for the server's log, not for the client.
        assert!(!body.contains("disk on fire"), "{body}");
        // Later writes are refused before they are applied.
        let (status, _) = send(&app, "PUT", "/kv/c", r#"{"value":"3"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _) = send(&app, "GET", "/kv/c", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = send(
            &app,
            "POST",
            "/services",
            r#"{"name":"s","address":"a","port":1}"#,
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // Reads keep working.
        let (status, body) = send(&app, "GET", "/kv/a", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
