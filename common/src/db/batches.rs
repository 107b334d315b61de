//! Document batches. A batch row holds what its items share; each item is an ordinary
//! `generated_documents` row with the batch's id, its `reference` and the `bulk` priority.
//!
//! The counts and the status are read from the items ([`Batches::find`]) rather than kept
//! on the batch row: a worker finishing an item then writes that item's row only, so a
//! batch rendering a thousand items a second is not a row every worker waits on, and the
//! counts cannot drift from the rows they count.
//!
//! Accepting a batch is one transaction: the batch row and every item, inserted in bulk
//! (Postgres: one `INSERT … SELECT FROM UNNEST` of arrays; SQLite, in process: one
//! prepared statement run per item inside the transaction). No item is enqueued here: the
//! feeder ([`crate::feeder`]) gives them places on the queue a window at a time.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::documents::columns;
use super::{Db, DbResult, Page, Pool, SqlxResultExt, on_db};
use crate::model::{Batch, BatchStatus, Document, DocumentStatus, OutputFormat};

macro_rules! batch_columns {
    () => {
        "id, owner_id, document_type, output_format, template_version_id, compress, encrypt, total, \
         request_hash, created_at, cancelled_at"
    };
}
pub(crate) use batch_columns;

/// What the items of a batch share.
pub struct NewBatch<'a> {
    pub owner_id: Uuid,
    pub document_type: &'a str,
    pub output_format: OutputFormat,
    pub template_version_id: Option<Uuid>,
    pub compress: bool,
    pub encrypt: bool,
    pub request_id: Option<&'a str>,
    /// The client's `Idempotency-Key`, and a hash of the request it came with.
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a str>,
}

/// One item of a new batch.
pub struct NewItem {
    /// The document's id, chosen beforehand so a default reference can name it.
    pub id: Uuid,
    pub reference: String,
    pub policy_id: Option<Uuid>,
    /// The batch's shared context with the item's own merged over it.
    pub inline_context: serde_json::Value,
}

/// A batch row, before its items are counted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub document_type: String,
    #[sqlx(try_from = "String")]
    pub output_format: OutputFormat,
    pub template_version_id: Option<Uuid>,
    pub compress: bool,
    pub encrypt: bool,
    pub total: i32,
    pub request_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// How many of a batch's items are in one status, and when the first started and the
/// last finished.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StatusCount {
    batch_id: Uuid,
    status: String,
    count: i64,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// The counts of one batch: `$1` the batch.
pub(crate) const COUNT_ONE: &str = "SELECT batch_id, status, COUNT(*) AS count, MIN(started_at) AS started_at, \
     MAX(finished_at) AS finished_at FROM generated_documents WHERE batch_id = $1 GROUP BY batch_id, status";

impl BatchRow {
    /// The batch as clients see it, from its items' counts.
    pub(crate) fn with_counts<'a>(self, counts: impl Iterator<Item = &'a StatusCount>) -> Batch {
        let (mut queued, mut processing, mut ready, mut failed, mut cancelled) = (0, 0, 0, 0, 0);
        let (mut started_at, mut finished_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
            (None, None);
        for c in counts {
            match c.status.parse::<DocumentStatus>() {
                Ok(DocumentStatus::Queued) => queued += c.count,
                Ok(DocumentStatus::Processing) => processing += c.count,
                Ok(DocumentStatus::Ready) => ready += c.count,
                Ok(DocumentStatus::Failed) => failed += c.count,
                Ok(DocumentStatus::Cancelled) => cancelled += c.count,
                Err(_) => {}
            }
            started_at = match (started_at, c.started_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            finished_at = finished_at.max(c.finished_at);
        }
        let unfinished = queued + processing;
        let status = match (self.cancelled_at, unfinished) {
            (Some(_), _) => BatchStatus::Cancelled,
            (None, 0) => BatchStatus::Completed,
            (None, _) if started_at.is_some() || ready + failed + cancelled > 0 => {
                BatchStatus::Running
            }
            (None, _) => BatchStatus::Queued,
        };
        // A cancelled batch's queued items are cancelled already; it is over when the items
        // that were rendering finish.
        let still_running = match status {
            BatchStatus::Cancelled => processing,
            _ => unfinished,
        };
        let finished_at = match still_running {
            0 => finished_at.max(self.cancelled_at),
            _ => None,
        };
        Batch {
            id: self.id,
            status,
            document_type: self.document_type,
            output_format: self.output_format,
            template_version_id: self.template_version_id,
            compressed: self.compress,
            encrypted: self.encrypt,
            total: i64::from(self.total),
            queued,
            processing,
            ready,
            failed,
            cancelled,
            created_at: self.created_at,
            started_at,
            finished_at,
            owner_id: self.owner_id,
        }
    }
}

/// On the open transaction `$tx`, after a change that may have finished the batch
/// `$batch_id`'s last unfinished item: when none is queued or processing any more, writes
/// a `batch.completed` delivery (the batch with its counts) to each endpoint id in
/// `$endpoints`. Evaluates to a `DbResult<()>`.
///
/// The batch row is locked first (a no-op update, on either engine), so of two items
/// finishing at once the second counts after the first has committed: exactly one of them
/// sees the batch complete.
macro_rules! announce_if_complete {
    ($tx:expr, $batch_id:expr, $endpoints:expr) => {
        async {
            use $crate::db::SqlxResultExt;
            let row = sqlx::query_as::<_, $crate::db::batches::BatchRow>(concat!(
                "UPDATE document_batches SET cancelled_at = cancelled_at WHERE id = $1 RETURNING ",
                $crate::db::batches::batch_columns!()
            ))
            .bind($batch_id)
            .fetch_optional(&mut *$tx)
            .await
            .db()?;
            let Some(row) = row else {
                return Ok(());
            };
            let counts: Vec<$crate::db::batches::StatusCount> =
                sqlx::query_as($crate::db::batches::COUNT_ONE)
                    .bind($batch_id)
                    .fetch_all(&mut *$tx)
                    .await
                    .db()?;
            let batch = row.with_counts(counts.iter());
            if batch.queued + batch.processing == 0 {
                $crate::db::webhooks::insert_deliveries!(
                    $tx,
                    $endpoints,
                    $crate::webhooks::EventType::BatchCompleted,
                    Some(batch.id),
                    &batch,
                    None
                )
                .await?;
            }
            Ok::<(), $crate::db::DbError>(())
        }
    };
}
pub(crate) use announce_if_complete;

pub struct Batches<'a>(pub(super) &'a Db);

impl Batches<'_> {
    /// Writes the batch and all its items in one transaction; each item is `queued` in the
    /// bulk lane, waiting for the feeder. A taken `Idempotency-Key` is refused by
    /// [`Constraint::UqDocumentBatchesIdempotency`](super::Constraint).
    pub async fn create(&self, new: NewBatch<'_>, items: &[NewItem]) -> DbResult<BatchRow> {
        let now = crate::now();
        let id = Uuid::now_v7();
        macro_rules! insert_batch {
            ($tx:expr) => {
                sqlx::query_as::<_, BatchRow>(concat!(
                    "INSERT INTO document_batches (id, owner_id, document_type, output_format, template_version_id, \
                     compress, encrypt, total, request_id, idempotency_key, request_hash, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
                    batch_columns!()
                ))
                .bind(id)
                .bind(new.owner_id)
                .bind(new.document_type)
                .bind(new.output_format.as_str())
                .bind(new.template_version_id)
                .bind(new.compress)
                .bind(new.encrypt)
                .bind(items.len() as i32)
                .bind(new.request_id)
                .bind(new.idempotency_key)
                .bind(new.request_hash)
                .bind(now)
                .fetch_one(&mut *$tx)
                .await
            };
        }
        match self.0.pool() {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await.db()?;
                let batch = insert_batch!(tx).db()?;
                let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
                let policies: Vec<Option<Uuid>> = items.iter().map(|i| i.policy_id).collect();
                let contexts: Vec<String> =
                    items.iter().map(|i| i.inline_context.to_string()).collect();
                let references: Vec<&str> = items.iter().map(|i| i.reference.as_str()).collect();
                sqlx::query(
                    "INSERT INTO generated_documents (id, owner_id, document_type, status, output_format, mime_type, \
                     template_version_id, policy_id, inline_context, compress, encrypt, attempts, request_id, \
                     uses_template, preview, priority, batch_id, reference, created_at, updated_at) \
                     SELECT u.id, $5, $6, 'queued', $7, $8, $9, u.policy_id, u.context::jsonb, $10, $11, 0, $12, \
                     $13, FALSE, 'bulk', $14, u.reference, $15, $15 \
                     FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS u(id, policy_id, context, reference)",
                )
                .bind(&ids)
                .bind(&policies)
                .bind(&contexts)
                .bind(&references)
                .bind(new.owner_id)
                .bind(new.document_type)
                .bind(new.output_format.as_str())
                .bind(new.output_format.mime_type())
                .bind(new.template_version_id)
                .bind(new.compress)
                .bind(new.encrypt)
                .bind(new.request_id)
                .bind(new.template_version_id.is_some())
                .bind(batch.id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .db()?;
                tx.commit().await.db()?;
                Ok(batch)
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await.db()?;
                let batch = insert_batch!(tx).db()?;
                for item in items {
                    sqlx::query(
                        "INSERT INTO generated_documents (id, owner_id, document_type, status, output_format, mime_type, \
                         template_version_id, policy_id, inline_context, compress, encrypt, attempts, request_id, \
                         uses_template, preview, priority, batch_id, reference, created_at, updated_at) \
                         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, FALSE, 'bulk', $13, $14, $15, $15)",
                    )
                    .bind(item.id)
                    .bind(new.owner_id)
                    .bind(new.document_type)
                    .bind(new.output_format.as_str())
                    .bind(new.output_format.mime_type())
                    .bind(new.template_version_id)
                    .bind(item.policy_id)
                    .bind(Json(&item.inline_context))
                    .bind(new.compress)
                    .bind(new.encrypt)
                    .bind(new.request_id)
                    .bind(new.template_version_id.is_some())
                    .bind(batch.id)
                    .bind(&item.reference)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .db()?;
                }
                tx.commit().await.db()?;
                Ok(batch)
            }
        }
    }

    /// The batch `id` with its counts, if `owner` is `None` (whoever may see all) or owns it.
    pub async fn find(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<Batch>> {
        let Some(row) = self.row(id, owner).await? else {
            return Ok(None);
        };
        let counts: Vec<StatusCount> = on_db!(self.0, pool => sqlx::query_as(COUNT_ONE)
            .bind(id)
            .fetch_all(pool)
            .await)
        .db()?;
        Ok(Some(row.with_counts(counts.iter())))
    }

    /// The batch row alone (no counts).
    pub async fn row(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<BatchRow>> {
        on_db!(self.0, pool => sqlx::query_as::<_, BatchRow>(concat!(
            "SELECT ", batch_columns!(), " FROM document_batches WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// `owner`'s batches (everyone's for `None`), newest first, with their counts.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Batch>> {
        on_db!(self.0, pool => {
            let rows = sqlx::query_as::<_, BatchRow>(concat!(
                "SELECT ", batch_columns!(), " FROM document_batches WHERE ($1 IS NULL OR owner_id = $1) \
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(owner)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let counts: Vec<StatusCount> = sqlx::query_as(
                "SELECT batch_id, status, COUNT(*) AS count, MIN(started_at) AS started_at, \
                 MAX(finished_at) AS finished_at FROM generated_documents WHERE batch_id IN ( \
                    SELECT id FROM document_batches WHERE ($1 IS NULL OR owner_id = $1) \
                    ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3) \
                 GROUP BY batch_id, status",
            )
            .bind(owner)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM document_batches WHERE ($1 IS NULL OR owner_id = $1)",
            )
            .bind(owner)
            .fetch_one(pool)
            .await
            .db()?;
            let items = rows
                .into_iter()
                .map(|row| {
                    let id = row.id;
                    row.with_counts(counts.iter().filter(|c| c.batch_id == id))
                })
                .collect();
            Ok(Page { items, total, limit, offset })
        })
    }

    /// The batch an earlier request with this `Idempotency-Key` made since `since`. An
    /// older use of the key is released, so the key can be used again.
    pub async fn find_idempotent(
        &self,
        owner_id: Uuid,
        key: &str,
        since: DateTime<Utc>,
    ) -> DbResult<Option<BatchRow>> {
        on_db!(self.0, pool => {
            sqlx::query(
                "UPDATE document_batches SET idempotency_key = NULL \
                 WHERE owner_id = $1 AND idempotency_key = $2 AND created_at < $3",
            )
            .bind(owner_id)
            .bind(key)
            .bind(since)
            .execute(pool)
            .await
            .db()?;
            sqlx::query_as::<_, BatchRow>(concat!(
                "SELECT ", batch_columns!(), " FROM document_batches WHERE owner_id = $1 AND idempotency_key = $2"
            ))
            .bind(owner_id)
            .bind(key)
            .fetch_optional(pool)
            .await
            .db()
        })
    }

    /// Cancels every queued item of `batch` and marks the batch cancelled, in one
    /// transaction, which also writes its `batch.completed` deliveries when no item is
    /// left rendering. Returns how many items were cancelled.
    pub async fn cancel(&self, batch: &Batch) -> DbResult<u64> {
        let now = crate::now();
        let listeners = self.0.webhook_endpoints().listeners(batch.owner_id).await?;
        let for_batch =
            super::webhooks::taking(&listeners, crate::webhooks::EventType::BatchCompleted);
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            sqlx::query("UPDATE document_batches SET cancelled_at = $2 WHERE id = $1 AND cancelled_at IS NULL")
                .bind(batch.id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .db()?;
            let cancelled = sqlx::query(
                "UPDATE generated_documents SET status = 'cancelled', lease_until = NULL, finished_at = $2, updated_at = $2 \
                 WHERE batch_id = $1 AND status = 'queued'",
            )
            .bind(batch.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
            // Only a cancel that stopped items can be what completes the batch: a batch
            // finished already was announced then, and one with items still rendering is
            // announced by the last of them.
            if cancelled > 0 && !for_batch.is_empty() {
                announce_if_complete!(tx, batch.id, &for_batch).await?;
            }
            tx.commit().await.db()?;
            Ok(cancelled)
        })
    }

    /// Puts every failed item of the batch back in the bulk lane, as new (attempts reset,
    /// error and results cleared); a cancelled batch that gets items back runs again.
    /// Returns how many items were put back.
    pub async fn retry(&self, id: Uuid) -> DbResult<u64> {
        let now = crate::now();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let retried = sqlx::query(
                "UPDATE generated_documents SET status = 'queued', attempts = 0, error = NULL, \
                 storage_key = NULL, size_bytes = NULL, stored_bytes = NULL, checksum = NULL, timings = NULL, \
                 started_at = NULL, finished_at = NULL, lease_until = NULL, updated_at = $2 \
                 WHERE batch_id = $1 AND status = 'failed'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
            if retried > 0 {
                sqlx::query("UPDATE document_batches SET cancelled_at = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .db()?;
            }
            tx.commit().await.db()?;
            Ok(retried)
        })
    }

    /// Up to `limit` of the batch's items after `after` (by id, so in the order they were
    /// asked for), whatever their status: the archive walks them page by page.
    pub async fn items_after(&self, id: Uuid, after: Uuid, limit: i64) -> DbResult<Vec<Document>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "SELECT ", columns!(), " FROM generated_documents WHERE batch_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Deletes the batch and its items' rows; returns the object keys the items had, for
    /// the caller to delete. `None` when the batch did not exist.
    pub async fn delete(&self, id: Uuid) -> DbResult<Option<Vec<String>>> {
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT storage_key FROM generated_documents WHERE batch_id = $1 AND storage_key IS NOT NULL",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .db()?;
            sqlx::query("DELETE FROM generated_documents WHERE batch_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .db()?;
            let deleted = sqlx::query("DELETE FROM document_batches WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .db()?
                .rows_affected();
            tx.commit().await.db()?;
            Ok((deleted == 1).then_some(keys))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cancelled: bool) -> BatchRow {
        BatchRow {
            id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            document_type: "attestation".into(),
            output_format: OutputFormat::Html,
            template_version_id: None,
            compress: false,
            encrypt: false,
            total: 10,
            request_hash: None,
            created_at: Utc::now(),
            cancelled_at: cancelled.then(Utc::now),
        }
    }

    fn count(status: &str, count: i64, started: bool) -> StatusCount {
        StatusCount {
            batch_id: Uuid::nil(),
            status: status.into(),
            count,
            started_at: started.then(Utc::now),
            finished_at: ["ready", "failed", "cancelled"]
                .contains(&status)
                .then(Utc::now),
        }
    }

    #[test]
    fn a_batch_is_queued_until_an_item_starts_and_completed_when_none_waits() {
        let queued = row(false).with_counts([count("queued", 10, false)].iter());
        assert_eq!(queued.status, BatchStatus::Queued);
        assert_eq!(queued.finished_at, None);
        let running = row(false)
            .with_counts([count("queued", 9, false), count("processing", 1, true)].iter());
        assert_eq!(running.status, BatchStatus::Running);
        let done =
            row(false).with_counts([count("ready", 8, true), count("failed", 2, true)].iter());
        assert_eq!(
            (done.status, done.ready, done.failed),
            (BatchStatus::Completed, 8, 2)
        );
        assert!(done.finished_at.is_some());
    }

    #[test]
    fn a_cancelled_batch_finishes_when_its_running_items_do() {
        let stopping = row(true)
            .with_counts([count("cancelled", 9, false), count("processing", 1, true)].iter());
        assert_eq!(stopping.status, BatchStatus::Cancelled);
        assert_eq!(stopping.finished_at, None);
        let stopped =
            row(true).with_counts([count("cancelled", 9, false), count("ready", 1, true)].iter());
        assert!(stopped.finished_at.is_some());
    }
}
