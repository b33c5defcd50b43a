//! Blocking reads and the change feed over HTTP (issue #12).
//!
//! - Every KV and service read answers with `X-Caskv-Index`: the index of the state it shows
//!   ([`Store::state`](crate::Store::state), [`Store::listing`](crate::Store::listing)), never 0.
//! - `?index=N&wait=D` holds a read until the state's index passes `N` (a [`Watch`] or a
//!   [`PrefixWatch`] of the store: only writes to the key, or under the prefix, wake it), or
//!   until `wait` (plus up to `wait/16` of jitter) passes, or the server shuts down; then it
//!   answers as a plain read would.
//! - `GET /watch?after=N&prefix=p` streams the [`Db`](crate::Db)'s change feed as server-sent
//!   events (below).
//!
//! [`Watch`]: crate::Watch
//! [`PrefixWatch`]: crate::PrefixWatch

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::acl::{Need, Who};
use super::consul::is_internal;
use super::error::ApiError;
use super::extract::Params;
use super::kv::entry_json;
use super::metrics::Op as Metric;
use super::value::KvValue;
use super::{metered, AppState};
use crate::defaults;
use crate::watch::Compacted;
use crate::{Change, DbChange, Registration};

/// The header every KV and service read carries: the index of the state it shows.
pub const INDEX_HEADER: HeaderName = HeaderName::from_static("x-caskv-index");

/// `?index=N&wait=D`: hold the read until the state's index is above `index`, at most `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// The index the answer must be above (never 0: `index=0` is a plain read).
    pub index: u64,
    /// The longest hold (capped at [`defaults::MAX_BLOCKING_WAIT`]), before jitter.
    pub wait: Duration,
}

impl Blocking {
    /// The index to wait past: the one asked for, but never above the last index handed out
    /// when the read began. An index no state has yet (a client's guess, or the `1` a read of
    /// a never-written key answers with on a fresh server) is waited past by the next change.
    pub(crate) fn clamped(self, state: &AppState) -> Blocking {
        Blocking {
            index: self.index.min(state.store.global_index().high_water()),
            ..self
        }
    }
}

/// A `wait` value: a duration with units, as Consul's clients send it ("300000ms", "5m",
/// "1m30s"), cut to [`defaults::MAX_BLOCKING_WAIT`].
pub(crate) fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let wait = humantime::parse_duration(text).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid wait '{text}': {e} (a duration such as \"30s\", \"5m\" or \"300000ms\")"
        ))
    })?;
    Ok(wait.min(defaults::MAX_BLOCKING_WAIT))
}

/// Holds a blocking read: until `changed` resolves, `blocking.wait` plus up to a sixteenth of
/// it at random passes (so that clients woken together do not come back together), or the
/// server begins to shut down.
pub(crate) async fn hold(state: &AppState, blocking: &Blocking, changed: impl Future) {
    let jitter = blocking.wait.mul_f64(fastrand::f64() / 16.0);
    let mut closing = state.closing.subscribe();
    tokio::select! {
        _ = changed => {}
        () = tokio::time::sleep(blocking.wait + jitter) => {}
        () = shutting_down(&mut closing) => {}
    }
}

/// Holds a blocking read of `key` (the native and the Consul face's) until its state's index
/// passes `b.index` or [`hold`] ends; at once when it already has.
pub(crate) async fn hold_key(state: &AppState, key: &str, b: &Blocking) {
    if state.store.state(key).index <= b.index {
        let mut watch = state.store.watch(key, b.index);
        hold(state, b, watch.changed()).await;
    }
}

/// Resolves once the server begins to shut down.
pub(crate) async fn shutting_down(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before anything else is awaited.
    let _ = closing.wait_for(|closing| *closing).await;
}

/// [`metered`], then the index the handler stored in `index` as [`INDEX_HEADER`] (at least 1)
/// on whatever it answered, an error included.
pub(crate) async fn metered_at(
    state: &AppState,
    op: Metric,
    index: &AtomicU64,
    work: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    let mut response = metered(state, op, work).await;
    // Relaxed: written by `work`, which completed on this task.
    let at = index.load(Ordering::Relaxed);
    if at != 0 || response.status().is_success() || response.status().as_u16() == 404 {
        response
            .headers_mut()
            .insert(INDEX_HEADER, HeaderValue::from(at.max(1)));
    }
    response
}

/// A queued frame and the share of the stream's byte budget it holds until hyper takes it.
type Queued = (Bytes, Option<OwnedSemaphorePermit>);

/// The response body of a change-feed stream: frames queued by its follower task, ending when
/// the task does. Taking a frame gives its bytes back to the budget.
struct Events(mpsc::Receiver<Queued>);

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|frame| frame.map(|(bytes, _room)| Ok(Frame::data(bytes))))
    }
}

/// The follower's end of a stream: at most [`defaults::WATCH_BUFFER`] frames and
/// [`defaults::WATCH_BUFFER_BYTES`] queued. The follower reads the history at its client's
/// pace (writers never wait for it); a client that takes nothing for
/// [`Limits::watch_lag_timeout`](super::Limits::watch_lag_timeout) while the buffer is full is
/// lagging.
struct Outbox {
    frames: mpsc::Sender<Queued>,
    /// The byte budget, in KiB.
    room: Arc<Semaphore>,
    /// How long to wait for room.
    lag: Duration,
}

/// Why a frame was not queued.
enum Refused {
    /// The client is too far behind: end its stream with `event: lagged`.
    Lagging,
    /// The client went away.
    Gone,
}

impl Outbox {
    fn new(lag: Duration) -> (Outbox, Events) {
        let (frames, rx) = mpsc::channel(defaults::WATCH_BUFFER);
        let room = Arc::new(Semaphore::new(defaults::WATCH_BUFFER_BYTES / 1024));
        (Outbox { frames, room, lag }, Events(rx))
    }

    async fn send(&self, frame: Bytes) -> Result<(), Refused> {
        let kib = frame
            .len()
            .div_ceil(1024)
            .min(defaults::WATCH_BUFFER_BYTES / 1024);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        let wait = self.lag;
        let permit =
            match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(kib)).await {
                Err(_) => return Err(Refused::Lagging),
                Ok(Err(_)) => return Err(Refused::Gone),
                Ok(Ok(permit)) => permit,
            };
        match tokio::time::timeout(wait, self.frames.send((frame, Some(permit)))).await {
            Err(_) => Err(Refused::Lagging),
            Ok(Err(_)) => Err(Refused::Gone),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// `GET /watch?after=N&prefix=p`: the change feed as server-sent events.
///
/// One event per committed index that touches the prefix (a batch's items filtered to it),
/// `id:` the index, `data:` JSON; service changes (streamed without a prefix only) come as
/// `event: service`. Without `after` (or a `Last-Event-ID` header, which wins) the stream
/// starts at the feed's watermark. An `after` older than the history is a `410`. A comment
/// every 15 s keeps proxies from closing an idle stream. The stream is read from the history
/// at the client's pace through a bounded buffer; a client that takes nothing for
/// [`Limits::watch_lag_timeout`](super::Limits::watch_lag_timeout) while the buffer is full, or that falls behind the history,
/// gets `event: lagged` with the last index it was sent, and the stream ends: it resumes from
/// there. Writers never wait for a stream. Keys and services the caller may not read are left
/// out.
pub async fn feed(
    State(state): State<AppState>,
    who: Who,
    headers: HeaderMap,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::Watch, async {
        let params = params?;
        let prefix = params.0.get("prefix").cloned().unwrap_or_default();
        if !prefix.is_empty() {
            state.limits.check_key(&prefix)?;
        }
        if who.name.is_none() {
            // An anonymous caller on a server with an ACL file is refused (a 401: a token is
            // needed) unless the rules let anyone read the prefix; a token's stream is
            // filtered to what it may read.
            who.kv(&prefix, Need::Read)?;
        }
        let index = |name: &str, text: &str| {
            text.trim().parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid {name} '{text}': expected a non-negative integer"
                ))
            })
        };
        let feed = state.db().feed();
        let after = match headers.get("last-event-id") {
            Some(v) => index(
                "Last-Event-ID",
                v.to_str()
                    .map_err(|_| ApiError::BadRequest("invalid Last-Event-ID".into()))?,
            )?,
            None => match params.0.get("after") {
                Some(text) => index("after", text)?,
                None => feed.watermark(),
            },
        };
        let oldest = feed.oldest();
        // An index this server never handed out (a client of an in-memory server that
        // restarted, or a guess) names no change it could follow: the same answer as an old
        // one, read the state again.
        if after < oldest || after > state.store.global_index().high_water() {
            return Err(ApiError::Compacted { oldest });
        }
        let (outbox, events) = Outbox::new(state.limits.watch_lag_timeout);
        tokio::spawn(follow(state.clone(), who, prefix, after, outbox));
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .header(INDEX_HEADER, HeaderValue::from(after.max(1)))
            .body(Body::new(events))
            .unwrap_or_else(|_| Response::new(Body::empty())))
    })
    .await
}

/// Events read from the feed per pass.
const READ: usize = 256;

/// A stream's follower: reads the feed from `after`, sends what the caller may see, sleeps on
/// writes under the prefix (and on the registry, without a prefix) between reads.
async fn follow(state: AppState, who: Who, prefix: String, mut after: u64, tx: Outbox) {
    let feed = state.db().feed().clone();
    let mut kv = state.store.wakeups(&prefix);
    let mut services = prefix
        .is_empty()
        .then(|| state.registry.store().wakeups(""));
    let mut closing = state.closing.subscribe();
    // The highest index handed out when a write last woke us: the feed must reach it before
    // we sleep again (a write of another prefix, or a lost CAS, below it wakes nobody).
    let mut target = 0;
    let mut heartbeat = tokio::time::Instant::now() + defaults::WATCH_HEARTBEAT;
    loop {
        let events = match feed.read(after, READ) {
            Ok(events) => events,
            Err(Compacted { .. }) => return lagged(&tx, after).await,
        };
        let got = !events.is_empty();
        for event in events {
            if let Some(frame) = render(&event, &prefix, &who) {
                match tx.send(frame).await {
                    Ok(()) => heartbeat = tokio::time::Instant::now() + defaults::WATCH_HEARTBEAT,
                    Err(Refused::Lagging) => return lagged(&tx, after).await,
                    Err(Refused::Gone) => return,
                }
            }
            after = event.index();
        }
        if got {
            continue;
        }
        if feed.watermark() < target {
            // An index below the one that woke us is still in flight: look again shortly.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(1)) => continue,
                () = tx.frames.closed() => return,
            }
        }
        let services_next = async {
            match services.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = kv.next() => target = state.store.global_index().high_water(),
            () = services_next => target = state.store.global_index().high_water(),
            () = tokio::time::sleep_until(heartbeat) => {
                match tx.send(Bytes::from_static(b": heartbeat\n\n")).await {
                    Ok(()) => heartbeat = tokio::time::Instant::now() + defaults::WATCH_HEARTBEAT,
                    Err(Refused::Lagging) => return lagged(&tx, after).await,
                    Err(Refused::Gone) => return,
                }
            }
            () = shutting_down(&mut closing) => return,
            () = tx.frames.closed() => return,
        }
    }
}

/// Ends a stream whose client fell behind: `event: lagged` with the last index sent (waiting a
/// little for room in its buffer; a client that reads nothing is simply cut).
async fn lagged(tx: &Outbox, last: u64) {
    let frame = format!(
        "id: {last}\nevent: lagged\ndata: {}\n\n",
        json!({"last_index": last, "message": "the stream fell behind; resume from last_index"})
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tx.frames.send((Bytes::from(frame), None)),
    )
    .await;
}

/// One SSE frame for `event`, or `None` when nothing of it is under `prefix` and readable.
fn render(event: &DbChange<String, KvValue>, prefix: &str, who: &Who) -> Option<Bytes> {
    let index = event.index();
    let (kind, data) = match event {
        DbChange::Kv(change) => {
            let visible = |k: &str| k.starts_with(prefix) && !is_internal(k) && who.may_read_key(k);
            let data = match change {
                Change::Set { key, entry } if visible(key) => {
                    let mut v = entry_json(key, entry, true);
                    v["op"] = json!("set");
                    v["index"] = json!(index);
                    v
                }
                Change::Delete { key, .. } if visible(key) => {
                    json!({"index": index, "op": "delete", "key": key})
                }
                Change::Batch { writes, .. } => {
                    let items: Vec<Value> = writes
                        .iter()
                        .filter(|(k, _)| visible(k))
                        .map(|(k, e)| match e {
                            Some(e) => {
                                let mut v = entry_json(k, e, true);
                                v["op"] = json!("set");
                                v
                            }
                            None => json!({"op": "delete", "key": k}),
                        })
                        .collect();
                    if items.is_empty() {
                        return None;
                    }
                    json!({"index": index, "op": "batch", "items": items})
                }
                _ => return None,
            };
            ("", data)
        }
        DbChange::Service(change) if prefix.is_empty() => {
            let service = |name: &str, r: Option<&Registration>| {
                json!({
                    "index": index,
                    "op": if r.is_some() { "register" } else { "deregister" },
                    "name": name,
                    "service": r.map(Registration::service),
                })
            };
            let data = match change {
                Change::Set { key, entry } if who.may_read_service(key) => {
                    service(key, Some(&entry.value))
                }
                Change::Delete { key, .. } if who.may_read_service(key) => service(key, None),
                _ => return None,
            };
            ("event: service\n", data)
        }
        DbChange::Service(_) => return None,
    };
    Some(Bytes::from(format!("id: {index}\n{kind}data: {data}\n\n")))
}
