use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    health_reports_each_dependency,
    every_answer_carries_the_cross_cutting_headers,
    metrics_use_route_templates
);

async fn health_reports_each_dependency(app: &TestApp) {
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let res = app.get("/health/db", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], true);
    match app.backend {
        Backend::Sqlite => assert!(
            body["redis"].is_null(),
            "no Redis in the embedded mode: {body}"
        ),
        Backend::PostgresRedis => assert_eq!(body["redis"], true),
    }
}

async fn every_answer_carries_the_cross_cutting_headers(app: &TestApp) {
    let answers = [
        app.get("/health", None).await,
        app.get("/api/v1/auth/me", None).await,
        app.get("/no/such/route", None).await,
        app.client.put(app.url("/health")).send().await.unwrap(),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, vec![200, 401, 404, 405]);
    for res in answers {
        let h = res.headers().clone();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(h["x-response-time"].to_str().unwrap().ends_with("ms"));
        assert_eq!(h["x-request-id"].len(), 32, "a generated request id");
        if res.status() != StatusCode::OK {
            error_code(res).await;
        }
    }

    let echoed = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");

    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url("/api/v1/documents/generate"),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        preflight.headers()["access-control-allow-credentials"],
        "true"
    );
    let foreign = app
        .client
        .get(app.url("/health"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

async fn metrics_use_route_templates(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let id = queued["id"].as_str().unwrap();
    app.wait_for_document(&agent, id).await;

    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(
        text.contains(
            r#"http_requests_total{method="GET",route="/api/v1/documents/{id}",status="200"}"#
        ),
        "{text}"
    );
    assert!(!text.contains(id), "raw paths must never become labels");
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(text.contains("queue_depth"));
    if app.backend == Backend::Sqlite {
        // The worker runs in this process only in the embedded mode.
        assert!(
            text.contains(r#"documents_total{format="html",outcome="ready"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"document_stage_seconds_count{format="html",stage="render"} 1"#),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_db_is_503_when_the_database_is_gone() {
    let app = spawn_app(Backend::Sqlite, &[]).await;
    app.state.db.close().await;
    let res = app.get("/health/db", None).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["database"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_switched_off_and_security_headers_configured() {
    let app = spawn_app(
        Backend::Sqlite,
        &[
            ("ENABLE_METRICS", "false"),
            ("SECURITY_HSTS", "true"),
            ("SECURITY_CSP", "default-src 'none'"),
        ],
    )
    .await;
    let res = app.get("/metrics", None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.headers()["content-security-policy"],
        "default-src 'none'"
    );
    assert!(
        res.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age=")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_its_own_health_and_metrics() {
    if !crate::helpers::services_configured() {
        return;
    }
    let app = crate::helpers::spawn_app_with(Backend::PostgresRedis, &[], false).await;
    let port = crate::helpers::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = app.start_worker(&[
        ("WORKER_HTTP_ADDR", addr.as_str()),
        ("RECONCILE_INTERVAL_MS", "100"),
    ]);
    crate::helpers::wait_for_port(port).await;

    let health: Value = app
        .client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        health,
        json!({"status": "ok", "database": true, "redis": true})
    );

    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    app.wait_for_document(&agent, queued["id"].as_str().unwrap())
        .await;
    let text = app
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"documents_total{format="html",outcome="ready"} 1"#,
        r#"document_stage_seconds_count{format="html",stage="render"} 1"#,
        r#"document_stage_seconds_count{format="html",stage="store"} 1"#,
        "document_queue_wait_seconds_count 1",
        "queue_depth",
        "pdf_engine_restarts",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    app.stop().await;
}
