//! Housekeeping the workers do on a timer (and admins on demand): finding lost jobs,
//! removing orphaned objects, sweeping abandoned previews, applying the retention period.
//!
//! Here rather than in the worker because the API runs one of them too (an admin's
//! `POST /documents/purge-orphans`), and each needs only the database, the queue and the
//! object store.

use std::time::Duration;

use crate::Db;
use crate::queue::{JobQueue, RenderJob};
use crate::storage::{self, Storage};
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

/// Ready documents younger than this are left out of the "vanished object" check: their
/// object may have been written after the listing was taken.
const LOST_CHECK_GRACE: Duration = Duration::from_secs(60);

/// Enqueues again the documents whose lease ran out: their job was lost (a worker killed
/// mid-job, a queue restarted empty) or never taken (the queue was down when the API
/// accepted them). A Redis that lost everything it held is noticed here first, and every
/// queued document is enqueued again at once rather than when its lease runs out.
/// Returns how many documents were enqueued.
///
/// When a push fails, the documents not yet pushed get their lease back as expired, so the
/// next round tries them again; the error is returned.
pub async fn reconcile(db: &Db, queue: &JobQueue, queued_lease: Duration) -> anyhow::Result<usize> {
    if queue.lost_its_jobs().await? {
        let count = db.documents().expire_queued_leases().await?;
        if count > 0 {
            warn!(
                count,
                "the queue lost its jobs; enqueueing every queued document again"
            );
        }
    }
    let mut total = 0;
    loop {
        let expired = db
            .documents()
            .take_expired(crate::now() + queued_lease, 500)
            .await?;
        if expired.is_empty() {
            return Ok(total);
        }
        for (n, (document_id, request_id)) in expired.iter().enumerate() {
            info!(%document_id, "lease expired; enqueueing the document again");
            let job = RenderJob {
                document_id: *document_id,
                request_id: request_id.clone(),
            };
            if let Err(err) = queue.push(job).await {
                for (unpushed, _) in &expired[n..] {
                    db.documents().end_lease(*unpushed).await?;
                }
                return Err(err);
            }
            total += 1;
        }
    }
}

/// The API's side of the outbox: a document accepted while the queue refused its job keeps
/// its row (with an expired lease) and is [`Outbox::defer`]red; [`relay`] then enqueues it
/// as soon as the queue answers. While an outage is known, producers skip the push
/// altogether ([`Outbox::in_outage`]): a request then costs no wait on a queue that does
/// not answer.
#[derive(Debug, Default)]
pub struct Outbox {
    wake: tokio::sync::Notify,
    outage: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// Hands a queued document (whose lease the caller expired) to the relay.
    pub fn defer(&self) {
        self.outage
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether the relay is still waiting for the queue to answer.
    pub fn in_outage(&self) -> bool {
        self.outage.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs the outbox: after each [`Outbox::defer`], [`reconcile`] until the queue takes
/// everything, backing off from 100 ms to 2 s in between. Workers' timers reconcile too,
/// so nothing depends on this process staying up; the relay makes the hand-over as quick
/// as the queue's return. Runs until `stop` turns true.
pub async fn relay(
    db: Db,
    queue: JobQueue,
    queued_lease: Duration,
    outbox: std::sync::Arc<Outbox>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(100);
    const LAST_RETRY: Duration = Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = outbox.wake.notified() => {}
        }
        let mut delay = FIRST_RETRY;
        loop {
            match reconcile(&db, &queue, queued_lease).await {
                Ok(count) => {
                    // A document deferred from here on wakes the relay again.
                    outbox
                        .outage
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    info!(
                        count,
                        "documents accepted during a queue outage are enqueued"
                    );
                    break;
                }
                Err(err) => {
                    warn!(error = %format!("{err:#}"), retry_ms = delay.as_millis() as u64, "the queue still refuses jobs")
                }
            }
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(LAST_RETRY);
        }
    }
}

/// What a purge did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct PurgeReport {
    /// Keys of the objects no document points to, now deleted.
    pub removed: Vec<String>,
    pub count: usize,
    /// Ready documents whose object had vanished, now marked failed.
    pub lost: Vec<Uuid>,
}

/// Deletes objects no document row points to, and marks failed the ready documents whose
/// object vanished.
pub async fn purge_orphans(db: &Db, storage: &Storage) -> anyhow::Result<PurgeReport> {
    let listed_at = crate::now();
    let objects = storage.list_documents().await?;
    let mut report = PurgeReport::default();
    let mut present = std::collections::HashSet::new();
    for object in objects {
        let owned = match storage::Storage::document_id(&object.key) {
            Some(id) => db.documents().exists(id).await?,
            None => false,
        };
        if owned {
            present.insert(object.key);
        } else {
            storage.delete(&object.key).await?;
            report.removed.push(object.key);
        }
    }

    let cutoff = listed_at - LOST_CHECK_GRACE;
    let mut after = Uuid::nil();
    loop {
        let page = db.documents().ready_after(after, cutoff, 500).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (id, key) in page {
            if !present.contains(&key)
                && db
                    .documents()
                    .mark_lost(id, "the stored file has vanished")
                    .await?
            {
                warn!(document_id = %id, %key, "a ready document's object vanished");
                report.lost.push(id);
            }
        }
    }
    report.count = report.removed.len();
    Ok(report)
}

/// How long a preview may stay: the API deletes each once answered, so an older one was
/// abandoned (its API stopped while waiting).
const PREVIEW_LIFETIME: Duration = Duration::from_secs(600);

/// Deletes abandoned previews, rows and objects. Returns how many.
pub async fn sweep_previews(db: &Db, storage: &Storage) -> anyhow::Result<usize> {
    let before = crate::now() - PREVIEW_LIFETIME;
    delete_all(db, storage, || async move {
        db.documents().stale_previews(before, 500).await
    })
    .await
}

/// Deletes the finished documents (rows and objects) older than `days`. Returns how many.
pub async fn apply_retention(db: &Db, storage: &Storage, days: u32) -> anyhow::Result<usize> {
    let before = crate::now() - chrono::Duration::days(i64::from(days));
    delete_all(db, storage, || async move {
        db.documents().created_before(before, 500).await
    })
    .await
}

/// Deletes, batch after batch until `next` finds none, the documents it names: the
/// object first, then the row (a row left behind is found again; an object left behind
/// would be an orphan). Returns how many.
async fn delete_all<F, Fut>(db: &Db, storage: &Storage, next: F) -> anyhow::Result<usize>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = crate::db::DbResult<Vec<(Uuid, Option<String>)>>>,
{
    let mut total = 0;
    loop {
        let batch = next().await?;
        if batch.is_empty() {
            return Ok(total);
        }
        for (id, key) in batch {
            if let Some(key) = key {
                storage.delete(&key).await?;
            }
            db.documents().delete(id).await?;
            total += 1;
        }
    }
}
