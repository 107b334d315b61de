//! The job queue: what a render job carries and how the API pushes one.
//!
//! Two backends, chosen by configuration: Redis (apalis-redis) whenever `REDIS_URL` is set,
//! SQLite (apalis-sqlite, in its own file so queue traffic never contends with the data
//! file's writers) otherwise. A job carries only the document id and the request id: the
//! `generated_documents` row is the truth, so a lost or duplicated job costs a retry, never
//! a wrong document.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{TaskBuilder, TaskId, TaskSink};
use apalis_redis::RedisStorage;
use apalis_sqlite::callback::HookCallbackListener;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Settings;

/// The payload of a render job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderJob {
    pub document_id: Uuid,
    /// The id of the HTTP request that asked for the document, so the worker's log lines
    /// can be matched with the API's.
    pub request_id: Option<String>,
}

/// How long a Redis worker may go without a heartbeat before its jobs are given to
/// another worker (apalis' default is 300 s).
pub const REDIS_HEARTBEAT: Duration = Duration::from_secs(5);
pub const REDIS_MISSED_HEARTBEATS: usize = 3;

/// The producer's handle on the queue; cheap to clone.
#[derive(Clone)]
pub enum JobQueue {
    Sqlite {
        pool: SqlitePool,
        config: apalis_sqlite::Config,
        /// Fires when this process writes to the queue file, so an in-process worker
        /// picks a job up without waiting for its next poll. Taken by the first worker.
        listener: Arc<Mutex<Option<HookCallbackListener>>>,
    },
    Redis {
        storage: Box<RedisStorage<RenderJob>>,
        conn: apalis_redis::ConnectionManager,
    },
}

impl JobQueue {
    /// Opens the configured backend and prepares its tables (SQLite).
    pub async fn connect(settings: &Settings) -> anyhow::Result<JobQueue> {
        if let Some(url) = &settings.redis_url {
            let conn = apalis_redis::connect(url.as_str())
                .await
                .context("cannot connect to Redis at REDIS_URL")?;
            let config = apalis_redis::Config::default()
                .queue(&settings.queue_name)
                .heartbeat_interval(REDIS_HEARTBEAT)
                .missed_heartbeats(REDIS_MISSED_HEARTBEATS);
            let storage = Box::new(RedisStorage::new(conn.clone()).with_config(config));
            Ok(JobQueue::Redis { storage, conn })
        } else {
            crate::db::configure_sqlite_process();
            let url = sqlite_url_creating_file(&settings.queue_database_url)?;
            let (pool, listener) = SqliteStorage::connect_with_callback(&url)
                .context("cannot open the SQLite job queue")?;
            SqliteStorage::setup(&pool)
                .await
                .context("cannot prepare the SQLite job queue")?;
            let config = apalis_sqlite::Config::default()
                .queue(&settings.queue_name)
                .heartbeat_interval(Duration::from_secs(5))
                .missed_heartbeats(3);
            Ok(JobQueue::Sqlite {
                pool,
                config,
                listener: Arc::new(Mutex::new(Some(listener))),
            })
        }
    }

    /// Enqueues a render job under a fresh task id, which is returned for the logs.
    pub async fn push(&self, job: RenderJob) -> anyhow::Result<TaskId> {
        self.push_after(job, Duration::ZERO).await
    }

    /// Enqueues a render job to run no sooner than `delay` from now (retry backoff).
    pub async fn push_after(&self, job: RenderJob, delay: Duration) -> anyhow::Result<TaskId> {
        let id = TaskId::from_ulid(ulid::Ulid::generate());
        let mut builder = TaskBuilder::new(job).task_id(id.clone());
        if !delay.is_zero() {
            builder = builder.run_at_timestamp(unix_seconds_after(delay));
        }
        let task = builder.build();
        match self {
            JobQueue::Sqlite { pool, config, .. } => {
                let mut storage = SqliteStorage::<RenderJob>::new(pool).with_config(config.clone());
                storage
                    .push_task(task)
                    .await
                    .context("cannot enqueue the job")?;
            }
            JobQueue::Redis { storage, .. } => {
                storage
                    .clone()
                    .push_task(task)
                    .await
                    .context("cannot enqueue the job")?;
            }
        }
        Ok(id)
    }

    /// Whether the queue's server answers (always true for the embedded SQLite queue).
    pub async fn ping(&self) -> Option<bool> {
        match self {
            JobQueue::Sqlite { .. } => None,
            JobQueue::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                Some(pong.is_ok())
            }
        }
    }

    /// The name used in logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self {
            JobQueue::Sqlite { .. } => "sqlite",
            JobQueue::Redis { .. } => "redis",
        }
    }
}

/// The first whole second at least `delay` from now. Both queues keep a job's start time
/// in whole seconds and compare it with the current second; apalis' `run_after` truncates,
/// so a retry backed off by a second could start at once. Rounded up, it never starts
/// sooner than its backoff (up to a second later).
fn unix_seconds_after(delay: Duration) -> u64 {
    let at = (std::time::SystemTime::now() + delay)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    at.as_secs() + u64::from(at.subsec_nanos() > 0)
}

/// sqlx opens SQLite files read-write but does not create them unless asked.
fn sqlite_url_creating_file(url: &str) -> anyhow::Result<String> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .context("QUEUE_DATABASE_URL must start with sqlite://")?;
    let file = path.split('?').next().unwrap_or(path);
    if let Some(parent) = std::path::Path::new(file).parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the directory of {file}"))?;
    }
    Ok(if url.contains('?') {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    })
}
