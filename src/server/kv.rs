//! The KV endpoints: `/kv/…` and `/batch/kv/…` (SPEC §3).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::acl::{Need, Who};
use super::consul::is_internal;
use super::error::ApiError;
use super::extract::{JsonBody, KeyPath, Params};
use super::metrics::Op as Metric;
use super::value::KvValue;
use super::watch::{hold, hold_key, metered_at, Blocking};
use super::{acknowledged, metered, AppState};
use crate::defaults::MAX_TTL;
use crate::{Entry, Op};
use std::sync::atomic::{AtomicU64, Ordering};

/// `PUT /kv/{key}` body.
#[derive(Deserialize)]
pub struct PutBody {
    value: String,
    cas: Option<u64>,
    flags: Option<u64>,
    /// A humantime duration ("30s", "1h 30m"); "0s" or absent: no TTL.
    ttl: Option<String>,
}

/// A `ttl` field: `None` for none (absent or zero), else a duration up to [`MAX_TTL`].
fn parse_ttl(ttl: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = ttl else { return Ok(None) };
    let ttl = humantime::parse_duration(text).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid ttl '{text}': {e} (a duration such as \"30s\" or \"1h 30m\")"
        ))
    })?;
    if ttl > MAX_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl '{text}' is longer than the maximum of {}",
            humantime::format_duration(MAX_TTL)
        )));
    }
    Ok((!ttl.is_zero()).then_some(ttl))
}

/// A deadline in RFC 3339, UTC, to the millisecond. RFC 3339 ends with the year 9999; a later
/// deadline (possible through the library, which allows up to the year 10889) is shown as its
/// last millisecond.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    let last = std::time::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.min(last)).to_string()
}

pub(crate) fn entry_json(key: &str, e: &Entry<KvValue>, metadata: bool) -> Value {
    let mut v = json!({"key": key});
    put_value(&mut v, &e.value);
    if metadata {
        v["modify_index"] = json!(e.modify_index);
        v["create_index"] = json!(e.create_index);
        v["flags"] = json!(e.flags);
        if let Some(at) = e.expires_at() {
            v["expires_at"] = json!(rfc3339_millis(at));
        }
    }
    v
}

/// Appends `value` as the last members of a JSON object being written by hand (the hot path,
/// `app.rs`): `,"value":"…"` when it is text, else `,"value_base64":"…"`, as [`put_value`] puts
/// them.
pub(crate) fn put_value_bytes(out: &mut Vec<u8>, value: &KvValue) {
    match value.as_str() {
        Some(text) => {
            out.extend_from_slice(b",\"value\":");
            super::app::push_str(out, text);
        }
        None => {
            use base64::Engine;
            out.extend_from_slice(b",\"value_base64\":\"");
            let start = out.len();
            let len = base64::encoded_len(value.len(), true).unwrap_or(0);
            out.resize(start + len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(value.as_bytes(), &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
    }
}

/// Puts `value` into the JSON object `v`: as `"value"` when it is text (every value the native
/// API wrote), else as `"value_base64"` (bytes a Consul client wrote that are not UTF-8).
pub(crate) fn put_value(v: &mut Value, value: &KvValue) {
    match value.as_str() {
        Some(text) => v["value"] = json!(text),
        None => {
            use base64::Engine;
            v["value_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(value.as_bytes()));
        }
    }
}

/// `GET /kv/` and `GET /kv`: the sorted keys, `?prefix=` filters; only the keys the caller
/// may read. Blocking with `?index=&wait=`; `X-Caskv-Index` is the prefix's index.
pub async fn list(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    let index = AtomicU64::new(0);
    metered_at(&state, Metric::KvList, &index, async {
        let params = params?;
        let blocking = params.blocking()?;
        let prefix = params.0.get("prefix").map_or("", String::as_str);
        let listing = listing(&state, &state.store, prefix, blocking).await;
        // Relaxed: read back by `metered_at` on this task.
        index.store(listing.index, Ordering::Relaxed);
        let keys: Vec<String> = listing
            .entries
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !is_internal(k) && who.may_read_key(k))
            .collect();
        Ok(Json(keys).into_response())
    })
    .await
}

/// The entries of `store` under `prefix`, after holding a blocking read until the prefix's
/// index passes the one asked for; the index clamped to the feed's watermark read before the
/// scan (every write at or below it is in the listing, so a client that blocks on that index
/// misses no write under the prefix that took a lower index and landed later).
pub(crate) async fn listing<V: Clone + Send + 'static>(
    state: &AppState,
    store: &crate::Store<String, V>,
    prefix: &str,
    blocking: Option<Blocking>,
) -> crate::Listing<String, V> {
    let mut watermark = state.db().feed().watermark();
    let mut listing = store.listing(prefix);
    if let Some(b) = blocking.map(|b| b.clamped(state)) {
        if listing.index <= b.index {
            let mut watch = store.watch_prefix(prefix, b.index);
            hold(state, &b, watch.changed()).await;
            // Scanned again only after a hold: a read that need not wait scans once.
            watermark = state.db().feed().watermark();
            listing = store.listing(prefix);
        }
    }
    listing.index = listing.index.min(watermark);
    listing
}

/// `PUT /kv/` and `DELETE /kv/`: a write needs a key.
pub async fn empty_key(State(state): State<AppState>, method: axum::http::Method) -> Response {
    let op = if method == axum::http::Method::PUT {
        Metric::KvSet
    } else {
        Metric::KvDelete
    };
    metered(&state, op, async {
        Err(ApiError::BadRequest("the key is empty".into()))
    })
    .await
}

/// `GET /kv/{key}` (`?metadata=true`); `?recurse=true`: the entries under the key as a
/// prefix. Blocking with `?index=&wait=`; `X-Caskv-Index` is the key's (or prefix's) index.
pub async fn get(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    let index = AtomicU64::new(0);
    metered_at(&state, Metric::KvGet, &index, async {
        let KeyPath(key) = key?;
        let params = params?;
        let metadata = params.metadata()?;
        let blocking = params.blocking()?;
        if params.recurse()? {
            let listing = listing(&state, &state.store, &key, blocking).await;
            // Relaxed: read back by `metered_at` on this task.
            index.store(listing.index, Ordering::Relaxed);
            let entries: Vec<Value> = listing
                .entries
                .iter()
                .filter(|(k, _)| !is_internal(k) && who.may_read_key(k))
                .map(|(k, e)| entry_json(k, e, metadata))
                .collect();
            return Ok(Json(entries).into_response());
        }
        who.kv(&key, Need::Read)?;
        if let Some(b) = blocking.map(|b| b.clamped(&state)) {
            hold_key(&state, &key, &b).await;
        }
        match state.store.get(key.as_str()) {
            Some(e) => {
                // Relaxed: as above.
                index.store(e.modify_index, Ordering::Relaxed);
                Ok(Json(entry_json(&key, &e, metadata)).into_response())
            }
            None => {
                // Relaxed: as above.
                index.store(state.store.state(key.as_str()).index, Ordering::Relaxed);
                Err(ApiError::KeyNotFound(key))
            }
        }
    })
    .await
}

/// `PUT /kv/{key}` body `{"value", "cas"?, "flags"?, "ttl"?}`.
pub async fn put(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    body: Result<JsonBody<PutBody>, ApiError>,
) -> Response {
    metered(&state, Metric::KvSet, async {
        let KeyPath(key) = key?;
        who.kv(&key, Need::Write)?;
        let JsonBody(body) = body?;
        let index = write(&state, &key, body).await?;
        Ok(Json(json!({"message": "key set", "key": key, "modify_index": index})).into_response())
    })
    .await
}

/// The write of `PUT /kv/{key}` once its key, rights and body were checked (the router's
/// handler above and the hot path in `app.rs` share it).
/// Returns the write's index.
pub(crate) async fn write(state: &AppState, key: &str, body: PutBody) -> Result<u64, ApiError> {
    state.limits.check_value(key, body.value.len())?;
    let ttl = parse_ttl(body.ttl.as_deref())?;
    let write = state.db().put(
        key.to_string(),
        KvValue::text(body.value),
        body.cas,
        body.flags,
        ttl,
    );
    acknowledged(write, "key").await
}

/// `DELETE /kv/{key}` (`?cas=N`).
pub async fn delete(
    State(state): State<AppState>,
    who: Who,
    key: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::KvDelete, async {
        let KeyPath(key) = key?;
        who.kv(&key, Need::Write)?;
        let cas = params?.cas()?;
        let index = acknowledged(state.db().remove(key.as_str(), cas), "key").await?;
        Ok(
            Json(json!({"message": "key deleted", "key": key, "modify_index": index}))
                .into_response(),
        )
    })
    .await
}

#[derive(Deserialize)]
pub struct KeysBody {
    keys: Vec<String>,
}

#[derive(Deserialize)]
pub struct ItemsBody {
    #[serde(deserialize_with = "unique_keys")]
    items: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub struct SetCasBody {
    #[serde(deserialize_with = "unique_keys")]
    items: BTreeMap<String, String>,
    #[serde(deserialize_with = "unique_keys")]
    expected_indices: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
pub struct DeleteCasBody {
    keys: Vec<String>,
    #[serde(deserialize_with = "unique_keys")]
    expected_indices: BTreeMap<String, u64>,
}

/// A JSON object whose member names must be distinct: the same key twice in one batch is a
/// bad request (SPEC §2), not "the last one wins".
fn unique_keys<'de, D, T>(deserializer: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Unique<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Unique<T> {
        type Value = BTreeMap<String, T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, T>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "key '{k}' appears more than once in the batch"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique(std::marker::PhantomData))
}

fn check_keys<'a>(
    state: &AppState,
    keys: impl ExactSizeIterator<Item = &'a String>,
) -> Result<(), ApiError> {
    state.limits.check_batch(keys.len())?;
    for k in keys {
        state.limits.check_key(k)?;
    }
    Ok(())
}

fn expected_for(expected: &BTreeMap<String, u64>, key: &str) -> Result<u64, ApiError> {
    expected.get(key).copied().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "key '{key}' has no expected index in expected_indices"
        ))
    })
}

/// `POST /batch/kv/get` `{"keys": [...]}`: one atomic snapshot of the keys.
pub async fn batch_get(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<KeysBody>, ApiError>,
) -> Response {
    let index = AtomicU64::new(0);
    metered_at(&state, Metric::BatchGet, &index, async {
        let JsonBody(body) = body?;
        check_keys(&state, body.keys.iter())?;
        who.kv_all(&body.keys, Need::Read)?;
        let read = state
            .store
            .get_many(&body.keys)
            .map_err(|e| ApiError::from_store(e, "key"))?;
        let mut found = Map::new();
        let mut not_found = Vec::new();
        let mut highest = 0;
        for (key, entry) in body.keys.iter().zip(read) {
            highest = highest.max(match &entry {
                Some(e) => e.modify_index,
                None => state.store.state(key.as_str()).index,
            });
            match entry {
                Some(e) => {
                    let mut v = json!({"modify_index": e.modify_index, "create_index": e.create_index, "flags": e.flags});
                    put_value(&mut v, &e.value);
                    found.insert(key.clone(), v);
                }
                None if !not_found.contains(key) => not_found.push(key.clone()),
                None => {}
            }
        }
        // Relaxed: read back by `metered_at` on this task.
        index.store(highest, Ordering::Relaxed);
        Ok(Json(json!({"found": found, "not_found": not_found})).into_response())
    })
    .await
}

/// The body of a batch that wrote `keys` at `index`: `{"message","keys","count","modify_index"}`.
fn keys_response(message: &str, mut keys: Vec<String>, index: u64) -> Response {
    keys.sort();
    Json(json!({"message": message, "count": keys.len(), "keys": keys, "modify_index": index}))
        .into_response()
}

async fn run_batch(state: &AppState, ops: Vec<Op<String, KvValue>>) -> Result<u64, ApiError> {
    acknowledged(state.db().batch(ops), "key").await
}

/// `POST /batch/kv/set` `{"items": {k: v}}`.
pub async fn batch_set(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<ItemsBody>, ApiError>,
) -> Response {
    metered(&state, Metric::BatchSet, async {
        let JsonBody(body) = body?;
        check_keys(&state, body.items.keys())?;
        who.kv_all(body.items.keys(), Need::Write)?;
        for (k, v) in &body.items {
            state.limits.check_value(k, v.len())?;
        }
        let keys: Vec<String> = body.items.keys().cloned().collect();
        let ops = body
            .items
            .into_iter()
            .map(|(k, v)| Op::set(k, KvValue::text(v)))
            .collect();
        let index = run_batch(&state, ops).await?;
        Ok(keys_response("keys set", keys, index))
    })
    .await
}

/// `POST /batch/kv/delete` `{"keys": [...]}`: every key must exist.
pub async fn batch_delete(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<KeysBody>, ApiError>,
) -> Response {
    metered(&state, Metric::BatchDelete, async {
        let JsonBody(body) = body?;
        check_keys(&state, body.keys.iter())?;
        who.kv_all(&body.keys, Need::Write)?;
        let ops = body.keys.iter().cloned().map(Op::delete).collect();
        let index = run_batch(&state, ops).await?;
        Ok(keys_response("keys deleted", body.keys, index))
    })
    .await
}

/// `POST /batch/kv/set-cas` `{"items": {k: v}, "expected_indices": {k: n}}` (0 = create-only).
pub async fn batch_set_cas(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<SetCasBody>, ApiError>,
) -> Response {
    metered(&state, Metric::BatchSetCas, async {
        let JsonBody(body) = body?;
        check_keys(&state, body.items.keys())?;
        who.kv_all(body.items.keys(), Need::Write)?;
        let mut ops = Vec::with_capacity(body.items.len());
        for (k, v) in &body.items {
            state.limits.check_value(k, v.len())?;
            ops.push(Op::set_cas(
                k.clone(),
                KvValue::text(v.clone()),
                expected_for(&body.expected_indices, k)?,
            ));
        }
        if let Some(extra) = body
            .expected_indices
            .keys()
            .find(|k| !body.items.contains_key(*k))
        {
            return Err(ApiError::BadRequest(format!(
                "expected_indices names '{extra}', which is not in items"
            )));
        }
        let index = run_batch(&state, ops).await?;
        let new_indices: Map<String, Value> = body
            .items
            .keys()
            .map(|k| (k.clone(), json!(index)))
            .collect();
        Ok(Json(
            json!({"message": "keys set", "new_indices": new_indices, "count": new_indices.len()}),
        )
        .into_response())
    })
    .await
}

/// `POST /batch/kv/delete-cas` `{"keys": [...], "expected_indices": {k: n}}`.
pub async fn batch_delete_cas(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<DeleteCasBody>, ApiError>,
) -> Response {
    metered(&state, Metric::BatchDeleteCas, async {
        let JsonBody(body) = body?;
        check_keys(&state, body.keys.iter())?;
        who.kv_all(&body.keys, Need::Write)?;
        let mut ops = Vec::with_capacity(body.keys.len());
        for k in &body.keys {
            ops.push(Op::delete_cas(
                k.clone(),
                expected_for(&body.expected_indices, k)?,
            ));
        }
        let index = run_batch(&state, ops).await?;
        Ok(keys_response("keys deleted", body.keys, index))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::rfc3339_millis;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn deadlines_past_the_year_9999_print_as_its_last_millisecond() {
        let far = UNIX_EPOCH + Duration::from_millis(crate::expiry::MAX_DEADLINE);
        assert_eq!(rfc3339_millis(far), "9999-12-31T23:59:59.999Z");
        let near = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339_millis(near), "1970-01-01T00:00:01.500Z");
    }
}
