//! The bounds on everything a client controls. Each has a default (SPEC §1, §3) and a flag.

use super::error::ApiError;
use crate::defaults;
use crate::persist::{PersistError, MAX_BATCH_BYTES, MAX_ENTRY_BYTES};

/// Size bounds of the HTTP API.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest key (and service name), in bytes. Default 512.
    pub max_key_bytes: usize,
    /// Longest value, in bytes. Default 512 KiB.
    pub max_value_bytes: usize,
    /// Largest request body, in bytes. Default 1 MiB.
    pub max_body_bytes: usize,
    /// Most operations (keys) in one batch. Default 1000.
    pub max_batch: usize,
    /// Most keys the KV store holds: beyond it, writes evict others (the store becomes a cache,
    /// `StoreBuilder::max_entries`). Default none.
    pub max_entries: Option<u64>,
    /// Most bytes of keys and values (as the log encodes them) the KV store holds: beyond it,
    /// writes evict others. Default none. With `max_entries` too, this one applies.
    pub max_memory: Option<u64>,
    /// What the change feed (`GET /watch`) remembers. Default 100,000 changes or 64 MiB.
    pub history: crate::HistoryLimits,
    /// How long a change-feed stream waits for a client that takes nothing while its buffer is
    /// full, before it ends the stream with `event: lagged`. Default 5 s.
    pub watch_lag_timeout: std::time::Duration,
    /// Most operations in one Consul transaction (`PUT /v1/txn`). Default 128, as Consul's.
    pub max_txn_ops: usize,
    /// The shortest TTL a Consul session may ask for. Default 10 s, as Consul's.
    pub min_session_ttl: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: defaults::MAX_KEY_BYTES,
            max_value_bytes: defaults::MAX_VALUE_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            max_batch: defaults::MAX_BATCH,
            max_entries: None,
            max_memory: None,
            history: crate::HistoryLimits::default(),
            watch_lag_timeout: defaults::WATCH_LAG_TIMEOUT,
            max_txn_ops: defaults::MAX_TXN_OPS,
            min_session_ttl: defaults::MIN_SESSION_TTL,
        }
    }
}

impl Limits {
    /// Refuses bounds that would let a client send a write one log record cannot hold (checked
    /// when the server has a data directory): a key plus a value must fit
    /// [`MAX_ENTRY_BYTES`], and a body (every key and value of a batch, escaped) must fit
    /// [`MAX_BATCH_BYTES`]. Without this, such a write would reach the log and fail it, and
    /// every later write would answer 503 until a restart.
    pub fn check_loggable(&self) -> Result<(), PersistError> {
        let entry = self.max_key_bytes.saturating_add(self.max_value_bytes);
        if entry > MAX_ENTRY_BYTES {
            return Err(PersistError::LimitTooLarge {
                what: "--max-key-bytes plus --max-value-bytes",
                len: entry,
                max: MAX_ENTRY_BYTES,
            });
        }
        if self.max_body_bytes > MAX_BATCH_BYTES {
            return Err(PersistError::LimitTooLarge {
                what: "--max-body-bytes",
                len: self.max_body_bytes,
                max: MAX_BATCH_BYTES,
            });
        }
        Ok(())
    }

    /// A key is 1..=`max_key_bytes` bytes of UTF-8 with no NUL.
    pub fn check_key(&self, key: &str) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(ApiError::BadRequest("the key is empty".into()));
        }
        if key.len() > self.max_key_bytes {
            return Err(ApiError::BadRequest(format!(
                "the key is {} bytes, over the limit of {}",
                key.len(),
                self.max_key_bytes
            )));
        }
        if key.contains('\0') {
            return Err(ApiError::BadRequest("the key contains a NUL byte".into()));
        }
        Ok(())
    }

    /// A value is at most `max_value_bytes` bytes.
    pub fn check_value(&self, key: &str, len: usize) -> Result<(), ApiError> {
        if len > self.max_value_bytes {
            return Err(ApiError::TooLarge(format!(
                "the value of '{key}' is {} bytes, over the limit of {}",
                len, self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// A service's address, tags and metadata together are at most `max_value_bytes` (they are
    /// its value).
    pub fn check_service(&self, service: &crate::Service) -> Result<(), ApiError> {
        let bytes = service.address.len()
            + service.tags.iter().map(String::len).sum::<usize>()
            + service
                .meta
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > self.max_value_bytes {
            return Err(ApiError::TooLarge(format!(
                "service '{}' is {bytes} bytes, over the limit of {}",
                service.name, self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// A batch holds 1..=`max_batch` keys.
    pub fn check_batch(&self, len: usize) -> Result<(), ApiError> {
        if len == 0 {
            return Err(ApiError::BadRequest("empty batch".into()));
        }
        if len > self.max_batch {
            return Err(ApiError::BadRequest(format!(
                "batch of {len} keys exceeds the limit of {}",
                self.max_batch
            )));
        }
        Ok(())
    }
}
