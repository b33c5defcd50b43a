//! The agent, catalog and health service endpoints (being written).

use axum::Router;

use crate::server::AppState;

/// The service routes.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
}
