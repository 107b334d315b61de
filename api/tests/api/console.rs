//! The operators' console in a real browser (Debian's Chromium, driven by Playwright from
//! `api/tests/console/console.cjs`): an admin signs in, sees a failed document with its
//! error, retries it and sees it ready, cancels a running batch and sees its bar stop, and
//! the page fits a phone's width, on both deployments (worker processes beside the API on
//! each). Screenshots go to `<target>/tmp/console/<deployment>/`.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, spawn_app_with};

/// `playwright-core`, installed by `scripts/tools --test` under `~/.cache`.
fn playwright_core() -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let package =
        PathBuf::from(home).join(".cache/monassurance-console/node_modules/playwright-core");
    assert!(
        package.exists(),
        "{} is missing: run scripts/tools --test (it installs Chromium and playwright-core)",
        package.display()
    );
    package
}

mod an_operator_retries_a_failure_and_cancels_a_batch_in_the_console {
    use crate::helpers::{Backend, services_skipped};

    /// The embedded deployment's files (database and queue) shared with worker
    /// processes. A worker started while the API enqueued the batch used to exit, about
    /// once in 25 starts, on the busy queue file (see `open_sqlite` in common/src/queue.rs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::retry_and_cancel(Backend::Sqlite, "sqlite").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_redis() {
        if services_skipped() {
            return;
        }
        super::retry_and_cancel(Backend::PostgresRedis, "postgres").await;
    }
}

async fn retry_and_cancel(backend: Backend, name: &str) {
    // Worker processes the test can swap; a bulk window of 2 keeps most of the batch
    // queued while the browser works.
    let app = spawn_app_with(backend, &[("BULK_WINDOW", "2")], false).await;
    let admin = app.admin().await.access_token;

    // A worker short of template fuel fails a template that loops; a healthy one renders it.
    let looping = app
        .create_template(&admin, "Loops", "{% for i in range(3000) %}.{% endfor %}")
        .await;
    let mut starved = app.start_worker(&[("RENDER_FUEL", "500"), ("JOB_MAX_ATTEMPTS", "1")]);
    let doc = app
        .generate(
            &admin,
            &json!({"document_type": "statement", "template_id": looping["id"]}),
        )
        .await;
    let doc_id = doc["id"].as_str().unwrap().to_owned();
    let failed = app.wait_for_document(&admin, &doc_id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap().to_owned();
    starved.kill().await.unwrap();

    let items: Vec<Value> = (0..3000)
        .map(|n| json!({"inline_context": {"n": n}}))
        .collect();
    let res = app
        .post_json(
            "/api/v1/document-batches",
            Some(&admin),
            &json!({"document_type": "quote", "items": items}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let batch: Value = res.json().await.unwrap();
    let batch_id = batch["id"].as_str().unwrap().to_owned();
    let _healthy = app.start_worker(&[("WORKER_CONCURRENCY", "1")]);
    // The healthy worker renders before the browser comes: the batch moves.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let batch: Value = app
            .get(
                &format!("/api/v1/document-batches/{batch_id}"),
                Some(&admin),
            )
            .await
            .json()
            .await
            .unwrap();
        if batch["ready"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the healthy worker rendered nothing in 60 s: {batch}\nworker log:\n{}",
            app.worker_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(name);
    std::fs::create_dir_all(&shots).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.cjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", &app.address)
        .env("EMAIL", ADMIN_EMAIL)
        .env("PASSWORD", ADMIN_PASSWORD)
        .env("DOCUMENT_ID", &doc_id)
        .env("DOCUMENT_ERROR", &error)
        .env("BATCH_ID", &batch_id)
        .env("SCREENSHOTS", &shots)
        .env("PLAYWRIGHT_CORE", playwright_core())
        .output()
        .await
        .expect("node runs (scripts/tools --test installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        let doc: Value = app
            .get(&format!("/api/v1/documents/{doc_id}"), Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        let log = app.worker_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "the browser test failed:\n{said}\nthe document now: {doc}\nworker log (latest first):\n{}",
            tail.join("\n")
        );
    }
    eprintln!("{said}screenshots in {}", shots.display());

    // What the browser saw is what the API says, and each action was audited.
    let doc: Value = app
        .get(&format!("/api/v1/documents/{doc_id}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["status"], "ready");
    let batch: Value = app
        .get(
            &format!("/api/v1/document-batches/{batch_id}"),
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch["status"], "cancelled");
    assert!(batch["cancelled"].as_i64().unwrap() > 0, "{batch}");
    assert!(batch["finished_at"].is_string(), "{batch}");
    assert!(app.audited(&admin, "document_retried", &doc_id).await);
    assert!(app.audited(&admin, "batch_cancelled", &batch_id).await);
    for shot in [
        "1-failure.png",
        "2-retried-ready.png",
        "3-batch-cancelled.png",
        "4-phone.png",
    ] {
        assert!(shots.join(shot).metadata().unwrap().len() > 1000, "{shot}");
    }
    app.stop().await;
}
