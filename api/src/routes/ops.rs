//! Health and metrics: no authentication, no prefix.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/health/db", get(health_db))
        .route("/metrics", get(metrics))
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// 200 when the database (and Redis, when configured) answer; 503 otherwise.
async fn health_db(State(state): State<AppState>) -> Response {
    let (database, redis) = tokio::join!(state.db.ping(), state.queue.ping());
    let ok = database && redis.unwrap_or(true);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "database": database,
        "redis": redis,
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.settings.enable_metrics {
        return Err(ApiError::not_found("Metrics are disabled."));
    }
    let queued = state.db.documents().count_queued().await?;
    state.metrics.queue_depth.set(queued);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}
