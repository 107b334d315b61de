//! Rate limits, proven on the embedded default (in memory) and on Postgres + Redis (the
//! shared Redis store).

use reqwest::StatusCode;
use serde_json::{Value, json};

use common::limits::{Limiter, Spend};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, TestApp, error_code};
use crate::{on_both_backends, on_both_backends_with};

on_both_backends!(the_eleventh_failed_login_on_an_account_is_refused);

on_both_backends_with!(
    successful_logins_never_lock_out => &[("LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE", "2")],
    failed_logins_are_limited_per_ip => &[
        ("LOGIN_ATTEMPTS_IP_PER_MINUTE", "4"),
        ("LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE", "100"),
    ],
    the_login_guard_can_be_turned_off => &[
        ("LOGIN_ATTEMPTS_ENABLED", "false"),
        ("LOGIN_ATTEMPTS_ACCOUNT_PER_MINUTE", "1"),
    ],
    the_generic_limiter_refuses_past_the_limit => &[
        ("RATE_LIMIT_ENABLED", "true"),
        ("DEFAULT_RATE_LIMIT_PER_MINUTE", "5"),
        ("AUTH_RATE_LIMIT_PER_MINUTE", "3"),
    ],
    downloads_are_limited_per_user_and_per_link => &[("DOWNLOAD_RATE_LIMIT_PER_MINUTE", "3")],
);

async fn login_attempt(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/login",
        None,
        &json!({"email": email, "password": password}),
    )
    .await
}

/// A 429 as the contract wants it: `Retry-After` within the minute, the security headers,
/// the request id and the JSON error shape.
async fn assert_refused(res: reqwest::Response) {
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = res.headers().clone();
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(!headers["x-request-id"].is_empty());
    assert!(headers.contains_key("x-response-time"));
    assert_eq!(error_code(res).await, "rate_limited");
}

/// How many requests the limiter of `scope` refused, from `/metrics`.
async fn refusals(app: &TestApp, scope: &str) -> f64 {
    app.metrics()
        .await
        .value("rate_limited_total", &[("scope", scope)])
}

async fn the_eleventh_failed_login_on_an_account_is_refused(app: &TestApp) {
    for attempt in 1..=10 {
        let res = login_attempt(app, ADMIN_EMAIL, "wrong-password").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-request-id", "locked-out-1")
        .json(&json!({"email": ADMIN_EMAIL, "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "locked-out-1");
    assert_refused(res).await;
    // Locked means locked: the right password is refused too, before it is checked, so a
    // guesser cannot tell a right guess from a wrong one. The email's case does not help.
    assert_refused(login_attempt(app, &ADMIN_EMAIL.to_uppercase(), ADMIN_PASSWORD).await).await;

    // The lock-out lives in the shared store: with Redis, another replica (a limiter of
    // its own on the same Redis) sees it too.
    if app.backend == Backend::PostgresRedis {
        assert_eq!(app.state.limiter.backend_name(), "redis");
        let conn = common::queue::connect_redis(&app.state.settings)
            .await
            .unwrap()
            .expect("REDIS_URL is set");
        let replica = Limiter::with_redis(conn, &app.state.settings.queue.name);
        let key = format!("login_account:{ADMIN_EMAIL}");
        assert!(replica.check(&key, 10, Spend::Peek).await.is_err());
        assert!(
            Limiter::in_memory()
                .check(&key, 10, Spend::Peek)
                .await
                .is_ok()
        );
    } else {
        assert_eq!(app.state.limiter.backend_name(), "memory");
    }

    // Other accounts from the same IP are not locked.
    let res = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "bea@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let bea = app.login("bea@example.com", "password-123").await;
    assert!(!bea.access_token.is_empty());

    // The refusals are audited and counted.
    let db_entries = app
        .state
        .db
        .audit()
        .list(
            &common::db::audit::AuditFilter {
                action: Some("login_failed".into()),
                ..Default::default()
            },
            200,
            0,
        )
        .await
        .unwrap();
    assert_eq!(db_entries.total, 12);
    let limited: Vec<_> = db_entries
        .items
        .iter()
        .filter(|e| e.audit_metadata.as_ref().unwrap().0["reason"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[1].request_id.as_deref(), Some("locked-out-1"));
    assert_eq!(limited[0].ip_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(refusals(app, "login_account").await, 2.0);
}

async fn successful_logins_never_lock_out(app: &TestApp) {
    for _ in 0..5 {
        app.admin().await;
    }
    // Failures still count: two are allowed, the third attempt is refused.
    for _ in 0..2 {
        let res = login_attempt(app, ADMIN_EMAIL, "wrong-password").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    assert_refused(login_attempt(app, ADMIN_EMAIL, ADMIN_PASSWORD).await).await;
}

async fn failed_logins_are_limited_per_ip(app: &TestApp) {
    for n in 0..4 {
        let res = login_attempt(app, &format!("nobody{n}@example.com"), "password-123").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // A fifth account, never tried, from the same IP.
    assert_refused(login_attempt(app, "nobody9@example.com", "password-123").await).await;
    assert_refused(login_attempt(app, ADMIN_EMAIL, ADMIN_PASSWORD).await).await;
    assert_eq!(refusals(app, "login_ip").await, 2.0);
}

async fn the_login_guard_can_be_turned_off(app: &TestApp) {
    for _ in 0..4 {
        let res = login_attempt(app, ADMIN_EMAIL, "wrong-password").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    app.admin().await;
}

async fn the_generic_limiter_refuses_past_the_limit(app: &TestApp) {
    // The auth group: 3 per minute per IP.
    let admin = app.admin().await.access_token;
    for _ in 0..2 {
        let res = app.get("/api/v1/auth/me", Some(&admin)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_refused(app.get("/api/v1/auth/me", Some(&admin)).await).await;
    assert_refused(login_attempt(app, ADMIN_EMAIL, ADMIN_PASSWORD).await).await;

    // Every other route: 5 per minute per IP, counted apart from the auth group.
    for _ in 0..5 {
        let res = app.get("/api/v1/templates", Some(&admin)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_refused(app.get("/api/v1/templates", Some(&admin)).await).await;
    assert_refused(app.get("/api/v1/documents", None).await).await;

    // Health checks and metrics are never limited.
    for _ in 0..20 {
        assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
    }
    assert_eq!(app.get("/health/db", None).await.status(), StatusCode::OK);
    assert_eq!(refusals(app, "default").await, 2.0);
    assert_eq!(refusals(app, "auth").await, 2.0);
}

async fn downloads_are_limited_per_user_and_per_link(app: &TestApp) {
    let agent = app.register_and_login("dan@example.com").await.access_token;
    let doc = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"n": 1}}),
        )
        .await;
    let id = doc["id"].as_str().unwrap();
    assert_eq!(app.wait_for_document(&agent, id).await["status"], "ready");
    let download = format!("/api/v1/documents/{id}/download");

    for _ in 0..3 {
        let res = app.get(&download, Some(&agent)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_refused(app.get(&download, Some(&agent)).await).await;

    // Another user has a budget of their own.
    let admin = app.admin().await.access_token;
    assert_eq!(
        app.get(&download, Some(&admin)).await.status(),
        StatusCode::OK
    );

    // A signed link has its own budget, apart from its owner's.
    let link = |ttl: u32| {
        let agent = agent.clone();
        async move {
            let res = app
                .post_json(
                    &format!("/api/v1/documents/{id}/signed-url?ttl_seconds={ttl}"),
                    Some(&agent),
                    &json!({}),
                )
                .await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()["url"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let first = link(300).await;
    for _ in 0..3 {
        let res = app.client.get(&first).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_refused(app.client.get(&first).send().await.unwrap()).await;
    let second = link(600).await;
    assert_ne!(first, second);
    let res = app.client.get(&second).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(refusals(app, "download_user").await, 1.0);
    assert_eq!(refusals(app, "download_link").await, 1.0);
}
