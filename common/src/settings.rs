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
//! Secrets: in production (`ENVIRONMENT=production`) a missing JWT or signing secret stops
//! the start-up. Anywhere else, missing secrets are generated once and kept in
//! `DATA_DIR/secrets.json` (mode 0600), so a throwaway instance needs no set-up and its
//! tokens survive a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Where the process runs; only `production` changes behaviour (secrets must be given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Test,
    Production,
}

/// Every setting of the API and the worker. See `.env.example` for the documentation of
/// each variable.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ENVIRONMENT`: development (default), test or production.
    pub environment: Environment,
    /// `BIND_ADDR`: where the API listens.
    pub bind_addr: SocketAddr,
    /// `PUBLIC_BASE_URL`: the scheme and host clients reach the API at; signed links are
    /// built on it. When unset, the API uses `http://` and the address it is bound to.
    pub public_base_url: Option<String>,
    /// `DATA_DIR`: every file of the embedded mode lives here.
    pub data_dir: PathBuf,
    /// `DATABASE_URL`: `postgres://…` or `sqlite://…`.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`: pool size.
    pub database_max_connections: u32,
    /// `REDIS_URL`: when set, the job queue is Redis; otherwise SQLite.
    pub redis_url: Option<String>,
    /// `QUEUE_DATABASE_URL`: the SQLite file of the embedded job queue.
    pub queue_database_url: String,
    /// `QUEUE_NAME`: the queue's name (a key prefix on Redis).
    pub queue_name: String,
    /// `STORAGE_DIR`: the directory that holds rendered documents when `STORAGE_URL` is unset.
    pub storage_dir: PathBuf,
    /// `STORAGE_URL`: `s3://bucket[/prefix]` to keep documents in S3-compatible storage.
    pub storage_url: Option<String>,
    /// `S3_ENDPOINT` (or `AWS_ENDPOINT_URL`): a non-AWS S3 server, path-style addressing.
    pub s3_endpoint: Option<String>,
    /// `S3_REGION` (or `AWS_REGION`).
    pub s3_region: String,
    /// `S3_ACCESS_KEY_ID` / `S3_SECRET_ACCESS_KEY` (or the `AWS_` names).
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<SecretString>,
    /// `SIGNED_URL_MODE`: `api` (links to the API, every document) or `s3` (presigned S3
    /// GETs for documents stored neither compressed nor encrypted).
    pub signed_url_mode: SignedUrlMode,
    /// `ENCRYPTION_KEYS`: JSON map key id → base64 32-byte AES key, for documents at rest.
    /// (`ENCRYPTION_ACTIVE_KID` names the active one.)
    pub encryption_keys: crate::envelope::EncryptionKeys,
    /// `DEFAULT_COMPRESS` / `DEFAULT_ENCRYPT`: applied when a request does not say.
    pub default_compress: bool,
    pub default_encrypt: bool,
    /// `MAX_QUEUED_DOCUMENTS`: past this many waiting documents, generate answers 503.
    pub max_queued_documents: i64,
    /// `JWT_SECRET_KEY`.
    pub jwt_secret_key: SecretString,
    /// `JWT_ALGORITHM`: HS256, HS384 or HS512; tokens signed otherwise are refused.
    pub jwt_algorithm: jsonwebtoken::Algorithm,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`: the `iss` and `aud` claims written and required.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`.
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_EXPIRE_DAYS`.
    pub refresh_token_ttl: Duration,
    /// `PASSWORD_MIN_LENGTH`.
    pub password_min_length: usize,
    /// `SIGNATURE_KEYS` (JSON map key id → secret) and `SIGNATURE_ACTIVE_KID` (the key id
    /// new links are signed with): the ring signed links are signed and checked with.
    pub signature_keys: crate::signing::KeyRing,
    /// `SIGNED_URL_MAX_TTL`: the longest life a link may be given, in seconds.
    pub signed_url_max_ttl: u64,
    /// `CORS_ORIGINS`, `CORS_ALLOW_CREDENTIALS`, `CORS_ALLOW_METHODS`, `CORS_ALLOW_HEADERS`.
    pub cors_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    pub cors_allow_methods: Vec<String>,
    pub cors_allow_headers: Vec<String>,
    /// `SECURITY_HSTS`, `SECURITY_CSP`, `SECURITY_FRAME_OPTIONS`, `SECURITY_REFERRER_POLICY`.
    pub security_hsts: bool,
    pub security_csp: Option<String>,
    pub security_frame_options: Option<String>,
    pub security_referrer_policy: Option<String>,
    /// `LOG_JSON`: one JSON object per log line.
    pub log_json: bool,
    /// `LOG_LEVEL`: a tracing filter (`info`, `monassurance=debug,info`, …); `RUST_LOG` wins.
    pub log_level: String,
    /// `REQUEST_ID_HEADER`: the header carrying the request id.
    pub request_id_header: String,
    /// `ENABLE_METRICS`: serve `/metrics`.
    pub enable_metrics: bool,
    /// `SLOW_QUERY_MS`: statements slower than this are logged at WARN.
    pub slow_query_ms: u64,
    /// `AUTH_CACHE_SECONDS`: how long the API may trust an open session without asking the
    /// database again (see `db::session_cache`); 0 asks on every request.
    pub auth_cache_seconds: u64,
    /// `HTTP_WARN_MS`: requests slower than this are logged at WARN.
    pub http_warn_ms: u64,
    /// `MAX_BODY_BYTES`: the largest request body accepted.
    pub max_body_bytes: usize,
    /// `BOOTSTRAP_ADMIN_EMAIL` / `BOOTSTRAP_ADMIN_PASSWORD`: an admin created at start-up
    /// when no user has that email yet.
    pub bootstrap_admin_email: Option<String>,
    pub bootstrap_admin_password: Option<SecretString>,
    /// `WORKER_CONCURRENCY`: jobs one worker process runs at once.
    pub worker_concurrency: usize,
    /// `WORKER_HTTP_ADDR`: where a standalone worker serves `/health` and `/metrics`.
    pub worker_http_addr: SocketAddr,
    /// `WORKER_POLL_MS`: how often an idle worker looks for new jobs.
    pub worker_poll_interval: Duration,
    /// `JOB_TIMEOUT_SECONDS`: the longest one render may take.
    pub job_timeout: Duration,
    /// `QUEUED_LEASE_SECONDS`: how long a queued document may wait before the reconciler
    /// assumes its job was lost and enqueues it again.
    pub queued_lease: Duration,
    /// `RECONCILE_INTERVAL_MS`: how often a worker looks for lost jobs.
    pub reconcile_interval: Duration,
    /// `JOB_RETRY_BASE_MS` / `JOB_RETRY_MAX_MS`: exponential backoff between attempts after
    /// a transient failure.
    pub job_retry_base: Duration,
    pub job_retry_max: Duration,
    /// `DRAIN_TIMEOUT_SECONDS`: how long in-flight jobs may run after SIGTERM.
    pub drain_timeout: Duration,
    /// `WKHTMLTOPDF_PATH`, `PDF_CONCURRENCY` (warm engines per worker),
    /// `PDF_MAX_JOBS_PER_PROCESS` (recycling), `PDF_TIMEOUT_SECONDS`.
    pub wkhtmltopdf_path: PathBuf,
    pub pdf_concurrency: usize,
    pub pdf_max_jobs_per_process: u32,
    pub pdf_timeout: Duration,
    /// `DOCUMENT_RETENTION_DAYS`: documents older than this are deleted; unset keeps them.
    pub document_retention_days: Option<u32>,
    /// `MAINTENANCE_INTERVAL_SECONDS`: how often a worker purges orphans and applies
    /// retention.
    pub maintenance_interval: Duration,
    /// `JOB_MAX_ATTEMPTS`: attempts after which a transient failure (storage, database) fails
    /// the document for good.
    pub job_max_attempts: i32,
    /// `RENDER_FUEL`: the template engine's instruction budget per render; a runaway loop
    /// fails its job instead of spinning forever.
    pub render_fuel: u64,
    /// `MAX_OUTPUT_BYTES`: the largest document a render may produce.
    pub max_output_bytes: usize,
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

/// Where signed links point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedUrlMode {
    Api,
    S3,
}

/// The secrets the embedded mode generates when none are configured.
#[derive(Serialize, Deserialize)]
struct GeneratedSecrets {
    jwt_secret_key: String,
    signature_kid: String,
    signature_secret: String,
    /// Absent from files written before encryption at rest existed; added on next start.
    #[serde(default)]
    encryption_key: Option<String>,
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
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let parse = |key: &str, default: &str| -> anyhow::Result<String> {
            Ok(get(key).unwrap_or_else(|| default.to_owned()))
        };

        let environment = match parse("ENVIRONMENT", "development")?.to_lowercase().as_str() {
            "development" | "dev" => Environment::Development,
            "test" => Environment::Test,
            "production" | "prod" => Environment::Production,
            other => bail!("ENVIRONMENT must be development, test or production, not {other:?}"),
        };
        let bind_addr: SocketAddr = parse_value(&get, "BIND_ADDR", "127.0.0.1:8000")?;
        let public_base_url =
            get("PUBLIC_BASE_URL").map(|url| url.trim_end_matches('/').to_owned());
        let data_dir = PathBuf::from(parse("DATA_DIR", "./data")?);
        let database_url = get("DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("monassurance.db").display()));
        let queue_database_url = get("QUEUE_DATABASE_URL")
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("queue.db").display()));
        let storage_dir = get("STORAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("objects"));

        let jwt_algorithm = match parse("JWT_ALGORITHM", "HS256")?.to_uppercase().as_str() {
            "HS256" => jsonwebtoken::Algorithm::HS256,
            "HS384" => jsonwebtoken::Algorithm::HS384,
            "HS512" => jsonwebtoken::Algorithm::HS512,
            other => bail!("JWT_ALGORITHM must be HS256, HS384 or HS512, not {other:?}"),
        };

        let signature_keys: Option<BTreeMap<String, String>> = get("SIGNATURE_KEYS")
            .map(|raw| {
                serde_json::from_str(&raw)
                    .context("SIGNATURE_KEYS must be a JSON object of key id to secret")
            })
            .transpose()?;
        let mut jwt_secret = get("JWT_SECRET_KEY");
        let mut signature_keys = signature_keys.unwrap_or_default();
        let mut signature_active_kid = get("SIGNATURE_ACTIVE_KID");

        let encryption_keys: Option<BTreeMap<String, String>> = get("ENCRYPTION_KEYS")
            .map(|raw| {
                serde_json::from_str(&raw)
                    .context("ENCRYPTION_KEYS must be a JSON object of key id to base64 key")
            })
            .transpose()?;
        let mut encryption_keys = encryption_keys.unwrap_or_default();
        let mut encryption_active_kid = get("ENCRYPTION_ACTIVE_KID");

        if jwt_secret.is_none() || signature_keys.is_empty() || encryption_keys.is_empty() {
            if environment == Environment::Production {
                bail!(
                    "JWT_SECRET_KEY, SIGNATURE_KEYS and ENCRYPTION_KEYS must be set when \
                     ENVIRONMENT=production (generate each secret with `openssl rand -base64 48`, \
                     each encryption key with `openssl rand -base64 32`)"
                );
            }
            let generated = load_or_generate_secrets(&data_dir)?;
            if encryption_keys.is_empty() {
                let key = generated
                    .encryption_key
                    .clone()
                    .expect("filled by load_or_generate");
                encryption_keys.insert("e1".to_owned(), key);
                encryption_active_kid.get_or_insert("e1".to_owned());
            }
            if jwt_secret.is_none() {
                jwt_secret = Some(generated.jwt_secret_key);
            }
            if signature_keys.is_empty() {
                signature_keys.insert(generated.signature_kid.clone(), generated.signature_secret);
                signature_active_kid.get_or_insert(generated.signature_kid);
            }
        }
        let jwt_secret = jwt_secret.expect("set above");
        if jwt_secret.len() < 32 && environment == Environment::Production {
            bail!("JWT_SECRET_KEY must be at least 32 characters long in production");
        }
        let signature_keys = signing_ring(signature_keys, signature_active_kid.as_deref())?;

        let worker_http_addr = parse_value(&get, "WORKER_HTTP_ADDR", "127.0.0.1:8001")?;
        let signed_url_mode = match parse("SIGNED_URL_MODE", "api")?.to_lowercase().as_str() {
            "api" => SignedUrlMode::Api,
            "s3" => SignedUrlMode::S3,
            other => bail!("SIGNED_URL_MODE must be api or s3, not {other:?}"),
        };
        let storage_url = get("STORAGE_URL");
        if let Some(url) = &storage_url
            && !url.starts_with("s3://")
        {
            bail!("STORAGE_URL must start with s3:// (leave it unset to use STORAGE_DIR)");
        }
        if signed_url_mode == SignedUrlMode::S3 && storage_url.is_none() {
            bail!("SIGNED_URL_MODE=s3 needs STORAGE_URL=s3://…");
        }
        let either = |a: &str, b: &str| get(a).or_else(|| get(b));

        Ok(Settings {
            environment,
            bind_addr,
            public_base_url,
            database_url,
            database_max_connections: parse_value(&get, "DATABASE_MAX_CONNECTIONS", "10")?,
            redis_url: get("REDIS_URL"),
            queue_database_url,
            queue_name: parse("QUEUE_NAME", "monassurance-render")?,
            storage_dir,
            storage_url,
            s3_endpoint: either("S3_ENDPOINT", "AWS_ENDPOINT_URL"),
            s3_region: either("S3_REGION", "AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
            s3_access_key_id: either("S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            s3_secret_access_key: either("S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
                .map(SecretString::from),
            signed_url_mode,
            encryption_keys: crate::envelope::EncryptionKeys::from_base64(
                encryption_keys,
                encryption_active_kid.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!("ENCRYPTION_KEYS / ENCRYPTION_ACTIVE_KID: {e}"))?,
            default_compress: parse_bool(&get, "DEFAULT_COMPRESS", false)?,
            default_encrypt: parse_bool(&get, "DEFAULT_ENCRYPT", false)?,
            max_queued_documents: parse_value(&get, "MAX_QUEUED_DOCUMENTS", "10000")?,
            queued_lease: Duration::from_secs(parse_value(&get, "QUEUED_LEASE_SECONDS", "600")?),
            reconcile_interval: Duration::from_millis(parse_value(
                &get,
                "RECONCILE_INTERVAL_MS",
                "5000",
            )?),
            job_retry_base: Duration::from_millis(parse_value(&get, "JOB_RETRY_BASE_MS", "1000")?),
            job_retry_max: Duration::from_millis(parse_value(&get, "JOB_RETRY_MAX_MS", "60000")?),
            drain_timeout: Duration::from_secs(parse_value(&get, "DRAIN_TIMEOUT_SECONDS", "30")?),
            wkhtmltopdf_path: PathBuf::from(parse("WKHTMLTOPDF_PATH", "wkhtmltopdf")?),
            pdf_concurrency: parse_value::<usize>(&get, "PDF_CONCURRENCY", "2")?.max(1),
            pdf_max_jobs_per_process: parse_value(&get, "PDF_MAX_JOBS_PER_PROCESS", "500")?,
            pdf_timeout: Duration::from_secs(parse_value(&get, "PDF_TIMEOUT_SECONDS", "30")?),
            document_retention_days: get("DOCUMENT_RETENTION_DAYS")
                .map(|v| {
                    v.trim()
                        .parse()
                        .context("DOCUMENT_RETENTION_DAYS must be a whole number of days")
                })
                .transpose()?,
            maintenance_interval: Duration::from_secs(parse_value(
                &get,
                "MAINTENANCE_INTERVAL_SECONDS",
                "3600",
            )?),
            data_dir,
            jwt_secret_key: SecretString::from(jwt_secret),
            jwt_algorithm,
            jwt_issuer: parse("JWT_ISSUER", "monassurance")?,
            jwt_audience: parse("JWT_AUDIENCE", "monassurance-api")?,
            access_token_ttl: Duration::from_secs(
                60 * parse_value::<u64>(&get, "ACCESS_TOKEN_EXPIRE_MINUTES", "30")?,
            ),
            refresh_token_ttl: Duration::from_secs(
                86_400 * parse_value::<u64>(&get, "REFRESH_TOKEN_EXPIRE_DAYS", "30")?,
            ),
            password_min_length: parse_value(&get, "PASSWORD_MIN_LENGTH", "8")?,
            signature_keys,
            signed_url_max_ttl: parse_value(&get, "SIGNED_URL_MAX_TTL", "3600")?,
            cors_origins: parse_json(&get, "CORS_ORIGINS", r#"["http://localhost:3000"]"#)?,
            cors_allow_credentials: parse_bool(&get, "CORS_ALLOW_CREDENTIALS", true)?,
            cors_allow_methods: parse_json(
                &get,
                "CORS_ALLOW_METHODS",
                r#"["GET","POST","PUT","PATCH","DELETE","OPTIONS"]"#,
            )?,
            cors_allow_headers: parse_json(&get, "CORS_ALLOW_HEADERS", r#"["*"]"#)?,
            security_hsts: parse_bool(&get, "SECURITY_HSTS", false)?,
            security_csp: get("SECURITY_CSP"),
            security_frame_options: header_setting(&lookup, "SECURITY_FRAME_OPTIONS", "DENY"),
            security_referrer_policy: header_setting(
                &lookup,
                "SECURITY_REFERRER_POLICY",
                "no-referrer",
            ),
            log_json: parse_bool(&get, "LOG_JSON", false)?,
            log_level: parse("LOG_LEVEL", "info")?,
            request_id_header: parse("REQUEST_ID_HEADER", "X-Request-ID")?.to_lowercase(),
            enable_metrics: parse_bool(&get, "ENABLE_METRICS", true)?,
            slow_query_ms: parse_value(&get, "SLOW_QUERY_MS", "500")?,
            auth_cache_seconds: parse_value(&get, "AUTH_CACHE_SECONDS", "30")?,
            http_warn_ms: parse_value(&get, "HTTP_WARN_MS", "1000")?,
            max_body_bytes: parse_value(&get, "MAX_BODY_BYTES", "10485760")?,
            bootstrap_admin_email: get("BOOTSTRAP_ADMIN_EMAIL"),
            bootstrap_admin_password: get("BOOTSTRAP_ADMIN_PASSWORD").map(SecretString::from),
            worker_concurrency: parse_value::<usize>(&get, "WORKER_CONCURRENCY", "4")?.max(1),
            worker_http_addr,
            worker_poll_interval: Duration::from_millis(parse_value(
                &get,
                "WORKER_POLL_MS",
                "100",
            )?),
            job_timeout: Duration::from_secs(parse_value(&get, "JOB_TIMEOUT_SECONDS", "120")?),
            job_max_attempts: parse_value::<i32>(&get, "JOB_MAX_ATTEMPTS", "5")?.max(1),
            render_fuel: parse_value(&get, "RENDER_FUEL", "5000000")?,
            max_output_bytes: parse_value(&get, "MAX_OUTPUT_BYTES", "52428800")?,
            login_attempts_enabled: parse_bool(&get, "LOGIN_ATTEMPTS_ENABLED", true)?,
            login_attempts_ip_per_minute: per_minute(&get, "LOGIN_ATTEMPTS_IP_PER_MINUTE", "30")?,
            login_attempts_account_per_minute: per_minute(
                &get,
                "LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE",
                "10",
            )?,
            rate_limit_enabled: parse_bool(&get, "RATE_LIMIT_ENABLED", false)?,
            default_rate_limit_per_minute: per_minute(
                &get,
                "DEFAULT_RATE_LIMIT_PER_MINUTE",
                "120",
            )?,
            auth_rate_limit_per_minute: per_minute(&get, "AUTH_RATE_LIMIT_PER_MINUTE", "10")?,
            download_rate_limit_per_minute: per_minute(
                &get,
                "DOWNLOAD_RATE_LIMIT_PER_MINUTE",
                "30",
            )?,
        })
    }

    /// Whether the database is SQLite (the embedded default).
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }

    /// The JWT secret as bytes, for the token codec.
    pub fn jwt_secret_bytes(&self) -> &[u8] {
        self.jwt_secret_key.expose_secret().as_bytes()
    }
}

/// The signing ring from `SIGNATURE_KEYS` and `SIGNATURE_ACTIVE_KID`, its rules reported by
/// variable name.
fn signing_ring(
    keys: BTreeMap<String, String>,
    active_kid: Option<&str>,
) -> anyhow::Result<crate::signing::KeyRing> {
    use crate::signing::{KeyRing, RingError};
    let keys = keys
        .into_iter()
        .map(|(kid, secret)| (kid, SecretString::from(secret)))
        .collect();
    KeyRing::new(keys, active_kid).map_err(|err| match err {
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

/// A header setting with a default, where an explicitly empty value turns the header off.
fn header_setting(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> Option<String> {
    match lookup(key) {
        Some(value) if value.trim().is_empty() => None,
        Some(value) => Some(value.trim().to_owned()),
        None => Some(default.to_owned()),
    }
}

fn parse_value<T>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let raw = get(key).unwrap_or_else(|| default.to_owned());
    raw.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{key}={raw:?} is not valid: {e}"))
}

/// A per-minute limit: a whole number of at least 1 (turn a limiter off with its
/// `_ENABLED` switch, not with 0).
fn per_minute(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> anyhow::Result<u32> {
    let value: u32 = parse_value(get, key, default)?;
    if value == 0 {
        bail!("{key} must be at least 1");
    }
    Ok(value)
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: bool,
) -> anyhow::Result<bool> {
    match get(key).map(|v| v.trim().to_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => bail!("{key}={v:?} is not a boolean (true or false)"),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> anyhow::Result<T> {
    let raw = get(key).unwrap_or_else(|| default.to_owned());
    serde_json::from_str(&raw).with_context(|| format!("{key} must be JSON, got {raw:?}"))
}

/// Reads `DATA_DIR/secrets.json`, creating it (mode 0600) with fresh random secrets the
/// first time.
fn load_or_generate_secrets(data_dir: &Path) -> anyhow::Result<GeneratedSecrets> {
    let path = data_dir.join("secrets.json");
    if let Ok(raw) = std::fs::read_to_string(&path) {
        let mut secrets: GeneratedSecrets = serde_json::from_str(&raw)
            .with_context(|| format!("{} is not a valid secrets file", path.display()))?;
        if secrets.encryption_key.is_none() {
            secrets.encryption_key = Some(random_key_base64());
            let tmp = data_dir.join(format!(".secrets.{}.json", uuid::Uuid::new_v4().simple()));
            write_private_file(&tmp, &serde_json::to_vec_pretty(&secrets)?)?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot update {}", path.display()))?;
        }
        return Ok(secrets);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create DATA_DIR {}", data_dir.display()))?;
    let secrets = GeneratedSecrets {
        jwt_secret_key: random_secret(),
        signature_kid: "k1".to_owned(),
        signature_secret: random_secret(),
        encryption_key: Some(random_key_base64()),
    };
    // Written aside, then linked into place: the file appears complete or not at all, and
    // when another process (an API and a worker starting together) links first, its
    // secrets win and are read back.
    let tmp = data_dir.join(format!(".secrets.{}.json", uuid::Uuid::new_v4().simple()));
    write_private_file(&tmp, &serde_json::to_vec_pretty(&secrets)?)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return load_or_generate_secrets(data_dir);
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
    tracing::warn!(
        path = %path.display(),
        "no JWT_SECRET_KEY or SIGNATURE_KEYS configured: generated random secrets and kept them \
         in a file only this user can read; set them explicitly in production"
    );
    Ok(secrets)
}

fn random_secret() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 48];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A random 256-bit key, base64, for AES-256-GCM.
fn random_key_base64() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn production_without_secrets_refuses_to_start() {
        let dir = tempdir();
        let err = settings(&[
            ("ENVIRONMENT", "production"),
            ("DATA_DIR", dir.to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET_KEY"), "{err}");
        assert!(!dir.join("secrets.json").exists());
    }

    #[test]
    fn embedded_mode_generates_private_secrets_once() {
        let dir = tempdir();
        let first = settings(&[("DATA_DIR", dir.to_str().unwrap())]).unwrap();
        let second = settings(&[("DATA_DIR", dir.to_str().unwrap())]).unwrap();
        assert_eq!(first.jwt_secret_bytes(), second.jwt_secret_bytes());
        assert!(first.jwt_secret_bytes().len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("secrets.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn active_kid_must_exist() {
        let err = settings(&[
            ("JWT_SECRET_KEY", "x"),
            ("SIGNATURE_KEYS", r#"{"a":"s1","b":"s2"}"#),
            ("SIGNATURE_ACTIVE_KID", "c"),
            (
                "ENCRYPTION_KEYS",
                r#"{"e1":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
            ),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("SIGNATURE_ACTIVE_KID"), "{err}");
    }

    fn tempdir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("monassurance-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
