use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    registration_creates_agents_only,
    login_me_and_wrong_credentials,
    refresh_rotates_and_detects_reuse,
    logout_and_revoke_all_end_sessions_at_once,
    devices_are_listed_and_revoked,
    deactivated_users_are_refused_everywhere,
    forged_and_expired_access_tokens_are_refused,
    bad_bodies_get_clear_client_errors,
);

async fn registration_creates_agents_only(app: &TestApp) {
    let res = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "Ann@Example.com", "password": "password-123", "full_name": "Ann"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["role"], "agent");
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["is_active"], true);
    assert!(user.get("hashed_password").is_none());

    let again = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "ann@example.com", "password": "password-456"}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(again).await, "email_taken");

    let admin = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "eve@example.com", "password": "password-123", "role": "admin"}),
        )
        .await;
    assert_eq!(admin.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(admin).await, "role_not_allowed");

    let explicit_agent = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "bob@example.com", "password": "password-123", "role": "agent"}),
        )
        .await;
    assert_eq!(explicit_agent.status(), StatusCode::CREATED);

    for (body, field) in [
        (
            json!({"email": "not-an-email", "password": "password-123"}),
            "email",
        ),
        (
            json!({"email": "carl@example.com", "password": "short"}),
            "password",
        ),
    ] {
        let res = app.post_json("/api/v1/auth/register", None, &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["errors"][0]["field"], field, "{err}");
    }
}

async fn login_me_and_wrong_credentials(app: &TestApp) {
    let tokens = app.register_and_login("dora@example.com").await;
    assert_eq!(tokens.token_type, "bearer");
    assert_eq!(tokens.expires_in, 30 * 60);

    let me: Value = app
        .get("/api/v1/auth/me", Some(&tokens.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "dora@example.com");

    let wrong = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": "dora@example.com", "password": "wrong-password"}),
        )
        .await;
    let unknown = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": "nobody@example.com", "password": "wrong-password"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let (a, b): (Value, Value) = (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(
        a["detail"], b["detail"],
        "the answer must not tell which emails exist"
    );

    let anonymous = app.get("/api/v1/auth/me", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
}

async fn refresh_rotates_and_detects_reuse(app: &TestApp) {
    let first = app.register_and_login("erin@example.com").await;
    let res = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": first.refresh_token}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let second: Value = res.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap();
    let second_access = second["access_token"].as_str().unwrap();
    assert_ne!(second_refresh, first.refresh_token);
    assert_eq!(
        app.get("/api/v1/auth/me", Some(second_access))
            .await
            .status(),
        StatusCode::OK
    );

    // The rotated token presented again: a leak. The whole session dies.
    let reuse = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": first.refresh_token}),
        )
        .await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED);
    let after = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": second_refresh}),
        )
        .await;
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the family is revoked"
    );
    assert_eq!(
        app.get("/api/v1/auth/me", Some(second_access))
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "access tokens of a revoked session stop working at once"
    );

    let unknown = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": "rt_unknown"}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
}

async fn logout_and_revoke_all_end_sessions_at_once(app: &TestApp) {
    let phone = app.register_and_login("fay@example.com").await;
    let laptop = app.login("fay@example.com", "password-123").await;
    // In use before the logout (so the API may have cached its session).
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&phone.access_token))
            .await
            .status(),
        StatusCode::OK
    );

    let res = app
        .post_json(
            "/api/v1/auth/logout",
            None,
            &json!({"refresh_token": phone.refresh_token}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": phone.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&phone.access_token))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&laptop.access_token))
            .await
            .status(),
        StatusCode::OK
    );

    let unknown = app
        .post_json(
            "/api/v1/auth/revoke",
            None,
            &json!({"refresh_token": "rt_never_issued"}),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NO_CONTENT);

    let tablet = app.login("fay@example.com", "password-123").await;
    let res = app
        .post_json(
            "/api/v1/auth/revoke-all",
            Some(&tablet.access_token),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    for token in [&laptop.access_token, &tablet.access_token] {
        assert_eq!(
            app.get("/api/v1/auth/me", Some(token)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": laptop.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
}

async fn devices_are_listed_and_revoked(app: &TestApp) {
    let first = app.register_and_login("gus@example.com").await;
    let second = app.login("gus@example.com", "password-123").await;
    let other = app.register_and_login("hal@example.com").await;

    let devices: Vec<Value> = app
        .get("/api/v1/auth/devices", Some(&first.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(devices.len(), 2);
    assert!(
        devices[0]["issued_at"].as_str() >= devices[1]["issued_at"].as_str(),
        "newest first"
    );
    for key in [
        "id",
        "device_label",
        "ip_address",
        "user_agent",
        "issued_at",
        "expires_at",
        "last_used_at",
    ] {
        assert!(
            devices[0].get(key).is_some(),
            "device without {key}: {}",
            devices[0]
        );
    }
    assert_eq!(devices[0]["ip_address"], "127.0.0.1");

    // A device keeps its id across refreshes.
    let refreshed: Value = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": second.refresh_token}),
        )
        .await
        .json()
        .await
        .unwrap();
    let again: Vec<Value> = app
        .get("/api/v1/auth/devices", Some(&first.access_token))
        .await
        .json()
        .await
        .unwrap();
    let ids = |list: &[Value]| list.iter().map(|d| d["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&devices), ids(&again));

    let newest = devices[0]["id"].as_str().unwrap();
    let not_mine = app
        .delete(
            &format!("/api/v1/auth/devices/{newest}"),
            Some(&other.access_token),
        )
        .await;
    assert_eq!(not_mine.status(), StatusCode::NOT_FOUND);
    let res = app
        .delete(
            &format!("/api/v1/auth/devices/{newest}"),
            Some(&first.access_token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let twice = app
        .delete(
            &format!("/api/v1/auth/devices/{newest}"),
            Some(&first.access_token),
        )
        .await;
    assert_eq!(twice.status(), StatusCode::NOT_FOUND);

    let left: Vec<Value> = app
        .get("/api/v1/auth/devices", Some(&first.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    let revoked_access = refreshed["access_token"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/auth/me", Some(revoked_access))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn deactivated_users_are_refused_everywhere(app: &TestApp) {
    let tokens = app.register_and_login("ida@example.com").await;
    let me: Value = app
        .get("/api/v1/auth/me", Some(&tokens.access_token))
        .await
        .json()
        .await
        .unwrap();
    let id = me["id"].as_str().unwrap().parse().unwrap();
    assert!(app.state.db.users().set_active(id, false).await.unwrap());

    let bearer = app.get("/api/v1/auth/me", Some(&tokens.access_token)).await;
    assert_eq!(bearer.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(bearer).await, "account_disabled");
    let login = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": "ida@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(login).await, "account_disabled");
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            None,
            &json!({"refresh_token": tokens.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
}

async fn forged_and_expired_access_tokens_are_refused(app: &TestApp) {
    let tokens = app.register_and_login("jon@example.com").await;
    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);

    // Same claims, expired, signed with the real secret.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["monassurance-api"]);
    let key = jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes());
    let mut claims = jsonwebtoken::decode::<Value>(&tokens.access_token, &key, &validation)
        .unwrap()
        .claims;
    for claim in ["iss", "aud", "typ", "sub", "role", "sid", "jti", "exp"] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    let now = chrono::Utc::now().timestamp();
    claims["exp"] = json!(now - 120);
    claims["iat"] = json!(now - 3600);
    let encoding = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let expired =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &encoding).unwrap();
    let res = app.get("/api/v1/auth/me", Some(&expired)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(res).await, "not_authenticated");

    // Valid claims, wrong secret.
    claims["exp"] = json!(now + 600);
    let forged_key = jsonwebtoken::EncodingKey::from_secret(b"guessed-secret");
    let forged =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &forged_key).unwrap();
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&forged)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Another algorithm than the pinned one.
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &encoding,
    )
    .unwrap();
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&hs512)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // A role claim edited upward does not grant anything: the role comes from the database.
    claims["role"] = json!("admin");
    let promoted =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &encoding).unwrap();
    let res = app.get("/api/v1/templates", Some(&promoted)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

async fn bad_bodies_get_clear_client_errors(app: &TestApp) {
    let malformed = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(malformed).await, "malformed_json");

    let wrong_type = app
        .post_json(
            "/api/v1/auth/login",
            None,
            &json!({"email": 42, "password": "x"}),
        )
        .await;
    assert_eq!(wrong_type.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = wrong_type.json().await.unwrap();
    assert_eq!(err["errors"][0]["field"], "email", "{err}");

    let missing = app
        .post_json("/api/v1/auth/login", None, &json!({"email": "a@b.co"}))
        .await;
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let not_json = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .body("email=a")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    error_code(not_json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    // A small limit keeps the refused body inside the socket buffers: the answer arrives
    // while the client is still writing, and a large body would race a broken pipe.
    let app = crate::helpers::spawn_app(
        crate::helpers::Backend::Sqlite,
        &[("MAX_BODY_BYTES", "2048")],
    )
    .await;
    let big = "x".repeat(4096);
    let too_large = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "k@example.com", "password": big}),
        )
        .await;
    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.headers()["x-content-type-options"], "nosniff");
    assert_eq!(error_code(too_large).await, "payload_too_large");
    let fits = app
        .post_json(
            "/api/v1/auth/register",
            None,
            &json!({"email": "k@example.com", "password": "x".repeat(1000)}),
        )
        .await;
    assert_eq!(fits.status(), StatusCode::CREATED);
    app.stop().await;
}
