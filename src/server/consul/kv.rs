//! `/v1/kv/{key}`: Consul's KV endpoint on the server's store.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use super::session::{self, Sessions};
use super::{
    at_index, commit_in_batches, is_internal, json, metered, present, settle, verdict, Failure,
};
use crate::server::acl::{Need, Who};
use crate::server::extract::{KeyPath, Params};
use crate::server::kv::listing;
use crate::server::metrics::Op as Metric;
use crate::server::watch::hold_key;
use crate::server::{ApiError, AppState, KvValue, SessionId};
use crate::{Entry, Op};

/// How many times a write that lost a race (another write landed between its read and its CAS)
/// reads again and retries before it answers 500; each retry means another write to the key
/// committed, so the loop makes progress as a whole.
const ATTEMPTS: usize = 64;

/// One entry as Consul shows it (`api.KVPair`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DirEntry<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    /// Base64; `null` for an empty value (and in a txn's write results).
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    create_index: u64,
    modify_index: u64,
}

impl<'a> DirEntry<'a> {
    /// `key`'s entry `e`, its value included when `with_value`.
    pub(crate) fn of(key: &'a str, e: &Entry<KvValue>, with_value: bool) -> Self {
        DirEntry {
            lock_index: e.value.lock_index(),
            key,
            flags: e.flags,
            value: (with_value && !e.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(e.value.as_bytes())),
            session: e.value.session().map(|s| s.to_string()),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

/// `GET /v1/kv/{key}`: the key (`?raw`: its bytes alone), or with `?recurse` the entries under
/// it, or with `?keys` (and `?separator`) the keys under it. Blocking with `?index=&wait=`.
pub(super) async fn get(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulKvGet, async {
        let KeyPath(key) = key?;
        read(&state, &who, &key, &params?).await
    })
    .await
}

/// `GET /v1/kv/`: a listing of every key (`?recurse` or `?keys`); a single read needs a key.
pub(super) async fn get_all(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulKvGet, async {
        let params = params?;
        if !present(&params, "recurse") && !present(&params, "keys") {
            return Err(Failure::bad_request("Missing key name"));
        }
        read(&state, &who, "", &params).await
    })
    .await
}

async fn read(
    state: &AppState,
    who: &Who,
    key: &str,
    params: &Params,
) -> Result<Response, Failure> {
    let blocking = params.blocking()?;
    if present(params, "keys") {
        let separator = params
            .0
            .get("separator")
            .or_else(|| params.0.get("seperator"))
            .filter(|s| !s.is_empty());
        let found = listing(state, &state.store, key, blocking).await;
        let keys: BTreeSet<&str> = found
            .entries
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !is_internal(k) && who.may_read_key(k))
            .map(|k| match separator {
                Some(sep) => match k[key.len()..].find(sep.as_str()) {
                    Some(at) => &k[..key.len() + at + sep.len()],
                    None => k,
                },
                None => k,
            })
            .collect();
        if keys.is_empty() && !key.is_empty() {
            return Ok(at_index(not_found(), found.index));
        }
        return Ok(at_index(json(&keys), found.index));
    }
    if present(params, "recurse") {
        let found = listing(state, &state.store, key, blocking).await;
        let entries: Vec<DirEntry<'_>> = found
            .entries
            .iter()
            .filter(|(k, _)| !is_internal(k) && who.may_read_key(k))
            .map(|(k, e)| DirEntry::of(k, e, true))
            .collect();
        if entries.is_empty() {
            return Ok(at_index(not_found(), found.index));
        }
        return Ok(at_index(json(&entries), found.index));
    }
    who.kv(key, Need::Read)?;
    if let Some(b) = blocking.map(|b| b.clamped(state)) {
        hold_key(state, key, &b).await;
    }
    match state.store.get(key) {
        Some(e) if present(params, "raw") => Ok(at_index(raw(&e.value), e.modify_index)),
        Some(e) => Ok(at_index(
            json(&[DirEntry::of(key, &e, true)]),
            e.modify_index,
        )),
        None => Ok(at_index(not_found(), state.store.state(key).index)),
    }
}

/// Consul's 404 for a missing key: an empty body.
fn not_found() -> Response {
    axum::http::StatusCode::NOT_FOUND.into_response()
}

/// `?raw`: the value's bytes, served so that a browser never runs them (CVE-2020-25864).
fn raw(value: &KvValue) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, "sandbox"),
        ],
        value.shared_bytes(),
    )
        .into_response()
}

/// How a `PUT` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Always (the key's lock, if any, is kept).
    Plain,
    /// `?cas=N`: only if the key's `ModifyIndex` is N (0: only if absent).
    Cas(u64),
    /// `?acquire=S`: only if no other session holds the key's lock; takes it for S.
    Acquire(SessionId),
    /// `?release=S`: only if S holds the key's lock; lets it go.
    Release(SessionId),
}

/// `PUT /v1/kv/{key}` with the raw value as body (`?flags`, `?cas`, `?acquire`, `?release`):
/// `true` or `false`.
pub(super) async fn put(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
    body: Bytes,
) -> Response {
    metered(&state, Metric::ConsulKvPut, async {
        let KeyPath(key) = key?;
        who.kv(&key, Need::Write)?;
        let params = params?;
        let flags = match params.0.get("flags") {
            None => 0,
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| Failure::bad_request(format!("Invalid flags: {v:?}")))?,
        };
        let how = put_mode(&params)?;
        if body.len() > state.limits.max_value_bytes {
            return Err(Failure::Text(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value exceeds {} byte limit (it is {} bytes)",
                    state.limits.max_value_bytes,
                    body.len()
                ),
            ));
        }
        let applied = write(&state, key, KvValue::bytes(body), flags, how).await?;
        Ok(verdict(applied))
    })
    .await
}

/// The write `?cas`, `?acquire` and `?release` ask for (at most one of them).
fn put_mode(params: &Params) -> Result<Put, Failure> {
    let cas = params.0.get("cas");
    let acquire = params.0.get("acquire");
    let release = params.0.get("release");
    if [cas, acquire, release].iter().flatten().count() > 1 {
        return Err(Failure::bad_request(
            "Conflicting flags: cas, acquire and release exclude each other",
        ));
    }
    if let Some(v) = cas {
        let n = v
            .parse::<u64>()
            .map_err(|_| Failure::bad_request(format!("Invalid cas index: {v:?}")))?;
        return Ok(Put::Cas(n));
    }
    if let Some(id) = acquire {
        return Ok(Put::Acquire(session::parse_id(id)?));
    }
    if let Some(id) = release {
        return Ok(Put::Release(session::parse_id(id)?));
    }
    Ok(Put::Plain)
}

/// What one attempt of a write came to.
enum Attempt {
    /// Applied, or refused for good (`false`): the answer.
    Done(bool),
    /// Another write landed between the read and the CAS: read again.
    Raced,
}

/// Writes `value` with `flags` to `key` as `how` says; `Ok(false)` when its condition does not
/// hold. The key's lock state carries over from the version the write replaces (Consul keeps
/// `Session` and `LockIndex` across a plain write), so every form reads the key and then CASes
/// on the index it read.
pub(crate) async fn write(
    state: &AppState,
    key: String,
    value: KvValue,
    flags: u64,
    how: Put,
) -> Result<bool, Failure> {
    for _ in 0..ATTEMPTS {
        let current = state.store.get(key.as_str());
        let expected = current.as_ref().map_or(0, |e| e.modify_index);
        let (lock_index, holder) = current
            .as_ref()
            .map_or((0, None), |e| (e.value.lock_index(), e.value.session()));
        let attempt = match how {
            Put::Plain => {
                let value = value.clone().with_lock(lock_index, holder);
                commit(
                    state,
                    Op::set_cas(key.clone(), value, expected).with_flags(flags),
                    None,
                )
                .await?
            }
            Put::Cas(n) => {
                if n != expected {
                    return Ok(false);
                }
                let value = value.clone().with_lock(lock_index, holder);
                match commit(
                    state,
                    Op::set_cas(key.clone(), value, n).with_flags(flags),
                    None,
                )
                .await?
                {
                    // Lost to a write that landed after the read: the index is stale now.
                    Attempt::Raced => Attempt::Done(false),
                    done => done,
                }
            }
            Put::Acquire(id) => {
                let Some(record_index) = Sessions::live_index(state, id) else {
                    return Err(session::invalid(id));
                };
                match holder {
                    Some(other) if other != id => return Ok(false),
                    _ if holder.is_none() && state.sessions.delayed(&key) => return Ok(false),
                    _ => {}
                }
                // Re-acquiring a held lock updates the value and keeps the count.
                let lock_index = if holder == Some(id) {
                    lock_index
                } else {
                    lock_index + 1
                };
                let value = value.clone().with_lock(lock_index, Some(id));
                let write = Op::set_cas(key.clone(), value, expected).with_flags(flags);
                commit(
                    state,
                    write,
                    Some(Op::check_index(session::record_key(id), record_index)),
                )
                .await?
            }
            Put::Release(id) => {
                if holder != Some(id) {
                    return Ok(false);
                }
                let value = value.clone().with_lock(lock_index, None);
                commit(
                    state,
                    Op::set_cas(key.clone(), value, expected).with_flags(flags),
                    None,
                )
                .await?
            }
        };
        match attempt {
            Attempt::Done(applied) => return Ok(applied),
            Attempt::Raced => tokio::task::yield_now().await,
        }
    }
    Err(Failure::internal(format!(
        "the write to {key:?} lost the race to other writers {ATTEMPTS} times; try again"
    )))
}

/// Commits `write` (with `check` in the same batch, if any) and waits for its acknowledgement.
async fn commit(
    state: &AppState,
    write: Op<String, KvValue>,
    check: Option<Op<String, KvValue>>,
) -> Result<Attempt, Failure> {
    let pending = match check {
        None => match write {
            Op::SetCas {
                key,
                value,
                expected,
                flags,
            } => state.db().put(key, value, Some(expected), flags, None),
            other => state.db().batch(vec![other]),
        },
        Some(check) => state.db().batch(vec![write, check]),
    };
    Ok(match settle(pending, "key").await? {
        Some(_) => Attempt::Done(true),
        None => Attempt::Raced,
    })
}

/// `PUT /v1/kv/` and `PUT /v1/kv`: a write needs a key.
pub(super) async fn missing_key(State(state): State<AppState>) -> Response {
    metered(&state, Metric::ConsulKvPut, async {
        Err(Failure::bad_request("Missing key name"))
    })
    .await
}

/// `DELETE /v1/kv/{key}` (`?recurse`, `?cas=N`): `true`, or `false` when the CAS fails.
pub(super) async fn delete(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulKvDelete, async {
        let KeyPath(key) = key?;
        remove(&state, &who, key, &params?).await
    })
    .await
}

/// `DELETE /v1/kv/?recurse`: every key the caller may write.
pub(super) async fn delete_all(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::ConsulKvDelete, async {
        let params = params?;
        if !present(&params, "recurse") {
            return Err(Failure::bad_request("Missing key name"));
        }
        remove(&state, &who, String::new(), &params).await
    })
    .await
}

async fn remove(
    state: &AppState,
    who: &Who,
    key: String,
    params: &Params,
) -> Result<Response, Failure> {
    let cas = match params.0.get("cas") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Failure::bad_request(format!("Invalid cas index: {v:?}")))?,
        ),
    };
    if present(params, "recurse") {
        if cas.is_some() {
            return Err(Failure::bad_request("Conflicting flags: cas and recurse"));
        }
        delete_tree(state, who, &key).await?;
        return Ok(verdict(true));
    }
    who.kv(&key, Need::Write)?;
    match cas {
        // Consul's rule: index 0 deletes nothing; it holds only for an absent key.
        Some(0) => Ok(verdict(!state.store.contains_key(key.as_str()))),
        Some(n) => {
            let deleted = settle(state.db().delete_cas(key.as_str(), n), "key").await?;
            Ok(verdict(deleted.is_some()))
        }
        None => {
            // Deleting an absent key (`None` here) is a success in Consul.
            settle(state.db().delete(key.as_str()), "key").await?;
            Ok(verdict(true))
        }
    }
}

/// Deletes every key under `prefix` in one batch at one index (in batches of the server's
/// `--max-batch` when there are more), retrying when a key changed between the listing and the
/// batch. The caller must be allowed to write every one of them.
async fn delete_tree(state: &AppState, who: &Who, prefix: &str) -> Result<(), Failure> {
    for _ in 0..ATTEMPTS {
        let entries: Vec<(String, u64)> = state
            .store
            .listing(prefix)
            .entries
            .into_iter()
            .filter(|(k, _)| !is_internal(k))
            .map(|(k, e)| (k, e.modify_index))
            .collect();
        for (k, _) in &entries {
            who.kv(k, Need::Write)?;
        }
        let ops = entries
            .into_iter()
            .map(|(k, index)| Op::delete_cas(k, index))
            .collect();
        if commit_in_batches(state, ops).await? {
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
    Err(Failure::internal(format!(
        "deleting the tree {prefix:?} lost the race to other writers {ATTEMPTS} times; try again"
    )))
}
