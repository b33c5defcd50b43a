//! `/v1/session/…`: Consul sessions, and the locks they hold on KV keys.
//!
//! # Where a session lives
//! A session is a record in the KV store under [`record_key`] (an internal key: see
//! [`super::is_internal`]), so it shares the store's index, log and snapshots, and a lock
//! commits in one batch with a check of the record's index ([`super::kv::write`]). What only
//! matters while the server runs stays in memory ([`Sessions`]): each session's TTL deadline
//! (a restart gives every session a full TTL again, as services get) and the keys in their
//! lock-delay.
//!
//! # Invalidation (destroy, or a TTL that ran out)
//! 1. The record is marked invalidated (a CAS on it): from then on every acquire, whose batch
//!    checks the record's index, fails, and every acquire that committed before is visible to
//!    the scan that follows.
//! 2. The store is scanned for keys the session holds; each is released (`Session` cleared,
//!    `LockIndex` kept) or deleted, as the session's `Behavior` says, and the record deleted, in
//!    one batch at one index (in several when the locks outnumber `--max-batch`). A key written
//!    between the scan and the batch fails its CAS, and the scan runs again.
//! 3. Released keys enter the session's lock-delay: no session may acquire them until it ends.
//!
//! A marked record found when the server starts (a crash between steps 1 and 2) is invalidated
//! again at once, so no lock outlives its session across a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    at_index, commit_in_batches, from_json_any_case, is_internal, json, metered, settle, Failure,
    INTERNAL, NODE,
};
use crate::server::acl::Who;
use crate::server::extract::Params;
use crate::server::kv::listing;
use crate::server::metrics::Op as Metric;
use crate::server::{ApiError, AppState, KvValue, SessionId};
use crate::{Entry, Op, Store};

/// The longest session TTL Consul allows.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(86_400);
/// The lock-delay a session gets when it asks for none.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// The longest lock-delay Consul allows.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// How many times an invalidation scans again after a held key changed under it.
const ATTEMPTS: usize = 64;

/// The internal key of session `id`'s record.
pub(crate) fn record_key(id: SessionId) -> String {
    format!("{INTERNAL}session/{id}")
}

/// The prefix every session record's key starts with.
fn records_prefix() -> String {
    format!("{INTERNAL}session/")
}

/// A session id from a path or query value: a 400 unless it is a UUID.
pub(crate) fn parse_id(text: &str) -> Result<SessionId, Failure> {
    SessionId::parse_str(text)
        .map_err(|_| Failure::bad_request(format!("Invalid session ID {text:?}: not a UUID")))
}

/// Consul's answer to an acquire with a session that does not exist (or was invalidated).
pub(crate) fn invalid(id: SessionId) -> Failure {
    Failure::internal(format!("invalid session \"{id}\""))
}

/// What a session's invalidation does to the keys it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Behavior {
    /// Their locks are let go (the default).
    #[default]
    Release,
    /// They are deleted.
    Delete,
}

/// A session record, as stored (JSON text in the record's value).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: SessionId,
    name: String,
    node: String,
    /// Nanoseconds.
    lock_delay: u64,
    behavior: Behavior,
    /// 0: no TTL.
    ttl_ms: u64,
    /// Set by the first step of an invalidation (see the module docs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    invalidated: bool,
}

impl Record {
    fn ttl(&self) -> Option<Duration> {
        (self.ttl_ms > 0).then(|| Duration::from_millis(self.ttl_ms))
    }

    fn value(&self) -> KvValue {
        KvValue::text(serde_json::to_string(self).unwrap_or_default())
    }

    fn of(value: &KvValue) -> Option<Record> {
        serde_json::from_slice(value.as_bytes()).ok()
    }
}

/// A session as Consul shows it (`api.SessionEntry`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionEntry<'a> {
    #[serde(rename = "ID")]
    id: String,
    name: &'a str,
    node: &'a str,
    /// Nanoseconds, as Consul's Go clients read it.
    lock_delay: u64,
    behavior: Behavior,
    #[serde(rename = "TTL")]
    ttl: String,
    /// No node or service health checks are tied to a session here.
    checks: [&'a str; 0],
    node_checks: [&'a str; 0],
    service_checks: Option<()>,
    create_index: u64,
    modify_index: u64,
}

fn entry_of<'a>(record: &'a Record, e: &Entry<KvValue>) -> SessionEntry<'a> {
    SessionEntry {
        id: record.id.to_string(),
        name: &record.name,
        node: &record.node,
        lock_delay: record.lock_delay,
        behavior: record.behavior,
        ttl: record
            .ttl()
            .map(|t| humantime::format_duration(t).to_string().replace(' ', ""))
            .unwrap_or_default(),
        checks: [],
        node_checks: [],
        service_checks: None,
        create_index: e.create_index,
        modify_index: e.modify_index,
    }
}

/// What the server keeps in memory of a live session.
#[derive(Debug, Clone, Copy)]
struct Live {
    /// When its TTL runs out (`None`: no TTL).
    deadline: Option<Instant>,
    ttl: Option<Duration>,
    behavior: Behavior,
    lock_delay: Duration,
}

/// The sessions' in-memory state: deadlines and lock-delays (see the module docs).
pub(crate) struct Sessions {
    live: Mutex<HashMap<SessionId, Live>>,
    /// Keys an invalidation released, and when their lock-delay ends.
    delays: Mutex<HashMap<String, Instant>>,
    /// The shortest TTL a client may ask for (`--min-session-ttl`).
    min_ttl: Duration,
}

impl Sessions {
    /// The sessions recorded in `store` (after a restart: each gets a full TTL from now; a
    /// record an invalidation had marked is due at once).
    pub(crate) fn load(store: &Store<String, KvValue>, min_ttl: Duration) -> Sessions {
        let now = Instant::now();
        let mut live = HashMap::new();
        for (_, e) in store.listing(&records_prefix()).entries {
            if let Some(r) = Record::of(&e.value) {
                let ttl = r.ttl();
                live.insert(
                    r.id,
                    Live {
                        deadline: if r.invalidated {
                            Some(now)
                        } else {
                            ttl.map(|t| now + t)
                        },
                        ttl,
                        behavior: r.behavior,
                        lock_delay: Duration::from_nanos(r.lock_delay),
                    },
                );
            }
        }
        Sessions {
            live: Mutex::new(live),
            delays: Mutex::new(HashMap::new()),
            min_ttl,
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delays(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.delays.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of live session `id`'s record, which an acquire checks in its batch; `None`
    /// when the session does not exist or is being invalidated.
    pub(crate) fn live_index(state: &AppState, id: SessionId) -> Option<u64> {
        let e = state.store.get(record_key(id).as_str())?;
        let record = Record::of(&e.value)?;
        (!record.invalidated).then_some(e.modify_index)
    }

    /// Whether `key` is in a lock-delay (no session may acquire it yet).
    pub(crate) fn delayed(&self, key: &str) -> bool {
        let mut delays = self.delays();
        match delays.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                delays.remove(key);
                false
            }
            None => false,
        }
    }

    /// How many sessions are live (their records are keys of the store that the `kv_entries`
    /// gauge leaves out).
    pub(crate) fn count(&self) -> usize {
        self.live().len()
    }

    /// The sessions to invalidate at `now`: those whose TTL ran out, and those whose record
    /// is gone from `store` (a bounded store evicted it), so that their locks go too.
    fn expired(&self, store: &Store<String, KvValue>, now: Instant) -> Vec<SessionId> {
        self.live()
            .iter()
            .filter(|(id, l)| {
                // `state`: a look that the eviction policy does not count as a read.
                l.deadline.is_some_and(|d| d <= now)
                    || store.state(record_key(**id).as_str()).entry.is_none()
            })
            .map(|(id, _)| *id)
            .collect()
    }
}

/// `PUT /v1/session/create` body (every field optional; names in any case, as Consul reads
/// them: [`from_json_any_case`]).
#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
struct CreateBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: Option<String>,
    /// A duration string ("15s") or a number: seconds below 1000, else nanoseconds (Consul's
    /// rule for clients that send a Go `time.Duration`).
    #[serde(default, rename = "lockdelay")]
    lock_delay: Option<Value>,
    #[serde(default)]
    behavior: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

/// A Go-style duration ("10s", "1m30s", "300000ms", "1.5h" is not accepted).
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn lock_delay(value: Option<&Value>) -> Result<Duration, Failure> {
    let delay = match value {
        None | Some(Value::Null) => DEFAULT_LOCK_DELAY,
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .ok_or_else(|| Failure::bad_request(format!("Invalid LockDelay {n}")))?;
            if n < 1000 {
                Duration::from_secs(n)
            } else {
                Duration::from_nanos(n)
            }
        }
        Some(Value::String(s)) => duration(s)
            .map_err(|e| Failure::bad_request(format!("Invalid LockDelay {s:?}: {e}")))?,
        Some(other) => return Err(Failure::bad_request(format!("Invalid LockDelay {other}"))),
    };
    Ok(delay.min(MAX_LOCK_DELAY))
}

/// `PUT /v1/session/create`: `{"ID": "…"}`.
pub(super) async fn create(State(state): State<AppState>, who: Who, body: Bytes) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
            CreateBody::default()
        } else {
            from_json_any_case(&body)
                .map_err(|e| Failure::bad_request(format!("Request decode failed: {e}")))?
        };
        let ttl = match body.ttl.as_deref().filter(|t| !t.is_empty()) {
            None => None,
            Some(text) => {
                let ttl = duration(text).map_err(|e| {
                    Failure::bad_request(format!(
                        "Request decode failed: invalid TTL {text:?}: {e}"
                    ))
                })?;
                let min = state.sessions.min_ttl;
                if ttl.is_zero() {
                    None
                } else if ttl < min || ttl > MAX_TTL {
                    return Err(Failure::bad_request(format!(
                        "Invalid Session TTL '{}', must be between [{}={}]",
                        text,
                        humantime::format_duration(min),
                        humantime::format_duration(MAX_TTL)
                    )));
                } else {
                    Some(ttl)
                }
            }
        };
        let behavior = match body.behavior.as_deref() {
            None | Some("") | Some("release") => Behavior::Release,
            Some("delete") => Behavior::Delete,
            Some(other) => {
                return Err(Failure::bad_request(format!(
                    "Invalid Behavior setting '{other}'"
                )))
            }
        };
        let delay = lock_delay(body.lock_delay.as_ref())?;
        let id = SessionId::new_v4();
        let record = Record {
            id,
            name: body.name,
            node: body
                .node
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| NODE.into()),
            lock_delay: u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            behavior,
            ttl_ms: ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            invalidated: false,
        };
        // The record is a value of the store: bounded as every value is (a `Name` is the part
        // a client sizes).
        let value = record.value();
        state.limits.check_value("session", value.len())?;
        let written = state.db().set_cas(record_key(id), value, 0);
        // A create-only write of a fresh random id: `None` would mean a 122-bit collision.
        let Some(index) = settle(written, "key").await? else {
            return Err(Failure::internal("a session id collided; try again"));
        };
        // After the record is written: the reaper takes a live session without a record for
        // one a bounded store evicted. (A destroy that ran in between leaves an entry without a
        // record, which the reaper's next tick clears.)
        state.sessions.live().insert(
            id,
            Live {
                deadline: ttl.map(|t| Instant::now() + t),
                ttl,
                behavior,
                lock_delay: delay,
            },
        );
        Ok(at_index(
            json(&serde_json::json!({"ID": id.to_string()})),
            index,
        ))
    })
    .await
}

/// `PUT /v1/session/destroy/{id}`: `true` (also for a session that does not exist).
pub(super) async fn destroy(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        let id = parse_id(&id)?;
        invalidate(&state, id).await?;
        Ok(json(&true))
    })
    .await
}

/// `PUT /v1/session/renew/{id}`: the session, its TTL restarted; 404 when it does not exist.
pub(super) async fn renew(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        let id = parse_id(&id)?;
        let found = state
            .store
            .get(record_key(id).as_str())
            .and_then(|e| Record::of(&e.value).map(|r| (r, e)))
            .filter(|(r, _)| !r.invalidated);
        let Some((record, e)) = found else {
            return Err(Failure::not_found(format!("Session id '{id}' not found")));
        };
        if let Some(live) = state.sessions.live().get_mut(&id) {
            live.deadline = live.ttl.map(|t| Instant::now() + t);
        }
        Ok(at_index(json(&[entry_of(&record, &e)]), e.modify_index))
    })
    .await
}

/// `GET /v1/session/info/{id}`: `[session]`, or `[]` when it does not exist. Blocking with
/// `?index=&wait=`.
pub(super) async fn info(
    State(state): State<AppState>,
    who: Who,
    Path(id): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        let id = parse_id(&id)?;
        let params = params?;
        sessions(&state, &params, |r| r.id == id).await
    })
    .await
}

/// `GET /v1/session/list`: every session. Blocking with `?index=&wait=`.
pub(super) async fn list(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        sessions(&state, &params?, |_| true).await
    })
    .await
}

/// `GET /v1/session/node/{node}`: the sessions of `node`.
pub(super) async fn list_node(
    State(state): State<AppState>,
    who: Who,
    Path(node): Path<String>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulSession, async {
        who.session()?;
        sessions(&state, &params?, |r| r.node == node).await
    })
    .await
}

/// The live sessions `keep` selects, as Consul lists them, at the records' index.
async fn sessions(
    state: &AppState,
    params: &Params,
    keep: impl Fn(&Record) -> bool,
) -> Result<Response, Failure> {
    let blocking = params.blocking()?;
    let found = listing(state, &state.store, &records_prefix(), blocking).await;
    let records: Vec<(Record, &Entry<KvValue>)> = found
        .entries
        .iter()
        .filter_map(|(_, e)| Record::of(&e.value).map(|r| (r, e)))
        .filter(|(r, _)| !r.invalidated && keep(r))
        .collect();
    let entries: Vec<SessionEntry<'_>> = records.iter().map(|(r, e)| entry_of(r, e)).collect();
    Ok(at_index(json(&entries), found.index))
}

/// Invalidates session `id` (see the module docs): its locks released or their keys deleted,
/// its record gone. Nothing happens for a session that does not exist.
pub(crate) async fn invalidate(state: &AppState, id: SessionId) -> Result<(), Failure> {
    let key = record_key(id);
    let remembered = state.sessions.live().get(&id).copied();
    // 1. Mark the record, so that no acquire commits after the scan below.
    let mut marked: Option<(Record, u64)> = None;
    for _ in 0..ATTEMPTS {
        let Some(e) = state.store.get(key.as_str()) else {
            break;
        };
        let Some(mut record) = Record::of(&e.value) else {
            break;
        };
        if record.invalidated {
            marked = Some((record, e.modify_index));
            break;
        }
        record.invalidated = true;
        let write = state
            .db()
            .set_cas(key.clone(), record.value(), e.modify_index);
        if let Some(index) = settle(write, "key").await? {
            marked = Some((record, index));
            break;
        }
    }
    let (behavior, delay) = match (&marked, remembered) {
        (Some((r, _)), _) => (r.behavior, Duration::from_nanos(r.lock_delay)),
        // The record is gone (a bounded store evicted it): what memory says, so that its locks
        // still go.
        (None, Some(l)) => (l.behavior, l.lock_delay),
        (None, None) => return Ok(()),
    };
    // 2. Release (or delete) what it holds, and delete the record, at one index.
    for _ in 0..ATTEMPTS {
        let held: Vec<(String, Entry<KvValue>)> = state
            .store
            .entries()
            .into_iter()
            .filter(|(k, e)| !is_internal(k) && e.value.session() == Some(id))
            .collect();
        let mut ops: Vec<Op<String, KvValue>> = held
            .iter()
            .map(|(k, e)| match behavior {
                Behavior::Release => Op::set_cas(
                    k.clone(),
                    e.value.clone().with_lock(e.value.lock_index(), None),
                    e.modify_index,
                ),
                Behavior::Delete => Op::delete_cas(k.clone(), e.modify_index),
            })
            .collect();
        if let Some((_, index)) = &marked {
            // Another invalidation of the same session (a destroy racing the reaper) may have
            // finished first: then the record is gone and only what it still holds is left.
            match state.store.get(key.as_str()) {
                Some(e) if e.modify_index == *index => {
                    ops.push(Op::delete_cas(key.clone(), *index))
                }
                _ => marked = None,
            }
        }
        // 3. The lock-delay starts before the release commits, so no acquire slips in between.
        if !delay.is_zero() && behavior == Behavior::Release && !held.is_empty() {
            let now = Instant::now();
            let mut delays = state.sessions.delays();
            // Ended delays go first, so the map holds only keys still in one (at most 60 s).
            delays.retain(|_, until| *until > now);
            for (k, _) in &held {
                delays.insert(k.clone(), now + delay);
            }
        }
        if commit_in_batches(state, ops).await? {
            state.sessions.live().remove(&id);
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
    Err(Failure::internal(format!(
        "invalidating session {id} lost the race to other writers {ATTEMPTS} times; it is retried"
    )))
}

/// Invalidates sessions whose TTL ran out, a few times a second, until the server stops.
pub(crate) async fn reap(state: AppState) {
    // Locks whose session has no record (a bounded store evicted it before a restart) are
    // released at the first tick, as that session's would be.
    {
        let now = Instant::now();
        let mut live = state.sessions.live();
        for (_, e) in state.store.entries() {
            if let Some(id) = e.value.session() {
                live.entry(id).or_insert(Live {
                    deadline: Some(now),
                    ttl: None,
                    behavior: Behavior::Release,
                    lock_delay: Duration::ZERO,
                });
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for id in state.sessions.expired(&state.store, Instant::now()) {
            match invalidate(&state, id).await {
                Ok(()) => tracing::info!(session = %id, "session expired; its locks were released"),
                Err(e) => {
                    tracing::warn!(session = %id, error = ?e, "expiring a session failed; retried next tick")
                }
            }
        }
    }
}
