//! A Postgres database per test, cloned from one migrated template (the pattern of
//! crates.io's `crates_io_test_db`).
//!
//! Migrating an empty database for every test replays the same DDL a hundred times. Instead
//! the first test of a run builds `mona_tpl_<hash of migrations/postgres>` with the
//! application's own migrator and marks it a template; every test then clones it with
//! `CREATE DATABASE … TEMPLATE`, a copy made by the server. The template is built under
//! an advisory lock, because the tests of this process and of other test processes (other
//! branches, other people) race for it; a template whose migrations did not finish is
//! never marked, so the next test builds it again. Templates are kept: a suite of another
//! branch may still be cloning from one.
//!
//! A test database is dropped once its [`TestDatabase`] goes (`TestApp::stop`, or the
//! unwinding of a test that panicked), in rounds of [`DROP_ROUND`], beside the tests.
//! Postgres 15 checkpoints on every `DROP DATABASE`, a second or more on a busy server:
//! waiting for that after each test made the Postgres half of the suite much slower, and
//! one drop per test, even off the tests' path, cost more than the template saves; drops
//! sent together wait for the same checkpoint. The
//! last round of a run is left, and so is whatever a killed process made: a database's
//! name carries the machine and the process that made it (`mona_t_<host>_<pid>_<random>`),
//! so that the first test of every run, and `scripts/test`, drop the ones of their machine
//! whose process is gone, never those of a suite still running.

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

/// The advisory lock under which templates are built (any constant; this one is ours).
const TEMPLATE_LOCK: i64 = 0x6d6f_6e61_7470_6c00;

/// The server the tests use: `TEST_DATABASE_URL`, by default the one `scripts/services`
/// starts. Test databases are created next to the database it names.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of this test's own, dropped with it.
pub struct TestDatabase {
    /// The `DATABASE_URL` of the test database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Clones the migrated template into a fresh database.
    pub async fn create() -> TestDatabase {
        let server = server_url();
        let template = template(&server).await;
        let name = format!(
            "{}{}_{}",
            name_prefix(),
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut conn = connect(&server).await;
        execute(
            &mut conn,
            format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
        )
        .await;
        let _ = conn.close().await;
        TestDatabase {
            url: database_url(&server, &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        finished_with(&self.name);
    }
}

/// How many finished databases are dropped together (see the module's documentation),
/// and how many connections a round uses: the server's connections are shared with the
/// tests, and with other suites.
const DROP_ROUND: usize = 16;
const DROP_CONNECTIONS: usize = 4;

/// The databases tests have finished with, waiting for the next round of drops.
static FINISHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Records that a test is done with database `name`, and starts a round of drops once
/// [`DROP_ROUND`] are waiting.
fn finished_with(name: &str) {
    let round = {
        let mut finished = FINISHED.lock().unwrap();
        finished.push(name.to_owned());
        if finished.len() < DROP_ROUND {
            return;
        }
        std::mem::take(&mut *finished)
    };
    drop_in_background(round);
}

/// Drops `databases` over [`DROP_CONNECTIONS`] connections (drops sent together wait for
/// the same checkpoint), ending whatever sessions still use them, on a thread and a
/// runtime of their own: the test's runtime may be shutting down. A failure is reported,
/// and what is left is the next run's.
fn drop_in_background(databases: Vec<String>) {
    std::thread::spawn(move || {
        let share = databases.len().div_ceil(DROP_CONNECTIONS);
        let drops = databases.chunks(share.max(1)).map(|names| async move {
            let server = server_url();
            let mut conn = match try_connect(&server).await {
                Ok(conn) => conn,
                Err(err) => return eprintln!("cannot drop test databases: {err}"),
            };
            for name in names {
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(err) = conn.execute(sqlx::AssertSqlSafe(sql)).await {
                    eprintln!("cannot drop the test database {name}: {err}");
                }
            }
            let _ = conn.close().await;
        });
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the drops")
            .block_on(futures::future::join_all(drops));
    });
}

/// The name of the migrated template for the current migrations, built if missing.
async fn template(server: &str) -> String {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| build_template(server))
        .await
        .clone()
}

async fn build_template(server: &str) -> String {
    let name = format!("mona_tpl_{}", migrations_hash());
    let mut conn = connect(server).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await
        .expect("take the template lock");
    drop_leftovers(&mut conn).await;
    let finished: Option<bool> =
        sqlx::query_scalar("SELECT datistemplate FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await
            .expect("look for the template");
    match finished {
        Some(true) => {}
        unfinished => {
            if unfinished.is_some() {
                execute(&mut conn, format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await;
            }
            execute(&mut conn, format!("CREATE DATABASE \"{name}\"")).await;
            migrate(&database_url(server, &name)).await;
            // Marked only now: a template is a finished one. No session may be open on
            // the source of a clone, so none may open one by mistake.
            execute(
                &mut conn,
                format!("ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"),
            )
            .await;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut conn)
        .await
        .expect("release the template lock");
    let _ = conn.close().await;
    name
}

/// Starts dropping the test databases of this machine whose process is gone (it exited
/// with its last round unfinished, or was killed). Never those of a live process.
async fn drop_leftovers(conn: &mut PgConnection) {
    let prefix = name_prefix();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(&prefix)
            .fetch_all(conn)
            .await
            .expect("list the test databases");
    let leftovers: Vec<_> = names
        .into_iter()
        .filter(|name| {
            let pid = name[prefix.len()..].split('_').next().unwrap_or_default();
            pid.parse().is_ok_and(process_is_gone)
        })
        .collect();
    if !leftovers.is_empty() {
        drop_in_background(leftovers);
    }
}

/// Whether no process `pid` runs on this machine; false when that cannot be told.
fn process_is_gone(pid: u32) -> bool {
    if std::path::Path::new("/proc/self").exists() {
        return !std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    std::process::Command::new("ps")
        .args(["-p", &pid.to_string()])
        .output()
        .is_ok_and(|out| out.status.code() == Some(1))
}

/// Runs the application's migrations on `url`, as `monassurance-api migrate` would.
async fn migrate(url: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut env = super::test_env(dir.path().to_str().unwrap());
    env.insert("DATABASE_URL".into(), url.to_owned());
    let settings = common::Settings::from_lookup(|k| env.get(k).cloned()).expect("settings");
    let db = common::Db::connect(&settings)
        .await
        .expect("connect to the template");
    db.migrate().await.expect("migrate the template");
    db.close().await;
}

/// The first 16 hex digits of a SHA-256 over the Postgres migrations' names and contents.
fn migrations_hash() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/postgres");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the Postgres migrations")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.file_name().unwrap().as_encoded_bytes());
        hash.update([0]);
        hash.update(std::fs::read(&file).unwrap());
        hash.update([0]);
    }
    hex::encode(hash.finalize())[..16].to_owned()
}

/// `mona_t_<host>_`, the start of this machine's test database names; the pid follows.
/// `<host>` is six hex digits of a SHA-256 of `uname -n`, as `scripts/test` computes them:
/// a process id means something only on the machine (or in the container) that issued it.
fn name_prefix() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let host = HOST.get_or_init(|| {
        let out = std::process::Command::new("uname")
            .arg("-n")
            .output()
            .expect("uname runs");
        let host = String::from_utf8_lossy(&out.stdout);
        hex::encode(Sha256::digest(host.trim().as_bytes()))[..6].to_owned()
    });
    format!("mona_t_{host}_")
}

/// `server` with its database replaced by `name`.
fn database_url(server: &str, name: &str) -> String {
    let mut url = reqwest::Url::parse(server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

/// A connection to the server, or a failure that says what to do.
async fn connect(url: &str) -> PgConnection {
    match try_connect(url).await {
        Ok(conn) => conn,
        Err(err @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_))) => {
            panic!("{}", super::missing("Postgres", url, &err.to_string()))
        }
        Err(err) => panic!("cannot connect to Postgres at {url}: {err}"),
    }
}

/// A connection to the server whose statements are not logged: a `DROP DATABASE` waits for
/// a checkpoint, and is slow without being news. No answer within 10 s is a timeout.
async fn try_connect(url: &str) -> Result<PgConnection, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.disable_statement_logging();
    tokio::time::timeout(Duration::from_secs(10), options.connect())
        .await
        .unwrap_or_else(|_| {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s");
            Err(sqlx::Error::Io(timeout))
        })
}

async fn execute(conn: &mut PgConnection, sql: String) {
    conn.execute(sqlx::AssertSqlSafe(sql.clone()))
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}
