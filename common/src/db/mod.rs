//! The database handle and its repositories.
//!
//! One repository layer serves both Postgres and SQLite. `sqlx::Any` was rejected: it cannot
//! decode UUIDs, timestamps or JSON. Instead [`Db`] is an enum of the two pools and the
//! [`on_db!`] macro expands each query into one arm per pool. The SQL text is written once:
//! it sticks to `$N` placeholders, `RETURNING` and `ON CONFLICT`, which both engines accept,
//! and every timestamp is bound from Rust rather than computed by SQL functions that differ.
//!
//! Migrations live in `migrations/postgres` and `migrations/sqlite` (same tables and names)
//! and are recorded in `_app_migrations`, so they never collide with a job queue's own
//! migrations in the same database.
//!
//! A write a constraint refuses comes back as a [`DbError`] naming the constraint when it
//! is one of [`Constraint`]'s, on either engine (see [`constraints`]); call sites name the
//! one they expect instead of matching on error kinds or messages.

pub mod audit;
pub mod batches;
pub mod clients;
pub mod companies;
pub mod constraints;
pub mod documents;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod policies;
pub mod session_cache;
pub mod sessions;
mod sqlite_tuning;
pub mod templates;
pub mod users;
pub mod webhooks;
pub mod workers;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, PgPool, SqlitePool};

use crate::Settings;
use session_cache::SessionCache;

/// The channel on which Postgres announces changes to users and sessions (see
/// [`session_cache`]); the payload is the user's id.
const SESSION_CHANNEL: &str = "monassurance_auth";

/// The database: a pool on one of the two supported engines, and the cache of open
/// sessions that the user and session repositories keep in step with it.
#[derive(Clone, Debug)]
pub struct Db {
    pool: Pool,
    session_cache: Arc<SessionCache>,
}

/// A pool on one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds; the body is compiled once
/// per database, so the same query text gets each driver's types.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db.pool() {
            $crate::db::Pool::Postgres($pool) => $body,
            $crate::db::Pool::Sqlite($pool) => $body,
        }
    };
}
pub use constraints::{Constraint, ConstraintKind};
pub use on_db;
pub use sqlite_tuning::configure_process as configure_sqlite_process;

/// Errors a repository reports. A constraint's refusal says which constraint refused, when
/// it is one of [`Constraint`]'s: call sites name the one they expect with
/// [`DbResultExt::on_constraint`] or [`DbError::constraint`], and answer anything else
/// generically.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A unique constraint refused the write.
    #[error("unique constraint violated: {0}")]
    Conflict(Violation),
    /// A foreign key refused the write (the referenced row is gone or still referenced).
    #[error("foreign key constraint violated: {0}")]
    ForeignKey(Violation),
    /// A check constraint refused the write.
    #[error("check constraint violated: {0}")]
    Check(Violation),
    /// The database cannot store a character of a text value: Postgres refuses NUL (and
    /// text its encoding lacks), which JSON and SQLite accept. The value's fault, not the
    /// server's.
    #[error("a text value has a character the database cannot store")]
    UnstorableText(#[source] sqlx::Error),
    /// The database cannot be reached right now: no connection within the acquire timeout,
    /// a refused or broken connection, a server shutting down or out of connections, or
    /// SQLite busy past its timeout. Nobody's fault but the outage's; worth retrying.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error(transparent)]
    Other(sqlx::Error),
}

/// Which constraint refused a write, as far as the database said.
#[derive(Debug)]
pub struct Violation {
    /// The constraint, when it is one of [`Constraint`]'s.
    pub constraint: Option<Constraint>,
    /// The database's own message, for the logs.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Postgres' SQLSTATEs for text it cannot store: `untranslatable_character` and
/// `character_not_in_repertoire`.
const UNSTORABLE_TEXT_CODES: [&str; 2] = ["22P05", "22021"];

impl DbError {
    /// The constraint that refused the write, when the error is a refusal by one of
    /// [`Constraint`]'s.
    pub fn constraint(&self) -> Option<Constraint> {
        match self {
            DbError::Conflict(v) | DbError::ForeignKey(v) | DbError::Check(v) => v.constraint,
            DbError::UnstorableText(_) | DbError::Unavailable(_) | DbError::Other(_) => None,
        }
    }

    /// Whether `constraint` refused the write.
    pub fn is(&self, constraint: Constraint) -> bool {
        self.constraint() == Some(constraint)
    }
}

/// Postgres' SQLSTATEs that mean "not now" rather than "not this": the server shutting
/// down (`admin_shutdown`, `crash_shutdown`, `cannot_connect_now`) or out of connections
/// (`too_many_connections`); the whole class 08 (connection exceptions) counts too.
const UNAVAILABLE_CODES: [&str; 4] = ["57P01", "57P02", "57P03", "53300"];

/// SQLite's primary result codes for a database another connection holds: `SQLITE_BUSY`
/// and `SQLITE_LOCKED`, after the busy timeout has run out. sqlx reports extended codes,
/// whose low byte is the primary one.
const SQLITE_BUSY_CODES: [i32; 2] = [5, 6];

/// Whether `err` says the database cannot be reached (or used) right now, as opposed to a
/// refusal of this statement.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db_err) => {
            let code = db_err.code();
            let code = code.as_deref().unwrap_or("");
            let is_postgres = db_err
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some();
            if is_postgres {
                code.starts_with("08") || UNAVAILABLE_CODES.contains(&code)
            } else {
                is_sqlite_busy(db_err.as_ref())
            }
        }
        _ => false,
    }
}

/// Whether a SQLite error says another connection holds the database (false for any
/// other engine's error).
fn is_sqlite_busy(err: &dyn sqlx::error::DatabaseError) -> bool {
    err.try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
        && err
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|extended| SQLITE_BUSY_CODES.contains(&(extended & 0xff)))
}

/// Runs `attempt` until it succeeds or fails for another reason than a database that
/// cannot be used right now ([`is_outage`]): between tries it waits, from 200 ms up to 5 s,
/// logging `waiting` with the error each time. For what a process does as it starts.
pub async fn retry_while_unavailable<T, F, Fut>(waiting: &str, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match attempt().await {
            Err(err) if is_outage(&err) => {
                tracing::warn!(error = %format!("{err:#}"), retry_ms = delay.as_millis() as u64, "{waiting}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            done => return done,
        }
    }
}

/// Whether an error chain comes from a database that cannot be reached right now. A
/// SQLite error counts wherever it is in the chain: apalis wraps sqlx's errors
/// transparently, so its chain holds SQLite's error and not sqlx's.
pub fn is_outage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(cause.downcast_ref(), Some(DbError::Unavailable(_)))
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(is_unavailable)
            || cause
                .downcast_ref::<Box<dyn sqlx::error::DatabaseError>>()
                .is_some_and(|e| is_sqlite_busy(e.as_ref()))
    })
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            return DbError::Unavailable(err);
        }
        let sqlx::Error::Database(db_err) = &err else {
            return DbError::Other(err);
        };
        if let Some((kind, constraint)) = Constraint::reported(db_err.as_ref()) {
            let violation = Violation {
                constraint,
                message: db_err.message().to_owned(),
            };
            return match kind {
                ConstraintKind::Unique => DbError::Conflict(violation),
                ConstraintKind::ForeignKey => DbError::ForeignKey(violation),
                ConstraintKind::Check => DbError::Check(violation),
            };
        }
        let is_postgres = db_err
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some();
        if is_postgres && UNSTORABLE_TEXT_CODES.contains(&db_err.code().as_deref().unwrap_or("")) {
            return DbError::UnstorableText(err);
        }
        DbError::Other(err)
    }
}

/// Shorthand for repository results.
pub type DbResult<T> = Result<T, DbError>;

/// Mapping a named constraint's refusal at the call site.
pub trait DbResultExt<T> {
    /// Turns a refusal by `constraint` into `map`'s error, and any other error into `E`
    /// the usual way: `.on_constraint(Constraint::UsersEmailKey, |_| email_taken())`.
    fn on_constraint<E: From<DbError>>(
        self,
        constraint: Constraint,
        map: impl FnOnce(DbError) -> E,
    ) -> Result<T, E>;
}

impl<T> DbResultExt<T> for DbResult<T> {
    fn on_constraint<E: From<DbError>>(
        self,
        constraint: Constraint,
        map: impl FnOnce(DbError) -> E,
    ) -> Result<T, E> {
        self.map_err(|err| {
            if err.is(constraint) {
                map(err)
            } else {
                E::from(err)
            }
        })
    }
}

pub(crate) trait SqlxResultExt<T> {
    fn db(self) -> DbResult<T>;
}

impl<T> SqlxResultExt<T> for Result<T, sqlx::Error> {
    fn db(self) -> DbResult<T> {
        self.map_err(DbError::from)
    }
}

/// How long a pooled connection may sit idle before it is pinged on its way out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The pool's check before it hands out a connection: a round trip to the server (or, on
/// SQLite, to the connection's thread) that finds a connection the server dropped, so the
/// pool opens another instead of failing the request. sqlx's default pings every time,
/// which on a busy API doubled the round trips of a one-query request; a connection used
/// within the last second is handed out as it is (the same bypass window idea as
/// HikariCP's).
async fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if meta.idle_for >= PING_AFTER_IDLE {
        conn.ping().await?;
    }
    Ok(true)
}

impl Db {
    /// Connects to `DATABASE_URL`. SQLite files are created when missing and opened in WAL
    /// mode with a busy timeout, so the API and the worker can write concurrently.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Db> {
        let url = settings.database.url.as_str();
        let slow = Duration::from_millis(settings.database.slow_query_ms);
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("invalid DATABASE_URL {url:?}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Each connection runs on its own thread and hands rows to the caller
                // through a bounded channel (50 by default): a page of 100 or 200 rows
                // stalled the thread halfway, costing a round of wake-ups and context
                // switches. Room for the largest page lets it run through.
                .row_buffer_size(256)
                .log_slow_statements(log::LevelFilter::Warn, slow);
            if let Some(parent) = options.get_filename().parent() {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!("cannot create the directory of {}", parent.display())
                })?;
            }
            sqlite_tuning::configure_process();
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.database.max_connections)
                .acquire_timeout(settings.database.acquire_timeout)
                .after_connect(|conn, _meta| Box::pin(sqlite_tuning::stable_plans(conn)))
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open the SQLite database {url:?}"))?;
            // The embedded API is the one process that changes users and sessions (but for
            // `create-admin`, which AUTH_CACHE_SECONDS bounds) and it forgets what it
            // changes, so the cache can start enabled.
            Ok(Db::new(Pool::Sqlite(pool), settings, true))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)
                .context("invalid DATABASE_URL")?
                .log_slow_statements(log::LevelFilter::Warn, slow);
            let pool = PgPoolOptions::new()
                .max_connections(settings.database.max_connections)
                .acquire_timeout(settings.database.acquire_timeout)
                .test_before_acquire(false)
                .before_acquire(|conn, meta| Box::pin(ping_if_idle(conn, meta)))
                .connect_with(options)
                .await
                .context("cannot connect to the Postgres database in DATABASE_URL")?;
            // Other processes change users and sessions too: the cache stays off until
            // `watch_session_changes` hears them.
            Ok(Db::new(Pool::Postgres(pool), settings, false))
        } else {
            anyhow::bail!("DATABASE_URL must start with postgres:// or sqlite://")
        }
    }

    /// Connects and migrates, as a long-running process starts: while the database does
    /// not answer (an outage, a server still starting), waits and tries again, from 200 ms
    /// up to every 5 s, saying so in the log; any other failure (a wrong URL or password, a
    /// failed migration) is returned at once.
    pub async fn open(settings: &Settings) -> anyhow::Result<Db> {
        retry_while_unavailable(
            "the database does not answer yet; waiting for it",
            || async {
                let db = Db::connect(settings).await?;
                db.migrate().await?;
                Ok(db)
            },
        )
        .await
    }

    fn new(pool: Pool, settings: &Settings, cache_enabled: bool) -> Db {
        let ttl = Duration::from_secs(settings.database.auth_cache_seconds);
        Db {
            pool,
            session_cache: Arc::new(SessionCache::new(ttl, cache_enabled)),
        }
    }

    /// A handle on `pool` without a session cache, for tests of the repositories.
    #[cfg(test)]
    pub(crate) fn for_tests(pool: Pool) -> Db {
        Db {
            pool,
            session_cache: Arc::new(SessionCache::new(Duration::ZERO, false)),
        }
    }

    /// The pool (see [`on_db!`]).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The cache of open sessions (see [`session_cache`]).
    pub fn session_cache(&self) -> &SessionCache {
        &self.session_cache
    }

    /// On Postgres, listens for changes to users and sessions made by any process and
    /// drops the cached sessions they affect; the session cache is on only while this
    /// listener is connected. Runs until the pool closes. Returns at once on SQLite.
    pub async fn watch_session_changes(self) {
        let Pool::Postgres(pool) = &self.pool else {
            return;
        };
        let cache = &self.session_cache;
        let mut retry = Duration::from_millis(100);
        while !pool.is_closed() {
            let mut listener = match listen(pool).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for session changes; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            // Whatever changed before LISTEN took effect is forgotten with the rest.
            cache.enable();
            let connected_at = std::time::Instant::now();
            // Ends when the connection drops (or the pool closes): notifications may be
            // lost from then on.
            while let Ok(Some(notification)) = listener.try_recv().await {
                match notification.payload().parse() {
                    Ok(user_id) => cache.forget_user(user_id),
                    Err(_) => cache.clear(),
                }
            }
            cache.disable();
            if pool.is_closed() {
                break;
            }
            tracing::warn!("lost the session-change listener; reconnecting");
            if connected_at.elapsed() > Duration::from_secs(10) {
                retry = Duration::from_millis(100);
            }
            tokio::time::sleep(retry).await;
            retry = (retry * 2).min(Duration::from_secs(5));
        }
    }

    /// Applies every pending migration of this database's kind.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut migrator = sqlx::migrate!("../migrations/postgres");
                migrator.dangerous_set_table_name("_app_migrations");
                migrator.run(pool).await
            }
            Pool::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("../migrations/sqlite");
                migrator.dangerous_set_table_name("_app_migrations");
                migrator.run(pool).await
            }
        }
        .context("database migration failed")
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> bool {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    pub fn users(&self) -> users::Users<'_> {
        users::Users(self)
    }
    pub fn sessions(&self) -> sessions::Sessions<'_> {
        sessions::Sessions(self)
    }
    pub fn templates(&self) -> templates::Templates<'_> {
        templates::Templates(self)
    }
    pub fn documents(&self) -> documents::Documents<'_> {
        documents::Documents(self)
    }
    pub fn companies(&self) -> companies::Companies<'_> {
        companies::Companies(self)
    }
    pub fn clients(&self) -> clients::Clients<'_> {
        clients::Clients(self)
    }
    pub fn policies(&self) -> policies::Policies<'_> {
        policies::Policies(self)
    }
    pub fn audit(&self) -> audit::Audit<'_> {
        audit::Audit(self)
    }
    pub fn batches(&self) -> batches::Batches<'_> {
        batches::Batches(self)
    }
    pub fn workers(&self) -> workers::Workers<'_> {
        workers::Workers(self)
    }
    pub fn webhook_endpoints(&self) -> webhooks::Endpoints<'_> {
        webhooks::Endpoints(self)
    }
    pub fn webhook_deliveries(&self) -> webhooks::Deliveries<'_> {
        webhooks::Deliveries(self)
    }

    /// Closes every connection (lets SQLite checkpoint its WAL on shutdown).
    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// A listener on [`SESSION_CHANNEL`], on a connection of its own taken from `pool`.
async fn listen(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(SESSION_CHANNEL).await?;
    Ok(listener)
}

/// A page of rows and the total that matched.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}
