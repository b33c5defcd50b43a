//! `ApiError`: every failure the HTTP API reports, mapped in one place to a status code and the
//! SPEC's JSON body (`{"error": <short>, "message": <detail>, …}`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{Conflict, Error, Expected};

use super::metrics::Status;

/// What a request failed with.
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed JSON, a missing or mistyped field, a bad query value, a bad key.
    BadRequest(String),
    /// 404: the key is absent.
    KeyNotFound(String),
    /// 404: the service is absent or expired.
    ServiceNotFound(String),
    /// 409: a single-key CAS failed.
    Conflict {
        /// "key" or "service": what the message names.
        noun: &'static str,
        /// The key or service name.
        key: String,
        /// The index the client expected (`None` for "present").
        expected: Option<u64>,
        /// The current index (`None` when absent).
        current: Option<u64>,
    },
    /// 409 (or 404 when only absent keys failed): a batch failed and changed nothing.
    BatchConflict(Vec<BatchFailure>),
    /// 413: a value or body over its bound.
    TooLarge(String),
    /// 408: the body did not arrive in time.
    Timeout,
    /// 404: no route.
    NoRoute(String),
    /// 405: the route exists, the method does not.
    MethodNotAllowed(String),
    /// 401: a token is needed (none came, or an unknown or malformed one); carries the rule
    /// that refused, for the audit log only.
    Unauthorized(String),
    /// 403: the token's rules deny this request; carries the rule, for the audit log only.
    Forbidden(String),
    /// 410: the change feed no longer holds the changes after the index asked for.
    Compacted {
        /// The oldest index the feed answers from.
        oldest: u64,
    },
    /// 503: the data directory's log failed; writes are refused until restart. The detail (a
    /// path, an OS error) goes to the server's log, which recorded the failure when it
    /// happened; the client gets a fixed message.
    Storage(String),
}

/// What a client is told when the data directory cannot take writes (the cause is in the
/// server's log, not in a response).
const STORAGE_MESSAGE: &str =
    "the server cannot write to its data directory; writes are refused until it is restarted (the cause is in the server's log)";

/// One failing key of a batch.
#[derive(Debug)]
pub struct BatchFailure {
    /// The failing key.
    pub key: String,
    /// The index the client expected (`None` for "present").
    pub expected: Option<u64>,
    /// The current index (`None` when absent).
    pub current: Option<u64>,
}

impl ApiError {
    /// The metrics status this error counts as.
    pub fn status(&self) -> Status {
        match self {
            ApiError::KeyNotFound(_) | ApiError::ServiceNotFound(_) => Status::NotFound,
            ApiError::Conflict { .. } => Status::CasConflict,
            ApiError::BatchConflict(fs) if all_absent(fs) => Status::NotFound,
            ApiError::BatchConflict(_) => Status::CasConflict,
            _ => Status::Error,
        }
    }

    /// Maps a store error for a KV key (or a service name, with `noun = "service"`).
    pub fn from_store<V>(err: Error<String, V>, noun: &'static str) -> Self {
        match err {
            Error::Conflict(c) => ApiError::Conflict {
                noun,
                expected: expected_index(&c),
                current: c.current_index(),
                key: c.key,
            },
            Error::NotFound(k) if noun == "service" => ApiError::ServiceNotFound(k),
            Error::NotFound(k) => ApiError::KeyNotFound(k),
            Error::BatchConflict(cs) => ApiError::BatchConflict(
                cs.into_iter()
                    .map(|c| BatchFailure {
                        expected: expected_index(&c),
                        current: c.current_index(),
                        key: c.key,
                    })
                    .collect(),
            ),
            Error::BatchTooLarge { len, max } => ApiError::BadRequest(format!(
                "batch of {len} operations exceeds the limit of {max}"
            )),
            Error::EmptyBatch => ApiError::BadRequest("empty batch".into()),
            Error::DuplicateKey(k) => {
                ApiError::BadRequest(format!("key '{k}' appears more than once in the batch"))
            }
            Error::CreateOnlyDelete(k) => ApiError::BadRequest(format!(
                "cas=0 on delete of '{k}': create-only has no meaning for delete"
            )),
            Error::Storage(e) => ApiError::Storage(e.to_string()),
            Error::EntryTooLarge { len, max } => {
                ApiError::TooLarge(format!("{len} bytes exceed the log's limit of {max}"))
            }
            other => ApiError::BadRequest(other_message(&other)),
        }
    }
}

fn other_message<V>(err: &Error<String, V>) -> String {
    match err {
        Error::RetriesExhausted { key, attempts } => {
            format!("update of '{key}' gave up after {attempts} attempts")
        }
        _ => "request failed".to_string(),
    }
}

fn expected_index<V>(c: &Conflict<String, V>) -> Option<u64> {
    match c.expected {
        Expected::Index(n) => Some(n),
        _ => None,
    }
}

fn all_absent(fs: &[BatchFailure]) -> bool {
    fs.iter()
        .all(|f| f.current.is_none() && f.expected != Some(0))
}

fn conflict_message(noun: &str, key: &str, expected: Option<u64>, current: Option<u64>) -> String {
    let expected = match expected {
        Some(n) => format!("ModifyIndex {n}"),
        None => "present".to_string(),
    };
    match current {
        Some(c) => {
            format!("CAS conflict for {noun} '{key}': expected {expected}, but current is {c}")
        }
        None => {
            format!("CAS conflict for {noun} '{key}': expected {expected}, but it does not exist")
        }
    }
}

impl From<super::acl::Denied> for ApiError {
    fn from(denied: super::acl::Denied) -> Self {
        if denied.anonymous {
            ApiError::Unauthorized(denied.rule)
        } else {
            ApiError::Forbidden(denied.rule)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body): (StatusCode, Value) = match self {
            // Neither names the token nor says whether the key or service exists.
            ApiError::Unauthorized(rule) => {
                let body = json!({"error": "unauthorized", "message": "this request needs a valid token (Authorization: Bearer <token>)"});
                let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                response.extensions_mut().insert(super::acl::DeniedBy(rule));
                return response;
            }
            ApiError::Forbidden(rule) => {
                let body = json!({"error": "forbidden", "message": "the token's rules do not allow this request"});
                let mut response = (StatusCode::FORBIDDEN, Json(body)).into_response();
                response.extensions_mut().insert(super::acl::DeniedBy(rule));
                return response;
            }
            ApiError::BadRequest(message) => (
                StatusCode::BAD_REQUEST,
                json!({"error": "bad request", "message": message}),
            ),
            ApiError::KeyNotFound(key) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "message": format!("key '{key}' not found"), "key": key}),
            ),
            ApiError::ServiceNotFound(name) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "message": format!("service '{name}' not found"), "name": name}),
            ),
            ApiError::Conflict {
                noun,
                key,
                expected,
                current,
            } => {
                let mut body = json!({
                    "error": "CAS conflict",
                    "message": conflict_message(noun, &key, expected, current),
                    "key": key,
                    "expected": expected,
                    "current": current,
                });
                if noun == "service" {
                    body["name"] = json!(key);
                }
                (StatusCode::CONFLICT, body)
            }
            ApiError::BatchConflict(failures) => {
                let status = if all_absent(&failures) {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::CONFLICT
                };
                let message = failures
                    .iter()
                    .map(|f| match (f.expected, f.current) {
                        (Some(0), _) | (_, Some(_)) => {
                            conflict_message("key", &f.key, f.expected, f.current)
                        }
                        (_, None) => format!("key '{}' not found", f.key),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let conflicts: Vec<Value> = failures
                    .iter()
                    .map(|f| json!({"key": f.key, "expected": f.expected, "current": f.current}))
                    .collect();
                let error = if status == StatusCode::NOT_FOUND {
                    "not found"
                } else {
                    "CAS conflict"
                };
                (
                    status,
                    json!({"error": error, "message": format!("batch failed, nothing applied: {message}"), "conflicts": conflicts}),
                )
            }
            ApiError::TooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload too large", "message": message}),
            ),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "request timeout", "message": "the request body did not arrive in time"}),
            ),
            ApiError::NoRoute(message) => (
                StatusCode::NOT_FOUND,
                json!({"error": "not found", "message": message}),
            ),
            ApiError::MethodNotAllowed(message) => (
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed", "message": message}),
            ),
            ApiError::Compacted { oldest } => (
                StatusCode::GONE,
                json!({
                    "error": "compacted",
                    "message": format!("the change history was compacted: the oldest index it answers from is {oldest}; read the state again and follow from its index"),
                    "oldest": oldest,
                }),
            ),
            ApiError::Storage(detail) => {
                // Debug only: the log reported the failure once, at error level, when it
                // happened; every refused write repeats it.
                tracing::debug!(%detail, "caskv: write refused, storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "storage unavailable", "message": STORAGE_MESSAGE}),
                )
            }
        };
        (status, Json(body)).into_response()
    }
}
