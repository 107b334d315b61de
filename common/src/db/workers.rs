//! The worker registry: each worker process registers at start, heartbeats while it can
//! take jobs, and marks itself stopped when it has drained. A worker that stops
//! heartbeating without saying goodbye (killed, frozen, cut off from its queue) is
//! *stale*: its `last_seen_at` grows old while `stopped_at` stays empty.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Db, DbResult, SqlxResultExt, on_db};

macro_rules! worker_columns {
    () => {
        "id, name, host, pid, version, concurrency, started_at, last_seen_at, stopped_at, in_flight, processed, failed"
    };
}

/// A worker process, as it last reported itself.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct WorkerRow {
    pub id: Uuid,
    /// Its queue consumer's name (`render-<host>-<pid>-<random>`).
    pub name: String,
    pub host: String,
    pub pid: i32,
    /// The build's version.
    pub version: String,
    /// How many jobs it runs at once.
    pub concurrency: i32,
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_seen_at: DateTime<Utc>,
    /// When it drained and stopped; `null` while it runs (or since it died).
    pub stopped_at: Option<DateTime<Utc>>,
    /// Jobs running at its last heartbeat.
    pub in_flight: i32,
    /// Documents it finished (ready or failed) since it started.
    pub processed: i64,
    /// Of which failed.
    pub failed: i64,
}

/// What a worker says of itself at each heartbeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerCounts {
    pub in_flight: i32,
    pub processed: i64,
    pub failed: i64,
}

pub struct Workers<'a>(pub(super) &'a Db);

impl Workers<'_> {
    /// Records a starting worker.
    pub async fn register(
        &self,
        id: Uuid,
        name: &str,
        host: &str,
        pid: i32,
        concurrency: i32,
    ) -> DbResult<()> {
        let now = crate::now();
        on_db!(self.0, pool => sqlx::query(
            "INSERT INTO workers (id, name, host, pid, version, concurrency, started_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id)
        .bind(name)
        .bind(host)
        .bind(pid)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(concurrency)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ()))
        .db()
    }

    /// A heartbeat: the worker is alive and takes jobs.
    pub async fn heartbeat(&self, id: Uuid, counts: WorkerCounts) -> DbResult<()> {
        on_db!(self.0, pool => sqlx::query(
            "UPDATE workers SET last_seen_at = $2, in_flight = $3, processed = $4, failed = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(crate::now())
        .bind(counts.in_flight)
        .bind(counts.processed)
        .bind(counts.failed)
        .execute(pool)
        .await
        .map(|_| ()))
        .db()
    }

    /// The worker drained and stops.
    pub async fn stop(&self, id: Uuid, counts: WorkerCounts) -> DbResult<()> {
        let now = crate::now();
        on_db!(self.0, pool => sqlx::query(
            "UPDATE workers SET last_seen_at = $2, stopped_at = $2, in_flight = 0, processed = $3, failed = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(counts.processed)
        .bind(counts.failed)
        .execute(pool)
        .await
        .map(|_| ()))
        .db()
    }

    /// Workers seen since `since` (stopped or not), most recently seen first.
    pub async fn seen_since(&self, since: DateTime<Utc>, limit: i64) -> DbResult<Vec<WorkerRow>> {
        on_db!(self.0, pool => sqlx::query_as::<_, WorkerRow>(concat!(
            "SELECT ", worker_columns!(), " FROM workers WHERE last_seen_at >= $1 \
             ORDER BY last_seen_at DESC, id LIMIT $2"
        ))
        .bind(since)
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// How many workers heartbeated since `since` and have not stopped.
    pub async fn count_live(&self, since: DateTime<Utc>) -> DbResult<i64> {
        on_db!(self.0, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM workers WHERE last_seen_at >= $1 AND stopped_at IS NULL",
        )
        .bind(since)
        .fetch_one(pool)
        .await)
        .db()
    }

    /// Forgets workers last seen before `before`; returns how many.
    pub async fn forget_before(&self, before: DateTime<Utc>) -> DbResult<u64> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM workers WHERE last_seen_at < $1")
            .bind(before)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .db()
    }
}
