//! The service registry endpoints (SPEC §3), with Konsul's route aliases.

use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::acl::{Need, Who};
use super::error::ApiError;
use super::extract::{JsonBody, KeyPath, Params};
use super::metrics::Op as Metric;
use super::watch::{hold, metered_at};
use super::{acknowledged, metered, AppState};
use crate::{Service, ServiceEntry};
use std::sync::atomic::{AtomicU64, Ordering};

/// A registration body: the service plus an optional `cas`.
#[derive(Deserialize)]
pub struct RegisterBody {
    #[serde(flatten)]
    service: Service,
    cas: Option<u64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn metadata_json(e: &ServiceEntry) -> serde_json::Value {
    json!({
        "service": e.service,
        "expires_at": rfc3339(e.expires_at),
        "modify_index": e.modify_index,
        "create_index": e.create_index,
    })
}

/// `POST /services` and `PUT /register`.
pub async fn register(
    State(state): State<AppState>,
    who: Who,
    body: Result<JsonBody<RegisterBody>, ApiError>,
) -> Response {
    metered(&state, Metric::Register, async {
        let JsonBody(body) = body?;
        let service = body.service;
        state.limits.check_key(&service.name)?;
        who.service(&service.name, Need::Write)?;
        if service.address.is_empty() {
            return Err(ApiError::BadRequest("the service address is empty".into()));
        }
        if let Some(reserved) = service.meta.keys().find(|k| k.starts_with("consul-")) {
            // The Consul face keeps its own state under these keys (`consul/agent.rs`).
            return Err(ApiError::BadRequest(format!(
                "meta key '{reserved}': keys starting with 'consul-' are reserved"
            )));
        }
        state.limits.check_service(&service)?;
        let write = state.db().register(service.clone(), body.cas);
        let index = acknowledged(write, "service").await?;
        Ok(Json(
            json!({"message": "service registered", "service": service, "modify_index": index}),
        )
        .into_response())
    })
    .await
}

/// `GET /services` and `GET /services/`: live services, sorted by name; only those the caller
/// may read.
pub async fn list(
    State(state): State<AppState>,
    who: Who,
    params: Result<Params, ApiError>,
) -> Response {
    let index = AtomicU64::new(0);
    metered_at(&state, Metric::ServiceList, &index, async {
        let blocking = params?.blocking()?;
        let listing = super::kv::listing(&state, state.registry.store(), "", blocking).await;
        // Relaxed: read back by `metered_at` on this task.
        index.store(listing.index, Ordering::Relaxed);
        let services: Vec<Service> = state
            .registry
            .list()
            .into_iter()
            .map(|e| e.service)
            .filter(|s| who.may_read_service(&s.name))
            .collect();
        Ok(Json(services).into_response())
    })
    .await
}

/// `GET /services/{name}` (`?metadata=true`).
pub async fn get(
    State(state): State<AppState>,
    who: Who,
    name: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    let index = AtomicU64::new(0);
    metered_at(&state, Metric::ServiceGet, &index, async {
        let KeyPath(name) = name?;
        who.service(&name, Need::Read)?;
        let params = params?;
        let metadata = params.metadata()?;
        let store = state.registry.store();
        if let Some(b) = params.blocking()?.map(|b| b.clamped(&state)) {
            if store.state(name.as_str()).index <= b.index {
                let mut watch = store.watch(name.as_str(), b.index);
                hold(&state, &b, watch.changed()).await;
            }
        }
        // Relaxed: read back by `metered_at` on this task.
        index.store(store.state(name.as_str()).index, Ordering::Relaxed);
        let entry = state
            .registry
            .get(&name)
            .ok_or(ApiError::ServiceNotFound(name))?;
        if metadata {
            Ok(Json(metadata_json(&entry)).into_response())
        } else {
            Ok(Json(entry.service).into_response())
        }
    })
    .await
}

/// `DELETE /services/{name}` (`?cas=N`) and `DELETE /deregister/{name}`.
pub async fn deregister(
    State(state): State<AppState>,
    who: Who,
    name: Result<KeyPath, ApiError>,
    params: Result<Params, ApiError>,
) -> Response {
    metered(&state, Metric::Deregister, async {
        let KeyPath(name) = name?;
        who.service(&name, Need::Write)?;
        let cas = params?.cas()?;
        if cas == Some(0) {
            return Err(ApiError::BadRequest(
                "cas=0 on deregister: create-only has no meaning for a removal".into(),
            ));
        }
        let index = acknowledged(state.db().deregister(&name, cas), "service").await?;
        Ok(
            Json(json!({"message": "service deregistered", "name": name, "modify_index": index}))
                .into_response(),
        )
    })
    .await
}

/// `PUT /services/{name}/heartbeat` and `PUT /heartbeat/{name}`.
pub async fn heartbeat(
    State(state): State<AppState>,
    who: Who,
    name: Result<KeyPath, ApiError>,
) -> Response {
    metered(&state, Metric::Heartbeat, async {
        let KeyPath(name) = name?;
        who.service(&name, Need::Write)?;
        let entry = state
            .registry
            .heartbeat(&name)
            .map_err(|e| ApiError::from_store(e, "service"))?;
        Ok(Json(json!({
            "message": "heartbeat updated",
            "service": entry.service,
            "expires_at": rfc3339(entry.expires_at),
        }))
        .into_response())
    })
    .await
}
