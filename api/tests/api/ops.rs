use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, Metrics, TestApp, error_code, spawn_app, spawn_app_with};
use crate::{for_each_backend, on_both_backends};

on_both_backends!(
    health_reports_each_dependency,
    every_answer_carries_the_cross_cutting_headers,
    metrics_count_requests_by_route_template
);

for_each_backend!(queue_depth_is_the_number_of_documents_waiting);

async fn health_reports_each_dependency(app: &TestApp) {
    let res = app.get("/health", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let res = app.get("/health/db", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], true);
    assert_eq!(body["stalled"], false);
    match app.backend {
        Backend::Sqlite => {
            assert!(
                body["redis"].is_null(),
                "no Redis in the embedded mode: {body}"
            );
            assert!(
                body["workers"].is_null(),
                "the embedded worker runs in the API's process: {body}"
            );
        }
        Backend::PostgresRedis => {
            assert_eq!(body["redis"], true);
            assert!(body["workers"].as_i64().is_some(), "{body}");
        }
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

async fn metrics_count_requests_by_route_template(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let id = queued["id"].as_str().unwrap();
    app.wait_for_document(&agent, id).await;

    let status_reads = [
        ("method", "GET"),
        ("route", "/api/v1/documents/{id}"),
        ("status", "200"),
    ];
    let polled = app
        .metrics()
        .await
        .value("http_requests_total", &status_reads);
    assert!(polled >= 1.0, "the polls were counted: {polled}");
    for _ in 0..3 {
        app.get(&format!("/api/v1/documents/{id}"), Some(&agent))
            .await;
    }
    let missing = app
        .get(
            &format!("/api/v1/documents/{}", uuid::Uuid::now_v7()),
            Some(&agent),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let metrics = app.metrics().await;
    assert_eq!(
        metrics.value("http_requests_total", &status_reads),
        polled + 3.0
    );
    assert_eq!(
        metrics.value(
            "http_requests_total",
            &[
                ("method", "GET"),
                ("route", "/api/v1/documents/{id}"),
                ("status", "404")
            ]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "http_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/api/v1/documents/{id}")]
        ),
        polled + 4.0,
        "every answer is timed, whatever its status"
    );
    assert!(
        !metrics.any_label_contains(id),
        "raw paths must never become labels"
    );
    assert_eq!(metrics.value("queue_depth", &[]), 0.0, "nothing waits");
    if app.backend == Backend::Sqlite {
        // The worker runs in this process only in the embedded mode.
        let html_ready = [("format", "html"), ("outcome", "ready")];
        assert_eq!(metrics.value("documents_total", &html_ready), 1.0);
        assert_eq!(
            metrics.value(
                "document_stage_seconds_count",
                &[("format", "html"), ("stage", "render")]
            ),
            1.0
        );
    }
}

/// `queue_depth` is what waits for a worker: every document asked for while none runs,
/// then nothing once one has rendered them.
async fn queue_depth_is_the_number_of_documents_waiting(backend: Backend) {
    let app = spawn_app_with(backend, &[], false).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let ids = app.generate_quotes(&agent, 3).await;
    assert_eq!(app.metrics().await.value("queue_depth", &[]), 3.0);

    let _worker = app.start_worker(&[]);
    for id in &ids {
        assert_eq!(app.wait_for_document(&agent, id).await["status"], "ready");
    }
    assert_eq!(app.metrics().await.value("queue_depth", &[]), 0.0);
    app.stop().await;
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
    if crate::helpers::services_skipped() {
        return;
    }
    let app = spawn_app_with(
        Backend::PostgresRedis,
        &[("RENDER_FUEL", "1000000000")],
        false,
    )
    .await;
    let port = crate::helpers::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = app.start_worker(&[
        ("WORKER_HTTP_ADDR", addr.as_str()),
        ("WORKER_CONCURRENCY", "1"),
        ("RECONCILE_INTERVAL_MS", "100"),
    ]);
    crate::helpers::wait_for_port(port).await;
    let worker_metrics = format!("http://{addr}/metrics");
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
        json!({"status": "ok", "database": true, "redis": true, "consumer": true})
    );

    // The one job slot busy with a slow document, two more wait: the worker's gauge,
    // refreshed on its reconciler's tick, sees them.
    let admin = app.admin().await.access_token;
    let slow = app
        .create_template(&admin, "Slow", crate::lifecycle::SLOW_TEMPLATE)
        .await;
    let busy = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": slow["id"]}),
        )
        .await;
    let mut ids = vec![busy["id"].as_str().unwrap().to_owned()];
    crate::lifecycle::wait_for_status(&app, &admin, &ids[0], "processing").await;
    for n in 0..2 {
        let doc = app
            .generate(
                &admin,
                &json!({"document_type": "quote", "inline_context": {"n": n}}),
            )
            .await;
        ids.push(doc["id"].as_str().unwrap().to_owned());
    }
    until_queue_depth(&app, &worker_metrics, 2.0).await;

    for id in &ids {
        let doc = app.wait_for_document(&admin, id).await;
        assert_eq!(doc["status"], "ready", "{doc}");
    }
    until_queue_depth(&app, &worker_metrics, 0.0).await;
    let metrics = scrape(&app, &worker_metrics).await;
    let html = |stage: &'static str| [("format", "html"), ("stage", stage)];
    assert_eq!(
        metrics.value(
            "documents_total",
            &[("format", "html"), ("outcome", "ready")]
        ),
        3.0
    );
    assert_eq!(
        metrics.value("document_stage_seconds_count", &html("render")),
        3.0
    );
    assert_eq!(
        metrics.value("document_stage_seconds_count", &html("store")),
        3.0
    );
    assert_eq!(
        metrics.value(
            "document_queue_wait_seconds_count",
            &[("lane", "interactive")]
        ),
        3.0
    );
    assert_eq!(metrics.value("pdf_engine_restarts_total", &[]), 0.0);
    assert_eq!(
        app.metrics().await.get(
            "documents_total",
            &[("format", "html"), ("outcome", "ready")]
        ),
        None,
        "the API renders nothing on Postgres + Redis"
    );
    app.stop().await;
}

/// The samples `url` exposes.
async fn scrape(app: &TestApp, url: &str) -> Metrics {
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "GET {url}");
    Metrics::parse(&res.text().await.unwrap())
}

/// Scrapes `url` until its `queue_depth` is `depth`.
async fn until_queue_depth(app: &TestApp, url: &str, depth: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = scrape(app, url).await.value("queue_depth", &[]);
        if seen == depth {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} keeps queue_depth {seen}, not {depth}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

on_both_backends!(
    openapi_describes_the_routes,
    docs_are_served_from_the_binary
);

/// The description is OpenAPI 3.1, names every operation once, describes the routes that
/// exist (and only those: an operation the router lacks would answer the fallback's 404)
/// and the shared error shape.
async fn openapi_describes_the_routes(app: &TestApp) {
    let res = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let spec: Value = res.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut operations = 0;
    for (path, item) in paths {
        assert!(
            path.starts_with("/api/v1/") || path.starts_with("/health") || path == "/metrics",
            "{path} is not a full path"
        );
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} used twice");
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} has no success answer"
            );
            if operation
                .get("security")
                .is_some_and(|s| s != &json!([{}, {"bearer": []}]))
            {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
            // The route exists: an unauthenticated call is answered by the route (401, or
            // its own answer), never by the fallback's "Not found." for an unknown route.
            let url = app.url(
                &path
                    .replace("{id}", &uuid::Uuid::nil().to_string())
                    .replace("{version}", "1"),
            );
            let res = app
                .client
                .request(method.to_uppercase().parse().unwrap(), url)
                .send()
                .await
                .unwrap();
            if res.status() == StatusCode::NOT_FOUND {
                let body: Value = res.json().await.unwrap();
                assert_ne!(
                    body["detail"], "Not found.",
                    "{method} {path} is not routed"
                );
            }
        }
    }
    assert!(operations >= 49, "only {operations} operations described");
    for (path, method) in [
        ("/api/v1/templates/{id}/upload", "post"),
        ("/api/v1/documents/generate", "post"),
        ("/api/v1/audit-logs/export", "get"),
        ("/api/v1/auth/login", "post"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    let error = &spec["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["detail", "code"]));
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
}

/// `/docs` is Swagger UI from the binary: every asset the page loads is served here, and
/// nothing points to another host (it works offline).
async fn docs_are_served_from_the_binary(app: &TestApp) {
    let page = app.get("/docs", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.starts_with("/docs/"))
        .collect();
    assert!(assets.len() >= 3, "{html}");
    for asset in assets {
        let res = app.get(asset, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{asset}");
        let body = res.text().await.unwrap_or_default();
        if asset.ends_with("initializer.js") {
            assert!(body.contains("/api/v1/openapi.json"));
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{body}"
            );
        }
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
}

on_both_backends!(text_the_database_cannot_store_is_a_client_error);

/// Postgres cannot store a NUL character (SQLite can): either way it is never a 500.
async fn text_the_database_cannot_store_is_a_client_error(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let res = app
        .post_json(
            "/api/v1/clients",
            Some(&admin),
            &json!({"first_name": "Ja\u{0}ne", "last_name": "Doe"}),
        )
        .await;
    match app.backend {
        Backend::Sqlite => assert_eq!(res.status(), StatusCode::CREATED),
        Backend::PostgresRedis => {
            assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(error_code(res).await, "unstorable_text");
        }
    }
    // In a JSON column (a document's inline context): jsonb refuses `\u0000` too.
    let res = app
        .post_json(
            "/api/v1/documents/generate",
            Some(&admin),
            &json!({"document_type": "note", "inline_context": {"x": "a\u{0}b"}}),
        )
        .await;
    match app.backend {
        Backend::Sqlite => assert_eq!(res.status(), StatusCode::ACCEPTED),
        Backend::PostgresRedis => {
            assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(error_code(res).await, "unstorable_text");
        }
    }
}
