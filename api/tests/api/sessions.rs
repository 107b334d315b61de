//! The session cache: an authenticated request learns without a query that its session is
//! open, and a change still ends the session at once, on every API replica.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, services_skipped, spawn_app};
use crate::on_both_backends_with;

/// A cache that would keep an entry for an hour: whatever ends a session sooner in these
/// tests is an invalidation, not the TTL.
const HOUR_CACHE: &[(&str, &str)] = &[("AUTH_CACHE_SECONDS", "3600")];

on_both_backends_with!(a_change_made_behind_the_api_waits_for_the_ttl => super::HOUR_CACHE);

/// Waits until `app`'s session cache is on (on Postgres: once it listens for changes).
async fn cache_on(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.state.db.session_cache().is_enabled() {
        assert!(
            Instant::now() < deadline,
            "the session cache never turned on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn me(app: &TestApp, token: &str) -> StatusCode {
    app.get("/api/v1/auth/me", Some(token)).await.status()
}

async fn user_id_of(app: &TestApp, token: &str) -> String {
    let me: Value = app
        .get("/api/v1/auth/me", Some(token))
        .await
        .json()
        .await
        .unwrap();
    me["id"]
        .as_str()
        .expect("/auth/me names the user")
        .to_owned()
}

/// Asks `/auth/me` with `token` until it answers `status`. A change heard through Postgres
/// arrives within milliseconds; the deadline is far below the hour the cache would keep it.
async fn until_me_answers(app: &TestApp, token: &str, status: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = me(app, token).await;
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/auth/me still answers {got}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Revokes every session of `user_id` with plain SQL, as an operator would, with the
/// Postgres triggers that announce it switched off when `announce` is false.
async fn revoke_in_sql(app: &TestApp, user_id: &str, announce: bool) {
    let user_id: uuid::Uuid = user_id.parse().unwrap();
    common::on_db!(&app.state.db, pool => {
        let mut tx = pool.begin().await.unwrap();
        if app.backend == Backend::PostgresRedis && !announce {
            sqlx::query("ALTER TABLE auth_sessions DISABLE TRIGGER auth_sessions_notify_session_change")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        sqlx::query("UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(chrono::Utc::now())
            .execute(&mut *tx)
            .await
            .unwrap();
        if app.backend == Backend::PostgresRedis && !announce {
            sqlx::query("ALTER TABLE auth_sessions ENABLE TRIGGER auth_sessions_notify_session_change")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    });
}

/// The cache is really used: a revocation nobody announces (plain SQL, triggers off) is
/// not seen while the entry lives, and is seen once it is gone.
async fn a_change_made_behind_the_api_waits_for_the_ttl(app: &TestApp) {
    cache_on(app).await;
    let tokens = app.register_and_login("cached@example.com").await;
    assert_eq!(me(app, &tokens.access_token).await, StatusCode::OK);
    let user_id = user_id_of(app, &tokens.access_token).await;

    revoke_in_sql(app, &user_id, false).await;
    assert_eq!(
        me(app, &tokens.access_token).await,
        StatusCode::OK,
        "answered from the cache"
    );
    // What the TTL's end does.
    app.state.db.session_cache().clear();
    assert_eq!(
        me(app, &tokens.access_token).await,
        StatusCode::UNAUTHORIZED
    );
}

/// Two API replicas on one Postgres: a change made through one, or in plain SQL, ends
/// the sessions the other had cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_replica() {
    if services_skipped() {
        return;
    }
    let a = spawn_app(Backend::PostgresRedis, HOUR_CACHE).await;
    let b = a.spawn_replica(HOUR_CACHE).await;
    cache_on(&a).await;
    cache_on(&b).await;

    // Deactivated through replica A.
    let admin = a.admin().await.access_token;
    let user = a.create_user(&admin, "replica@example.com", "agent").await;
    let tokens = a.login("replica@example.com", "password-123").await;
    assert_eq!(me(&b, &tokens.access_token).await, StatusCode::OK);
    assert_eq!(me(&a, &tokens.access_token).await, StatusCode::OK);
    let res = a
        .patch_json(
            &format!("/api/v1/users/{}", user["id"].as_str().unwrap()),
            &admin,
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(me(&a, &tokens.access_token).await, StatusCode::FORBIDDEN);
    until_me_answers(&b, &tokens.access_token, StatusCode::FORBIDDEN).await;

    // Revoked by an operator in SQL: both replicas hear it.
    let other = b.register_and_login("operator-revoked@example.com").await;
    assert_eq!(me(&a, &other.access_token).await, StatusCode::OK);
    assert_eq!(me(&b, &other.access_token).await, StatusCode::OK);
    let other_id = user_id_of(&b, &other.access_token).await;
    revoke_in_sql(&a, &other_id, true).await;
    until_me_answers(&a, &other.access_token, StatusCode::UNAUTHORIZED).await;
    until_me_answers(&b, &other.access_token, StatusCode::UNAUTHORIZED).await;

    b.stop().await;
    a.stop().await;
}
