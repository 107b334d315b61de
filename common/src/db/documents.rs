//! Generated documents: the row is the truth about a job.
//!
//! The queue delivers at least once, so the worker's writes are guarded: [`Documents::claim`]
//! counts the attempt, and [`Documents::finish`] only succeeds for the attempt that claimed
//! last while the row is still `processing`, so only one attempt can mark a document done.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::webhooks::{self, Handed, insert_deliveries};
use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::{Document, DocumentStatus, OutputFormat, Priority, Timings};
use crate::webhooks::EventType;

/// The documents list's filter: `$1` owner, `$2` status, `$3` policy, `$4` batch, each
/// optional. Previews are never listed.
macro_rules! list_filter {
    () => {
        "preview = FALSE AND ($1 IS NULL OR owner_id = $1) AND ($2 IS NULL OR status = $2) \
         AND ($3 IS NULL OR policy_id = $3) AND ($4 IS NULL OR batch_id = $4)"
    };
}

/// A bulk document in the window: on the queue (its lease set by the feeder) or rendering.
/// The same predicate as the partial index `ix_generated_documents_bulk_window`.
macro_rules! bulk_in_window {
    () => {
        "priority = 'bulk' AND status IN ('queued', 'processing') AND lease_until IS NOT NULL"
    };
}

/// A bulk document waiting for the feeder; the predicate of the partial index
/// `ix_generated_documents_bulk_waiting`.
macro_rules! bulk_waiting {
    () => {
        "priority = 'bulk' AND status = 'queued' AND lease_until IS NULL"
    };
}

macro_rules! columns {
    () => {
        "id, owner_id, document_type, status, output_format, mime_type, template_version_id, policy_id, \
         inline_context, compress, encrypt, attempts, error, storage_key, size_bytes, stored_bytes, checksum, \
         timings, request_id, idempotency_key, request_hash, uses_template, preview, priority, batch_id, reference, \
         created_at, started_at, finished_at, updated_at"
    };
}
pub(super) use columns;

/// The fields of a document request.
pub struct NewDocument<'a> {
    pub owner_id: Uuid,
    pub document_type: &'a str,
    pub output_format: OutputFormat,
    pub template_version_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    pub inline_context: &'a serde_json::Value,
    pub compress: bool,
    pub encrypt: bool,
    pub request_id: Option<&'a str>,
    /// The client's `Idempotency-Key`, and a hash of the request it came with.
    pub idempotency_key: Option<&'a str>,
    pub request_hash: Option<&'a str>,
    /// Its lane. A bulk document waits without a lease until the feeder gives it a place
    /// in the bulk window ([`Documents::take_bulk`]).
    pub priority: Priority,
    /// For an interactive document: when the reconciler may consider the queued job lost
    /// and enqueue it again.
    pub lease_until: DateTime<Utc>,
    /// A template preview (see the `preview` column).
    pub preview: bool,
}

/// Filters of the documents list.
#[derive(Debug, Default)]
pub struct DocumentFilter {
    /// Only this owner's documents (agents); `None` for everyone's (managers, admins).
    pub owner_id: Option<Uuid>,
    pub status: Option<DocumentStatus>,
    pub policy_id: Option<Uuid>,
    pub batch_id: Option<Uuid>,
}

/// Documents waiting and running in one lane (previews left out).
#[derive(Debug, Clone, Copy)]
pub struct LaneState {
    pub lane: Priority,
    pub queued: i64,
    /// When the oldest queued document was asked for.
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// Documents a worker is rendering.
    pub in_flight: i64,
}

/// One owner's bulk work, as the feeder shares the bulk window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct OwnerLoad {
    pub owner_id: Uuid,
    /// Bulk documents on the queue or being rendered.
    pub in_window: i64,
    /// Bulk documents waiting for a place in the window.
    pub waiting: i64,
}

/// How a finished attempt ended.
pub enum Outcome<'a> {
    Ready {
        storage_key: &'a str,
        size_bytes: i64,
        stored_bytes: i64,
        checksum: &'a str,
        timings: &'a Timings,
    },
    Failed {
        error: &'a str,
    },
}

/// How [`Documents::finish`] went.
#[derive(Debug, Default)]
pub struct Finished {
    /// Whether this attempt ended the document; when not, another attempt claimed it since,
    /// or it is no longer `processing`, and the caller's result is discarded.
    pub won: bool,
    /// The document's deliveries, written claimed by the caller (it gave a lease).
    pub handed: Vec<Handed>,
}

/// The update that ends a document ready: `$1` document, `$2` attempt, `$3` now, `$10`
/// storage key, `$11` size, `$12` stored size, `$13` checksum, `$14` timings.
macro_rules! ready_update {
    () => {
        "UPDATE generated_documents SET status = 'ready', storage_key = $10, size_bytes = $11, \
         stored_bytes = $12, checksum = $13, timings = $14, error = NULL, finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND attempts = $2 AND status = 'processing'"
    };
}

/// The update that ends a document failed: `$1` document, `$2` attempt, `$3` now, `$10` error.
macro_rules! failed_update {
    () => {
        "UPDATE generated_documents SET status = 'failed', error = $10, finished_at = $3, updated_at = $3 \
         WHERE id = $1 AND attempts = $2 AND status = 'processing'"
    };
}

/// Binds `$10` onwards, as `$outcome` is ready or failed: to `$ready` (a query on
/// [`ready_update!`]) or to `$failed` (on [`failed_update!`]), each with `$1` to `$9` bound.
macro_rules! bind_outcome {
    ($outcome:expr, $ready:expr, $failed:expr) => {
        match $outcome {
            Outcome::Ready {
                storage_key,
                size_bytes,
                stored_bytes,
                checksum,
                timings,
            } => $ready
                .bind(*storage_key)
                .bind(*size_bytes)
                .bind(*stored_bytes)
                .bind(*checksum)
                .bind(Json(*timings)),
            Outcome::Failed { error } => $failed.bind(*error),
        }
    };
}

/// [`Documents::finish`] with its deliveries in one round trip: the guarded update, and one
/// delivery per endpoint in `endpoints` still active, inserted only when the update
/// happened (claimed, leased until `lease`, when there is one). `None` when the update did
/// not happen; else the deliveries written, each with its endpoint.
///
/// On Postgres it is one statement. On SQLite, whose every statement is a round trip to
/// the connection's own thread, a transaction's four (begin, update, insert, commit) cost
/// more than the rows they write, so the four statements go as one query (sqlx's SQLite
/// driver runs a query's statements in turn, its `$N` parameters shared; sqlx means to
/// drop that in favour of `raw_sql`, which takes no parameters, and the finish tests on
/// SQLite would say so on an upgrade that does). A connection left inside
/// that transaction (a statement failed, or the caller stopped waiting mid-way) is closed,
/// which rolls it back, rather than returned to the pool.
#[allow(clippy::too_many_arguments)]
async fn finish_with_deliveries(
    pool: &super::Pool,
    id: Uuid,
    attempt: i32,
    outcome: &Outcome<'_>,
    now: DateTime<Utc>,
    event: EventType,
    endpoints: &[Uuid],
    payload: &str,
    lease: Option<DateTime<Utc>>,
) -> DbResult<Option<Vec<(Uuid, Uuid)>>> {
    let ids: Vec<Uuid> = endpoints.iter().map(|_| Uuid::now_v7()).collect();
    let claims = match lease {
        Some(_) => webhooks::HANDED_CLAIM,
        None => 0,
    };
    let due = lease.unwrap_or(now);
    /// The query of `$ready` or `$failed` (the update as `outcome` is, with the deliveries'
    /// insert), `$1` to `$9` bound as both engines' queries number them, then the outcome's.
    macro_rules! deliveries_query {
        ($ready:expr, $failed:expr, $ids:expr, $endpoints:expr) => {{
            let shared = |sql| {
                sqlx::query_as(sql)
                    .bind(id)
                    .bind(attempt)
                    .bind(now)
                    .bind($ids)
                    .bind($endpoints)
                    .bind(event.as_str())
                    .bind(payload)
                    .bind(claims)
                    .bind(due)
            };
            bind_outcome!(outcome, shared($ready), shared($failed))
        }};
    }
    // One row per delivery written, or one of NULLs when the update happened without any;
    // none when it did not happen.
    let rows: Vec<(Option<Uuid>, Option<Uuid>)> = match pool {
        super::Pool::Postgres(pool) => {
            /// `$4` delivery ids, `$5` endpoint ids, `$6` event, `$7` payload, `$8` claims
            /// (and attempts) already made, `$9` when the deliveries are due.
            macro_rules! with_deliveries {
                ($update:expr) => {
                    concat!(
                        "WITH d AS (", $update, " RETURNING id), \
                         w AS (INSERT INTO webhook_deliveries (id, endpoint_id, event_type, object_id, payload, status, \
                         attempts, claims, next_attempt_at, created_at, updated_at) \
                         SELECT u.id, e.id, $6, d.id, $7, 'pending', $8, $8, $9, $3, $3 \
                         FROM d CROSS JOIN UNNEST($4::uuid[], $5::uuid[]) AS u(id, endpoint_id) \
                         JOIN webhook_endpoints e ON e.id = u.endpoint_id AND e.is_active RETURNING id, endpoint_id) \
                         SELECT w.id, w.endpoint_id FROM d LEFT JOIN w ON TRUE"
                    )
                };
            }
            let query = deliveries_query!(
                with_deliveries!(ready_update!()),
                with_deliveries!(failed_update!()),
                &ids,
                endpoints
            );
            query.fetch_all(pool).await.db()?
        }
        super::Pool::Sqlite(pool) => {
            /// `$4` delivery ids, `$5` endpoint ids (JSON arrays of hex), `$6` to `$9` as
            /// on Postgres. `changes()` is the update's row count until the insert ends.
            macro_rules! with_deliveries {
                ($update:expr) => {
                    concat!(
                        "BEGIN IMMEDIATE; ", $update, "; SELECT NULL, NULL WHERE changes() = 1; \
                         INSERT INTO webhook_deliveries (id, endpoint_id, event_type, object_id, payload, status, \
                         attempts, claims, next_attempt_at, created_at, updated_at) \
                         SELECT unhex(i.value), e.id, $6, $1, $7, 'pending', $8, $8, $9, $3, $3 \
                         FROM json_each($4) AS i JOIN json_each($5) AS p ON p.key = i.key \
                         JOIN webhook_endpoints e ON e.id = unhex(p.value) \
                         WHERE e.is_active AND changes() = 1 RETURNING id, endpoint_id; \
                         COMMIT"
                    )
                };
            }
            let hex = |ids: &[Uuid]| {
                serde_json::to_string(&ids.iter().map(|id| id.simple()).collect::<Vec<_>>())
                    .expect("ids serialize")
            };
            let (ids, endpoints) = (hex(&ids), hex(endpoints));
            let query = deliveries_query!(
                with_deliveries!(ready_update!()),
                with_deliveries!(failed_update!()),
                &ids,
                &endpoints
            );
            let mut conn = ClosedUnlessDone::new(pool.acquire().await.db()?);
            let rows = query.fetch_all(&mut *conn.0).await.db()?;
            conn.done();
            rows
        }
    };
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.into_iter()
            .filter_map(|(id, endpoint)| id.zip(endpoint))
            .collect(),
    ))
}

/// A pooled SQLite connection running statements that open and close a transaction
/// themselves: dropped before [`ClosedUnlessDone::done`], it may still be inside that
/// transaction, so it is closed (which rolls the transaction back) instead of returned to
/// the pool.
struct ClosedUnlessDone(sqlx::pool::PoolConnection<sqlx::Sqlite>, bool);

impl ClosedUnlessDone {
    fn new(conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) -> Self {
        ClosedUnlessDone(conn, false)
    }

    fn done(&mut self) {
        self.1 = true;
    }
}

impl Drop for ClosedUnlessDone {
    fn drop(&mut self) {
        if !self.1 {
            self.0.close_on_drop();
        }
    }
}

/// `doc` as attempt's `outcome` leaves it at `now`: what its webhook event tells. The
/// update that writes it is guarded by the attempt, so the row is exactly this.
fn finished_view(doc: &Document, outcome: &Outcome<'_>, now: DateTime<Utc>) -> Document {
    let mut doc = doc.clone();
    doc.finished_at = Some(now);
    doc.updated_at = now;
    match outcome {
        Outcome::Ready {
            storage_key,
            size_bytes,
            stored_bytes,
            checksum,
            timings,
        } => {
            doc.status = DocumentStatus::Ready;
            doc.storage_key = Some(storage_key.to_string());
            doc.size_bytes = Some(*size_bytes);
            doc.stored_bytes = Some(*stored_bytes);
            doc.checksum = Some(checksum.to_string());
            doc.timings = Some(Json((*timings).clone()));
            doc.error = None;
        }
        Outcome::Failed { error } => {
            doc.status = DocumentStatus::Failed;
            doc.error = Some(error.to_string());
        }
    }
    doc
}

pub struct Documents<'a>(pub(super) &'a Db);

impl Documents<'_> {
    /// Records a new request in status `queued`.
    pub async fn create(&self, new: NewDocument<'_>) -> DbResult<Document> {
        let now = crate::now();
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "INSERT INTO generated_documents (id, owner_id, document_type, status, output_format, mime_type, \
             template_version_id, policy_id, inline_context, compress, encrypt, attempts, request_id, \
             idempotency_key, request_hash, lease_until, uses_template, preview, priority, created_at, updated_at) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, 0, $11, $13, $14, $15, $16, $17, $18, $12, $12) RETURNING ",
            columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(new.owner_id)
        .bind(new.document_type)
        .bind(new.output_format.as_str())
        .bind(new.output_format.mime_type())
        .bind(new.template_version_id)
        .bind(new.policy_id)
        .bind(Json(new.inline_context))
        .bind(new.compress)
        .bind(new.encrypt)
        .bind(new.request_id)
        .bind(now)
        .bind(new.idempotency_key)
        .bind(new.request_hash)
        .bind((new.priority == Priority::Interactive).then_some(new.lease_until))
        .bind(new.template_version_id.is_some())
        .bind(new.preview)
        .bind(new.priority.as_str())
        .fetch_one(pool)
        .await)
        .db()
    }

    /// The document `id`, if `owner` is `None` (whoever may see all) or owns it.
    pub async fn find(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<Document>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "SELECT ", columns!(), " FROM generated_documents WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await)
        .db()
    }

    pub async fn get(&self, id: Uuid) -> DbResult<Option<Document>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "SELECT ", columns!(), " FROM generated_documents WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Documents matching `filter`, newest first.
    pub async fn list(
        &self,
        filter: &DocumentFilter,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Document>> {
        let status = filter.status.map(DocumentStatus::as_str);
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Document>(concat!(
                "SELECT ", columns!(), " FROM generated_documents WHERE ", list_filter!(), " ORDER BY created_at DESC, id DESC LIMIT $5 OFFSET $6"
            ))
            .bind(filter.owner_id)
            .bind(status)
            .bind(filter.policy_id)
            .bind(filter.batch_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM generated_documents WHERE ",
                list_filter!()
            ))
            .bind(filter.owner_id)
            .bind(status)
            .bind(filter.policy_id)
            .bind(filter.batch_id)
            .fetch_one(pool)
            .await
            .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// Starts an attempt: the row moves to `processing`, its attempt counter goes up and
    /// its lease runs until `lease_until`. `None` when the document is gone or already
    /// finished (a duplicate delivery).
    pub async fn claim(&self, id: Uuid, lease_until: DateTime<Utc>) -> DbResult<Option<Document>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "UPDATE generated_documents SET status = 'processing', attempts = attempts + 1, \
             started_at = $2, updated_at = $2, lease_until = $3 \
             WHERE id = $1 AND status IN ('queued', 'processing') RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(crate::now())
        .bind(lease_until)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Puts attempt number `attempt` back in the queue after a transient failure, keeping
    /// the reason in `error` for whoever polls. False when another attempt owns the row.
    pub async fn requeue(
        &self,
        id: Uuid,
        attempt: i32,
        error: &str,
        lease_until: DateTime<Utc>,
    ) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query(
            "UPDATE generated_documents SET status = 'queued', error = $3, lease_until = $4, updated_at = $5 \
             WHERE id = $1 AND attempts = $2 AND status = 'processing'",
        )
        .bind(id)
        .bind(attempt)
        .bind(error)
        .bind(lease_until)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))
        .db()
    }

    /// Takes up to `limit` unfinished rows whose lease ran out (their job was lost: a worker
    /// killed mid-job, a queue restarted empty) and extends their lease to `new_lease`, so
    /// that concurrent reconcilers never pick the same row. Returns their ids and request
    /// ids, to be enqueued again.
    pub async fn take_expired(
        &self,
        new_lease: DateTime<Utc>,
        limit: i64,
    ) -> DbResult<Vec<(Uuid, Option<String>)>> {
        on_db!(self.0, pool => sqlx::query_as(
            "UPDATE generated_documents SET lease_until = $2 WHERE id IN ( \
                SELECT id FROM generated_documents \
                WHERE status IN ('queued', 'processing') AND lease_until < $1 \
                ORDER BY lease_until LIMIT $3) \
             AND status IN ('queued', 'processing') AND lease_until < $1 \
             RETURNING id, request_id",
        )
        .bind(crate::now())
        .bind(new_lease)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Cancels `doc` if it waits in `queued`: its job, if delivered later, finds nothing to
    /// claim. When it was a batch's last unfinished item, the batch's `batch.completed`
    /// deliveries are written in the same transaction. `None` when the document is not
    /// queued (any more).
    pub async fn cancel(&self, doc: &Document) -> DbResult<Option<Document>> {
        let for_batch = match doc.batch_id {
            Some(_) => {
                let listeners = self.0.webhook_endpoints().listeners(doc.owner_id).await?;
                webhooks::taking(&listeners, EventType::BatchCompleted)
            }
            None => Vec::new(),
        };
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let cancelled = sqlx::query_as::<_, Document>(concat!(
                "UPDATE generated_documents SET status = 'cancelled', lease_until = NULL, \
                 finished_at = $2, updated_at = $2 \
                 WHERE id = $1 AND status = 'queued' AND preview = FALSE RETURNING ",
                columns!()
            ))
            .bind(doc.id)
            .bind(crate::now())
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            if let (Some(_), Some(batch_id)) = (&cancelled, doc.batch_id)
                && !for_batch.is_empty()
            {
                super::batches::announce_if_complete!(tx, batch_id, &for_batch).await?;
            }
            tx.commit().await.db()?;
            Ok(cancelled)
        })
    }

    /// Puts a `failed` or `cancelled` document back in `queued`, as new: attempts reset,
    /// error and results cleared, a fresh lease until `lease_until` (a bulk document gets
    /// none: it waits for the feeder). Same id, so the same object key. `None` when the
    /// document is in any other status.
    pub async fn resubmit(
        &self,
        id: Uuid,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Option<Document>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Document>(concat!(
            "UPDATE generated_documents SET status = 'queued', attempts = 0, error = NULL, \
             storage_key = NULL, size_bytes = NULL, stored_bytes = NULL, checksum = NULL, timings = NULL, \
             started_at = NULL, finished_at = NULL, updated_at = $2, \
             lease_until = CASE WHEN priority = 'bulk' THEN NULL ELSE $3 END \
             WHERE id = $1 AND status IN ('failed', 'cancelled') AND preview = FALSE RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(crate::now())
        .bind(lease_until)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Ends the lease of an unfinished document, so the next reconciler round (the API's
    /// relay, any worker's timer) enqueues it again: a queued document whose job the queue
    /// did not take, or one whose attempt its worker dropped midway (the next claim takes
    /// over from that attempt). False when the document is finished or gone.
    pub async fn end_lease(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query(
            "UPDATE generated_documents SET lease_until = $2 \
             WHERE id = $1 AND status IN ('queued', 'processing')",
        )
        .bind(id)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected() == 1))
        .db()
    }

    /// Ends the lease of every queued document: the queue lost its jobs (a Redis restarted
    /// empty), so each is to be enqueued again now rather than when its lease runs out.
    /// Returns how many.
    pub async fn expire_queued_leases(&self) -> DbResult<u64> {
        on_db!(self.0, pool => sqlx::query(
            "UPDATE generated_documents SET lease_until = $1 WHERE status = 'queued' AND lease_until > $1",
        )
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .db()
    }

    /// The document a previous request with this `Idempotency-Key` created since `since`.
    /// An older use of the key is released, so the key can be used again.
    pub async fn find_idempotent(
        &self,
        owner_id: Uuid,
        key: &str,
        since: DateTime<Utc>,
    ) -> DbResult<Option<Document>> {
        on_db!(self.0, pool => {
            sqlx::query(
                "UPDATE generated_documents SET idempotency_key = NULL \
                 WHERE owner_id = $1 AND idempotency_key = $2 AND created_at < $3",
            )
            .bind(owner_id)
            .bind(key)
            .bind(since)
            .execute(pool)
            .await
            .db()?;
            sqlx::query_as::<_, Document>(concat!(
                "SELECT ", columns!(), " FROM generated_documents WHERE owner_id = $1 AND idempotency_key = $2"
            ))
            .bind(owner_id)
            .bind(key)
            .fetch_optional(pool)
            .await
            .db()
        })
    }

    /// Marks a ready document failed (its stored object vanished), with its
    /// `document.failed` deliveries in the same transaction. False when it was not ready.
    pub async fn mark_lost(&self, id: Uuid, error: &str) -> DbResult<bool> {
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let lost = sqlx::query_as::<_, Document>(concat!(
                "UPDATE generated_documents SET status = 'failed', error = $2, updated_at = $3 \
                 WHERE id = $1 AND status = 'ready' RETURNING ",
                columns!()
            ))
            .bind(id)
            .bind(error)
            .bind(crate::now())
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            let Some(doc) = lost else {
                return Ok(false);
            };
            let listeners: Vec<webhooks::Endpoint> = sqlx::query_as(webhooks::LISTENERS)
                .bind(doc.owner_id)
                .fetch_all(&mut *tx)
                .await
                .db()?;
            let endpoints = webhooks::taking(&listeners, EventType::DocumentFailed);
            insert_deliveries!(tx, &endpoints, EventType::DocumentFailed, Some(doc.id), &doc, None).await?;
            tx.commit().await.db()?;
            Ok(true)
        })
    }

    /// Whether a document row exists.
    pub async fn exists(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM generated_documents WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .map(|n| n > 0))
        .db()
    }

    /// Documents that were ready before `finished_before`, after `after` (by id), with their
    /// object keys: the purge walks them page by page.
    pub async fn ready_after(
        &self,
        after: Uuid,
        finished_before: DateTime<Utc>,
        limit: i64,
    ) -> DbResult<Vec<(Uuid, String)>> {
        on_db!(self.0, pool => sqlx::query_as(
            "SELECT id, storage_key FROM generated_documents \
             WHERE status = 'ready' AND storage_key IS NOT NULL AND id > $1 AND finished_at < $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(finished_before)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Up to `limit` documents created before `before`, with their object keys (retention).
    pub async fn created_before(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> DbResult<Vec<(Uuid, Option<String>)>> {
        on_db!(self.0, pool => sqlx::query_as(
            "SELECT id, storage_key FROM generated_documents \
             WHERE created_at < $1 AND status IN ('ready', 'failed', 'cancelled') ORDER BY created_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Up to `limit` previews created before `before`, with their object keys: previews
    /// whose requester never came back for them (the API was stopped while waiting).
    pub async fn stale_previews(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> DbResult<Vec<(Uuid, Option<String>)>> {
        on_db!(self.0, pool => sqlx::query_as(
            "SELECT id, storage_key FROM generated_documents \
             WHERE preview AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Ends attempt number `attempt` of `doc` (the row as that attempt claimed it). Not
    /// [`Finished::won`] when another attempt has claimed the document since, or it is no
    /// longer `processing`: the caller's result is then discarded.
    ///
    /// The webhook events of the change are written in the same transaction: a delivery
    /// to each endpoint that takes `document.ready` or `document.failed`, and, when this
    /// was the last unfinished item of a batch, `batch.completed`. With a `lease`, the
    /// document's own deliveries are written already claimed by the caller, leased until
    /// then, and returned for it to send ([`Finished::handed`]); without, they wait for a
    /// claim. Without such endpoints it is the one guarded update.
    pub async fn finish(
        &self,
        doc: &Document,
        attempt: i32,
        outcome: Outcome<'_>,
        lease: Option<DateTime<Utc>>,
    ) -> DbResult<Finished> {
        let now = crate::now();
        let event = match outcome {
            Outcome::Ready { .. } => EventType::DocumentReady,
            Outcome::Failed { .. } => EventType::DocumentFailed,
        };
        let listeners = match doc.preview {
            true => Vec::new(),
            false => self.0.webhook_endpoints().listeners(doc.owner_id).await?,
        };
        let for_document = webhooks::taking(&listeners, event);
        let for_batch = match doc.batch_id {
            Some(_) => webhooks::taking(&listeners, EventType::BatchCompleted),
            None => Vec::new(),
        };
        macro_rules! update {
            ($executor:expr) => {
                match &outcome {
                    Outcome::Ready { storage_key, size_bytes, stored_bytes, checksum, timings } => sqlx::query(
                        "UPDATE generated_documents SET status = 'ready', storage_key = $3, size_bytes = $4, \
                         stored_bytes = $5, checksum = $6, timings = $7, error = NULL, finished_at = $8, updated_at = $8 \
                         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
                    )
                    .bind(doc.id)
                    .bind(attempt)
                    .bind(*storage_key)
                    .bind(*size_bytes)
                    .bind(*stored_bytes)
                    .bind(*checksum)
                    .bind(Json(*timings))
                    .bind(now)
                    .execute($executor)
                    .await,
                    Outcome::Failed { error } => sqlx::query(
                        "UPDATE generated_documents SET status = 'failed', error = $3, finished_at = $4, updated_at = $4 \
                         WHERE id = $1 AND attempts = $2 AND status = 'processing'",
                    )
                    .bind(doc.id)
                    .bind(attempt)
                    .bind(*error)
                    .bind(now)
                    .execute($executor)
                    .await,
                }
                .map(|r| r.rows_affected() == 1)
                .db()
            };
        }
        if for_document.is_empty() && for_batch.is_empty() {
            let won = on_db!(self.0, pool => update!(pool))?;
            return Ok(Finished {
                won,
                handed: Vec::new(),
            });
        }
        // The deliveries written, as the caller sends them.
        let handing = |written: Vec<(Uuid, Uuid)>, payload: &str, at: DateTime<Utc>| {
            let Some(lease) = lease else {
                return Vec::new();
            };
            written
                .into_iter()
                .filter_map(|(id, endpoint_id)| {
                    let endpoint = listeners.iter().find(|e| e.id == endpoint_id)?;
                    Some(Handed::new(id, endpoint, event, doc.id, payload, at, lease))
                })
                .collect()
        };
        let finished = finished_view(doc, &outcome, now);
        if for_batch.is_empty() {
            let payload = webhooks::payload(event, now, &finished);
            let written = finish_with_deliveries(
                self.0.pool(),
                doc.id,
                attempt,
                &outcome,
                now,
                event,
                &for_document,
                &payload,
                lease,
            )
            .await?;
            return Ok(match written {
                Some(written) => Finished {
                    won: true,
                    handed: handing(written, &payload, now),
                },
                None => Finished::default(),
            });
        }
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            if !update!(&mut *tx)? {
                return Ok(Finished::default());
            }
            let inserted = insert_deliveries!(tx, &for_document, event, Some(doc.id), &finished, lease).await?;
            if let Some(batch_id) = doc.batch_id && !for_batch.is_empty() {
                super::batches::announce_if_complete!(tx, batch_id, &for_batch).await?;
            }
            tx.commit().await.db()?;
            Ok(Finished {
                won: true,
                handed: handing(inserted.deliveries, &inserted.payload, inserted.at),
            })
        })
    }

    /// Deletes a document row; false when it did not exist.
    pub async fn delete(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM generated_documents WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .db()
        .map(|n| n == 1)
    }

    /// What the operators' queue view shows, lane by lane: documents queued (and the
    /// oldest one's request time) and in flight. Previews are left out.
    pub async fn queue_state(&self) -> DbResult<Vec<LaneState>> {
        let mut lanes = Vec::with_capacity(Priority::ALL.len());
        for &lane in Priority::ALL {
            let state = on_db!(self.0, pool => {
                let queued: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM generated_documents WHERE status = 'queued' AND priority = $1 AND preview = FALSE",
                )
                .bind(lane.as_str())
                .fetch_one(pool)
                .await
                .db()?;
                let oldest_queued_at: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT created_at FROM generated_documents WHERE status = 'queued' AND priority = $1 AND preview = FALSE \
                     ORDER BY created_at LIMIT 1",
                )
                .bind(lane.as_str())
                .fetch_optional(pool)
                .await
                .db()?;
                let in_flight: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM generated_documents WHERE status = 'processing' AND priority = $1 AND preview = FALSE",
                )
                .bind(lane.as_str())
                .fetch_one(pool)
                .await
                .db()?;
                Ok::<_, super::DbError>(LaneState { lane, queued, oldest_queued_at, in_flight })
            })?;
            lanes.push(state);
        }
        Ok(lanes)
    }

    /// How many bulk documents are in the window: on the queue or being rendered (read
    /// from the partial index over just those rows).
    pub async fn bulk_in_window(&self) -> DbResult<i64> {
        on_db!(self.0, pool => sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM generated_documents WHERE ", bulk_in_window!()
        ))
        .fetch_one(pool)
        .await)
        .db()
    }

    /// The owners with bulk documents waiting for a place in the window, by owner id: how
    /// many each has in the window, and how many wait (counted up to `cap`, the room to
    /// share: more makes no difference to the share). The owners are found by skipping
    /// through the waiting documents' index one owner at a time, so a top-up costs a few
    /// index probes per owner, not a scan of every waiting document.
    pub async fn bulk_waiting(&self, cap: i64) -> DbResult<Vec<OwnerLoad>> {
        on_db!(self.0, pool => sqlx::query_as::<_, OwnerLoad>(concat!(
            "WITH RECURSIVE owners(owner_id) AS ( \
                SELECT (SELECT owner_id FROM generated_documents WHERE ", bulk_waiting!(), " \
                        ORDER BY owner_id LIMIT 1) \
                UNION ALL \
                SELECT (SELECT g.owner_id FROM generated_documents g WHERE ", bulk_waiting!(), " \
                        AND g.owner_id > o.owner_id ORDER BY g.owner_id LIMIT 1) \
                FROM owners o WHERE o.owner_id IS NOT NULL) \
             SELECT o.owner_id, \
                (SELECT COUNT(*) FROM generated_documents g WHERE g.owner_id = o.owner_id AND ",
                bulk_in_window!(), ") AS in_window, \
                (SELECT COUNT(*) FROM (SELECT 1 FROM generated_documents g WHERE g.owner_id = o.owner_id AND ",
                bulk_waiting!(), " LIMIT $1) capped) AS waiting \
             FROM owners o WHERE o.owner_id IS NOT NULL ORDER BY o.owner_id"
        ))
        .bind(cap)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Gives up to `limit` of `owner`'s waiting bulk documents, oldest first, a place in
    /// the bulk window: a lease until `lease_until`, after which the reconciler would
    /// enqueue them again. Returns their ids and request ids, to be enqueued. A document
    /// another feeder took meanwhile is not taken twice.
    ///
    /// On Postgres the candidates are locked with `SKIP LOCKED`: feeders topping up at the
    /// same moment take different documents instead of queueing on each other's row locks
    /// (measured without it: claims of the documents just pushed waited ~90 ms behind a
    /// convoy of top-ups, and a 10,000-item batch ran at 194/s). SQLite has one writer at a
    /// time and no row locks.
    pub async fn take_bulk(
        &self,
        owner: Uuid,
        limit: i64,
        lease_until: DateTime<Utc>,
    ) -> DbResult<Vec<(Uuid, Option<String>)>> {
        let sql = match self.0.pool() {
            // The locking subquery in a CTE: Postgres runs it once. Inside `IN (…)` it may
            // run it again for each row the outer scan meets (seen: one top-up, 31 s).
            super::Pool::Postgres(_) => concat!(
                "WITH picked AS (SELECT id FROM generated_documents WHERE owner_id = $1 AND ",
                bulk_waiting!(),
                " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE generated_documents g SET lease_until = $3 FROM picked WHERE g.id = picked.id \
                 RETURNING g.id, g.request_id"
            ),
            super::Pool::Sqlite(_) => concat!(
                "UPDATE generated_documents SET lease_until = $3 WHERE id IN ( \
                    SELECT id FROM generated_documents WHERE owner_id = $1 AND ",
                bulk_waiting!(),
                " ORDER BY id LIMIT $2) AND ",
                bulk_waiting!(),
                " RETURNING id, request_id"
            ),
        };
        on_db!(self.0, pool => sqlx::query_as(sql)
        .bind(owner)
        .bind(limit)
        .bind(lease_until)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Documents finished since `since`, by minute (`YYYY-MM-DD HH:MM`, UTC) and status
    /// (`ready` or `failed`). Previews are left out.
    pub async fn finished_by_minute(
        &self,
        since: DateTime<Utc>,
    ) -> DbResult<Vec<(String, String, i64)>> {
        // The same buckets on both engines: Postgres formats the minute, SQLite keeps
        // timestamps as RFC 3339 text whose first 16 characters are the minute.
        macro_rules! by_minute {
            ($minute:literal) => {
                concat!(
                    "SELECT ", $minute, " AS minute, status, COUNT(*) FROM generated_documents \
                     WHERE finished_at >= $1 AND status IN ('ready', 'failed') AND preview = FALSE \
                     GROUP BY 1, 2"
                )
            };
        }
        let sql = match self.0.pool() {
            super::Pool::Postgres(_) => {
                by_minute!("to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')")
            }
            super::Pool::Sqlite(_) => by_minute!("replace(substr(finished_at, 1, 16), 'T', ' ')"),
        };
        on_db!(self.0, pool => sqlx::query_as(sql)
            .bind(since)
            .fetch_all(pool)
            .await)
        .db()
    }

    /// How many documents failed since `since`, and the latest `limit` of them.
    pub async fn failed_since(
        &self,
        since: DateTime<Utc>,
        limit: i64,
    ) -> DbResult<(i64, Vec<Document>)> {
        on_db!(self.0, pool => {
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM generated_documents WHERE status = 'failed' AND finished_at >= $1 AND preview = FALSE",
            )
            .bind(since)
            .fetch_one(pool)
            .await
            .db()?;
            let latest = sqlx::query_as::<_, Document>(concat!(
                "SELECT ", columns!(), " FROM generated_documents \
                 WHERE status = 'failed' AND finished_at >= $1 AND preview = FALSE \
                 ORDER BY finished_at DESC, id DESC LIMIT $2"
            ))
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await
            .db()?;
            Ok((count, latest))
        })
    }

    /// How many documents wait in `queued`, in each lane.
    pub async fn count_queued_by_lane(&self) -> DbResult<Vec<(String, i64)>> {
        on_db!(self.0, pool => sqlx::query_as(
            "SELECT priority, COUNT(*) FROM generated_documents WHERE status = 'queued' GROUP BY priority",
        )
        .fetch_all(pool)
        .await)
        .db()
    }

    /// How many documents wait in `queued` in `lane`.
    pub async fn count_queued_in(&self, lane: Priority) -> DbResult<i64> {
        on_db!(self.0, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM generated_documents WHERE status = 'queued' AND priority = $1",
        )
        .bind(lane.as_str())
        .fetch_one(pool)
        .await)
        .db()
    }

    /// How many documents wait in `queued`.
    pub async fn count_queued(&self) -> DbResult<i64> {
        on_db!(self.0, pool => sqlx::query_scalar("SELECT COUNT(*) FROM generated_documents WHERE status = 'queued'")
            .fetch_one(pool)
            .await)
        .db()
    }
}
