//! Fleetledger's HTTP surface. For now: `/healthz` and `/readyz`; the GraphQL API joins here.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use eventstore::EventStore;
use serde_json::json;

/// What the HTTP handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: EventStore,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// The process can serve: the database answers within a second.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(state.store.pool());
    match tokio::time::timeout(Duration::from_secs(1), ping).await {
        Ok(Ok(_)) => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: database error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "status": "unavailable", "database": "error" })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "unavailable", "database": "timeout" })),
        ),
    }
}
