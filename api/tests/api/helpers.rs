//! Starting the real application for a test, on either deployment.
//!
//! - `Backend::Sqlite`: the embedded default. SQLite data and queue files in a fresh
//!   temporary directory, the worker in-process.
//! - `Backend::PostgresRedis`: a Postgres database of the test's own, cloned from a
//!   migrated template ([`postgres`]) on the server `TEST_DATABASE_URL` names, Redis at
//!   `TEST_REDIS_URL` with a queue name of the test's own, documents in a private `s3s-fs`
//!   S3 server (which checks signatures), and a real `monassurance-worker` process
//!   rendering the documents.
//!
//! Both variables default to the local servers `scripts/services` starts. A test that needs
//! Postgres, Redis or s3s-fs fails when one is missing, saying which and how to get it: a
//! plain `cargo test` cannot pass without the Postgres + Redis half of the suite. Only
//! `MONASSURANCE_SKIP_SERVICES=1` skips those tests instead (each says so on stderr).

mod postgres;
mod prometheus;
pub mod proxy;
pub mod receiver;
mod redis;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use monassurance_api::{AppState, Application};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use postgres::TestDatabase;
pub use prometheus::Metrics;
pub use proxy::TcpProxy;
pub use redis::PrivateRedis;

pub const JWT_SECRET: &str = "integration-test-jwt-secret-0123456789abcdef";
pub const SIGNATURE_KEYS: &str = r#"{"old":"old-link-secret","k1":"integration-test-link-secret"}"#;
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password-123";
/// Two AES-256 keys (base64): "old" and the active "e2".
pub const ENCRYPTION_KEYS: &str = r#"{"old":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","e2":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}"#;
pub const S3_BUCKET: &str = "documents-bucket";
pub const S3_ACCESS_KEY: &str = "test-access-key";
pub const S3_SECRET_KEY: &str = "test-secret-key-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    PostgresRedis,
}

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub backend: Backend,
    /// The configuration the API was started with; worker processes get the same.
    pub env: HashMap<String, String>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    workers: std::sync::Mutex<Vec<Child>>,
    /// How many worker logs [`TestApp::start_worker`] has opened, to name the next one.
    worker_logs: AtomicUsize,
    _s3: Option<Child>,
    /// The Postgres database this app created (none on SQLite, nor for a replica).
    database: Option<TestDatabase>,
    dir: tempfile::TempDir,
}

/// Runs one scenario against each deployment: `mod name { sqlite, postgres_redis }`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite, &[]).await;
                    super::$name(&app).await;
                    app.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    if $crate::helpers::services_skipped() {
                        return;
                    }
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::PostgresRedis, &[]).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            }
        )+
    };
}

/// Like [`on_both_backends!`] with configuration overrides for each scenario:
/// `name => &[("KEY", "value")]`.
#[macro_export]
macro_rules! on_both_backends_with {
    ($($name:ident => $overrides:expr),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite, $overrides).await;
                    super::$name(&app).await;
                    app.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    if $crate::helpers::services_skipped() {
                        return;
                    }
                    let app = $crate::helpers::spawn_app($crate::helpers::Backend::PostgresRedis, $overrides).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            }
        )+
    };
}

/// Runs scenarios that start the application themselves, once per deployment:
/// `mod name { sqlite, postgres_redis }` calling `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_redis() {
                    if $crate::helpers::services_skipped() {
                        return;
                    }
                    super::$name($crate::helpers::Backend::PostgresRedis).await;
                }
            }
        )+
    };
}

/// Whether `MONASSURANCE_SKIP_SERVICES=1` asks to skip the tests that need Postgres, Redis
/// and S3; a test that skips says so. Without it such a test runs, and fails when a service
/// is missing.
pub fn services_skipped() -> bool {
    let skipped = std::env::var("MONASSURANCE_SKIP_SERVICES").as_deref() == Ok("1");
    if skipped {
        eprintln!("skipped: MONASSURANCE_SKIP_SERVICES=1 (this test needs Postgres, Redis and S3)");
    }
    skipped
}

/// The failure message for a service the tests need and cannot reach.
fn missing(service: &str, url: &str, err: &str) -> String {
    format!(
        "{service} does not answer at {url} ({err}). Start Postgres and Redis with \
         `scripts/services` (or point TEST_DATABASE_URL / TEST_REDIS_URL at running ones), or \
         set MONASSURANCE_SKIP_SERVICES=1 to skip the tests that need them."
    )
}

/// The Redis the tests use: `TEST_REDIS_URL`, by default the one `scripts/services` starts.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Fails the test, saying what to do, unless Redis at `url` answers a PING.
async fn require_redis(url: &str) {
    let parsed = reqwest::Url::parse(url).expect("a Redis URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(6379);
    let ping = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0; 64];
        let n = stream.read(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer[..n]).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), ping).await {
        // An answer other than PONG (NOAUTH…) still means a Redis is there.
        Ok(Ok(answer)) if answer.starts_with('+') || answer.starts_with('-') => {}
        Ok(Ok(answer)) => panic!("{}", missing("Redis", url, &format!("answered {answer:?}"))),
        Ok(Err(err)) => panic!("{}", missing("Redis", url, &err.to_string())),
        Err(_) => panic!("{}", missing("Redis", url, "no answer within 10 s")),
    }
}

/// The configuration every test starts from, with its files under `data_dir`.
fn test_env(data_dir: &str) -> HashMap<String, String> {
    [
        ("ENVIRONMENT", "test"),
        ("BIND_ADDR", "127.0.0.1:0"),
        ("DATA_DIR", data_dir),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("SIGNATURE_KEYS", SIGNATURE_KEYS),
        ("SIGNATURE_ACTIVE_KID", "k1"),
        ("ENCRYPTION_KEYS", ENCRYPTION_KEYS),
        ("ENCRYPTION_ACTIVE_KID", "e2"),
        ("BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL),
        ("BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("LOG_LEVEL", "warn"),
        ("WORKER_POLL_MS", "20"),
        ("DATABASE_MAX_CONNECTIONS", "5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Starts the application with the test configuration plus `overrides`, and its worker
/// (in-process on SQLite, a process on Postgres + Redis).
pub async fn spawn_app(backend: Backend, overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(backend, overrides, true).await
}

/// Like [`spawn_app`]; without `worker`, documents stay queued until the test starts one
/// with [`TestApp::start_worker`].
pub async fn spawn_app_with(backend: Backend, overrides: &[(&str, &str)], worker: bool) -> TestApp {
    spawn(backend, overrides, worker, false).await.0
}

/// Like [`spawn_app_with`] on Postgres + Redis, with the API (and the worker it starts)
/// reaching Postgres through a [`TcpProxy`] the test can cut: a database outage for this
/// app alone.
pub async fn spawn_app_behind_database_proxy(
    overrides: &[(&str, &str)],
    worker: bool,
) -> (TestApp, TcpProxy) {
    let (app, proxy) = spawn(Backend::PostgresRedis, overrides, worker, true).await;
    (app, proxy.expect("a database proxy"))
}

async fn spawn(
    backend: Backend,
    overrides: &[(&str, &str)],
    worker: bool,
    database_proxy: bool,
) -> (TestApp, Option<TcpProxy>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut env = test_env(dir.path().to_str().unwrap());
    let mut s3 = None;
    let mut database = None;
    let mut proxy = None;
    assert!(
        !database_proxy || backend == Backend::PostgresRedis,
        "the database proxy stands before Postgres"
    );
    if backend == Backend::PostgresRedis {
        let (child, endpoint) = spawn_s3(dir.path()).await;
        s3 = Some(child);
        env.insert("STORAGE_URL".into(), format!("s3://{S3_BUCKET}"));
        env.insert("S3_ENDPOINT".into(), endpoint);
        env.insert("S3_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into());
        env.insert("S3_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into());
        let db = TestDatabase::create().await;
        let url = match database_proxy {
            true => {
                let started = TcpProxy::start(&proxy::authority(&db.url)).await;
                let url = started.url_for(&db.url);
                proxy = Some(started);
                url
            }
            false => db.url.clone(),
        };
        env.insert("DATABASE_URL".into(), url);
        database = Some(db);
        env.insert("REDIS_URL".into(), redis_url());
        env.insert(
            "QUEUE_NAME".into(),
            format!("test-{}", uuid::Uuid::new_v4().simple()),
        );
    }
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    if let Some(redis) = env.get("REDIS_URL") {
        require_redis(redis).await;
    }
    let mut app = start(backend, env, dir, s3, worker && backend == Backend::Sqlite).await;
    app.database = database;
    if worker && backend == Backend::PostgresRedis {
        let child = app.start_worker(&[]);
        app.workers.lock().unwrap().push(child);
    }
    (app, proxy)
}

/// Builds and serves the application configured by `env`.
async fn start(
    backend: Backend,
    mut env: HashMap<String, String>,
    dir: tempfile::TempDir,
    s3: Option<Child>,
    embedded_worker: bool,
) -> TestApp {
    let settings = common::Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");
    common::telemetry::init_tracing(&settings);

    let app = Application::build(settings, embedded_worker)
        .await
        .expect("the application starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    // Worker processes sign webhook download links on the API's address.
    env.entry("PUBLIC_BASE_URL".into())
        .or_insert_with(|| address.clone());
    let state = app.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        state,
        backend,
        env,
        stop: Some(stop),
        server: Some(server),
        workers: std::sync::Mutex::new(Vec::new()),
        worker_logs: AtomicUsize::new(0),
        _s3: s3,
        database: None,
        dir,
    }
}

/// The `monassurance-worker` binary next to this test binary's directory.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("monassurance-worker");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, which scripts/test does)",
        path.display()
    );
    path
}

/// Sends SIGTERM to a worker process (a drain) and waits, up to a minute, for it to exit.
pub async fn sigterm(worker: &mut Child) -> std::process::ExitStatus {
    let pid = worker.id().expect("the worker runs").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success(), "kill -TERM {pid}");
    tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker exits")
        .unwrap()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A binary from `PATH` or `~/.cargo/bin`.
pub fn tool(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.exists())
        })
        .unwrap_or_default();
    let cargo_bin =
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin").join(name));
    in_path
        .or(cargo_bin.filter(|p| p.exists()))
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: `scripts/tools --test` installs s3s-fs, \
                 `scripts/services` Redis (or set MONASSURANCE_SKIP_SERVICES=1 to skip the \
                 tests that need them)"
            )
        })
}

/// A private s3s-fs server with one bucket; returns it and its endpoint.
async fn spawn_s3(dir: &std::path::Path) -> (Child, String) {
    let root = dir.join("s3");
    std::fs::create_dir_all(root.join(S3_BUCKET)).unwrap();
    let port = free_port();
    let child = Command::new(tool("s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("s3s-fs starts");
    wait_for_port(port).await;
    (child, format!("http://127.0.0.1:{port}"))
}

impl TestApp {
    /// A second API process on this one's database, queue and object store (another
    /// replica behind the same load balancer), with `overrides`; no worker. Postgres +
    /// Redis only: the embedded default is one process.
    pub async fn spawn_replica(&self, overrides: &[(&str, &str)]) -> TestApp {
        assert_eq!(
            self.backend,
            Backend::PostgresRedis,
            "replicas share Postgres"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut env = self.env.clone();
        env.insert("DATA_DIR".into(), dir.path().to_str().unwrap().to_owned());
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        start(self.backend, env, dir, None, false).await
    }

    /// Starts a `monassurance-worker` process with the API's configuration plus `extra`,
    /// logging JSON lines that [`TestApp::worker_log`] reads. The caller owns the process
    /// (killed when dropped).
    pub fn start_worker(&self, extra: &[(&str, &str)]) -> Child {
        let n = self.worker_logs.fetch_add(1, Ordering::SeqCst);
        let log = std::fs::File::create(self.dir.path().join(format!("worker-{n}.log")))
            .expect("worker log file");
        Command::new(worker_binary())
            .env_clear()
            .envs(&self.env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WORKER_HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_LEVEL", "info")
            .env("LOG_JSON", "true")
            .envs(extra.iter().copied())
            .kill_on_drop(true)
            .stdout(log)
            .spawn()
            .expect("the worker process starts")
    }

    /// The process ids of the worker processes [`spawn_app`] started.
    pub fn worker_pids(&self) -> Vec<u32> {
        let workers = self.workers.lock().unwrap();
        workers.iter().filter_map(Child::id).collect()
    }

    /// Whether the object store (local or S3) holds `key`.
    pub async fn object_exists(&self, key: &str) -> bool {
        match self.state.storage.get(key).await {
            Ok(_) => true,
            Err(err) if common::storage::is_not_found(&err) => false,
            Err(err) => panic!("storage error: {err:#}"),
        }
    }

    /// Everything the worker processes have logged so far.
    pub fn worker_log(&self) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
            })
            .collect();
        logs.sort();
        logs.iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Stops the server (and the embedded worker) and waits for the drain, stops the worker
    /// processes [`spawn_app`] started, and hands the test's database to the next round of
    /// drops (see [`postgres`]).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean shutdown");
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        for mut worker in workers {
            let _ = worker.kill().await;
        }
        if let Some(database) = self.database.take() {
            self.state.db.close().await;
            drop(database);
        }
    }

    /// The API's `/metrics`, read back as samples.
    pub async fn metrics(&self) -> Metrics {
        let res = self.get("/metrics", None).await;
        assert_eq!(res.status(), StatusCode::OK, "GET /metrics");
        // The content type says the format the body is written in.
        assert_eq!(
            res.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let text = res.text().await.unwrap();
        assert!(
            text.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with # EOF"
        );
        Metrics::parse(&text)
    }

    pub async fn post_json(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.client.delete(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request sent")
    }

    /// Registers an agent and returns its login answer.
    pub async fn register_and_login(&self, email: &str) -> Tokens {
        let res = self
            .post_json(
                "/api/v1/auth/register",
                None,
                &json!({"email": email, "password": "password-123"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "register {email}");
        self.login(email, "password-123").await
    }

    pub async fn login(&self, email: &str, password: &str) -> Tokens {
        let res = self
            .post_json(
                "/api/v1/auth/login",
                None,
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK, "login {email}");
        res.json().await.unwrap()
    }

    pub async fn admin(&self) -> Tokens {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Creates an HTML template (as the admin) and returns its JSON.
    pub async fn create_template(&self, admin: &str, name: &str, content: &str) -> Value {
        let res = self
            .post_json(
                "/api/v1/templates",
                Some(admin),
                &json!({"name": name, "type": "attestation", "format": "html", "content": content}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        res.json().await.unwrap()
    }

    /// Asks for a document and returns the 202 answer's JSON.
    pub async fn generate(&self, token: &str, body: &Value) -> Value {
        let res = self
            .post_json("/api/v1/documents/generate", Some(token), body)
            .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED, "generate");
        res.json().await.unwrap()
    }

    /// `GET /api/v1/ops/{what}` as `token` (a manager or an admin).
    pub async fn ops(&self, token: &str, what: &str) -> Value {
        let res = self.get(&format!("/api/v1/ops/{what}"), Some(token)).await;
        assert_eq!(res.status(), StatusCode::OK, "GET /api/v1/ops/{what}");
        res.json().await.unwrap()
    }

    /// Whether the audit log (read by `admin`) has an `action` entry on object `id`.
    pub async fn audited(&self, admin: &str, action: &str, id: &str) -> bool {
        let page: Value = self
            .client
            .get(self.url("/api/v1/audit-logs"))
            .query(&[("action", action)])
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["object_id"] == id)
    }

    /// Asks `/api/v1/ops/{what}` until `check` holds (a heartbeat or a drain takes its
    /// time), within 30 s.
    pub async fn until_ops(
        &self,
        token: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let view = self.ops(token, what).await;
            if check(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never held: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks for `count` quotes (`inline_context` `{"n": 0}`, `{"n": 1}`…), each answered
    /// 202, and returns their ids in order.
    pub async fn generate_quotes(&self, token: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        for n in 0..count {
            let doc = self
                .generate(
                    token,
                    &json!({"document_type": "quote", "inline_context": {"n": n}}),
                )
                .await;
            ids.push(doc["id"].as_str().unwrap().to_owned());
        }
        ids
    }

    /// Polls a document's status, as clients do, until it is ready, failed or cancelled.
    pub async fn wait_for_document(&self, token: &str, id: &str) -> Value {
        self.wait_for_document_within(token, id, Duration::from_secs(30))
            .await
    }

    /// [`TestApp::wait_for_document`] with a deadline of `limit`.
    pub async fn wait_for_document_within(&self, token: &str, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let doc: Value = self
                .get(&format!("/api/v1/documents/{id}"), Some(token))
                .await
                .json()
                .await
                .unwrap();
            match doc["status"].as_str() {
                Some("ready") | Some("failed") | Some("cancelled") => return doc,
                Some("queued") | Some("processing") => {}
                other => panic!("unexpected status {other:?}: {doc}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "document {id} never finished: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// The JSON error body's `code`, asserting the `detail` is there.
pub async fn error_code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.expect("a JSON error body");
    assert!(body["detail"].is_string(), "error without detail: {body}");
    body["code"].as_str().unwrap_or_default().to_owned()
}
