//! The job queue: what a render job carries, how it is pushed, and what a worker consumes.
//!
//! Two backends, chosen by configuration: Redis (apalis-redis) whenever `REDIS_URL` is set,
//! SQLite (apalis-sqlite, in its own file so queue traffic never contends with the data
//! file's writers) otherwise. A job carries only the document id and the request id: the
//! `generated_documents` row is the truth, so a lost or duplicated job costs a retry, never
//! a wrong document.
//!
//! The backends stay inside [`JobQueue`]: producers call [`JobQueue::push`], a worker asks
//! for a [`Consumer`] and builds its apalis worker from the backends it hands out. The
//! Redis connection is made once ([`connect_redis`]) and passed to whoever needs it (the
//! queue, the rate limiter), rather than found by looking inside the queue.

use std::time::Duration;

use anyhow::Context;
use apalis::prelude::{BackendExt, PollWith, Strategy, TaskBuilder, TaskId, TaskSink};
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::callback::HookCallbackListener;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use futures::StreamExt;
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

/// How often a queue consumer heartbeats against the queue, and how many it may miss
/// before its jobs are given to another worker (apalis' default is 30 s × 10 = 300 s).
pub const QUEUE_HEARTBEAT: Duration = Duration::from_secs(5);
pub const QUEUE_MISSED_HEARTBEATS: usize = 3;

/// How long a push to Redis may take before Redis counts as unavailable: a producer must
/// not hang on a server that stalls (the row is kept and pushed later by the outbox
/// relay). The embedded SQLite queue has no such bound: a slow insert there is contention
/// on this machine, and waiting for it is the backpressure.
const REDIS_PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection to `REDIS_URL`, when it is set: one connection manager (it reconnects
/// by itself) shared by the queue and the rate limiter.
pub async fn connect_redis(settings: &Settings) -> anyhow::Result<Option<ConnectionManager>> {
    let Some(url) = &settings.queue.redis_url else {
        return Ok(None);
    };
    let conn = apalis_redis::connect(url.as_str())
        .await
        .context("cannot connect to Redis at REDIS_URL")?;
    Ok(Some(conn))
}

/// The producer's handle on the queue; cheap to clone.
#[derive(Clone)]
pub struct JobQueue {
    backend: Consumer,
}

/// What a worker consumes: a source of apalis backends, one for each (re)start of its
/// apalis worker.
#[derive(Clone)]
pub enum Consumer {
    Sqlite(SqliteSource),
    Redis(RedisSource),
}

/// The SQLite queue file, and the wake-ups its update hook sends.
#[derive(Clone)]
pub struct SqliteSource {
    pool: SqlitePool,
    config: apalis_sqlite::Config,
    /// Fires when this process inserts a job, so an in-process worker picks it up without
    /// waiting for its next poll. Clones share one receiver: each backend handed out gets a
    /// clone, so a worker restarted by its monitor still hears them (taking the listener
    /// out once, as before, left a restarted worker polling only).
    wake_ups: HookCallbackListener,
}

/// The Redis queue.
#[derive(Clone)]
pub struct RedisSource {
    storage: Box<RedisStorage<RenderJob>>,
    conn: ConnectionManager,
    /// `<QUEUE_NAME>:monassurance:marker`: present while Redis still holds what it was
    /// given (see [`JobQueue::lost_its_jobs`]).
    marker_key: String,
}

impl SqliteSource {
    /// A backend that takes jobs when woken, and at least every `poll`.
    pub fn backend(&self, poll: Duration) -> PollWith<SqliteStorage<RenderJob>, Strategy> {
        let wake_ups = self.wake_ups.clone().ready_chunks(self.config.batch_size);
        SqliteStorage::<RenderJob>::new(&self.pool)
            .with_config(self.config.clone())
            .poll_with_strategy(Strategy::new().stream(wake_ups).interval(poll))
    }

    /// The wake-ups a backend listens to (for tests).
    pub fn wake_ups(&self) -> HookCallbackListener {
        self.wake_ups.clone()
    }
}

impl RedisSource {
    /// A backend that takes jobs every `poll`.
    pub fn backend(&self, poll: Duration) -> PollWith<RedisStorage<RenderJob>, Strategy> {
        let storage: RedisStorage<RenderJob> = (*self.storage).clone();
        storage.poll_with_strategy(Strategy::new().interval(poll))
    }
}

impl JobQueue {
    /// The Redis queue when `redis` is given (see [`connect_redis`]), else the SQLite queue
    /// file `QUEUE_DATABASE_URL` (its tables prepared here).
    pub async fn connect(
        settings: &Settings,
        redis: Option<ConnectionManager>,
    ) -> anyhow::Result<JobQueue> {
        let backend = match redis {
            Some(conn) => {
                let config = apalis_redis::Config::default()
                    .queue(&settings.queue.name)
                    .heartbeat_interval(QUEUE_HEARTBEAT)
                    .missed_heartbeats(QUEUE_MISSED_HEARTBEATS);
                let storage = Box::new(RedisStorage::new(conn.clone()).with_config(config));
                let marker_key = format!("{}:monassurance:marker", settings.queue.name);
                Consumer::Redis(RedisSource {
                    storage,
                    conn,
                    marker_key,
                })
            }
            None => Consumer::Sqlite(open_sqlite(settings).await?),
        };
        Ok(JobQueue { backend })
    }

    /// What a worker takes jobs from.
    pub fn consumer(&self) -> Consumer {
        self.backend.clone()
    }

    /// Enqueues a render job under a fresh task id, which is returned for the logs.
    pub async fn push(&self, job: RenderJob) -> anyhow::Result<TaskId> {
        self.push_after(job, Duration::ZERO).await
    }

    /// Enqueues a render job to run no sooner than `delay` from now (retry backoff). On
    /// Redis, fails after [`REDIS_PUSH_TIMEOUT`] when Redis does not answer.
    pub async fn push_after(&self, job: RenderJob, delay: Duration) -> anyhow::Result<TaskId> {
        let id = TaskId::from_ulid(ulid::Ulid::generate());
        let mut builder = TaskBuilder::new(job).task_id(id.clone());
        if !delay.is_zero() {
            builder = builder.run_at_timestamp(unix_seconds_after(delay));
        }
        let task = builder.build();
        match &self.backend {
            Consumer::Sqlite(queue) => SqliteStorage::<RenderJob>::new(&queue.pool)
                .with_config(queue.config.clone())
                .push_task(task)
                .await
                .context("cannot enqueue the job")?,
            Consumer::Redis(queue) => {
                let mut storage = (*queue.storage).clone();
                tokio::time::timeout(REDIS_PUSH_TIMEOUT, storage.push_task(task))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("Redis did not answer within {REDIS_PUSH_TIMEOUT:?}")
                    })?
                    .context("cannot enqueue the job")?
            }
        }
        Ok(id)
    }

    /// Whether the queue lost what it held since a process last asked: a Redis restarted
    /// empty or flushed. Redis keeps a marker key beside the queue's own; this sets it when
    /// it is missing, so exactly one caller hears `true` per loss (and the first caller of
    /// a new deployment, harmlessly). The embedded SQLite queue cannot lose jobs behind our
    /// back: always `false`.
    pub async fn lost_its_jobs(&self) -> anyhow::Result<bool> {
        let Consumer::Redis(queue) = &self.backend else {
            return Ok(false);
        };
        let mut conn = queue.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&queue.marker_key)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg("NX")
            .query_async(&mut conn)
            .await
            .context("cannot check the queue's marker key")?;
        Ok(set.is_some())
    }

    /// Deletes the jobs the SQLite queue has finished with; returns how many. apalis-sqlite
    /// keeps every finished job, and its acknowledgement walks every job the acknowledging
    /// worker ever locked, parsing a JSON array for each (its plan: `SEARCH Jobs USING
    /// INDEX LIdx (lock_by=?)`, then `SCAN json_each`): unpruned, each job costs more than
    /// the one before (an embedded 10,000-item batch ran at a third of the speed of a
    /// 3,000-item one, with SQLite's JSON parser the hottest code). The row in our own
    /// database is the truth about a document, so a finished job is of no further use.
    /// Redis removes its own: nothing to do there.
    pub async fn prune_finished(&self) -> anyhow::Result<u64> {
        let Consumer::Sqlite(queue) = &self.backend else {
            return Ok(0);
        };
        let deleted =
            sqlx::query("DELETE FROM Jobs WHERE job_type = ?1 AND status IN ('Done', 'Killed')")
                .bind(AsRef::<str>::as_ref(&queue.config.queue).to_owned())
                .execute(&queue.pool)
                .await
                .context("cannot prune the SQLite queue's finished jobs")?;
        Ok(deleted.rows_affected())
    }

    /// Whether the queue's server answers (`None` for the embedded SQLite queue).
    pub async fn ping(&self) -> Option<bool> {
        match &self.backend {
            Consumer::Sqlite(_) => None,
            Consumer::Redis(queue) => {
                let mut conn = queue.conn.clone();
                let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                Some(pong.is_ok())
            }
        }
    }

    /// The name used in logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Consumer::Sqlite(_) => "sqlite",
            Consumer::Redis(_) => "redis",
        }
    }
}

/// Opens the SQLite queue file and prepares its tables. The file is shared by every
/// process of an embedded deployment, and its preparation (apalis' pragmas, `PRAGMA
/// optimize` and migrations) can fail with "database is locked" while another process
/// writes it: a worker started beside an API enqueuing a 3,000-item batch exited so, about
/// once in 25 starts. Like the database's at start-up, the preparation is then tried again.
async fn open_sqlite(settings: &Settings) -> anyhow::Result<SqliteSource> {
    crate::db::configure_sqlite_process();
    let url = sqlite_url_creating_file(&settings.queue.database_url)?;
    let (pool, wake_ups) =
        SqliteStorage::connect_with_callback(&url).context("cannot open the SQLite job queue")?;
    crate::db::retry_while_unavailable(
        "the SQLite job queue is busy; preparing it again",
        || async {
            SqliteStorage::setup(&pool)
                .await
                .context("cannot prepare the SQLite job queue")
        },
    )
    .await?;
    let config = apalis_sqlite::Config::default()
        .queue(&settings.queue.name)
        .heartbeat_interval(QUEUE_HEARTBEAT)
        .missed_heartbeats(QUEUE_MISSED_HEARTBEATS);
    Ok(SqliteSource {
        pool,
        config,
        wake_ups,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The default settings, with everything on disk under `dir`.
    fn settings_in(dir: &tempfile::TempDir) -> Settings {
        let data_dir = dir.path().to_str().unwrap().to_owned();
        Settings::from_lookup(|key| match key {
            "DATA_DIR" => Some(data_dir.clone()),
            _ => None,
        })
        .unwrap()
    }

    /// A connection to the SQLite file of `options` (created, in WAL mode) that has run
    /// `sql`, which leaves it inside a write transaction: the file's write lock is held
    /// until it commits.
    async fn holding_the_lock(
        options: sqlx::sqlite::SqliteConnectOptions,
        sql: &'static str,
    ) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let options = options
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let mut holder = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::raw_sql(sql).execute(&mut holder).await.unwrap();
        holder
    }

    fn a_job() -> RenderJob {
        RenderJob {
            document_id: Uuid::now_v7(),
            request_id: None,
        }
    }

    /// SQLite's "database is locked" as apalis reports it (its error wraps sqlx's
    /// transparently, so the chain holds SQLite's error and not sqlx's) is an outage to
    /// wait out; a constraint violation wrapped alike is not.
    #[tokio::test]
    async fn a_locked_queue_file_is_waited_out_as_apalis_reports_it() {
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let options =
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("queue.db"));
        let mut holder = holding_the_lock(
            options.clone(),
            "CREATE TABLE t (x UNIQUE); INSERT INTO t VALUES (1); BEGIN IMMEDIATE; INSERT INTO t VALUES (2)",
        )
        .await;
        let impatient = options.busy_timeout(Duration::ZERO);
        let mut other = sqlx::SqliteConnection::connect_with(&impatient)
            .await
            .unwrap();
        let locked = sqlx::query("INSERT INTO t VALUES (3)")
            .execute(&mut other)
            .await
            .unwrap_err();
        sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        let as_apalis = |err| {
            anyhow::Error::new(apalis_sqlite::Error::Database(err))
                .context("cannot prepare the SQLite job queue")
        };
        assert!(crate::db::is_outage(&as_apalis(locked)));
        assert!(!crate::db::is_outage(&as_apalis(refused)));
    }

    /// A queue file whose write lock another process holds, past the busy timeout SQLite
    /// waits for (sqlx's 5 s), is prepared once the lock is let go: the start waits
    /// instead of failing.
    #[tokio::test]
    async fn a_queue_file_locked_as_it_opens_is_prepared_once_let_go() {
        use std::str::FromStr;
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_in(&dir);
        let options =
            sqlx::sqlite::SqliteConnectOptions::from_str(&settings.queue.database_url).unwrap();
        let mut holder = holding_the_lock(options, "BEGIN IMMEDIATE; CREATE TABLE held (x)").await;
        let opening = tokio::spawn(async move { JobQueue::connect(&settings, None).await });
        // The lock is the scenario: held a second longer than a connection waits for it.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !opening.is_finished(),
            "the queue opened (or gave up) while locked"
        );
        sqlx::raw_sql("COMMIT").execute(&mut holder).await.unwrap();
        let queue = opening
            .await
            .unwrap()
            .expect("the queue is prepared once the lock is let go");
        queue
            .push(a_job())
            .await
            .expect("a job goes into the prepared queue");
    }

    /// Finished jobs go, waiting ones stay.
    #[tokio::test]
    async fn pruning_deletes_only_finished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_in(&dir);
        let queue = JobQueue::connect(&settings, None).await.unwrap();
        let Consumer::Sqlite(source) = queue.consumer() else {
            panic!("no REDIS_URL: the SQLite queue")
        };
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(queue.push(a_job()).await.unwrap().to_string());
        }
        for (id, status) in ids.iter().zip(["Done", "Killed"]) {
            sqlx::query("UPDATE Jobs SET status = ?1 WHERE id = ?2")
                .bind(status)
                .bind(id)
                .execute(&source.pool)
                .await
                .unwrap();
        }
        assert_eq!(queue.prune_finished().await.unwrap(), 2);
        let left: Vec<String> = sqlx::query_scalar("SELECT id FROM Jobs")
            .fetch_all(&source.pool)
            .await
            .unwrap();
        assert_eq!(left, [ids[2].clone()], "the waiting job stays");
    }

    /// Each backend handed out hears the wake-ups: a worker restarted by its monitor asks
    /// for a new backend and must not fall back to polling.
    #[tokio::test]
    async fn every_sqlite_backend_hears_the_wake_ups() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_in(&dir);
        let queue = JobQueue::connect(&settings, None).await.unwrap();
        let Consumer::Sqlite(source) = queue.consumer() else {
            panic!("no REDIS_URL: the SQLite queue")
        };
        for restart in 0..3 {
            // What a (re)started worker gets: a fresh backend and its own clone of the hook.
            let _backend = source.backend(Duration::from_secs(3600));
            let mut wake_ups = source.wake_ups();
            queue.push(a_job()).await.unwrap();
            let woke = tokio::time::timeout(Duration::from_secs(5), wake_ups.next()).await;
            assert_eq!(woke, Ok(Some(())), "start {restart} heard no wake-up");
        }
    }
}
