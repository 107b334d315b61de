//! Health and metrics: no authentication, no prefix.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(health_db))
        .routes(routes!(metrics))
}

#[utoipa::path(
    get, path = "/health", tag = "operations", operation_id = "health",
    responses((status = 200, description = "The process answers.", body = HealthBody))
)]
async fn health() -> impl IntoResponse {
    axum::Json(HealthBody { status: "ok" })
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct HealthBody {
    /// Always `ok`.
    status: &'static str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct HealthDbBody {
    /// `ok` or `degraded`.
    status: &'static str,
    database: bool,
    /// `null` when no Redis is configured (embedded mode).
    redis: Option<bool>,
}

/// 200 when the database (and Redis, when configured) answer; 503 otherwise.
#[utoipa::path(
    get, path = "/health/db", tag = "operations", operation_id = "health_db",
    responses(
        (status = 200, description = "The database (and Redis, when configured) answer.", body = HealthDbBody),
        (status = 503, description = "Degraded: the database or Redis does not answer.", body = HealthDbBody),
    )
)]
async fn health_db(State(state): State<AppState>) -> Response {
    let (database, redis) = tokio::join!(state.db.ping(), state.queue.ping());
    let ok = database && redis.unwrap_or(true);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthDbBody {
        status: if ok { "ok" } else { "degraded" },
        database,
        redis,
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text exposition.", content_type = "text/plain", body = String),
        (status = 404, description = "Metrics are disabled (`ENABLE_METRICS=false`).", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.settings.http.enable_metrics {
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
