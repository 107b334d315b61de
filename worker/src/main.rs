//! `monassurance-worker`: a standalone worker process.
//!
//! Start as many as the load needs; each takes jobs from the queue configured by
//! `REDIS_URL` (or the SQLite queue file when unset), serves `/health` and `/metrics` on
//! `WORKER_HTTP_ADDR`, and drains on SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
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
    let db = Db::connect(&settings).await?;
    db.migrate().await?;
    let queue = JobQueue::connect(&settings).await?;
    let deps = Arc::new(Deps {
        storage: Storage::open(&settings)?,
        metrics: Metrics::new(),
        db,
        settings,
    });

    let listener = tokio::net::TcpListener::bind(deps.settings.worker_http_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on WORKER_HTTP_ADDR {}",
                deps.settings.worker_http_addr
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "worker health and metrics listening");
    let metrics = deps.metrics.clone();
    let http = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(move || async move { metrics.encode() }));
    tokio::spawn(async move { axum::serve(listener, http).await });

    run(deps.clone(), queue, common::shutdown_signal()).await?;
    deps.db.close().await;
    Ok(())
}
