//! Configuration, read once at start-up from the environment and an optional `.env`.
//!
//! Variable names follow the original product where it had one (`DATABASE_URL`,
//! `JWT_SECRET_KEY`, `SIGNATURE_KEYS`, `CORS_*`, `SECURITY_*`, …) so existing deployments
//! keep their configuration. Lists and maps are JSON, as they were.
//!
//! Settings are built from a lookup function rather than from `std::env` directly, so tests
//! can start many applications in one process, each with its own configuration, without
//! touching the process environment.
//!
//! # Sections
//!
//! [`Settings`] is a handful of sections, one per part of the system, each read by its own
//! short `from_env`: whoever wonders what `PDF_TIMEOUT_SECONDS` does finds it in
//! [`PdfSettings`], beside the variables it works with, and a section's own rules (a
//! default under `DATA_DIR`, two variables that must agree) sit in that one function. The
//! flat struct this replaced had every field side by side and one constructor for all of
//! them, so a rule could only be found by reading the whole of it. Sections per crate were
//! rejected: the API and the worker share most of them (database, queue, storage).
//!
//! Values are parsed once into what the code uses: durations are [`Duration`]s, the signing
//! keys a [`KeyRing`] and the encryption keys an [`EncryptionKeys`] ring, each built by the
//! one constructor that checks its rules, so nothing downstream checks or parses again.
//!
//! Secrets: in production (`ENVIRONMENT=production`) a missing JWT, signing or encryption
//! secret stops the start-up. Anywhere else, missing secrets are generated once and kept in
//! `DATA_DIR/secrets.json` (mode 0600), so a throwaway instance needs no set-up and its
//! tokens survive a restart (`settings/secrets.rs`).

mod env;
mod secrets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

use crate::envelope::EncryptionKeys;
use crate::signing::{KeyRing, RingError};
use env::Env;
use secrets::Fallback;

/// Where the process runs; only `production` changes behaviour (secrets must be given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Production,
}

/// Every setting of the API and the worker, by section. See `.env.example` for the
/// documentation of each variable.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ENVIRONMENT`: development (default), test or production.
    pub environment: Environment,
    /// `DATA_DIR`: every file of the embedded mode lives here.
    pub data_dir: PathBuf,
    /// Logging: `LOG_*`.
    pub log: LogSettings,
    /// The API's HTTP server: address, body limit, CORS, security headers, request ids.
    pub http: HttpSettings,
    /// The database: `DATABASE_*`, slow statements, the session cache.
    pub database: DatabaseSettings,
    /// The job queue and the documents waiting in it.
    pub queue: QueueSettings,
    /// Where rendered documents are kept, and how (compressed, encrypted, linked).
    pub storage: StorageSettings,
    /// Access tokens, passwords, signed links and the bootstrap admin.
    pub auth: AuthSettings,
    /// The document worker: concurrency, timeouts, retries, maintenance.
    pub worker: WorkerSettings,
    /// The wkhtmltopdf engines.
    pub pdf: PdfSettings,
    /// Login-attempt and per-IP rate limits.
    pub limits: LimitSettings,
    /// Webhook deliveries: timeouts, retries, destinations.
    pub webhooks: WebhookSettings,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `LOG_JSON`: one JSON object per log line.
    pub json: bool,
    /// `LOG_LEVEL`: a tracing filter (`info`, `monassurance=debug,info`, …); `RUST_LOG` wins.
    pub level: String,
}

/// The API's HTTP server.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `BIND_ADDR`: where the API listens.
    pub bind_addr: SocketAddr,
    /// `PUBLIC_BASE_URL`: the scheme and host clients reach the API at, without a trailing
    /// `/`; signed links are built on it. When unset, the API uses `http://` and the address
    /// it is bound to.
    pub public_base_url: Option<String>,
    /// `MAX_BODY_BYTES`: the largest request body accepted.
    pub max_body_bytes: usize,
    /// `REQUEST_ID_HEADER`, lowercased: the header carrying the request id.
    pub request_id_header: String,
    /// `HTTP_WARN_MS`: requests slower than this are logged at WARN.
    pub warn_ms: u64,
    /// `ENABLE_METRICS`: serve `/metrics`.
    pub enable_metrics: bool,
    /// `CORS_*`.
    pub cors: CorsSettings,
    /// `SECURITY_*`: the security headers on every answer.
    pub security: SecurityHeaderSettings,
}

/// CORS; a `*` entry in a list allows any value.
#[derive(Debug, Clone)]
pub struct CorsSettings {
    /// `CORS_ORIGINS`: a JSON list of allowed origins.
    pub origins: Vec<String>,
    /// `CORS_ALLOW_CREDENTIALS`.
    pub allow_credentials: bool,
    /// `CORS_ALLOW_METHODS`: a JSON list of methods.
    pub allow_methods: Vec<String>,
    /// `CORS_ALLOW_HEADERS`: a JSON list of request headers.
    pub allow_headers: Vec<String>,
}

/// Security headers; `None` leaves a header out (its variable was set empty).
#[derive(Debug, Clone)]
pub struct SecurityHeaderSettings {
    /// `SECURITY_HSTS`: send `Strict-Transport-Security`.
    pub hsts: bool,
    /// `SECURITY_CSP`: the `Content-Security-Policy`, none by default.
    pub csp: Option<String>,
    /// `SECURITY_FRAME_OPTIONS`: `X-Frame-Options`, `DENY` by default.
    pub frame_options: Option<String>,
    /// `SECURITY_REFERRER_POLICY`: `Referrer-Policy`, `no-referrer` by default.
    pub referrer_policy: Option<String>,
}

/// The database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`: `postgres://…` or `sqlite://…` (by default a file in `DATA_DIR`).
    pub url: String,
    /// `DATABASE_MAX_CONNECTIONS`: pool size.
    pub max_connections: u32,
    /// `SLOW_QUERY_MS`: statements slower than this are logged at WARN.
    pub slow_query_ms: u64,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: how long a request waits for a pooled connection (or
    /// for a new one while the database does not answer) before it is told 503.
    pub acquire_timeout: Duration,
    /// `AUTH_CACHE_SECONDS`: how long the API may trust an open session without asking the
    /// database again (see `db::session_cache`); 0 asks on every request.
    pub auth_cache_seconds: u64,
}

/// The job queue.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// `REDIS_URL`: when set, the job queue is Redis; otherwise SQLite.
    pub redis_url: Option<String>,
    /// `QUEUE_DATABASE_URL`: the SQLite file of the embedded job queue.
    pub database_url: String,
    /// `QUEUE_NAME`: the queue's name (a key prefix on Redis).
    pub name: String,
    /// `MAX_QUEUED_DOCUMENTS`: past this many waiting documents, generate answers 503.
    pub max_queued_documents: i64,
    /// `QUEUED_LEASE_SECONDS`: how long a queued document may wait before the reconciler
    /// assumes its job was lost and enqueues it again.
    pub queued_lease: Duration,
    /// `MAX_BATCH_ITEMS`: the most items one batch may have.
    pub max_batch_items: usize,
    /// `MAX_QUEUED_BULK_DOCUMENTS`: a batch that would take the bulk lane past this many
    /// waiting documents answers 503.
    pub max_queued_bulk: i64,
    /// `BULK_WINDOW`: how many bulk documents may be on the queue or rendering at once, all
    /// workers together. An interactive document waits behind at most this many; too
    /// small, and workers idle between top-ups.
    pub bulk_window: i64,
    /// `FEEDER_INTERVAL_MS`: how often each worker's feeder tops up the bulk window when
    /// its own finished bulk documents have not already made it do so.
    pub feeder_interval: Duration,
}

/// Where rendered documents are kept.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// `STORAGE_DIR`: the directory that holds rendered documents when `STORAGE_URL` is unset.
    pub dir: PathBuf,
    /// `STORAGE_URL`: `s3://bucket[/prefix]` to keep documents in S3-compatible storage.
    pub url: Option<String>,
    /// `S3_ENDPOINT` (or `AWS_ENDPOINT_URL`): a non-AWS S3 server, path-style addressing.
    pub s3_endpoint: Option<String>,
    /// `S3_REGION` (or `AWS_REGION`).
    pub s3_region: String,
    /// `S3_ACCESS_KEY_ID` (or `AWS_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// `S3_SECRET_ACCESS_KEY` (or `AWS_SECRET_ACCESS_KEY`).
    pub s3_secret_access_key: Option<SecretString>,
    /// `SIGNED_URL_MODE`: `api` (links to the API, every document) or `s3` (presigned S3
    /// GETs for documents stored neither compressed nor encrypted).
    pub signed_url_mode: SignedUrlMode,
    /// `ENCRYPTION_KEYS` (JSON map key id → base64 32-byte AES key) and
    /// `ENCRYPTION_ACTIVE_KID`: the ring for documents at rest.
    pub encryption_keys: EncryptionKeys,
    /// `DEFAULT_COMPRESS`: applied when a request does not say.
    pub default_compress: bool,
    /// `DEFAULT_ENCRYPT`: applied when a request does not say.
    pub default_encrypt: bool,
}

/// Where signed links point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedUrlMode {
    Api,
    S3,
}

/// Access tokens, passwords, signed links and the bootstrap admin.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `JWT_SECRET_KEY`.
    pub jwt_secret_key: SecretString,
    /// `JWT_ALGORITHM`: HS256, HS384 or HS512; tokens signed otherwise are refused.
    pub jwt_algorithm: jsonwebtoken::Algorithm,
    /// `JWT_ISSUER`: the `iss` claim written and required.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE`: the `aud` claim written and required.
    pub jwt_audience: String,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_EXPIRE_DAYS`.
    pub refresh_token_ttl: Duration,
    /// `PASSWORD_MIN_LENGTH`.
    pub password_min_length: usize,
    /// `SIGNATURE_KEYS` (JSON map key id → secret) and `SIGNATURE_ACTIVE_KID`: the ring
    /// signed links are signed and checked with.
    pub signature_keys: KeyRing,
    /// `SIGNED_URL_MAX_TTL`: the longest life a link may be given, in seconds.
    pub signed_url_max_ttl: u64,
    /// `BOOTSTRAP_ADMIN_EMAIL`: an admin created at start-up when no user has that email.
    pub bootstrap_admin_email: Option<String>,
    /// `BOOTSTRAP_ADMIN_PASSWORD`: that admin's password.
    pub bootstrap_admin_password: Option<SecretString>,
}

/// The document worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `WORKER_CONCURRENCY`: jobs one worker process runs at once (at least 1).
    pub concurrency: usize,
    /// `WORKER_HTTP_ADDR`: where a standalone worker serves `/health` and `/metrics`.
    pub http_addr: SocketAddr,
    /// `WORKER_POLL_MS`: how often an idle worker looks for new jobs.
    pub poll_interval: Duration,
    /// `JOB_TIMEOUT_SECONDS`: the longest one render may take.
    pub job_timeout: Duration,
    /// `JOB_MAX_ATTEMPTS`: attempts after which a transient failure (storage, database) fails
    /// the document for good (at least 1).
    pub job_max_attempts: i32,
    /// `JOB_RETRY_BASE_MS`: the first backoff after a transient failure, doubled per attempt.
    pub job_retry_base: Duration,
    /// `JOB_RETRY_MAX_MS`: the longest backoff.
    pub job_retry_max: Duration,
    /// `RECONCILE_INTERVAL_MS`: how often a worker looks for lost jobs.
    pub reconcile_interval: Duration,
    /// `DRAIN_TIMEOUT_SECONDS`: how long in-flight jobs may run after SIGTERM.
    pub drain_timeout: Duration,
    /// `RENDER_FUEL`: the template engine's instruction budget per render; a runaway loop
    /// fails its job instead of spinning forever.
    pub render_fuel: u64,
    /// `MAX_OUTPUT_BYTES`: the largest document a render may produce.
    pub max_output_bytes: usize,
    /// `DOCUMENT_RETENTION_DAYS`: documents older than this are deleted; unset keeps them.
    pub document_retention_days: Option<u32>,
    /// `MAINTENANCE_INTERVAL_SECONDS`: how often a worker purges orphans and applies
    /// retention.
    pub maintenance_interval: Duration,
    /// `WORKER_HEARTBEAT_MS`: how often a worker records that it is alive; one not heard of
    /// for three of these is stale.
    pub heartbeat_interval: Duration,
    /// `WORKER_STALL_SECONDS`: a document queued longer than this with no live worker makes
    /// `/health/db` degraded.
    pub stall_after: Duration,
}

impl WorkerSettings {
    /// How long a worker may go unheard before it counts as stale.
    pub fn stale_after(&self) -> Duration {
        self.heartbeat_interval * 3
    }
}

/// The wkhtmltopdf engines.
#[derive(Debug, Clone)]
pub struct PdfSettings {
    /// `WKHTMLTOPDF_PATH`: the binary.
    pub wkhtmltopdf_path: PathBuf,
    /// `PDF_CONCURRENCY`: warm engines per worker (at least 1).
    pub concurrency: usize,
    /// `PDF_MAX_JOBS_PER_PROCESS`: documents after which an engine process is recycled.
    pub max_jobs_per_process: u32,
    /// `PDF_TIMEOUT_SECONDS`: an engine past this on one document is killed and replaced.
    pub timeout: Duration,
}

/// Login-attempt and rate limits; every per-minute figure is at least 1.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// `LOGIN_ATTEMPTS_ENABLED`: refuse logins (429) from an IP or for an account after
    /// too many failed attempts.
    pub login_attempts_enabled: bool,
    /// `LOGIN_ATTEMPTS_IP_PER_MINUTE`: failed logins one IP may make per minute.
    pub login_attempts_ip_per_minute: u32,
    /// `LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE`: failed logins one account may take per minute.
    pub login_attempts_account_per_minute: u32,
    /// `RATE_LIMIT_ENABLED`: the generic per-IP limiter (off by default).
    pub rate_limit_enabled: bool,
    /// `DEFAULT_RATE_LIMIT_PER_MINUTE`: requests per minute per IP outside `/auth`.
    pub default_rate_limit_per_minute: u32,
    /// `AUTH_RATE_LIMIT_PER_MINUTE`: requests per minute per IP on `/api/v1/auth/*`.
    pub auth_rate_limit_per_minute: u32,
    /// `DOWNLOAD_RATE_LIMIT_PER_MINUTE`: downloads per minute per user, and per signed
    /// link (always on).
    pub download_rate_limit_per_minute: u32,
}

/// Webhook deliveries.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_TIMEOUT_SECONDS`: how long an endpoint has to answer one delivery.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE`: seconds between a failed attempt and the next, separated
    /// by commas; after the last, the delivery is `failed`.
    pub retry_schedule: Vec<Duration>,
    /// `WEBHOOK_ALLOW_PRIVATE_NETWORKS`: let deliveries go to loopback, private and
    /// link-local addresses, and over plain `http` (tests, private deployments).
    pub allow_private_networks: bool,
    /// `WEBHOOK_LINK_TTL`: how long the signed `download_url` of `document.ready` lives.
    pub link_ttl: Duration,
    /// `WEBHOOK_SECRET_OVERLAP_SECONDS`: how long a rotated-out secret keeps signing
    /// beside the new one.
    pub secret_overlap: Duration,
    /// `WEBHOOK_CONCURRENCY`: deliveries one worker sends at once (at least 1).
    pub concurrency: usize,
    /// `WEBHOOK_POLL_MS`: how often a worker looks for due deliveries.
    pub poll_interval: Duration,
    /// `WEBHOOK_LOG_RETENTION_DAYS`: sent and given-up deliveries older than this leave
    /// the delivery log.
    pub log_retention_days: u32,
}

impl WebhookSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        let raw = env.string(
            "WEBHOOK_RETRY_SCHEDULE",
            "5,300,1800,7200,18000,36000,36000",
        );
        let retry_schedule = raw
            .split(',')
            .map(|s| s.trim().parse::<u64>().map(Duration::from_secs))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "WEBHOOK_RETRY_SCHEDULE={raw:?} must be whole seconds separated by commas"
                )
            })?;
        let concurrency: usize = env.value("WEBHOOK_CONCURRENCY", "16")?;
        if concurrency == 0 {
            bail!("WEBHOOK_CONCURRENCY must be at least 1");
        }
        Ok(WebhookSettings {
            timeout: env.seconds("WEBHOOK_TIMEOUT_SECONDS", "10")?,
            retry_schedule,
            allow_private_networks: env.flag("WEBHOOK_ALLOW_PRIVATE_NETWORKS", false)?,
            link_ttl: env.seconds("WEBHOOK_LINK_TTL", "3600")?,
            secret_overlap: env.seconds("WEBHOOK_SECRET_OVERLAP_SECONDS", "86400")?,
            concurrency,
            poll_interval: env.millis("WEBHOOK_POLL_MS", "200")?,
            log_retention_days: env.value("WEBHOOK_LOG_RETENTION_DAYS", "30")?,
        })
    }
}

impl Settings {
    /// Reads `.env` (if present) into the process environment, then builds the settings
    /// from it.
    pub fn from_env() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the settings from any key → value lookup (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env::new(&lookup);
        let environment = Environment::from_env(&env)?;
        let data_dir = PathBuf::from(env.string("DATA_DIR", "./data"));
        let secrets = Fallback::new(environment, &data_dir);
        Ok(Settings {
            log: LogSettings::from_env(&env)?,
            http: HttpSettings::from_env(&env)?,
            database: DatabaseSettings::from_env(&env, &data_dir)?,
            queue: QueueSettings::from_env(&env, &data_dir)?,
            auth: AuthSettings::from_env(&env, environment, &secrets)?,
            storage: StorageSettings::from_env(&env, &data_dir, &secrets)?,
            worker: WorkerSettings::from_env(&env)?,
            pdf: PdfSettings::from_env(&env)?,
            limits: LimitSettings::from_env(&env)?,
            webhooks: WebhookSettings::from_env(&env)?,
            environment,
            data_dir,
        })
    }
}

impl Environment {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        match env
            .string("ENVIRONMENT", "development")
            .to_lowercase()
            .as_str()
        {
            "development" | "dev" => Ok(Environment::Development),
            "test" => Ok(Environment::Test),
            "production" | "prod" => Ok(Environment::Production),
            other => bail!("ENVIRONMENT must be development, test or production, not {other:?}"),
        }
    }
}

impl LogSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(LogSettings {
            json: env.flag("LOG_JSON", false)?,
            level: env.string("LOG_LEVEL", "info"),
        })
    }
}

impl HttpSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(HttpSettings {
            bind_addr: env.value("BIND_ADDR", "127.0.0.1:8000")?,
            public_base_url: env
                .get("PUBLIC_BASE_URL")
                .map(|url| url.trim_end_matches('/').to_owned()),
            max_body_bytes: env.value("MAX_BODY_BYTES", "10485760")?,
            request_id_header: env
                .string("REQUEST_ID_HEADER", "X-Request-ID")
                .to_lowercase(),
            warn_ms: env.value("HTTP_WARN_MS", "1000")?,
            enable_metrics: env.flag("ENABLE_METRICS", true)?,
            cors: CorsSettings::from_env(env)?,
            security: SecurityHeaderSettings::from_env(env)?,
        })
    }
}

impl CorsSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(CorsSettings {
            origins: env.json("CORS_ORIGINS", r#"["http://localhost:3000"]"#)?,
            allow_credentials: env.flag("CORS_ALLOW_CREDENTIALS", true)?,
            allow_methods: env.json(
                "CORS_ALLOW_METHODS",
                r#"["GET","POST","PUT","PATCH","DELETE","OPTIONS"]"#,
            )?,
            allow_headers: env.json("CORS_ALLOW_HEADERS", r#"["*"]"#)?,
        })
    }
}

impl SecurityHeaderSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(SecurityHeaderSettings {
            hsts: env.flag("SECURITY_HSTS", false)?,
            csp: env.get("SECURITY_CSP"),
            frame_options: env.header("SECURITY_FRAME_OPTIONS", "DENY"),
            referrer_policy: env.header("SECURITY_REFERRER_POLICY", "no-referrer"),
        })
    }
}

impl DatabaseSettings {
    fn from_env(env: &Env, data_dir: &Path) -> anyhow::Result<Self> {
        Ok(DatabaseSettings {
            url: env
                .get("DATABASE_URL")
                .unwrap_or_else(|| sqlite_url(data_dir, "monassurance.db")),
            max_connections: env.value("DATABASE_MAX_CONNECTIONS", "10")?,
            slow_query_ms: env.value("SLOW_QUERY_MS", "500")?,
            acquire_timeout: env.millis("DATABASE_ACQUIRE_TIMEOUT_MS", "5000")?,
            auth_cache_seconds: env.value("AUTH_CACHE_SECONDS", "30")?,
        })
    }

    /// Whether the database is SQLite (the embedded default).
    pub fn is_sqlite(&self) -> bool {
        self.url.starts_with("sqlite:")
    }
}

impl QueueSettings {
    fn from_env(env: &Env, data_dir: &Path) -> anyhow::Result<Self> {
        Ok(QueueSettings {
            redis_url: env.get("REDIS_URL"),
            database_url: env
                .get("QUEUE_DATABASE_URL")
                .unwrap_or_else(|| sqlite_url(data_dir, "queue.db")),
            name: env.string("QUEUE_NAME", "monassurance-render"),
            max_queued_documents: env.value("MAX_QUEUED_DOCUMENTS", "10000")?,
            queued_lease: env.seconds("QUEUED_LEASE_SECONDS", "600")?,
            max_batch_items: env.value("MAX_BATCH_ITEMS", "10000")?,
            max_queued_bulk: env.value("MAX_QUEUED_BULK_DOCUMENTS", "200000")?,
            bulk_window: env.value("BULK_WINDOW", "64")?,
            feeder_interval: env.millis("FEEDER_INTERVAL_MS", "200")?,
        })
    }
}

/// The URL of the SQLite database `file` in `data_dir`.
fn sqlite_url(data_dir: &Path, file: &str) -> String {
    format!("sqlite://{}", data_dir.join(file).display())
}

impl StorageSettings {
    fn from_env(env: &Env, data_dir: &Path, secrets: &Fallback) -> anyhow::Result<Self> {
        let url = env.get("STORAGE_URL");
        if let Some(url) = &url
            && !url.starts_with("s3://")
        {
            bail!("STORAGE_URL must start with s3:// (leave it unset to use STORAGE_DIR)");
        }
        let signed_url_mode = SignedUrlMode::from_env(env)?;
        if signed_url_mode == SignedUrlMode::S3 && url.is_none() {
            bail!("SIGNED_URL_MODE=s3 needs STORAGE_URL=s3://…");
        }
        Ok(StorageSettings {
            dir: env
                .get("STORAGE_DIR")
                .map_or_else(|| data_dir.join("objects"), PathBuf::from),
            url,
            s3_endpoint: env.either("S3_ENDPOINT", "AWS_ENDPOINT_URL"),
            s3_region: env
                .either("S3_REGION", "AWS_REGION")
                .unwrap_or_else(|| "us-east-1".to_owned()),
            s3_access_key_id: env.either("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            s3_secret_access_key: env
                .either("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
                .map(SecretString::from),
            signed_url_mode,
            encryption_keys: encryption_keys(env, secrets)?,
            default_compress: env.flag("DEFAULT_COMPRESS", false)?,
            default_encrypt: env.flag("DEFAULT_ENCRYPT", false)?,
        })
    }
}

impl SignedUrlMode {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        match env.string("SIGNED_URL_MODE", "api").to_lowercase().as_str() {
            "api" => Ok(SignedUrlMode::Api),
            "s3" => Ok(SignedUrlMode::S3),
            other => bail!("SIGNED_URL_MODE must be api or s3, not {other:?}"),
        }
    }
}

/// `ENCRYPTION_KEYS` and `ENCRYPTION_ACTIVE_KID`, or the generated key when none is set.
fn encryption_keys(env: &Env, secrets: &Fallback) -> anyhow::Result<EncryptionKeys> {
    let mut keys = env.secret_map("ENCRYPTION_KEYS", "base64 key")?;
    let mut active_kid = env.get("ENCRYPTION_ACTIVE_KID");
    if keys.is_empty() {
        let kid = secrets::GENERATED_ENCRYPTION_KID.to_owned();
        keys.insert(kid.clone(), secrets.generated()?.encryption_key.clone());
        active_kid.get_or_insert(kid);
    }
    EncryptionKeys::from_base64(keys, active_kid.as_deref())
        .map_err(|e| anyhow::anyhow!("ENCRYPTION_KEYS / ENCRYPTION_ACTIVE_KID: {e}"))
}

impl AuthSettings {
    fn from_env(env: &Env, environment: Environment, secrets: &Fallback) -> anyhow::Result<Self> {
        Ok(AuthSettings {
            jwt_secret_key: jwt_secret_key(env, environment, secrets)?,
            jwt_algorithm: jwt_algorithm(env)?,
            jwt_issuer: env.string("JWT_ISSUER", "monassurance"),
            jwt_audience: env.string("JWT_AUDIENCE", "monassurance-api"),
            access_token_ttl: Duration::from_secs(
                60 * env.value::<u64>("ACCESS_TOKEN_EXPIRE_MINUTES", "30")?,
            ),
            refresh_token_ttl: Duration::from_secs(
                86_400 * env.value::<u64>("REFRESH_TOKEN_EXPIRE_DAYS", "30")?,
            ),
            password_min_length: env.value("PASSWORD_MIN_LENGTH", "8")?,
            signature_keys: signature_keys(env, secrets)?,
            signed_url_max_ttl: env.value("SIGNED_URL_MAX_TTL", "3600")?,
            bootstrap_admin_email: env.get("BOOTSTRAP_ADMIN_EMAIL"),
            bootstrap_admin_password: env.get("BOOTSTRAP_ADMIN_PASSWORD").map(SecretString::from),
        })
    }

    /// The JWT secret as bytes, for the token codec.
    pub fn jwt_secret_bytes(&self) -> &[u8] {
        self.jwt_secret_key.expose_secret().as_bytes()
    }
}

/// `JWT_SECRET_KEY`, or the generated one; at least 32 characters in production.
fn jwt_secret_key(
    env: &Env,
    environment: Environment,
    secrets: &Fallback,
) -> anyhow::Result<SecretString> {
    let secret = match env.get("JWT_SECRET_KEY") {
        Some(secret) => secret,
        None => secrets.generated()?.jwt_secret_key.clone(),
    };
    if secret.len() < 32 && environment == Environment::Production {
        bail!("JWT_SECRET_KEY must be at least 32 characters long in production");
    }
    Ok(SecretString::from(secret))
}

fn jwt_algorithm(env: &Env) -> anyhow::Result<jsonwebtoken::Algorithm> {
    match env.string("JWT_ALGORITHM", "HS256").to_uppercase().as_str() {
        "HS256" => Ok(jsonwebtoken::Algorithm::HS256),
        "HS384" => Ok(jsonwebtoken::Algorithm::HS384),
        "HS512" => Ok(jsonwebtoken::Algorithm::HS512),
        other => bail!("JWT_ALGORITHM must be HS256, HS384 or HS512, not {other:?}"),
    }
}

/// `SIGNATURE_KEYS` and `SIGNATURE_ACTIVE_KID`, or the generated key when none is set.
fn signature_keys(env: &Env, secrets: &Fallback) -> anyhow::Result<KeyRing> {
    let mut keys = env.secret_map("SIGNATURE_KEYS", "secret")?;
    let mut active_kid = env.get("SIGNATURE_ACTIVE_KID");
    if keys.is_empty() {
        let generated = secrets.generated()?;
        let kid = generated.signature_kid.clone();
        keys.insert(kid.clone(), generated.signature_secret.clone());
        active_kid.get_or_insert(kid);
    }
    let keys: BTreeMap<String, SecretString> = keys
        .into_iter()
        .map(|(kid, secret)| (kid, SecretString::from(secret)))
        .collect();
    KeyRing::new(keys, active_kid.as_deref()).map_err(|err| match err {
        RingError::ActiveKidRequired => {
            anyhow::anyhow!("SIGNATURE_ACTIVE_KID must name one of the SIGNATURE_KEYS")
        }
        RingError::ActiveKidNotFound(kid) => {
            anyhow::anyhow!("SIGNATURE_ACTIVE_KID {kid:?} is not a key of SIGNATURE_KEYS")
        }
        RingError::InvalidKid => {
            anyhow::anyhow!("SIGNATURE_KEYS ids must be non-empty and contain no '.'")
        }
    })
}

impl WorkerSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(WorkerSettings {
            concurrency: env.value::<usize>("WORKER_CONCURRENCY", "4")?.max(1),
            http_addr: env.value("WORKER_HTTP_ADDR", "127.0.0.1:8001")?,
            poll_interval: env.millis("WORKER_POLL_MS", "100")?,
            job_timeout: env.seconds("JOB_TIMEOUT_SECONDS", "120")?,
            job_max_attempts: env.value::<i32>("JOB_MAX_ATTEMPTS", "5")?.max(1),
            job_retry_base: env.millis("JOB_RETRY_BASE_MS", "1000")?,
            job_retry_max: env.millis("JOB_RETRY_MAX_MS", "60000")?,
            reconcile_interval: env.millis("RECONCILE_INTERVAL_MS", "5000")?,
            drain_timeout: env.seconds("DRAIN_TIMEOUT_SECONDS", "30")?,
            render_fuel: env.value("RENDER_FUEL", "5000000")?,
            max_output_bytes: env.value("MAX_OUTPUT_BYTES", "52428800")?,
            document_retention_days: env
                .get("DOCUMENT_RETENTION_DAYS")
                .map(|v| {
                    v.trim()
                        .parse()
                        .context("DOCUMENT_RETENTION_DAYS must be a whole number of days")
                })
                .transpose()?,
            maintenance_interval: env.seconds("MAINTENANCE_INTERVAL_SECONDS", "3600")?,
            heartbeat_interval: env.millis("WORKER_HEARTBEAT_MS", "5000")?,
            stall_after: env.seconds("WORKER_STALL_SECONDS", "60")?,
        })
    }
}

impl PdfSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(PdfSettings {
            wkhtmltopdf_path: PathBuf::from(env.string("WKHTMLTOPDF_PATH", "wkhtmltopdf")),
            concurrency: env.value::<usize>("PDF_CONCURRENCY", "2")?.max(1),
            max_jobs_per_process: env.value("PDF_MAX_JOBS_PER_PROCESS", "500")?,
            timeout: env.seconds("PDF_TIMEOUT_SECONDS", "30")?,
        })
    }
}

impl LimitSettings {
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        Ok(LimitSettings {
            login_attempts_enabled: env.flag("LOGIN_ATTEMPTS_ENABLED", true)?,
            login_attempts_ip_per_minute: env.per_minute("LOGIN_ATTEMPTS_IP_PER_MINUTE", "30")?,
            login_attempts_account_per_minute: env
                .per_minute("LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE", "10")?,
            rate_limit_enabled: env.flag("RATE_LIMIT_ENABLED", false)?,
            default_rate_limit_per_minute: env
                .per_minute("DEFAULT_RATE_LIMIT_PER_MINUTE", "120")?,
            auth_rate_limit_per_minute: env.per_minute("AUTH_RATE_LIMIT_PER_MINUTE", "10")?,
            download_rate_limit_per_minute: env
                .per_minute("DOWNLOAD_RATE_LIMIT_PER_MINUTE", "30")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::env::tests::with_env;
    use super::*;

    /// A valid `ENCRYPTION_KEYS` value.
    const ENCRYPTION_KEYS: &str = r#"{"e1":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#;

    fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    /// The message of the error `result` holds.
    fn error<T: std::fmt::Debug>(result: anyhow::Result<T>) -> String {
        result.unwrap_err().to_string()
    }

    /// A fallback that refuses to generate anything: the secrets under test must be given.
    fn no_fallback() -> Fallback<'static> {
        Fallback::new(Environment::Production, Path::new("/nonexistent"))
    }

    #[test]
    fn production_without_secrets_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_str().unwrap();
        let base = [("ENVIRONMENT", "production"), ("DATA_DIR", data_dir)];
        let err = error(settings(&base));
        assert!(err.contains("JWT_SECRET_KEY"), "{err}");
        let long = "a-production-secret-of-32-characters";
        let without_encryption = [
            base[0],
            base[1],
            ("JWT_SECRET_KEY", long),
            ("SIGNATURE_KEYS", r#"{"k1":"s"}"#),
        ];
        assert_eq!(error(settings(&without_encryption)), err);
        assert!(!dir.path().join("secrets.json").exists());
    }

    #[test]
    fn embedded_mode_generates_secrets_once_and_builds_rings_from_them() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = [("DATA_DIR", dir.path().to_str().unwrap())];
        let first = settings(&data_dir).unwrap();
        let second = settings(&data_dir).unwrap();
        assert_eq!(
            first.auth.jwt_secret_bytes(),
            second.auth.jwt_secret_bytes()
        );
        assert!(first.auth.jwt_secret_bytes().len() >= 32);
        let (doc, exp) = (uuid::Uuid::now_v7(), 1_000);
        let sig = first.auth.signature_keys.sign(doc, exp);
        assert!(sig.starts_with("k1."), "{sig}");
        assert_eq!(second.auth.signature_keys.verify(doc, exp, &sig, 0), Ok(()));
        assert_eq!(first.storage.encryption_keys.active_kid(), "e1");
    }

    #[test]
    fn configured_secrets_leave_data_dir_alone() {
        let dir = tempfile::tempdir().unwrap();
        settings(&[
            ("DATA_DIR", dir.path().to_str().unwrap()),
            ("JWT_SECRET_KEY", "x"),
            ("SIGNATURE_KEYS", r#"{"k1":"s"}"#),
            ("ENCRYPTION_KEYS", ENCRYPTION_KEYS),
        ])
        .unwrap();
        assert!(!dir.path().join("secrets.json").exists());
    }

    #[test]
    fn environment_accepts_short_names_and_names_a_bad_one() {
        let read = |value| with_env(&[("ENVIRONMENT", value)], Environment::from_env);
        assert_eq!(read("PROD").unwrap(), Environment::Production);
        assert_eq!(read("dev").unwrap(), Environment::Development);
        assert_eq!(
            error(read("staging")),
            "ENVIRONMENT must be development, test or production, not \"staging\""
        );
    }

    #[test]
    fn http_defaults_and_a_bad_address() {
        let http = with_env(&[], HttpSettings::from_env).unwrap();
        assert_eq!(http.bind_addr, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(http.public_base_url, None);
        assert_eq!(http.request_id_header, "x-request-id");
        assert_eq!(http.cors.origins, ["http://localhost:3000"]);
        assert!(http.cors.allow_credentials && http.enable_metrics);
        let pairs = [("PUBLIC_BASE_URL", "https://api.example.com/")];
        let http = with_env(&pairs, HttpSettings::from_env).unwrap();
        assert_eq!(
            http.public_base_url.as_deref(),
            Some("https://api.example.com")
        );
        let err = error(with_env(
            &[("BIND_ADDR", "localhost")],
            HttpSettings::from_env,
        ));
        assert!(
            err.starts_with("BIND_ADDR=\"localhost\" is not valid"),
            "{err}"
        );
        let err = error(with_env(&[("CORS_ORIGINS", "*")], HttpSettings::from_env));
        assert_eq!(err, "CORS_ORIGINS must be JSON, got \"*\"");
    }

    #[test]
    fn security_headers_have_defaults_and_an_empty_value_turns_one_off() {
        let headers = with_env(&[], SecurityHeaderSettings::from_env).unwrap();
        assert_eq!(headers.frame_options.as_deref(), Some("DENY"));
        assert_eq!(headers.referrer_policy.as_deref(), Some("no-referrer"));
        assert_eq!((headers.hsts, headers.csp), (false, None));
        let pairs = [
            ("SECURITY_FRAME_OPTIONS", ""),
            ("SECURITY_CSP", "default-src 'none'"),
        ];
        let headers = with_env(&pairs, SecurityHeaderSettings::from_env).unwrap();
        assert_eq!(headers.frame_options, None);
        assert_eq!(headers.csp.as_deref(), Some("default-src 'none'"));
    }

    #[test]
    fn database_queue_and_storage_default_to_data_dir() {
        let data_dir = Path::new("/srv/mona");
        let database = with_env(&[], |env| DatabaseSettings::from_env(env, data_dir)).unwrap();
        assert_eq!(database.url, "sqlite:///srv/mona/monassurance.db");
        assert!(database.is_sqlite());
        let queue = with_env(&[], |env| QueueSettings::from_env(env, data_dir)).unwrap();
        assert_eq!(queue.database_url, "sqlite:///srv/mona/queue.db");
        assert_eq!(queue.queued_lease, Duration::from_secs(600));
        let pairs = [("ENCRYPTION_KEYS", ENCRYPTION_KEYS)];
        let storage = with_env(&pairs, |env| {
            StorageSettings::from_env(env, data_dir, &no_fallback())
        });
        assert_eq!(storage.unwrap().dir, Path::new("/srv/mona/objects"));
        let pairs = [("DATABASE_URL", "postgres://db/mona")];
        let database = with_env(&pairs, |env| DatabaseSettings::from_env(env, data_dir)).unwrap();
        assert!(!database.is_sqlite());
    }

    /// The storage section read from `pairs` plus a valid `ENCRYPTION_KEYS`.
    fn storage(pairs: &[(&str, &str)]) -> anyhow::Result<StorageSettings> {
        let mut pairs = pairs.to_vec();
        pairs.insert(0, ("ENCRYPTION_KEYS", ENCRYPTION_KEYS));
        with_env(&pairs, |env| {
            StorageSettings::from_env(env, Path::new("/d"), &no_fallback())
        })
    }

    #[test]
    fn storage_url_and_signed_url_mode_must_agree() {
        assert_eq!(
            error(storage(&[("STORAGE_URL", "/var/documents")])),
            "STORAGE_URL must start with s3:// (leave it unset to use STORAGE_DIR)"
        );
        assert_eq!(
            error(storage(&[("SIGNED_URL_MODE", "S3")])),
            "SIGNED_URL_MODE=s3 needs STORAGE_URL=s3://…"
        );
        assert_eq!(
            error(storage(&[("SIGNED_URL_MODE", "cdn")])),
            "SIGNED_URL_MODE must be api or s3, not \"cdn\""
        );
        let s3 = storage(&[("STORAGE_URL", "s3://docs"), ("SIGNED_URL_MODE", "s3")]).unwrap();
        assert_eq!(s3.signed_url_mode, SignedUrlMode::S3);
    }

    #[test]
    fn s3_variables_fall_back_to_the_aws_names() {
        let aws = storage(&[("AWS_REGION", "eu-west-3"), ("AWS_ACCESS_KEY_ID", "id")]).unwrap();
        assert_eq!(aws.s3_region, "eu-west-3");
        assert_eq!(aws.s3_access_key_id.as_deref(), Some("id"));
        let both = storage(&[("AWS_REGION", "eu-west-3"), ("S3_REGION", "local")]).unwrap();
        assert_eq!(both.s3_region, "local");
        assert_eq!(storage(&[]).unwrap().s3_region, "us-east-1");
    }

    #[test]
    fn encryption_keys_are_checked_and_never_quoted() {
        let read =
            |pairs: &[(&str, &str)]| with_env(pairs, |env| encryption_keys(env, &no_fallback()));
        let two = r#"{"a":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","b":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#;
        assert_eq!(
            read(&[("ENCRYPTION_KEYS", two), ("ENCRYPTION_ACTIVE_KID", "b")])
                .unwrap()
                .active_kid(),
            "b"
        );
        let err = error(read(&[("ENCRYPTION_KEYS", two)]));
        assert!(
            err.starts_with("ENCRYPTION_KEYS / ENCRYPTION_ACTIVE_KID: "),
            "{err}"
        );
        let err = error(read(&[("ENCRYPTION_KEYS", r#"{"e1":"c2hvcnQ="}"#)]));
        assert!(err.contains("bad key length for \"e1\""), "{err}");
        // The key alone, pasted without its JSON object: serde's message would quote it.
        let bare = r#""AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=""#;
        let err = read(&[("ENCRYPTION_KEYS", bare)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ENCRYPTION_KEYS must be a JSON object of key id to base64 key"
        );
        assert!(!format!("{err:?}").contains("AAECAw"), "{err:?}");
    }

    #[test]
    fn signing_ring_rules_are_reported_by_variable() {
        let read =
            |pairs: &[(&str, &str)]| with_env(pairs, |env| signature_keys(env, &no_fallback()));
        let two = ("SIGNATURE_KEYS", r#"{"a":"s1","b":"s2"}"#);
        assert_eq!(
            error(read(&[two])),
            "SIGNATURE_ACTIVE_KID must name one of the SIGNATURE_KEYS"
        );
        assert_eq!(
            error(read(&[two, ("SIGNATURE_ACTIVE_KID", "c")])),
            "SIGNATURE_ACTIVE_KID \"c\" is not a key of SIGNATURE_KEYS"
        );
        assert_eq!(
            error(read(&[("SIGNATURE_KEYS", r#"{"k.1":"s"}"#)])),
            "SIGNATURE_KEYS ids must be non-empty and contain no '.'"
        );
        let ring = read(&[two, ("SIGNATURE_ACTIVE_KID", "b")]).unwrap();
        assert!(ring.sign(uuid::Uuid::now_v7(), 0).starts_with("b."));
        let only = read(&[("SIGNATURE_KEYS", r#"{"solo":"s"}"#)]).unwrap();
        assert!(only.sign(uuid::Uuid::now_v7(), 0).starts_with("solo."));
        let err = read(&[("SIGNATURE_KEYS", r#""s3cr3t""#)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SIGNATURE_KEYS must be a JSON object of key id to secret"
        );
        assert!(!format!("{err:?}").contains("s3cr3t"), "{err:?}");
    }

    /// The auth section read from `pairs` plus valid signing keys, in `environment`.
    fn auth(environment: Environment, pairs: &[(&str, &str)]) -> anyhow::Result<AuthSettings> {
        let mut pairs = pairs.to_vec();
        pairs.insert(0, ("SIGNATURE_KEYS", r#"{"k1":"s"}"#));
        with_env(&pairs, |env| {
            AuthSettings::from_env(env, environment, &no_fallback())
        })
    }

    #[test]
    fn production_needs_a_long_jwt_secret() {
        let short = [("JWT_SECRET_KEY", "too-short")];
        assert_eq!(
            error(auth(Environment::Production, &short)),
            "JWT_SECRET_KEY must be at least 32 characters long in production"
        );
        assert!(auth(Environment::Test, &short).is_ok());
    }

    #[test]
    fn jwt_algorithm_and_token_lifetimes() {
        let secret = ("JWT_SECRET_KEY", "x");
        let auth_with = |pairs: &[(&str, &str)]| {
            let mut pairs = pairs.to_vec();
            pairs.push(secret);
            auth(Environment::Development, &pairs)
        };
        let defaults = auth_with(&[]).unwrap();
        assert_eq!(defaults.jwt_algorithm, jsonwebtoken::Algorithm::HS256);
        assert_eq!(defaults.access_token_ttl, Duration::from_secs(30 * 60));
        assert_eq!(defaults.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        let custom = auth_with(&[
            ("JWT_ALGORITHM", "hs512"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "5"),
        ]);
        let custom = custom.unwrap();
        assert_eq!(custom.jwt_algorithm, jsonwebtoken::Algorithm::HS512);
        assert_eq!(custom.access_token_ttl, Duration::from_secs(300));
        assert_eq!(
            error(auth_with(&[("JWT_ALGORITHM", "RS256")])),
            "JWT_ALGORITHM must be HS256, HS384 or HS512, not \"RS256\""
        );
    }

    #[test]
    fn worker_and_pdf_counts_are_at_least_one() {
        let pairs = [("WORKER_CONCURRENCY", "0"), ("JOB_MAX_ATTEMPTS", "-3")];
        let worker = with_env(&pairs, WorkerSettings::from_env).unwrap();
        assert_eq!((worker.concurrency, worker.job_max_attempts), (1, 1));
        assert_eq!(worker.poll_interval, Duration::from_millis(100));
        assert_eq!(worker.document_retention_days, None);
        let pdf = with_env(&[("PDF_CONCURRENCY", "0")], PdfSettings::from_env).unwrap();
        assert_eq!(pdf.concurrency, 1);
        assert_eq!(pdf.timeout, Duration::from_secs(30));
        let pairs = [("DOCUMENT_RETENTION_DAYS", "a year")];
        assert_eq!(
            error(with_env(&pairs, WorkerSettings::from_env)),
            "DOCUMENT_RETENTION_DAYS must be a whole number of days"
        );
        let pairs = [("JOB_TIMEOUT_SECONDS", "2m")];
        let err = error(with_env(&pairs, WorkerSettings::from_env));
        assert!(
            err.starts_with("JOB_TIMEOUT_SECONDS=\"2m\" is not valid"),
            "{err}"
        );
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero() {
        let limits = with_env(&[], LimitSettings::from_env).unwrap();
        assert!(limits.login_attempts_enabled && !limits.rate_limit_enabled);
        assert_eq!(limits.download_rate_limit_per_minute, 30);
        let pairs = [("AUTH_RATE_LIMIT_PER_MINUTE", "0")];
        assert_eq!(
            error(with_env(&pairs, LimitSettings::from_env)),
            "AUTH_RATE_LIMIT_PER_MINUTE must be at least 1"
        );
    }

    #[test]
    fn logging_defaults_and_a_bad_switch() {
        let log = with_env(&[], LogSettings::from_env).unwrap();
        assert_eq!((log.json, log.level.as_str()), (false, "info"));
        assert_eq!(
            error(with_env(&[("LOG_JSON", "json")], LogSettings::from_env)),
            "LOG_JSON=\"json\" is not a boolean (true or false)"
        );
    }
}
