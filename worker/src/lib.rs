//! The document worker: takes render jobs off the queue and runs the pipeline.
//!
//! # Layout
//! - [`pdf`]: the pool of warm wkhtmltopdf processes (HTML → PDF); the templates
//!   themselves (HTML, XLSX, page layouts) are the `template` crate's.
//! - [`pipeline`]: one job from claim to stored object and finished row, with retries.
//! - [`webhooks`]: sending the webhook deliveries that finished documents and batches
//!   leave in the database.
//! - this module: wiring the pipeline into an apalis worker over the configured queue,
//!   with the periodic tasks beside it.
//!
//! The `monassurance-worker` binary runs this against Redis (or a shared SQLite queue);
//! the API's embedded mode runs it in-process with [`run`].

pub mod pdf;
pub mod pipeline;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use apalis::prelude::*;
use common::db::workers::WorkerCounts;
use common::maintenance;
use common::queue::{Consumer, JobQueue, QUEUE_HEARTBEAT, RenderJob};
use common::storage::Storage;
use common::telemetry::Metrics;
use common::{Db, Settings};
use pdf::{PdfConfig, PdfEngine};
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

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
    /// What this worker reports at each heartbeat.
    pub activity: Activity,
    /// Wakes this worker's bulk-lane feeder as its bulk documents finish.
    pub feeder: Arc<common::feeder::Feeder>,
    /// Hands the deliveries of the documents this worker finishes to its dispatcher.
    pub hooks: webhooks::Handoff,
}

/// A worker's counts and the liveness of its queue consumer, as its heartbeats report them.
pub struct Activity {
    /// When this worker was set up.
    started: Instant,
    in_flight: AtomicI32,
    processed: AtomicI64,
    failed: AtomicI64,
    /// When the queue consumer last heartbeated (apalis' own heartbeat against the queue),
    /// in milliseconds after `started`.
    consumer_beat_ms: AtomicU64,
    /// Abandoned jobs whose lease is being ended (see [`InFlight`]); a stopping worker
    /// waits for them.
    abandoning: tokio::sync::watch::Sender<usize>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            in_flight: AtomicI32::new(0),
            processed: AtomicI64::new(0),
            failed: AtomicI64::new(0),
            consumer_beat_ms: AtomicU64::new(0),
            abandoning: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The queue consumer heartbeated just now.
    fn consumer_beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.consumer_beat_ms.store(now, Ordering::Relaxed);
    }

    /// Whether the queue consumer heartbeated recently: apalis heartbeats every
    /// [`QUEUE_HEARTBEAT`]; a consumer silent for three of those has stopped (a Redis call
    /// that never returned can leave it so), and this worker must not report itself live.
    /// Jobs in flight count as life too: a consumer whose every slot is busy may not poll
    /// its queue, and each job has its own timeout.
    pub fn consumer_alive(&self) -> bool {
        let last = Duration::from_millis(self.consumer_beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= QUEUE_HEARTBEAT * 3
            || self.in_flight.load(Ordering::Relaxed) > 0
    }

    fn counts(&self) -> WorkerCounts {
        WorkerCounts {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A job running on this worker: counted in flight until dropped. Dropped before
/// [`InFlight::finish`], the job was abandoned midway (its queue consumer failed and was
/// restarted, or a drain ran out of time): its document's lease is ended at once, so a
/// reconciler takes it again within `RECONCILE_INTERVAL_MS` instead of when the lease
/// (`JOB_TIMEOUT_SECONDS` + 5 s) runs out.
struct InFlight {
    deps: Arc<Deps>,
    document_id: uuid::Uuid,
    finished: bool,
}

impl InFlight {
    fn start(deps: &Arc<Deps>, document_id: uuid::Uuid) -> Self {
        deps.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            deps: deps.clone(),
            document_id,
            finished: false,
        }
    }

    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.deps.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.finished {
            return;
        }
        let (deps, document_id) = (self.deps.clone(), self.document_id);
        warn!(%document_id, "a job was abandoned midway; its document goes back to the reconciler");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            deps.activity.abandoning.send_modify(|n| *n += 1);
            runtime.spawn(async move {
                if let Err(err) = deps.db.documents().end_lease(document_id).await {
                    warn!(%document_id, error = %err, "cannot end an abandoned job's lease; it runs out by itself");
                }
                deps.activity.abandoning.send_modify(|n| *n -= 1);
            });
        }
    }
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
            feeder: Arc::new(common::feeder::Feeder::new(settings.queue.bulk_window)),
            hooks: webhooks::Handoff::new(&settings.webhooks),
            settings,
            db,
            storage,
            metrics,
            queue,
            activity: Activity::new(),
        }
    }

    /// Counts a finished document (`ready` or `failed`) in the metrics and the heartbeat.
    pub fn finished(&self, format: &str, outcome: &str) {
        self.metrics.document_finished(format, outcome);
        self.activity.processed.fetch_add(1, Ordering::Relaxed);
        if outcome == "failed" {
            self.activity.failed.fetch_add(1, Ordering::Relaxed);
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
    let host = hostname();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("render-{host}-{}-{suffix}", std::process::id())
}

/// How long a job waits for a database that stopped answering before it gives up and
/// lets the queue deliver it again later.
const DATABASE_PATIENCE: Duration = Duration::from_secs(300);

/// How long a stopping worker waits for the jobs its drain cut short to hand their
/// documents back.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// How often the SQLite queue's finished jobs are deleted (see
/// [`JobQueue::prune_finished`]): each acknowledgement costs in proportion to what is left.
const QUEUE_PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// How long the worker registry remembers a worker it no longer hears from.
const WORKER_MEMORY: chrono::TimeDelta = chrono::TimeDelta::days(7);

/// How often a waiting job asks whether the database is back.
const DATABASE_RECHECK: Duration = Duration::from_millis(500);

async fn handle(job: RenderJob, deps: Data<Arc<Deps>>) -> Result<(), BoxDynError> {
    let span = info_span!(
        "job",
        document_id = %job.document_id,
        request_id = job.request_id.as_deref().unwrap_or("-"),
    );
    let running = InFlight::start(&deps, job.document_id);
    let result = process_through_outages(&deps, &job).instrument(span).await;
    running.finish();
    result.map_err(Into::into)
}

/// Runs the job; when the database stops answering midway, waits for it (up to
/// [`DATABASE_PATIENCE`]) and runs the job again, so the document is done within moments
/// of the database's return instead of at the queue's next redelivery. Every step of a job
/// is safe to repeat (see [`pipeline`]).
async fn process_through_outages(deps: &Deps, job: &RenderJob) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DATABASE_PATIENCE;
    loop {
        match pipeline::process(deps, job).await {
            Err(err) if common::db::is_outage(&err) && tokio::time::Instant::now() < deadline => {
                warn!(error = %format!("{err:#}"), "the database is unavailable; the job waits for it");
                while !deps.db.ping().await && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(DATABASE_RECHECK).await;
                }
            }
            result => return result,
        }
    }
}

/// Runs workers on the queue until `shutdown` completes, then lets in-flight jobs finish
/// (up to `DRAIN_TIMEOUT_SECONDS`) while the rest stay queued. The reconciler, the
/// maintenance timer and the bulk lane's feeder run beside them.
pub async fn run(
    deps: Arc<Deps>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = unique_worker_name();
    let settings = &deps.settings;
    let (concurrency, poll) = (settings.worker.concurrency, settings.worker.poll_interval);
    info!(worker = %name, queue = deps.queue.backend_name(), concurrency, "worker starting");
    let id = uuid::Uuid::now_v7();
    deps.db
        .workers()
        .register(
            id,
            &name,
            &hostname(),
            std::process::id() as i32,
            concurrency as i32,
        )
        .await
        .context("cannot register the worker")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let feeder = tokio::spawn(common::feeder::run(
        deps.db.clone(),
        deps.queue.clone(),
        deps.settings.queue.clone(),
        deps.feeder.clone(),
        stop_rx.clone(),
    ));
    // Opened before the pipeline starts: every document this worker finishes hands its
    // deliveries to its own dispatcher.
    let handed = deps.hooks.open();
    let hooks = tokio::spawn(webhooks::run(deps.clone(), handed, stop_rx.clone()));
    let periodic = tokio::spawn(periodic_tasks(deps.clone(), id, stop_rx));

    let beats = deps.clone();
    let monitor = Monitor::new()
        .shutdown_timeout(settings.worker.drain_timeout)
        .on_event(move |_ctx, event| {
            if matches!(event, Event::Start | Event::HeartBeat) {
                beats.activity.consumer_beat();
            }
        });
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
    let _ = feeder.await;
    let _ = hooks.await;
    // Jobs the drain cut short hand their documents back before the process goes.
    let mut abandoning = deps.activity.abandoning.subscribe();
    let _ = tokio::time::timeout(ABANDON_WAIT, abandoning.wait_for(|n| *n == 0)).await;
    deps.pdf.shutdown().await;
    if let Err(err) = deps.db.workers().stop(id, deps.activity.counts()).await {
        warn!(error = %err, "cannot record that the worker stopped");
    }
    result?;
    info!("worker stopped");
    Ok(())
}

/// This machine's name, for the worker registry and the queue consumer's name.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Records a heartbeat while the queue consumer is alive; says so once when it is not.
async fn heartbeat(deps: &Deps, id: uuid::Uuid, silent: &mut bool) {
    if !deps.activity.consumer_alive() {
        if !*silent {
            error!("the queue consumer stopped heartbeating; this worker now shows as stale");
            *silent = true;
        }
        return;
    }
    if std::mem::take(silent) {
        info!("the queue consumer heartbeats again");
    }
    if let Err(err) = deps
        .db
        .workers()
        .heartbeat(id, deps.activity.counts())
        .await
    {
        warn!(error = %err, "cannot record the worker's heartbeat");
    }
}

/// The heartbeat, the queue's pruning, the reconciler every `RECONCILE_INTERVAL_MS`, and
/// orphan purge, the preview sweep and retention every
/// `MAINTENANCE_INTERVAL_SECONDS`, until `stop`.
async fn periodic_tasks(deps: Arc<Deps>, id: uuid::Uuid, mut stop: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(deps.settings.worker.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    let mut prune = tokio::time::interval(QUEUE_PRUNE_INTERVAL);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = beat.tick() => heartbeat(&deps, id, &mut silent).await,
            _ = prune.tick() => {
                if let Err(err) = deps.queue.prune_finished().await {
                    warn!(error = %format!("{err:#}"), "cannot prune the queue");
                }
            }
            _ = reconcile.tick() => {
                match maintenance::reconcile(&deps.db, &deps.queue, deps.settings.queue.queued_lease).await {
                    Ok(0) => {}
                    Ok(n) => {
                        deps.metrics.reconciled.inc_by(n as u64);
                        info!(count = n, "lost jobs enqueued again");
                    }
                    Err(err) => error!(error = %err, "reconciler failed"),
                }
                if let Ok(by_lane) = deps.db.documents().count_queued_by_lane().await {
                    deps.metrics.queue_depth.set(by_lane.iter().map(|(_, n)| n).sum());
                    deps.metrics.set_lane_depths(&by_lane);
                }
                if let Ok(pending) = deps.db.webhook_deliveries().pending().await {
                    deps.metrics.webhook_pending.set(pending);
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
                let kept = chrono::TimeDelta::days(i64::from(deps.settings.webhooks.log_retention_days));
                match deps.db.webhook_deliveries().prune(common::now() - kept, 10_000).await {
                    Ok(0) => {}
                    Ok(n) => info!(deleted = n, "old webhook deliveries pruned"),
                    Err(err) => error!(error = %err, "cannot prune webhook deliveries"),
                }
                match deps.db.workers().forget_before(common::now() - WORKER_MEMORY).await {
                    Ok(0) => {}
                    Ok(n) => info!(forgotten = n, "workers unseen for a week forgotten"),
                    Err(err) => error!(error = %err, "cannot forget old workers"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that started a minute ago, whose consumer last heartbeated `beat_s`
    /// seconds after the start, with `in_flight` jobs running.
    fn alive(beat_s: u64, in_flight: i32) -> bool {
        let mut activity = Activity::new();
        activity.started = Instant::now() - Duration::from_secs(60);
        activity
            .consumer_beat_ms
            .store(beat_s * 1000, Ordering::Relaxed);
        activity.in_flight.store(in_flight, Ordering::Relaxed);
        activity.consumer_alive()
    }

    #[test]
    fn a_consumer_silent_for_three_heartbeats_is_not_alive() {
        assert!(alive(50, 0), "heard 10 s ago");
        assert!(!alive(40, 0), "silent for 20 s");
        assert!(!alive(0, 0), "never heard");
    }

    #[test]
    fn jobs_in_flight_keep_a_busy_consumer_alive() {
        assert!(alive(0, 1));
    }
}
