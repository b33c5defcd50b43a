//! Request extractors that turn every kind of malformed input into an [`ApiError`] with the
//! SPEC's JSON body, instead of axum's plain-text rejections.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// A JSON body, parsed whatever the `Content-Type` (curl users forget it). The body limit and
/// deadline were applied before routing (`buffer_body`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        if bytes.is_empty() {
            return Err(ApiError::BadRequest(
                "the request body is empty; a JSON object is required".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// The body was already read whole by `buffer_body` (which owns the deadline and the limit);
/// what can still fail here is axum's own limit, kept as a second line.
fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge("the request body exceeds the body limit".into());
    }
    ApiError::BadRequest(format!(
        "could not read the request body: {}",
        e.body_text()
    ))
}

/// The query string as name → value (the last occurrence wins), decoded.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

impl Params {
    /// `?cas=N`: absent → `None`; not a u64 → 400.
    pub fn cas(&self) -> Result<Option<u64>, ApiError> {
        match self.0.get("cas") {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid cas '{v}': expected a non-negative integer"
                ))
            }),
        }
    }

    /// `?metadata=true|false|1|0` (or bare `?metadata`).
    pub fn metadata(&self) -> Result<bool, ApiError> {
        self.flag("metadata")
    }

    /// `?recurse=true|false|1|0` (or bare `?recurse`).
    pub fn recurse(&self) -> Result<bool, ApiError> {
        self.flag("recurse")
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(ApiError::BadRequest(format!(
                "invalid {name} '{v}': expected true or false"
            ))),
        }
    }

    /// `?index=N&wait=D` of a blocking read: `None` without an index or with `index=0` (a
    /// plain read). `wait` is a duration with its unit ("30s", "5m", "300000ms", "1m30s"),
    /// defaults to 5 min and is capped at 10 min; a malformed one is a 400 even without an
    /// index.
    pub fn blocking(&self) -> Result<Option<super::watch::Blocking>, ApiError> {
        let wait = match self.0.get("wait") {
            None => crate::defaults::BLOCKING_WAIT,
            Some(text) => super::watch::parse_wait(text)?,
        };
        let index = match self.0.get("index") {
            None => return Ok(None),
            Some(v) => v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid index '{v}': expected a non-negative integer"
                ))
            })?,
        };
        Ok((index != 0).then_some(super::watch::Blocking { index, wait }))
    }
}

/// The `{*key}` or `{name}` path segment, percent-decoded and checked against the key bounds.
pub struct KeyPath(pub String);

impl FromRequestParts<AppState> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(path_error)?;
        state.limits.check_key(&key)?;
        Ok(KeyPath(key))
    }
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("invalid key in path: {}", e.body_text()))
}
