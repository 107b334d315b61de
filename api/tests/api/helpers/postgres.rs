//! A Postgres database per test, cloned from one migrated template (the pattern of
//! crates.io's `crates_io_test_db`).
//!
//! Migrating an empty database for every test replays the same DDL a hundred times. Instead
//! the first test of a run builds `mona_tpl_<hash of migrations/postgres>` with the
//! application's own migrator and marks it a template; every test then clones it with
//! `CREATE DATABASE … TEMPLATE`, a file copy on the server. The template is built under
//! an advisory lock, because the tests of this process and of other test processes (other
//! branches, other people) race for it; a template whose migrations did not finish is
//! never marked, so the next test builds it again. Templates are kept: a suite of another
//! branch may still be cloning from one.
//!
//! A test database is dropped when its [`TestDatabase`] goes: `TestApp::stop`, or the
//! unwinding of a test that panicked. Its name carries the machine and the test process
//! (`mona_t_<host>_<pid>_<random>`), so what a killed process left behind can be told from
//! the databases of a suite still running: `scripts/test` drops those of its own machine
//! whose process is gone.

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
    server: String,
    dropped: bool,
}

impl TestDatabase {
    /// Clones the migrated template into a fresh database.
    pub async fn create() -> TestDatabase {
        let server = server_url();
        let template = template(&server).await;
        let name = format!(
            "mona_t_{}_{}_{}",
            host_tag(),
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
            server,
            dropped: false,
        }
    }

    /// Drops the database, ending whatever sessions still use it.
    pub async fn drop_now(mut self) {
        self.dropped = true;
        drop_database(&self.server, &self.name).await;
    }
}

impl Drop for TestDatabase {
    /// A test that panicked drops its database too. The async runtime this runs in may be
    /// shutting down, so the drop gets a thread and a runtime of its own.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the drop")
                .block_on(drop_database(&server, &name));
        })
        .join();
        if dropped.is_err() {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

async fn drop_database(server: &str, name: &str) {
    let mut conn = connect(server).await;
    execute(
        &mut conn,
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    )
    .await;
    let _ = conn.close().await;
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

/// Six hex digits of a SHA-256 of `uname -n`, as `scripts/test` computes them: a process
/// id means something only on the machine (or in the container) that issued it.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let out = std::process::Command::new("uname")
            .arg("-n")
            .output()
            .expect("uname runs");
        let host = String::from_utf8_lossy(&out.stdout);
        hex::encode(Sha256::digest(host.trim().as_bytes()))[..6].to_owned()
    })
}

/// `server` with its database replaced by `name`.
fn database_url(server: &str, name: &str) -> String {
    let mut url = reqwest::Url::parse(server).expect("TEST_DATABASE_URL is a URL");
    url.set_path(name);
    url.to_string()
}

/// A connection to the server, or a failure that says what to do. Its statements are not
/// logged: a `DROP DATABASE` waits for a checkpoint, and is slow without being news.
async fn connect(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url)
        .unwrap_or_else(|err| panic!("TEST_DATABASE_URL {url:?}: {err}"))
        .disable_statement_logging();
    let attempt = tokio::time::timeout(Duration::from_secs(10), options.connect()).await;
    match attempt {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => panic!("{}", super::missing("Postgres", url, &err.to_string())),
        Err(_) => panic!(
            "{}",
            super::missing("Postgres", url, "no answer within 10 s")
        ),
    }
}

async fn execute(conn: &mut PgConnection, sql: String) {
    conn.execute(sqlx::AssertSqlSafe(sql.clone()))
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
}
