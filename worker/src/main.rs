//! `monassurance-worker`: a standalone worker process.
//!
//! Start as many as the load needs; each takes jobs from the queue configured by
//! `REDIS_URL` (or the SQLite queue file when unset), serves `/health` and `/metrics` on
//! `WORKER_HTTP_ADDR`, and drains on SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use common::queue::JobQueue;
use common::storage::Storage;
use common::telemetry::{self, Metrics};
use common::{Db, Settings};
use monassurance_worker::{Deps, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    telemetry::init_tracing(&settings);
    let db = Db::open(&settings).await?;
    let redis = common::queue::connect_redis(&settings).await?;
    let queue = JobQueue::connect(&settings, redis).await?;
    let storage = Storage::open(&settings)?;
    let deps = Arc::new(Deps::new(settings, db, storage, Metrics::new(), queue));

    let listener = tokio::net::TcpListener::bind(deps.settings.worker.http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on WORKER_HTTP_ADDR {}",
                deps.settings.worker.http_addr
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "worker health and metrics listening");
    let http = Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(|State(deps): State<Arc<Deps>>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        common::telemetry::EXPOSITION,
                    )],
                    deps.metrics.encode(),
                )
            }),
        )
        .with_state(deps.clone());
    tokio::spawn(async move { axum::serve(listener, http).await });

    run(deps.clone(), common::shutdown_signal()).await?;
    deps.db.close().await;
    Ok(())
}

/// 200 when the database (and Redis, when used) answer and the queue consumer heartbeats
/// (or runs jobs), 503 otherwise: an orchestrator's health check restarts a worker whose
/// consumer stopped.
async fn health(State(deps): State<Arc<Deps>>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let (database, redis) = tokio::join!(deps.db.ping(), deps.queue.ping());
    let consumer = deps.activity.consumer_alive();
    let ok = database && redis.unwrap_or(true) && consumer;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "database": database,
        "redis": redis,
        "consumer": consumer,
    });
    (status, axum::Json(body))
}
