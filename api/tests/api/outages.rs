//! Outages cost seconds: a database that stops answering gets 503 with `Retry-After` (never
//! 500) and is used again as soon as it is back, without a restart; work submitted while
//! Redis is down is accepted and done once it returns; a Redis that lost its jobs is
//! noticed within seconds, not at the end of a lease.
//!
//! Postgres + Redis only: the embedded default has no server to lose. Each outage is the
//! test's own (a proxy before Postgres, a private redis-server), so the machine's shared
//! servers keep serving the other tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, PrivateRedis, TcpProxy, TestApp, error_code, proxy, services_skipped,
    spawn_app_behind_database_proxy, spawn_app_with,
};

/// A request that needs the database, as the test sends it.
struct Probe {
    name: &'static str,
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
}

impl Probe {
    async fn send(&self, app: &TestApp, token: &str) -> reqwest::Response {
        let mut req = app
            .client
            .request(self.method.clone(), app.url(&self.path))
            .bearer_auth(token);
        if let Some(body) = &self.body {
            req = req.json(body);
        }
        req.send().await.expect("request sent")
    }
}

/// A list, a read, a write and generate, cut off from the database: each answers 503
/// `database_unavailable` with `Retry-After`, and `/health/db` says degraded. Restored, each
/// answers as usual again, and a document asked for then is rendered, all without a
/// restart of the API or the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_then_recovers() {
    if services_skipped() {
        return;
    }
    let (app, proxy) =
        spawn_app_behind_database_proxy(&[("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")], true).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let res = app
        .post_json(
            "/api/v1/clients",
            Some(&agent),
            &json!({"first_name": "Ada", "last_name": "Lovelace"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let client: Value = res.json().await.unwrap();
    // The worker runs before the cut: it must ride the outage out, not start after it.
    let admin = app.admin().await.access_token;
    app.until_ops(&admin, "workers", |v| {
        v["live"].as_array().unwrap().len() == 1
    })
    .await;
    let probes = [
        Probe {
            name: "list",
            method: reqwest::Method::GET,
            path: "/api/v1/clients".into(),
            body: None,
        },
        Probe {
            name: "read",
            method: reqwest::Method::GET,
            path: format!("/api/v1/clients/{}", client["id"].as_str().unwrap()),
            body: None,
        },
        Probe {
            name: "write",
            method: reqwest::Method::POST,
            path: "/api/v1/clients".into(),
            body: Some(json!({"first_name": "Grace", "last_name": "Hopper"})),
        },
        Probe {
            name: "generate",
            method: reqwest::Method::POST,
            path: "/api/v1/documents/generate".into(),
            body: Some(json!({"document_type": "quote", "inline_context": {"n": 1}})),
        },
    ];

    proxy.cut();
    for probe in &probes {
        let res = probe.send(&app, &agent).await;
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{} during the outage",
            probe.name
        );
        assert!(
            res.headers().contains_key("retry-after"),
            "{}: no Retry-After",
            probe.name
        );
        assert_eq!(
            error_code(res).await,
            "database_unavailable",
            "{}",
            probe.name
        );
    }
    let health = app.get("/health/db", None).await;
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["database"], false, "{health}");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    for probe in &probes {
        loop {
            let status = probe.send(&app, &agent).await.status();
            if status.is_success() {
                break;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", probe.name);
            assert!(
                Instant::now() < deadline,
                "{} still answers {status} 30 s after the database came back",
                probe.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let doc = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"after": "the outage"}}),
        )
        .await;
    let doc = app
        .wait_for_document(&agent, doc["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(app.get("/health/db", None).await.status(), StatusCode::OK);
    app.stop().await;
}

/// A worker whose database stops answering holds its jobs and waits; once the database is
/// back, every document is ready within seconds (not at the queue's next redelivery), each
/// rendered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_out_a_database_outage() {
    if services_skipped() {
        return;
    }
    let app = spawn_app_with(Backend::PostgresRedis, &[], false).await;
    // The worker alone reaches Postgres through the proxy: the API keeps accepting work.
    let worker_proxy = TcpProxy::start(&proxy::authority(&app.env["DATABASE_URL"])).await;
    let worker_url = worker_proxy.url_for(&app.env["DATABASE_URL"]);
    let _worker = app.start_worker(&[
        ("DATABASE_URL", worker_url.as_str()),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
    ]);
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let first = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    app.wait_for_document(&agent, first["id"].as_str().unwrap())
        .await;

    worker_proxy.cut();
    let ids = app.generate_quotes(&agent, 3).await;
    // A worker started during the outage waits for the database instead of exiting.
    let _late = app.start_worker(&[
        ("DATABASE_URL", worker_url.as_str()),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
    ]);
    wait_for_log(&app, "the job waits for it").await;
    wait_for_log(&app, "the database does not answer yet; waiting for it").await;
    for id in &ids {
        let doc: Value = app
            .get(&format!("/api/v1/documents/{id}"), Some(&agent))
            .await
            .json()
            .await
            .unwrap();
        assert_ne!(doc["status"], "ready", "rendered without a database: {doc}");
    }

    worker_proxy.restore();
    let restored = Instant::now();
    for id in &ids {
        let doc = app
            .wait_for_document_within(&agent, id, Duration::from_secs(30))
            .await;
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    assert!(
        restored.elapsed() < Duration::from_secs(30),
        "ready {:?} after the database came back",
        restored.elapsed()
    );
    // The late worker started once the database answered.
    let admin = app.admin().await.access_token;
    app.until_ops(&admin, "workers", |v| {
        v["live"].as_array().unwrap().len() == 2
    })
    .await;
    app.stop().await;
}

/// Redis is down: generate still answers 202 (the row is written, the job is handed over
/// later). Redis comes back empty: every document accepted meanwhile is rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_during_a_redis_outage_are_accepted_and_done_after() {
    if services_skipped() {
        return;
    }
    let (mut redis, app) = on_private_redis(true).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;

    redis.stop().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let res = app
            .post_json(
                "/api/v1/documents/generate",
                Some(&agent),
                &json!({"document_type": "quote", "inline_context": {"n": n}}),
            )
            .await;
        assert_eq!(
            res.status(),
            StatusCode::ACCEPTED,
            "generate during the outage"
        );
        let doc: Value = res.json().await.unwrap();
        assert_eq!(doc["status"], "queued", "{doc}");
        ids.push(doc["id"].as_str().unwrap().to_owned());
    }
    let deferred = app.metrics().await.value("documents_deferred_total", &[]);
    assert_eq!(deferred, 3.0, "three jobs kept for the outbox relay");

    redis.restart().await;
    let restarted = Instant::now();
    for id in &ids {
        let doc = app
            .wait_for_document_within(&agent, id, Duration::from_secs(30))
            .await;
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    assert!(restarted.elapsed() < Duration::from_secs(30));
    app.stop().await;
}

/// The queue is flushed while documents wait, with the default lease (600 s): a worker
/// notices within seconds and every document is ready within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_queue_is_noticed_within_seconds() {
    if services_skipped() {
        return;
    }
    let (redis, app) = on_private_redis(false).await;
    // A worker has run against this Redis (so the queue's marker is there), and stopped.
    let mut first = app.start_worker(&[]);
    let marker = format!("{}:monassurance:marker", app.env["QUEUE_NAME"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.cli(&["EXISTS", &marker]).await != "1" {
        assert!(
            Instant::now() < deadline,
            "no worker set the queue's marker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().await.unwrap();

    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let ids = app.generate_quotes(&agent, 5).await;
    redis.flushall().await;

    let _worker = app.start_worker(&[]);
    let flushed = Instant::now();
    for id in &ids {
        let doc = app
            .wait_for_document_within(&agent, id, Duration::from_secs(30))
            .await;
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    assert!(flushed.elapsed() < Duration::from_secs(30));
    assert!(
        app.worker_log()
            .contains("the queue lost its jobs; enqueueing every queued document again"),
        "{}",
        app.worker_log()
    );
    app.stop().await;
}

/// Redis stalls for a few seconds (every call unanswered, connections open): the worker
/// keeps running, or restarts its consumer, and renders what is asked for afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_survives_a_redis_stall() {
    if services_skipped() {
        return;
    }
    let (redis, app) = on_private_redis(true).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let before = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    app.wait_for_document(&agent, before["id"].as_str().unwrap())
        .await;

    redis.pause();
    // The length of the stall, not a wait for something: longer than redis-rs's response
    // timeout, shorter than the queue's orphan threshold.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis.resume();

    let ids = app.generate_quotes(&agent, 3).await;
    for id in &ids {
        let doc = app
            .wait_for_document_within(&agent, id, Duration::from_secs(30))
            .await;
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    app.stop().await;
}

/// An app on Postgres and a Redis of the test's own (which the test may stop, flush or
/// freeze), with a worker process when `worker`.
async fn on_private_redis(worker: bool) -> (PrivateRedis, TestApp) {
    let redis = PrivateRedis::start().await;
    let app = spawn_app_with(
        Backend::PostgresRedis,
        &[("REDIS_URL", redis.url.as_str())],
        worker,
    )
    .await;
    (redis, app)
}

/// Waits until a worker process has logged `line`.
async fn wait_for_log(app: &TestApp, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !app.worker_log().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no worker logged {line:?}:\n{}",
            app.worker_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
