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

/// Enqueues again the documents whose lease ran out (their job was lost: a worker killed
/// mid-job, a queue restarted empty). Returns how many.
pub async fn reconcile(db: &Db, queue: &JobQueue, queued_lease: Duration) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let expired = db
            .documents()
            .take_expired(crate::now() + queued_lease, 500)
            .await?;
        if expired.is_empty() {
            return Ok(total);
        }
        total += expired.len();
        for (document_id, request_id) in expired {
            info!(%document_id, "lease expired; enqueueing the document again");
            queue
                .push(RenderJob {
                    document_id,
                    request_id,
                })
                .await?;
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
