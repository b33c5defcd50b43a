//! `PUT /v1/txn`: Consul's transactions of KV operations, all-or-nothing at one index.
//!
//! # How a transaction runs
//! Optimistically, on the batch machinery:
//! 1. Read every key the operations name in one atomic snapshot (`get_many`), and then the keys
//!    under every prefix a tree operation names (each prefix listed once).
//! 2. Run the operations in order against that view, in memory: each sees what the earlier ones
//!    wrote, as in Consul, and each that fails its condition is an error (every failure is
//!    listed, with its operation's position).
//! 3. With no error, commit one batch: for each key written, a CAS on the index it was read at;
//!    for each key only read or checked, a check of that index; for each session a lock names,
//!    a check of its record. The batch commits at one index, or not at all when any of those
//!    moved since the read, and then the transaction runs again from step 1.
//!
//! A transaction whose operations only read answers from what it read and commits nothing: its
//! named keys from one snapshot, each tree from its own listing.
//!
//! Known difference from Consul: a key created under a tree operation's prefix after the read
//! does not make the commit fail (the batch checks the keys it read, not the prefix's absence
//! of others).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::kv::DirEntry;
use super::session::{self, Sessions};
use super::{is_internal, json, metered, settle, Failure};
use crate::server::acl::{Need, Who};
use crate::server::metrics::Op as Metric;
use crate::server::{ApiError, AppState, KvValue, SessionId};
use crate::{Entry, Op};

/// How many times a transaction runs again after a key it read changed before its commit.
const ATTEMPTS: usize = 64;

/// One operation of the request body (member names in any case, as Consul's decoder reads
/// them: [`lowercased`]).
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
struct TxnOp {
    kv: Option<KvOp>,
    node: Option<serde_json::Value>,
    service: Option<serde_json::Value>,
    check: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
struct KvOp {
    verb: String,
    #[serde(default)]
    key: String,
    /// Base64.
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    session: Option<String>,
}

/// The verbs of Consul's KV transaction operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Set,
    Cas,
    Lock,
    Unlock,
    Get,
    GetOrEmpty,
    GetTree,
    CheckIndex,
    CheckSession,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
}

impl Verb {
    fn parse(text: &str) -> Option<Verb> {
        Some(match text {
            "set" => Verb::Set,
            "cas" => Verb::Cas,
            "lock" => Verb::Lock,
            "unlock" => Verb::Unlock,
            "get" => Verb::Get,
            "get-or-empty" => Verb::GetOrEmpty,
            "get-tree" => Verb::GetTree,
            "check-index" => Verb::CheckIndex,
            "check-session" => Verb::CheckSession,
            "check-not-exists" => Verb::CheckNotExists,
            "delete" => Verb::Delete,
            "delete-tree" => Verb::DeleteTree,
            "delete-cas" => Verb::DeleteCas,
            _ => return None,
        })
    }

    fn on_prefix(self) -> bool {
        matches!(self, Verb::GetTree | Verb::DeleteTree)
    }

    fn writes(self) -> bool {
        matches!(
            self,
            Verb::Set
                | Verb::Cas
                | Verb::Lock
                | Verb::Unlock
                | Verb::Delete
                | Verb::DeleteTree
                | Verb::DeleteCas
        )
    }
}

/// An operation, checked.
struct Checked {
    verb: Verb,
    key: String,
    value: Option<KvValue>,
    flags: u64,
    index: u64,
    session: Option<SessionId>,
}

/// `{"OpIndex": i, "What": "…"}`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: usize,
    what: String,
}

/// A key's state in the transaction's view.
#[derive(Clone)]
struct Version {
    value: KvValue,
    flags: u64,
    /// `None`: created by this transaction (its index once committed).
    create_index: Option<u64>,
    /// `None`: written by this transaction.
    modify_index: Option<u64>,
}

impl Version {
    fn of(e: &Entry<KvValue>) -> Version {
        Version {
            value: e.value.clone(),
            flags: e.flags,
            create_index: Some(e.create_index),
            modify_index: Some(e.modify_index),
        }
    }
}

/// The transaction's view: what was read (`read`: the index each key had, 0 when absent) and
/// what the operations so far made of it.
#[derive(Default)]
struct View {
    read: BTreeMap<String, u64>,
    now: BTreeMap<String, Option<Version>>,
    /// Sessions a lock verb relied on, and their records' indices.
    sessions: BTreeMap<SessionId, u64>,
}

impl View {
    fn seen(&mut self, key: &str, e: Option<&Entry<KvValue>>) {
        if !self.read.contains_key(key) {
            self.read
                .insert(key.to_string(), e.map_or(0, |e| e.modify_index));
            self.now.insert(key.to_string(), e.map(Version::of));
        }
    }

    fn get(&self, key: &str) -> Option<&Version> {
        self.now.get(key).and_then(Option::as_ref)
    }

    /// The keys under `prefix` present in the view, sorted.
    fn under(&self, prefix: &str) -> Vec<String> {
        self.now
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, v)| v.is_some() && !is_internal(k))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A result entry: the key and its version, the value shown only for reads.
struct Shown {
    key: String,
    version: Version,
    with_value: bool,
}

/// `PUT /v1/txn`: a JSON array of `{"KV": {...}}` operations.
pub(super) async fn txn(State(state): State<AppState>, who: Who, body: Bytes) -> Response {
    metered(&state, Metric::ConsulTxn, async {
        let ops: Vec<TxnOp> = serde_json::from_slice(&body)
            .map(lowercased)
            .and_then(serde_json::from_value)
            .map_err(|e| Failure::bad_request(format!("Failed to parse body: {e}")))?;
        let max = state.limits.max_txn_ops;
        if ops.len() > max {
            return Err(Failure::Text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Transaction contains too many operations ({} > {max})",
                    ops.len()
                ),
            ));
        }
        let checked = check(&state, &who, ops)?;
        for _ in 0..ATTEMPTS {
            if let Some(response) = attempt(&state, &who, &checked).await? {
                return Ok(response);
            }
            tokio::task::yield_now().await;
        }
        Err(Failure::internal(format!(
            "the transaction lost the race to other writers {ATTEMPTS} times; try again"
        )))
    })
    .await
}

/// The body with the member names of each operation and of the object in it lowercased
/// (Consul matches them whatever their case); values are left as they are.
fn lowercased(body: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn lower(v: Value, depth: usize) -> Value {
        match v {
            Value::Object(members) if depth > 0 => Value::Object(
                members
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), lower(v, depth - 1)))
                    .collect(),
            ),
            other => other,
        }
    }
    match body {
        Value::Array(ops) => Value::Array(ops.into_iter().map(|op| lower(op, 2)).collect()),
        other => other,
    }
}

/// Checks each operation's shape, bounds and the caller's rights.
fn check(state: &AppState, who: &Who, ops: Vec<TxnOp>) -> Result<Vec<Checked>, Failure> {
    let mut checked = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let Some(kv) = op.kv else {
            let what = if op.node.is_some() {
                "Node"
            } else if op.service.is_some() {
                "Service"
            } else if op.check.is_some() {
                "Check"
            } else {
                "an empty"
            };
            return Err(Failure::bad_request(format!(
                "Operation {i}: {what} operations are not supported by caskv (KV only)"
            )));
        };
        let verb = Verb::parse(&kv.verb).ok_or_else(|| {
            Failure::bad_request(format!("Operation {i}: unknown KV verb {:?}", kv.verb))
        })?;
        if verb.on_prefix() {
            // A prefix may be empty (the whole store); otherwise it is bounded as a key is.
            if !kv.key.is_empty() {
                state.limits.check_key(&kv.key)?;
            }
        } else {
            state.limits.check_key(&kv.key)?;
            who.kv(
                &kv.key,
                if verb.writes() {
                    Need::Write
                } else {
                    Need::Read
                },
            )?;
        }
        let value = match kv.value.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| {
                        Failure::bad_request(format!("Operation {i}: Value is not base64: {e}"))
                    })?;
                state.limits.check_value(&kv.key, bytes.len())?;
                Some(KvValue::bytes(Bytes::from(bytes)))
            }
        };
        let session = kv.session.as_deref().filter(|s| !s.is_empty());
        let session = session.map(session::parse_id).transpose()?;
        if matches!(verb, Verb::Lock | Verb::Unlock | Verb::CheckSession) && session.is_none() {
            return Err(Failure::bad_request(format!(
                "Operation {i}: the {:?} verb needs a Session",
                kv.verb
            )));
        }
        checked.push(Checked {
            verb,
            key: kv.key,
            value,
            flags: kv.flags,
            index: kv.index,
            session,
        });
    }
    Ok(checked)
}

/// One run of the transaction; `None` when a key it read moved before its commit.
async fn attempt(
    state: &AppState,
    who: &Who,
    ops: &[Checked],
) -> Result<Option<Response>, Failure> {
    let mut view = View::default();
    let mut keys: Vec<String> = ops
        .iter()
        .filter(|o| !o.verb.on_prefix())
        .map(|o| o.key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    if !keys.is_empty() {
        let read = state
            .store
            .get_many(&keys)
            .map_err(|e| ApiError::from_store(e, "key"))?;
        for (k, e) in keys.iter().zip(read) {
            view.seen(k, e.as_ref());
        }
    }
    // Each prefix listed once per kind of right it needs (a read, or a write).
    let mut listed: Vec<(&str, bool)> = Vec::new();
    for op in ops.iter().filter(|o| o.verb.on_prefix()) {
        let seen = (op.key.as_str(), op.verb.writes());
        if listed.contains(&seen) {
            continue;
        }
        listed.push(seen);
        for (k, e) in state.store.listing(&op.key).entries {
            if !is_internal(&k) {
                let need = if op.verb.writes() {
                    Need::Write
                } else {
                    Need::Read
                };
                who.kv(&k, need)?;
                view.seen(&k, Some(&e));
            }
        }
    }
    let mut shown: Vec<Shown> = Vec::new();
    let mut errors: Vec<TxnError> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(what) = run(state, &mut view, op, &mut shown) {
            errors.push(TxnError { op_index: i, what });
        }
    }
    if !errors.is_empty() {
        // Answer a failure only from a consistent read: if a key moved, run again.
        if !unchanged(state, &view)? {
            return Ok(None);
        }
        let body = serde_json::json!({"Results": null, "Errors": errors});
        let mut response = json(&body);
        *response.status_mut() = StatusCode::CONFLICT;
        return Ok(Some(response));
    }
    let batch = commit_ops(&view);
    let index = if batch.iter().all(|op| matches!(op, Op::CheckIndex { .. })) {
        // Nothing written: the snapshot is the answer.
        0
    } else {
        if batch.len() > state.limits.max_batch {
            return Err(Failure::Text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Transaction touches {} keys, over the server's --max-batch of {}",
                    batch.len(),
                    state.limits.max_batch
                ),
            ));
        }
        match settle(state.db().batch(batch), "key").await? {
            Some(index) => index,
            None => return Ok(None),
        }
    };
    let results: Vec<serde_json::Value> = shown
        .iter()
        .map(|s| {
            let v = &s.version;
            let entry = Entry::new(
                v.value.clone(),
                v.flags,
                v.modify_index.unwrap_or(index),
                v.create_index.unwrap_or(index),
                0,
            );
            serde_json::json!({"KV": DirEntry::of(&s.key, &entry, s.with_value)})
        })
        .collect();
    let results = (!results.is_empty()).then_some(results);
    Ok(Some(
        json(&serde_json::json!({"Results": results, "Errors": null})).into_response(),
    ))
}

/// Whether every key the view read still has the index it was read at.
fn unchanged(state: &AppState, view: &View) -> Result<bool, Failure> {
    let keys: Vec<String> = view.read.keys().cloned().collect();
    if keys.is_empty() {
        return Ok(true);
    }
    let now = state
        .store
        .get_many(&keys)
        .map_err(|e| ApiError::from_store(e, "key"))?;
    Ok(keys
        .iter()
        .zip(now)
        .all(|(k, e)| view.read.get(k) == Some(&e.map_or(0, |e| e.modify_index))))
}

/// The batch that commits the view: a CAS for each key written, a check for each key read,
/// a check of each session record a lock relied on.
fn commit_ops(view: &View) -> Vec<Op<String, KvValue>> {
    let mut ops = Vec::new();
    for (key, &read) in &view.read {
        let now = view.now.get(key).and_then(Option::as_ref);
        let written = now.is_some_and(|v| v.modify_index.is_none());
        ops.push(match now {
            Some(v) if written => {
                Op::set_cas(key.clone(), v.value.clone(), read).with_flags(v.flags)
            }
            None if read != 0 => Op::delete_cas(key.clone(), read),
            _ => Op::check_index(key.clone(), read),
        });
    }
    for (id, index) in &view.sessions {
        ops.push(Op::check_index(session::record_key(*id), *index));
    }
    ops
}

/// Runs one operation on the view; `Err` with Consul's words when its condition fails.
fn run(
    state: &AppState,
    view: &mut View,
    op: &Checked,
    shown: &mut Vec<Shown>,
) -> Result<(), String> {
    let key = op.key.as_str();
    let show = |shown: &mut Vec<Shown>, view: &View, with_value: bool| {
        if let Some(v) = view.get(key) {
            shown.push(Shown {
                key: key.to_string(),
                version: v.clone(),
                with_value,
            });
        }
    };
    let current = view.get(key).cloned();
    let value = || {
        op.value
            .clone()
            .unwrap_or_else(|| KvValue::bytes(Bytes::new()))
    };
    // A write keeps the key's lock (Consul's rule for a plain set).
    let kept = |v: KvValue| match &current {
        Some(c) => v.with_lock(c.value.lock_index(), c.value.session()),
        None => v,
    };
    let set = |view: &mut View, v: KvValue| {
        view.now.insert(
            key.to_string(),
            Some(Version {
                value: v,
                flags: op.flags,
                create_index: current.as_ref().and_then(|c| c.create_index),
                modify_index: None,
            }),
        );
    };
    let missing = || format!("key {key:?} doesn't exist");
    match op.verb {
        Verb::Set => {
            set(view, kept(value()));
            show(shown, view, false);
        }
        Verb::Cas => {
            let matches = match &current {
                None => op.index == 0,
                Some(c) => c.modify_index == Some(op.index) && op.index != 0,
            };
            if !matches {
                return Err(format!("failed to set key {key:?}, index is stale"));
            }
            set(view, kept(value()));
            show(shown, view, false);
        }
        Verb::Lock => {
            let id = op
                .session
                .ok_or_else(|| "a lock needs a session".to_string())?;
            let Some(record) = Sessions::live_index(state, id) else {
                return Err(format!("failed to lock key {key:?}: invalid session {id}"));
            };
            let holder = current.as_ref().and_then(|c| c.value.session());
            if holder.is_some_and(|h| h != id) {
                return Err(format!("failed to lock key {key:?}, lock is already held"));
            }
            if holder.is_none() && state.sessions.delayed(key) {
                return Err(format!(
                    "failed to lock key {key:?}, lock delay is in effect"
                ));
            }
            let lock_index = current.as_ref().map_or(0, |c| c.value.lock_index());
            let lock_index = if holder == Some(id) {
                lock_index
            } else {
                lock_index + 1
            };
            view.sessions.insert(id, record);
            set(view, value().with_lock(lock_index, Some(id)));
            show(shown, view, false);
        }
        Verb::Unlock => {
            let id = op
                .session
                .ok_or_else(|| "an unlock needs a session".to_string())?;
            let Some(c) = current.as_ref().filter(|c| c.value.session() == Some(id)) else {
                return Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                ));
            };
            let lock_index = c.value.lock_index();
            set(view, value().with_lock(lock_index, None));
            show(shown, view, false);
        }
        Verb::Get => {
            if current.is_none() {
                return Err(missing());
            }
            show(shown, view, true);
        }
        Verb::GetOrEmpty => show(shown, view, true),
        Verb::GetTree => {
            for k in view.under(key) {
                if let Some(v) = view.get(&k) {
                    shown.push(Shown {
                        key: k.clone(),
                        version: v.clone(),
                        with_value: true,
                    });
                }
            }
        }
        Verb::CheckIndex => {
            let Some(c) = &current else {
                return Err(missing());
            };
            if c.modify_index != Some(op.index) {
                return Err(format!(
                    "current modify index {} for key {key:?} doesn't match {}",
                    c.modify_index
                        .map_or("(this transaction's)".to_string(), |i| i.to_string()),
                    op.index
                ));
            }
            show(shown, view, false);
        }
        Verb::CheckSession => {
            let Some(c) = &current else {
                return Err(missing());
            };
            let held = c.value.session();
            if held != op.session {
                return Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    held.map(|s| s.to_string()).unwrap_or_default(),
                    op.session.map(|s| s.to_string()).unwrap_or_default()
                ));
            }
            show(shown, view, false);
        }
        Verb::CheckNotExists => {
            if current.is_some() {
                return Err(format!("key {key:?} exists"));
            }
        }
        Verb::Delete => {
            view.now.insert(key.to_string(), None);
        }
        Verb::DeleteTree => {
            for k in view.under(key) {
                view.now.insert(k, None);
            }
        }
        Verb::DeleteCas => {
            let matches = current
                .as_ref()
                .is_some_and(|c| c.modify_index == Some(op.index));
            if !matches {
                return Err(format!("failed to delete key {key:?}, index is stale"));
            }
            view.now.insert(key.to_string(), None);
        }
    }
    Ok(())
}
