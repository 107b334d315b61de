//! The operators' view: which workers are live or stale, what waits in the queue, what was
//! finished lately and what failed, and whether the pipeline is stalled (documents waiting
//! with nobody to render them).
//!
//! Everything is read from the database, the one place every API replica and worker
//! shares: workers heartbeat into the `workers` table, documents carry their own state.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use common::db::webhooks::FailingDelivery;
use common::db::workers::WorkerRow;
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiResult;

/// How far back the worker list looks for stale and stopped workers.
const WORKERS_LOOKBACK: Duration = Duration::from_secs(24 * 3600);
/// How many workers the list shows at most.
const WORKERS_SHOWN: i64 = 200;
/// The window of the finished-per-minute series.
const FINISHED_WINDOW_MINUTES: i64 = 15;
/// How many recent failures the queue view lists.
const FAILURES_SHOWN: i64 = 20;

/// `GET /api/v1/ops/workers`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WorkersView {
    /// Workers that heartbeated within `stale_after_seconds`.
    pub live: Vec<WorkerRow>,
    /// Workers that stopped heartbeating without draining (killed, frozen, or cut off from
    /// their queue), seen in the last 24 hours.
    pub stale: Vec<WorkerRow>,
    /// Workers that drained and stopped in the last 24 hours.
    pub stopped: Vec<WorkerRow>,
    /// A worker not heard of for this long is stale (three heartbeats).
    pub stale_after_seconds: f64,
}

/// Live, stale and stopped workers, most recently seen first.
pub async fn workers(state: &AppState) -> ApiResult<WorkersView> {
    let now = common::now();
    let stale_after = state.settings.worker.stale_after();
    let live_since = now - stale_after;
    let rows = state
        .db
        .workers()
        .seen_since(now - WORKERS_LOOKBACK, WORKERS_SHOWN)
        .await?;
    let (mut live, mut stale, mut stopped) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        match (row.stopped_at, row.last_seen_at >= live_since) {
            (Some(_), _) => stopped.push(row),
            (None, true) => live.push(row),
            (None, false) => stale.push(row),
        }
    }
    Ok(WorkersView {
        live,
        stale,
        stopped,
        stale_after_seconds: stale_after.as_secs_f64(),
    })
}

/// `GET /api/v1/ops/queue`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// Documents waiting and running, by priority lane: `interactive`, then `bulk`.
    pub lanes: Vec<Lane>,
    /// Documents waiting, all lanes.
    pub queued: i64,
    /// How long the oldest waiting document has waited, in seconds; `null` when none waits.
    pub oldest_queued_seconds: Option<f64>,
    /// Documents a worker is rendering.
    pub in_flight: i64,
    /// Documents finished in each of the last 15 minutes, oldest first (the current minute
    /// last).
    pub finished_per_minute: Vec<MinuteCount>,
    /// Documents that failed in the last hour.
    pub failed_last_hour: i64,
    /// The latest of them, newest first, with their errors.
    pub recent_failures: Vec<Failure>,
    /// Live workers (see `/api/v1/ops/workers`).
    pub live_workers: i64,
    /// Webhook deliveries waiting to be sent or retried.
    pub webhooks_pending: i64,
    /// Webhook deliveries whose last attempt failed (given up, or waiting for a retry),
    /// the latest first.
    pub failing_webhooks: Vec<FailingDelivery>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Lane {
    /// `interactive` (single documents, taken first) or `bulk` (batch items, fed to the
    /// queue a window at a time and shared fairly between owners).
    pub lane: &'static str,
    pub queued: i64,
    pub oldest_queued_seconds: Option<f64>,
    pub in_flight: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MinuteCount {
    /// The minute's start (UTC).
    pub minute: DateTime<Utc>,
    pub ready: i64,
    pub failed: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub document_type: String,
    pub output_format: String,
    pub error: Option<String>,
    pub attempts: i32,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What waits, what runs, what finished and what failed.
pub async fn queue(state: &AppState) -> ApiResult<QueueView> {
    let now = common::now();
    let documents = state.db.documents();
    let waiting = documents.queue_state().await?;
    let this_minute = now
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(now);
    let window_start = this_minute - chrono::TimeDelta::minutes(FINISHED_WINDOW_MINUTES - 1);
    let finished = documents.finished_by_minute(window_start).await?;
    let (failed_last_hour, latest) = documents
        .failed_since(now - chrono::TimeDelta::hours(1), FAILURES_SHOWN)
        .await?;
    let live_workers = state
        .db
        .workers()
        .count_live(now - state.settings.worker.stale_after())
        .await?;
    let oldest_queued_at = waiting.iter().filter_map(|l| l.oldest_queued_at).min();
    let deliveries = state.db.webhook_deliveries();
    let webhooks_pending = deliveries.pending().await?;
    let failing_webhooks = deliveries.failing(FAILURES_SHOWN).await?;
    Ok(QueueView {
        lanes: waiting
            .iter()
            .map(|l| Lane {
                lane: l.lane.as_str(),
                queued: l.queued,
                oldest_queued_seconds: l.oldest_queued_at.map(|at| age_seconds(now, at)),
                in_flight: l.in_flight,
            })
            .collect(),
        queued: waiting.iter().map(|l| l.queued).sum(),
        oldest_queued_seconds: oldest_queued_at.map(|at| age_seconds(now, at)),
        in_flight: waiting.iter().map(|l| l.in_flight).sum(),
        finished_per_minute: per_minute(window_start, FINISHED_WINDOW_MINUTES, &finished),
        failed_last_hour,
        recent_failures: latest
            .into_iter()
            .map(|doc| Failure {
                id: doc.id,
                owner_id: doc.owner_id,
                document_type: doc.document_type,
                output_format: doc.output_format.as_str().to_owned(),
                error: doc.error,
                attempts: doc.attempts,
                finished_at: doc.finished_at,
            })
            .collect(),
        live_workers,
        webhooks_pending,
        failing_webhooks,
    })
}

/// Whether workers render what is queued, for `/health/db`.
pub struct Pipeline {
    /// Live workers; `None` in the embedded mode, where the worker is in this process.
    pub workers: Option<i64>,
    /// Documents have waited past `WORKER_STALL_SECONDS` with no live worker.
    pub stalled: bool,
}

pub async fn pipeline(state: &AppState) -> ApiResult<Pipeline> {
    if state.embedded_worker {
        return Ok(Pipeline {
            workers: None,
            stalled: false,
        });
    }
    let now = common::now();
    let live = state
        .db
        .workers()
        .count_live(now - state.settings.worker.stale_after())
        .await?;
    let stalled = live == 0
        && state
            .db
            .documents()
            .queue_state()
            .await?
            .iter()
            .filter_map(|lane| lane.oldest_queued_at)
            .any(|at| age_seconds(now, at) > state.settings.worker.stall_after.as_secs_f64());
    Ok(Pipeline {
        workers: Some(live),
        stalled,
    })
}

fn age_seconds(now: DateTime<Utc>, at: DateTime<Utc>) -> f64 {
    (now - at).num_milliseconds().max(0) as f64 / 1000.0
}

/// `minutes` consecutive minutes from `start`, each with its counts from `rows`
/// (`(YYYY-MM-DD HH:MM, status, count)`), zero where nothing finished.
fn per_minute(
    start: DateTime<Utc>,
    minutes: i64,
    rows: &[(String, String, i64)],
) -> Vec<MinuteCount> {
    (0..minutes)
        .map(|n| {
            let minute = start + chrono::TimeDelta::minutes(n);
            let key = minute.format("%Y-%m-%d %H:%M").to_string();
            let count = |status: &str| {
                rows.iter()
                    .filter(|(m, s, _)| *m == key && s == status)
                    .map(|(_, _, count)| count)
                    .sum()
            };
            MinuteCount {
                minute,
                ready: count("ready"),
                failed: count("failed"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_without_documents_count_zero() {
        let start = "2026-12-06T16:20:00Z".parse::<DateTime<Utc>>().unwrap();
        let rows = vec![
            ("2026-12-06 16:21".to_owned(), "ready".to_owned(), 7),
            ("2026-12-06 16:21".to_owned(), "failed".to_owned(), 2),
            ("2026-12-06 16:23".to_owned(), "ready".to_owned(), 1),
            ("2026-12-06 16:19".to_owned(), "ready".to_owned(), 99),
        ];
        let series = per_minute(start, 4, &rows);
        let counts: Vec<_> = series.iter().map(|m| (m.ready, m.failed)).collect();
        assert_eq!(counts, [(0, 0), (7, 2), (0, 0), (1, 0)]);
        assert_eq!(series[3].minute, start + chrono::TimeDelta::minutes(3));
    }
}
