//! The document worker: takes render jobs off the queue and runs the pipeline.
//!
//! # Layout
//! - [`render`]: template → bytes (minijinja, auto-escaped, fuel-limited).
//! - [`pipeline`]: one job from claim to stored object and finished row.
//! - this module: wiring the pipeline into an apalis worker over the configured queue.
//!
//! The `monassurance-worker` binary runs this against Redis (or a shared SQLite queue);
//! the API's embedded mode runs it in-process with [`run`].

pub mod pipeline;
pub mod render;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use common::queue::{JobQueue, RenderJob};
use common::storage::Storage;
use common::telemetry::Metrics;
use common::{Db, Settings};
use futures::StreamExt;
use tracing::{Instrument, info, info_span};

/// What a job handler needs.
pub struct Deps {
    pub settings: Settings,
    pub db: Db,
    pub storage: Storage,
    pub metrics: Metrics,
}

/// A name no other worker process shares: apalis refuses to register a name seen in the
/// last heartbeat interval, so a restarted worker must not reuse its predecessor's.
pub fn unique_worker_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("render-{host}-{}-{suffix}", std::process::id())
}

async fn handle(job: RenderJob, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let span = info_span!(
        "job",
        document_id = %job.document_id,
        request_id = job.request_id.as_deref().unwrap_or("-"),
    );
    pipeline::process(&deps, &job)
        .instrument(span)
        .await
        .map_err(Into::into)
}

/// Runs workers on `queue` until `shutdown` completes, then lets in-flight jobs finish
/// (up to 30 s) while the rest stay queued.
pub async fn run(
    deps: Arc<Deps>,
    queue: JobQueue,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = unique_worker_name();
    let concurrency = deps.settings.worker_concurrency;
    let timeout = deps.settings.job_timeout;
    let poll = deps.settings.worker_poll_interval;
    info!(worker = %name, queue = queue.backend_name(), concurrency, "worker starting");

    let monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30));
    let monitor = match queue {
        JobQueue::Sqlite {
            pool,
            config,
            listener,
        } => {
            let listener = listener.lock().expect("listener lock").take();
            let listener = std::sync::Mutex::new(listener);
            monitor.register(move |_restarts| {
                let mut strategy = Strategy::new();
                if let Some(hook) = listener.lock().expect("listener lock").take() {
                    strategy = strategy.stream(hook.ready_chunks(config.batch_size));
                }
                let backend = SqliteStorage::<RenderJob>::new(&pool)
                    .with_config(config.clone())
                    .poll_with_strategy(strategy.interval(poll));
                WorkerBuilder::new(name.clone())
                    .backend(backend)
                    .concurrency(concurrency)
                    .catch_panic()
                    .timeout(timeout)
                    .data(deps.clone())
                    .build(handle)
            })
        }
        JobQueue::Redis { storage, .. } => monitor.register(move |_restarts| {
            let backend: RedisStorage<RenderJob> = (*storage).clone();
            WorkerBuilder::new(name.clone())
                .backend(backend.poll_with_strategy(Strategy::new().interval(poll)))
                .concurrency(concurrency)
                .catch_panic()
                .timeout(timeout)
                .data(deps.clone())
                .build(handle)
        }),
    };
    monitor
        .should_restart(|_ctx, err| {
            tracing::error!(error = %err, "worker stopped; restarting");
            true
        })
        .run_with_signal(async move {
            shutdown.await;
            info!("draining: in-flight jobs finish, queued jobs stay queued");
            Ok(())
        })
        .await?;
    info!("worker stopped");
    Ok(())
}
