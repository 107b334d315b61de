//! The job lifecycle: waiting, idempotency, conditional polling, backpressure, retries,
//! lost jobs and draining.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, PrivateRedis, TestApp, error_code, sigterm, spawn_app_with};
use crate::{for_each_backend, on_both_backends};

on_both_backends!(
    prefer_wait_holds_the_request_until_the_document_is_done,
    idempotency_key_returns_the_same_document,
    the_status_resource_supports_conditional_polling,
    purge_removes_orphans_and_flags_vanished_files,
);

/// A template that keeps a worker busy for a few seconds (40 × 100 000 loop turns).
pub const SLOW_TEMPLATE: &str =
    "{% for i in range(40) %}{% for j in range(100000) %}{% endfor %}{% endfor %}slow";

async fn prefer_wait_holds_the_request_until_the_document_is_done(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let res = app
        .client
        .post(app.url("/api/v1/documents/generate"))
        .bearer_auth(&agent)
        .header("prefer", "wait=20")
        .json(&json!({"document_type": "quote", "inline_context": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED, "ready within the wait");
    assert_eq!(res.headers()["preference-applied"], "wait=20");
    assert!(
        res.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/api/v1/documents/")
    );
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["status"], "ready");

    let admin = app.admin().await.access_token;
    let broken = app
        .create_template(&admin, "Broken", "{{ inline_context.a.b.c }}")
        .await;
    let res = app
        .client
        .post(app.url("/api/v1/documents/generate"))
        .bearer_auth(&admin)
        .header("prefer", "respond-async, wait=99")
        .json(&json!({"document_type": "quote", "template_id": broken["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "failed within the wait");
    assert_eq!(
        res.headers()["preference-applied"],
        "wait=30",
        "capped at 30 s"
    );
    let doc: Value = res.json().await.unwrap();
    assert_eq!(doc["status"], "failed");
    assert!(doc["error"].is_string());
}

async fn idempotency_key_returns_the_same_document(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("other@example.com")
        .await
        .access_token;
    let body = json!({"document_type": "quote", "inline_context": {"a": 1, "b": [1, 2]}});
    let send = |token: &str, key: &str, body: &Value| {
        app.client
            .post(app.url("/api/v1/documents/generate"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
    };
    let first = send(&agent, "order-17", &body).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();

    // Same key, same request (fields in another order): the same document, no new job.
    let reordered = json!({"inline_context": {"b": [1, 2], "a": 1}, "document_type": "quote"});
    let again = send(&agent, "order-17", &reordered).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let different = send(&agent, "order-17", &json!({"document_type": "invoice"}))
        .await
        .unwrap();
    assert_eq!(different.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(different).await, "idempotency_key_reused");

    let someone_else = send(&other, "order-17", &body).await.unwrap();
    assert_eq!(
        someone_else.status(),
        StatusCode::ACCEPTED,
        "keys are per user"
    );
    let someone_else: Value = someone_else.json().await.unwrap();
    assert_ne!(someone_else["id"], first["id"]);

    let listed: Value = app
        .get("/api/v1/documents", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1, "a replay creates nothing");
}

async fn the_status_resource_supports_conditional_polling(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let id = queued["id"].as_str().unwrap();
    app.wait_for_document(&agent, id).await;
    let path = format!("/api/v1/documents/{id}");

    let res = app.get(&path, Some(&agent)).await;
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let not_modified = app
        .client
        .get(app.url(&path))
        .bearer_auth(&agent)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());

    let stale = app
        .client
        .get(app.url(&path))
        .bearer_auth(&agent)
        .header("if-none-match", "\"0-0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
}

async fn purge_removes_orphans_and_flags_vanished_files(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let kept = app
        .generate(&agent, &json!({"document_type": "kept"}))
        .await;
    let vanished = app
        .generate(&agent, &json!({"document_type": "vanished"}))
        .await;
    let (kept, vanished) = (
        kept["id"].as_str().unwrap(),
        vanished["id"].as_str().unwrap(),
    );
    app.wait_for_document(&agent, kept).await;
    app.wait_for_document(&agent, vanished).await;

    let orphan = format!("documents/{}.html", uuid::Uuid::now_v7());
    app.state
        .storage
        .put(&orphan, "left behind".into())
        .await
        .unwrap();
    app.state
        .storage
        .delete(&format!("documents/{vanished}.html"))
        .await
        .unwrap();
    // Files vanishing from under a document that has just become ready are left alone for
    // a minute; age this one.
    age_document(app, vanished).await;

    let forbidden = app
        .post_json("/api/v1/documents/purge-orphans", Some(&agent), &json!({}))
        .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let res = app
        .post_json("/api/v1/documents/purge-orphans", Some(&admin), &json!({}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["removed"], json!([orphan]));
    assert_eq!(report["count"], 1);
    assert_eq!(report["lost"], json!([vanished]));

    assert!(!app.object_exists(&orphan).await);
    assert!(app.object_exists(&format!("documents/{kept}.html")).await);
    let doc: Value = app
        .get(&format!("/api/v1/documents/{vanished}"), Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["status"], "failed");
    assert_eq!(doc["error"], "the stored file has vanished");
}

/// Moves a document's finish time two minutes back.
async fn age_document(app: &TestApp, id: &str) {
    let id: uuid::Uuid = id.parse().unwrap();
    let finished = common::now() - chrono::Duration::minutes(2);
    common::on_db!(&app.state.db, pool => {
        sqlx::query("UPDATE generated_documents SET finished_at = $2 WHERE id = $1")
            .bind(id)
            .bind(finished)
            .execute(pool)
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_refuses_work_past_the_queue_limit() {
    let app = spawn_app_with(Backend::Sqlite, &[("MAX_QUEUED_DOCUMENTS", "2")], false).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    for _ in 0..2 {
        app.generate(&agent, &json!({"document_type": "quote"}))
            .await;
    }
    // The count is cached for a quarter of a second, so a burst may overshoot the limit a
    // little before the refusals start; they must start, and then hold.
    let body = json!({"document_type": "quote"});
    let generate = || app.post_json("/api/v1/documents/generate", Some(&agent), &body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let res = loop {
        let res = generate().await;
        if res.status() != StatusCode::ACCEPTED {
            break res;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    assert_eq!(error_code(res).await, "unavailable");
    let queued = app.state.db.documents().count_queued().await.unwrap();
    assert!(queued >= 2);
    let again = generate().await;
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.state.db.documents().count_queued().await.unwrap(),
        queued,
        "a refused request leaves no row"
    );
    app.stop().await;
}

/// Each document was marked ready by exactly one attempt, whatever the deliveries. The
/// worker logs "document ready" just after committing the row, so a client can see the
/// row ready a moment before the line is written: wait for each line, then count.
async fn assert_ready_once(app: &TestApp, ids: &[String]) {
    let ready_lines = |log: &str, id: &str| {
        log.lines()
            .filter(|line| line.contains(id) && line.contains("document ready"))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ids.iter().any(|id| ready_lines(&app.worker_log(), id) == 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = app.worker_log();
    for id in ids {
        let finished = ready_lines(&log, id);
        assert_eq!(finished, 1, "{id} marked ready {finished} times:\n{log}");
    }
}

async fn wait_all_ready(app: &TestApp, token: &str, ids: &[String]) -> Vec<Value> {
    let mut docs = Vec::new();
    for id in ids {
        docs.push(app.wait_for_document(token, id).await);
    }
    docs
}

for_each_backend!(
    a_queue_that_lost_its_jobs_loses_no_document,
    a_worker_killed_mid_job_loses_no_document,
    sigterm_drains_in_flight_jobs_and_leaves_the_rest_queued,
    a_drain_cut_short_hands_its_job_back_at_once,
    an_object_an_earlier_attempt_stored_is_kept,
);

/// The queue loses every job while documents wait (a Redis restarted empty, a queue file
/// restored from an old copy): the reconciler enqueues them again once their lease runs
/// out, and each is finished exactly once.
async fn a_queue_that_lost_its_jobs_loses_no_document(backend: Backend) {
    // On Postgres + Redis, a private Redis: FLUSHALL must not touch the other tests' queues.
    let redis = match backend {
        Backend::PostgresRedis => Some(PrivateRedis::start().await),
        Backend::Sqlite => None,
    };
    let mut lifecycle = vec![
        ("QUEUED_LEASE_SECONDS", "1"),
        ("RECONCILE_INTERVAL_MS", "200"),
    ];
    if let Some(redis) = &redis {
        lifecycle.push(("REDIS_URL", redis.url.as_str()));
    }
    let app = spawn_app_with(backend, &lifecycle, false).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let ids = app.generate_quotes(&agent, 5).await;
    match &redis {
        Some(redis) => redis.flushall().await,
        None => assert_eq!(
            delete_sqlite_jobs(&app).await,
            5,
            "the five jobs were queued"
        ),
    }

    let _worker = app.start_worker(&[]);
    for doc in wait_all_ready(&app, &agent, &ids).await {
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    // A slow claim may let the reconciler enqueue a document twice; only one attempt may
    // ever finish it.
    assert_ready_once(&app, &ids).await;
    assert!(
        app.worker_log()
            .contains("lease expired; enqueueing the document again")
    );
    app.stop().await;
}

/// Deletes every job from the embedded queue file (apalis-sqlite's `Jobs` table), as a
/// queue file restored from a backup older than the jobs would; returns how many.
async fn delete_sqlite_jobs(app: &TestApp) -> u64 {
    use std::str::FromStr;
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(&app.state.settings.queue.database_url)
            .unwrap()
            .busy_timeout(Duration::from_secs(10));
    let queue = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let deleted = sqlx::query("DELETE FROM Jobs")
        .execute(&queue)
        .await
        .unwrap()
        .rows_affected();
    queue.close().await;
    deleted
}

async fn a_worker_killed_mid_job_loses_no_document(backend: Backend) {
    let lifecycle = [
        ("JOB_TIMEOUT_SECONDS", "20"),
        ("RECONCILE_INTERVAL_MS", "200"),
        ("RENDER_FUEL", "1000000000"),
    ];
    let app = spawn_app_with(backend, &lifecycle, false).await;
    let admin = app.admin().await.access_token;
    let slow = app.create_template(&admin, "Slow", SLOW_TEMPLATE).await;
    let doc = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": slow["id"]}),
        )
        .await;
    let id = doc["id"].as_str().unwrap();

    let mut first = app.start_worker(&[]);
    wait_for_status(&app, &admin, id, "processing").await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    let _second = app.start_worker(&[]);
    let done = app
        .wait_for_document_within(&admin, id, Duration::from_secs(90))
        .await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(
        done["attempts"].as_i64().unwrap() >= 2,
        "one attempt died with its worker, a later one finished: {done}"
    );
    assert_ready_once(&app, &[id.to_owned()]).await;
    let body = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(&admin))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(body, "slow");
    app.stop().await;
}

/// An app with no worker, fuel for [`SLOW_TEMPLATE`], and a queued document of that
/// template: `(app, admin token, document id)`.
async fn with_a_slow_document(backend: Backend) -> (TestApp, String, String) {
    let app = spawn_app_with(backend, &[("RENDER_FUEL", "1000000000")], false).await;
    let admin = app.admin().await.access_token;
    let slow = app.create_template(&admin, "Slow", SLOW_TEMPLATE).await;
    let busy = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": slow["id"]}),
        )
        .await;
    let busy = busy["id"].as_str().unwrap().to_owned();
    (app, admin, busy)
}

async fn sigterm_drains_in_flight_jobs_and_leaves_the_rest_queued(backend: Backend) {
    let (app, admin, busy) = with_a_slow_document(backend).await;
    let busy = busy.as_str();

    let mut worker = app.start_worker(&[("WORKER_CONCURRENCY", "1")]);
    wait_for_status(&app, &admin, busy, "processing").await;
    let waiting = app
        .generate(&admin, &json!({"document_type": "quote"}))
        .await;
    let waiting = waiting["id"].as_str().unwrap();

    let exit = sigterm(&mut worker).await;
    assert!(exit.success(), "a drained worker exits cleanly: {exit:?}");

    let drained: Value = app
        .get(&format!("/api/v1/documents/{busy}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        drained["status"], "ready",
        "the in-flight job finished: {drained}"
    );
    assert_eq!(drained["attempts"], 1);
    let left: Value = app
        .get(&format!("/api/v1/documents/{waiting}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        left["status"], "queued",
        "the queued job was not started: {left}"
    );

    let _next = app.start_worker(&[]);
    assert_eq!(
        app.wait_for_document(&admin, waiting).await["status"],
        "ready"
    );
    app.stop().await;
}

/// Polls a document until its status is `status`.
pub async fn wait_for_status(app: &TestApp, token: &str, id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let doc: Value = app
            .get(&format!("/api/v1/documents/{id}"), Some(token))
            .await
            .json()
            .await
            .unwrap();
        if doc["status"] == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {status}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A drain that runs out of time drops its job midway: the document goes back to the
/// reconciler at once (its lease ended), not when its lease (`JOB_TIMEOUT_SECONDS` + 5 s,
/// over two minutes by default) runs out.
async fn a_drain_cut_short_hands_its_job_back_at_once(backend: Backend) {
    let (app, admin, busy) = with_a_slow_document(backend).await;
    let busy = busy.as_str();
    let mut worker =
        app.start_worker(&[("WORKER_CONCURRENCY", "1"), ("DRAIN_TIMEOUT_SECONDS", "0")]);
    wait_for_status(&app, &admin, busy, "processing").await;
    sigterm(&mut worker).await;
    assert!(
        app.worker_log()
            .contains("a job was abandoned midway; its document goes back to the reconciler"),
        "{}",
        app.worker_log()
    );

    // Within the queue's own orphan threshold (15 s): the reconciler, not the queue,
    // handed the document on.
    let _next = app.start_worker(&[]);
    let doc = app
        .wait_for_document_within(&admin, busy, Duration::from_secs(10))
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["attempts"], 2, "{doc}");
    app.stop().await;
}

/// A worker killed after it stored a document's object and before it recorded the
/// document ready leaves a complete object: the attempt that takes over keeps it, rather
/// than rendering the document and writing its object a second time.
async fn an_object_an_earlier_attempt_stored_is_kept(backend: Backend) {
    use sha2::Digest;

    let app = spawn_app_with(backend, &[], false).await;
    let admin = app.admin().await.access_token;
    let id = app.generate_quotes(&admin, 1).await.remove(0);
    // What the dead attempt left: the row claimed (attempt 1, its lease already over) and
    // the object stored.
    let documents = app.state.db.documents();
    let uuid = id.parse().unwrap();
    documents
        .claim(uuid, common::now())
        .await
        .unwrap()
        .expect("the queued document is claimed");
    let earlier = bytes::Bytes::from_static(b"<p>stored by the attempt that died</p>");
    let key = common::storage::Storage::document_key(uuid, common::model::OutputFormat::Html);
    app.state.storage.put(&key, earlier.clone()).await.unwrap();

    let _worker = app.start_worker(&[]);
    let doc = app.wait_for_document(&admin, &id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert!(doc["attempts"].as_i64().unwrap() >= 2, "{doc}");
    assert_eq!(doc["size_bytes"], earlier.len());
    assert_eq!(doc["checksum"], hex::encode(sha2::Sha256::digest(&earlier)));
    let res = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(&admin))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.bytes().await.unwrap(),
        earlier,
        "the object was not written again"
    );
    assert!(
        app.worker_log().contains(
            "an earlier attempt stored this document before it stopped; its object is kept"
        )
    );
    app.stop().await;
}

/// A file where the documents folder should be: every store fails until it is removed.
fn block_storage(app: &TestApp) -> std::path::PathBuf {
    let blocker = app.state.settings.storage.dir.join("documents");
    std::fs::write(&blocker, "not a folder").unwrap();
    blocker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_with_backoff() {
    // A second of backoff, and enough attempts that the retries cannot run out while the
    // test watches.
    let retries = [
        ("JOB_RETRY_BASE_MS", "1000"),
        ("JOB_RETRY_MAX_MS", "1000"),
        ("JOB_MAX_ATTEMPTS", "1000"),
    ];
    let app = crate::helpers::spawn_app(Backend::Sqlite, &retries).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let blocker = block_storage(&app);

    let asked = tokio::time::Instant::now();
    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let id = doc["id"].as_str().unwrap();
    let deadline = asked + Duration::from_secs(30);
    let retried = loop {
        let doc: Value = app
            .get(&format!("/api/v1/documents/{id}"), Some(&agent))
            .await
            .json()
            .await
            .unwrap();
        if doc["attempts"].as_i64() >= Some(2)
            && doc["error"]
                .as_str()
                .is_some_and(|e| e.contains("retrying in 1000 ms"))
        {
            break doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second attempt: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The first attempt failed after the request; the second may not start sooner than a
    // backoff after that.
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "the second attempt did not wait for its backoff ({:?}): {retried}",
        asked.elapsed()
    );
    assert_ne!(retried["status"], "failed");

    std::fs::remove_file(&blocker).unwrap();
    let done = app.wait_for_document(&agent, id).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert!(done["attempts"].as_i64().unwrap() >= 2, "{done}");
    assert!(done["error"].is_null());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_give_up_after_the_last_attempt() {
    let retries = [("JOB_RETRY_BASE_MS", "10"), ("JOB_MAX_ATTEMPTS", "3")];
    let app = crate::helpers::spawn_app(Backend::Sqlite, &retries).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    block_storage(&app);
    let doomed = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let doomed = app
        .wait_for_document(&agent, doomed["id"].as_str().unwrap())
        .await;
    assert_eq!(doomed["status"], "failed");
    assert_eq!(doomed["attempts"], 3);
    assert!(
        doomed["error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 3 attempts"),
        "{doomed}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_deleted_before_rendering_fails_the_document() {
    let app = spawn_app_with(Backend::Sqlite, &[], false).await;
    let admin = app.admin().await.access_token;
    let template = app
        .create_template(&admin, "Short-lived", "<p>{{ now }}</p>")
        .await;
    let id = template["id"].as_str().unwrap();
    let queued = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": id}),
        )
        .await;
    assert_eq!(
        app.delete(&format!("/api/v1/templates/{id}"), Some(&admin))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let _worker = app.start_worker(&[]);
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "failed", "{doc}");
    assert_eq!(
        doc["error"],
        "the template was deleted before the document was rendered"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_documents_and_their_files() {
    let settings = [
        ("DOCUMENT_RETENTION_DAYS", "30"),
        ("MAINTENANCE_INTERVAL_SECONDS", "1"),
    ];
    let app = crate::helpers::spawn_app(Backend::Sqlite, &settings).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let old = app.generate(&agent, &json!({"document_type": "old"})).await;
    let recent = app
        .generate(&agent, &json!({"document_type": "recent"}))
        .await;
    let (old, recent) = (old["id"].as_str().unwrap(), recent["id"].as_str().unwrap());
    app.wait_for_document(&agent, old).await;
    app.wait_for_document(&agent, recent).await;
    let id: uuid::Uuid = old.parse().unwrap();
    let long_ago = common::now() - chrono::Duration::days(31);
    common::on_db!(&app.state.db, pool => {
        sqlx::query("UPDATE generated_documents SET created_at = $2 WHERE id = $1")
            .bind(id)
            .bind(long_ago)
            .execute(pool)
            .await
            .unwrap();
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app
        .get(&format!("/api/v1/documents/{old}"), Some(&agent))
        .await
        .status()
        != StatusCode::NOT_FOUND
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old document was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!app.object_exists(&format!("documents/{old}.html")).await);
    assert_eq!(
        app.get(&format!("/api/v1/documents/{recent}"), Some(&agent))
            .await
            .status(),
        StatusCode::OK
    );
    assert!(app.object_exists(&format!("documents/{recent}.html")).await);
    app.stop().await;
}
