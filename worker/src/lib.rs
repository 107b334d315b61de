//! The document worker: takes render jobs off the queue and runs the pipeline.
//!
//! # Layout
//! - [`pdf`]: the pool of warm wkhtmltopdf processes (HTML → PDF); the templates
//!   themselves (HTML, XLSX, page layouts) are the `template` crate's.
//! - [`pipeline`]: one job from claim to stored object and finished row, with retries.
//! - this module: wiring the pipeline into an apalis worker over the configured queue,
//!   with the periodic tasks beside it.
//!
//! The `monassurance-worker` binary runs this against Redis (or a shared SQLite queue);
//! the API's embedded mode runs it in-process with [`run`].

pub mod pdf;
pub mod pipeline;

use std::future::Future;
use std::sync::Arc;

use apalis::prelude::*;
use common::maintenance;
use common::queue::{Consumer, JobQueue, RenderJob};
use common::storage::Storage;
use common::telemetry::Metrics;
use common::{Db, Settings};
use pdf::{PdfConfig, PdfEngine};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span};

/// What a job handler needs.
pub struct Deps {
    pub settings: Settings,
    pub db: Db,
    pub storage: Storage,
    pub metrics: Metrics,
    /// For delayed retries.
    pub queue: JobQueue,
    /// Warm wkhtmltopdf processes.
    pub pdf: PdfEngine,
}

impl Deps {
    /// Everything a worker needs, from the settings and the handles already opened.
    pub fn new(
        settings: Settings,
        db: Db,
        storage: Storage,
        metrics: Metrics,
        queue: JobQueue,
    ) -> Deps {
        Deps {
            pdf: pdf_engine(&settings),
            settings,
            db,
            storage,
            metrics,
            queue,
        }
    }
}

/// A PDF engine pool sized by `PDF_CONCURRENCY`.
pub fn pdf_engine(settings: &Settings) -> PdfEngine {
    PdfEngine::new(PdfConfig {
        binary: settings.pdf.wkhtmltopdf_path.clone(),
        pool_size: settings.pdf.concurrency,
        max_jobs_per_process: settings.pdf.max_jobs_per_process,
        timeout: settings.pdf.timeout,
    })
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

/// Runs workers on the queue until `shutdown` completes, then lets in-flight jobs finish
/// (up to `DRAIN_TIMEOUT_SECONDS`) while the rest stay queued. The reconciler and the
/// maintenance timer run beside them.
pub async fn run(
    deps: Arc<Deps>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = unique_worker_name();
    let settings = &deps.settings;
    let (concurrency, poll) = (settings.worker.concurrency, settings.worker.poll_interval);
    info!(worker = %name, queue = deps.queue.backend_name(), concurrency, "worker starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let periodic = tokio::spawn(periodic_tasks(deps.clone(), stop_rx));

    let monitor = Monitor::new().shutdown_timeout(settings.worker.drain_timeout);
    // One apalis worker over the queue's backend; the monitor calls the factory again on
    // each restart, and the queue hands out a fresh backend each time.
    macro_rules! render_worker {
        ($source:expr) => {{
            let (source, deps) = ($source, deps.clone());
            monitor.register(move |_restarts| {
                WorkerBuilder::new(name.clone())
                    .backend(source.backend(poll))
                    .concurrency(concurrency)
                    .catch_panic()
                    .data(deps.clone())
                    .build(handle)
            })
        }};
    }
    let monitor = match deps.queue.consumer() {
        Consumer::Sqlite(source) => render_worker!(source),
        Consumer::Redis(source) => render_worker!(source),
    };
    let result = monitor
        .should_restart(|_ctx, err| {
            error!(error = %err, "worker stopped; restarting");
            true
        })
        .run_with_signal(async move {
            shutdown.await;
            info!("draining: in-flight jobs finish, queued jobs stay queued");
            Ok(())
        })
        .await;
    let _ = stop_tx.send(true);
    let _ = periodic.await;
    deps.pdf.shutdown().await;
    result?;
    info!("worker stopped");
    Ok(())
}

/// The reconciler every `RECONCILE_INTERVAL_MS`, and orphan purge, the preview sweep and
/// retention every
/// `MAINTENANCE_INTERVAL_SECONDS`, until `stop`.
async fn periodic_tasks(deps: Arc<Deps>, mut stop: watch::Receiver<bool>) {
    let mut reconcile = tokio::time::interval(deps.settings.worker.reconcile_interval);
    let mut maintenance = tokio::time::interval(deps.settings.worker.maintenance_interval);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first maintenance tick fires at once; let the first run wait one interval so a
    // fleet starting together does not purge together.
    maintenance.reset();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = reconcile.tick() => {
                match maintenance::reconcile(&deps.db, &deps.queue, deps.settings.queue.queued_lease).await {
                    Ok(0) => {}
                    Ok(n) => {
                        deps.metrics.reconciled.inc_by(n as u64);
                        info!(count = n, "lost jobs enqueued again");
                    }
                    Err(err) => error!(error = %err, "reconciler failed"),
                }
                if let Ok(queued) = deps.db.documents().count_queued().await {
                    deps.metrics.queue_depth.set(queued);
                }
            }
            _ = maintenance.tick() => {
                match maintenance::purge_orphans(&deps.db, &deps.storage).await {
                    Ok(report) if report.count > 0 || !report.lost.is_empty() => {
                        info!(removed = report.count, lost = report.lost.len(), "orphan purge");
                    }
                    Ok(_) => {}
                    Err(err) => error!(error = %err, "orphan purge failed"),
                }
                match maintenance::sweep_previews(&deps.db, &deps.storage).await {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "abandoned previews swept"),
                    Err(err) => error!(error = %err, "preview sweep failed"),
                }
                if let Some(days) = deps.settings.worker.document_retention_days {
                    match maintenance::apply_retention(&deps.db, &deps.storage, days).await {
                        Ok(0) => {}
                        Ok(n) => info!(deleted = n, days, "retention applied"),
                        Err(err) => error!(error = %err, "retention failed"),
                    }
                }
            }
        }
    }
}
