//! Workers an operator can see: they register, heartbeat and say goodbye; one that stops
//! heartbeating shows as stale; `/api/v1/ops/queue` shows what waits, runs, finished and
//! failed; `/health/db` degrades when documents wait with no live worker.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::for_each_backend;
use crate::helpers::{Backend, sigterm, spawn_app_with};

/// Heartbeats every 200 ms: a worker is stale after 600 ms unheard.
const FAST_HEARTBEAT: &[(&str, &str)] = &[("WORKER_HEARTBEAT_MS", "200")];

for_each_backend!(
    workers_register_heartbeat_and_say_goodbye,
    the_queue_view_shows_waiting_finished_and_failed_documents,
    health_degrades_when_documents_wait_with_no_live_worker,
);

/// The worker with process id `pid` in the list `list` of the workers view.
fn worker<'a>(view: &'a Value, list: &str, pid: u32) -> Option<&'a Value> {
    view[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == pid)
}

async fn workers_register_heartbeat_and_say_goodbye(backend: Backend) {
    let app = spawn_app_with(backend, FAST_HEARTBEAT, false).await;
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let res = app.get("/api/v1/ops/workers", Some(&agent)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "agents do not operate");
    let view = app.ops(&admin, "workers").await;
    assert_eq!(view["live"], json!([]), "{view}");
    assert_eq!(view["stale_after_seconds"], 0.6);

    let mut drained = app.start_worker(&[]);
    let pid = drained.id().unwrap();
    let view = app
        .until_ops(&admin, "workers", |v| worker(v, "live", pid).is_some())
        .await;
    let live = worker(&view, "live", pid).unwrap();
    assert_eq!(live["concurrency"], 4, "{live}");
    assert!(
        live["name"].as_str().unwrap().starts_with("render-"),
        "{live}"
    );
    assert!(live["stopped_at"].is_null());

    let ids = app.generate_quotes(&agent, 2).await;
    for id in &ids {
        assert_eq!(app.wait_for_document(&agent, id).await["status"], "ready");
    }
    app.until_ops(&admin, "workers", |v| {
        worker(v, "live", pid).is_some_and(|w| w["processed"] == 2 && w["failed"] == 0)
    })
    .await;

    // Drained with SIGTERM: it says goodbye.
    sigterm(&mut drained).await;
    let view = app.ops(&admin, "workers").await;
    let stopped = worker(&view, "stopped", pid).expect("a drained worker is listed as stopped");
    assert!(stopped["stopped_at"].is_string(), "{stopped}");
    assert_eq!(stopped["processed"], 2);
    assert!(worker(&view, "live", pid).is_none());

    // Killed: it goes stale once three heartbeats are missed.
    let mut killed = app.start_worker(&[]);
    let pid = killed.id().unwrap();
    app.until_ops(&admin, "workers", |v| worker(v, "live", pid).is_some())
        .await;
    killed.kill().await.unwrap();
    let view = app
        .until_ops(&admin, "workers", |v| worker(v, "stale", pid).is_some())
        .await;
    assert!(worker(&view, "stale", pid).unwrap()["stopped_at"].is_null());
    app.stop().await;
}

async fn the_queue_view_shows_waiting_finished_and_failed_documents(backend: Backend) {
    let app = spawn_app_with(backend, FAST_HEARTBEAT, false).await;
    let admin = app.admin().await.access_token;
    let runaway = app
        .create_template(
            &admin,
            "Runaway",
            "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
        )
        .await;
    app.generate_quotes(&admin, 2).await;
    let broken = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": runaway["id"]}),
        )
        .await;

    let view = app.ops(&admin, "queue").await;
    assert_eq!(view["queued"], 3, "{view:#}");
    assert_eq!(view["lanes"][0]["lane"], "interactive");
    assert_eq!(view["lanes"][0]["queued"], 3);
    assert!(view["oldest_queued_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(view["in_flight"], 0);
    assert_eq!(view["live_workers"], 0);
    assert_eq!(view["finished_per_minute"].as_array().unwrap().len(), 15);

    let _worker = app.start_worker(&[]);
    let failed = app
        .wait_for_document(&admin, broken["id"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "failed");
    app.until_ops(&admin, "queue", |v| v["queued"] == 0 && v["in_flight"] == 0)
        .await;
    let view = app
        .until_ops(&admin, "queue", |v| v["live_workers"] == 1)
        .await;
    let finished = view["finished_per_minute"].as_array().unwrap();
    let total =
        |status: &str| -> i64 { finished.iter().map(|m| m[status].as_i64().unwrap()).sum() };
    assert_eq!((total("ready"), total("failed")), (2, 1), "{view:#}");
    assert!(view["oldest_queued_seconds"].is_null());
    assert_eq!(view["failed_last_hour"], 1);
    let failure = &view["recent_failures"][0];
    assert_eq!(failure["id"], broken["id"]);
    assert!(
        failure["error"].as_str().unwrap().contains("ran too long"),
        "{failure}"
    );
    app.stop().await;
}

async fn health_degrades_when_documents_wait_with_no_live_worker(backend: Backend) {
    let mut overrides = FAST_HEARTBEAT.to_vec();
    overrides.push(("WORKER_STALL_SECONDS", "1"));
    let app = spawn_app_with(backend, &overrides, false).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let health: Value = app.get("/health/db", None).await.json().await.unwrap();
    assert_eq!(health["workers"], 0, "{health}");
    assert_eq!(health["stalled"], false);

    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let res = app.get("/health/db", None).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            break res.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "never degraded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["stalled"], true);
    assert_eq!(health["database"], true);

    let _worker = app.start_worker(&[]);
    app.wait_for_document(&agent, doc["id"].as_str().unwrap())
        .await;
    let res = app.get("/health/db", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let health: Value = res.json().await.unwrap();
    assert_eq!(health["stalled"], false);
    assert_eq!(health["workers"], 1, "{health}");
    app.stop().await;
}
