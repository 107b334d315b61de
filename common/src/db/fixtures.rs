//! Databases for the crate's own tests: SQLite in memory, and a fresh Postgres database
//! on the server of `TEST_DATABASE_URL`, both migrated.

use sqlx::{Executor, PgPool};
use uuid::Uuid;

use super::{Db, Pool};

/// A migrated SQLite database in memory (one connection, so one database).
pub async fn sqlite() -> Db {
    // Like every opener of a SQLite connection in this process.
    crate::db::configure_sqlite_process();
    let options = "sqlite::memory:"
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .foreign_keys(true);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let db = Db::for_tests(Pool::Sqlite(pool));
    db.migrate().await.unwrap();
    db
}

/// A fresh, migrated database on the Postgres server of `TEST_DATABASE_URL` (the local
/// one by default), dropped by [`PgFixture::drop`].
pub struct PgFixture {
    pub db: Db,
    admin: PgPool,
    name: String,
}

/// The Postgres fixture; a missing server fails the test, unless
/// `MONASSURANCE_SKIP_SERVICES=1` says to skip it.
pub async fn postgres() -> Option<PgFixture> {
    if std::env::var("MONASSURANCE_SKIP_SERVICES").as_deref() == Ok("1") {
        eprintln!("skipping the Postgres variant: MONASSURANCE_SKIP_SERVICES=1");
        return None;
    }
    let base = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = PgPool::connect(&base).await.unwrap_or_else(|e| {
        panic!("Postgres at {base} is unreachable ({e}); MONASSURANCE_SKIP_SERVICES=1 skips")
    });
    let name = format!("mona_test_{}", Uuid::now_v7().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let pool = PgPool::connect(&format!("{server}/{name}")).await.unwrap();
    let db = Db::for_tests(Pool::Postgres(pool));
    db.migrate().await.unwrap();
    Some(PgFixture { db, admin, name })
}

impl PgFixture {
    pub async fn drop(self) {
        self.db.close().await;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.name
            )))
            .await
            .unwrap();
    }
}

/// An active agent with this email.
pub async fn agent(db: &Db, email: &str) -> crate::model::User {
    db.users()
        .create(super::users::NewUser {
            email,
            full_name: None,
            hashed_password: "x",
            role: crate::model::Role::Agent,
            is_active: true,
        })
        .await
        .unwrap()
}

/// An interactive HTML document of `owner_id`'s, without a template or context; tests
/// change what they need with `..document(owner_id)`.
pub fn document(owner_id: Uuid) -> super::documents::NewDocument<'static> {
    static CONTEXT: serde_json::Value = serde_json::Value::Null;
    super::documents::NewDocument {
        owner_id,
        document_type: "attestation",
        output_format: crate::model::OutputFormat::Html,
        template_version_id: None,
        policy_id: None,
        inline_context: &CONTEXT,
        compress: false,
        encrypt: false,
        request_id: None,
        idempotency_key: None,
        request_hash: None,
        priority: crate::model::Priority::Interactive,
        lease_until: crate::now(),
        preview: false,
    }
}
