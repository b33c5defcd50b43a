//! The bounds on everything a client controls. Each has a default (SPEC §1, §3) and a flag.

use super::error::ApiError;

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 512,
            max_value_bytes: 512 * 1024,
            max_body_bytes: 1024 * 1024,
            max_batch: crate::DEFAULT_MAX_BATCH,
        }
    }
}

impl Limits {
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
    pub fn check_value(&self, key: &str, value: &str) -> Result<(), ApiError> {
        if value.len() > self.max_value_bytes {
            return Err(ApiError::TooLarge(format!(
                "the value of '{key}' is {} bytes, over the limit of {}",
                value.len(),
                self.max_value_bytes
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
