//! Operations: health and metrics (no authentication, no prefix), and the operators'
//! view under `/api/v1/ops` (managers and admins).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::model::Role;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json};
use crate::service::ops::{self, QueueView, WorkersView};

/// `/health`, `/health/db`, `/metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(health_db))
        .routes(routes!(metrics))
}

/// `/api/v1/ops/*`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(workers))
        .routes(routes!(queue))
}

#[utoipa::path(
    get, path = "/workers", tag = "operations", operation_id = "ops_workers",
    security(("bearer" = [])),
    responses((status = 200, description = "Live, stale and stopped workers (managers and admins).", body = WorkersView))
)]
async fn workers(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<WorkersView>> {
    user.require(Role::Manager)?;
    Ok(Json(ops::workers(&state).await?))
}

#[utoipa::path(
    get, path = "/queue", tag = "operations", operation_id = "ops_queue",
    security(("bearer" = [])),
    responses((status = 200, description = "What waits, runs, finished and failed (managers and admins).", body = QueueView))
)]
async fn queue(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<QueueView>> {
    user.require(Role::Manager)?;
    Ok(Json(ops::queue(&state).await?))
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
    /// Live workers; `null` in the embedded mode (the worker runs in the API's process)
    /// and while the database does not answer.
    workers: Option<i64>,
    /// Documents have waited longer than `WORKER_STALL_SECONDS` with no live worker.
    stalled: bool,
}

/// 200 when the database (and Redis, when configured) answer and documents are not left
/// waiting with no live worker; 503 otherwise.
#[utoipa::path(
    get, path = "/health/db", tag = "operations", operation_id = "health_db",
    responses(
        (status = 200, description = "The database (and Redis, when configured) answer, and workers render what is queued.", body = HealthDbBody),
        (status = 503, description = "Degraded: the database or Redis does not answer, or documents wait with no live worker.", body = HealthDbBody),
    )
)]
async fn health_db(State(state): State<AppState>) -> Response {
    let (database, redis) = tokio::join!(state.db.ping(), state.queue.ping());
    let pipeline = match database {
        true => ops::pipeline(&state).await.ok(),
        false => None,
    };
    let workers = pipeline.as_ref().and_then(|p| p.workers);
    let stalled = pipeline.as_ref().is_some_and(|p| p.stalled);
    let ok = database && redis.unwrap_or(true) && !stalled;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthDbBody {
        status: if ok { "ok" } else { "degraded" },
        database,
        redis,
        workers,
        stalled,
    };
    (status, axum::Json(body)).into_response()
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "metrics",
    responses(
        (status = 200, description = "The OpenMetrics text exposition (Prometheus scrapes it).", content_type = "application/openmetrics-text", body = String),
        (status = 404, description = "Metrics are disabled (`ENABLE_METRICS=false`).", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.settings.http.enable_metrics {
        return Err(ApiError::not_found("Metrics are disabled."));
    }
    // Gauges read from the database, best effort: during a database outage the answer
    // still comes (with the last values), so the request counters that show the outage
    // keep being scraped.
    if let Ok(by_lane) = state.db.documents().count_queued_by_lane().await {
        let total = by_lane.iter().map(|(_, n)| n).sum();
        state.metrics.queue_depth.set(total);
        state.metrics.set_lane_depths(&by_lane);
    }
    let since = common::now() - state.settings.worker.stale_after();
    if let Ok(live) = state.db.workers().count_live(since).await {
        state.metrics.workers_live.set(live);
    }
    if let Ok(pending) = state.db.webhook_deliveries().pending().await {
        state.metrics.webhook_pending.set(pending);
    }
    Ok((
        [(header::CONTENT_TYPE, common::telemetry::EXPOSITION)],
        state.metrics.encode(),
    )
        .into_response())
}
