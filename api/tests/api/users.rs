use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    only_admins_manage_users,
    admins_create_users_of_any_role,
    admins_change_names_and_roles,
    deactivation_ends_login_refresh_and_bearer_at_once,
);

impl TestApp {
    pub async fn patch_json(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a user through the admin route and returns its JSON.
    pub async fn create_user(&self, admin: &str, email: &str, role: &str) -> Value {
        let res = self
            .post_json(
                "/api/v1/users",
                Some(admin),
                &json!({"email": email, "password": "password-123", "role": role}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "create {email}");
        res.json().await.unwrap()
    }
}

async fn only_admins_manage_users(app: &TestApp) {
    let admin = app.admin().await.access_token;
    app.create_user(&admin, "mia@example.com", "manager").await;
    let manager = app
        .login("mia@example.com", "password-123")
        .await
        .access_token;
    let agent = app.register_and_login("al@example.com").await.access_token;
    let admin_id = app
        .get("/api/v1/auth/me", Some(&admin))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for token in [&agent, &manager] {
        for res in [
            app.get("/api/v1/users", Some(token)).await,
            app.get(&format!("/api/v1/users/{admin_id}"), Some(token))
                .await,
            app.post_json(
                "/api/v1/users",
                Some(token),
                &json!({"email": "x@example.com", "password": "password-123"}),
            )
            .await,
            app.patch_json(
                &format!("/api/v1/users/{admin_id}"),
                token,
                &json!({"is_active": false}),
            )
            .await,
        ] {
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            assert_eq!(error_code(res).await, "insufficient_role");
        }
    }
    assert_eq!(
        app.get("/api/v1/users", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // The refused attempts changed nothing.
    let admin_now: Value = app
        .get(&format!("/api/v1/users/{admin_id}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admin_now["is_active"], true);

    let page: Value = app
        .get("/api/v1/users?limit=2&offset=1", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 3);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["offset"], 1);
    let emails: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["mia@example.com", "al@example.com"]);
    assert!(page["items"][0].get("hashed_password").is_none());
    assert_eq!(
        app.get("/api/v1/users?limit=201", Some(&admin))
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

async fn admins_create_users_of_any_role(app: &TestApp) {
    let admin = app.admin().await.access_token;
    for role in ["agent", "manager", "admin"] {
        let email = format!("{role}-1@example.com");
        let user = app.create_user(&admin, &email, role).await;
        assert_eq!(user["role"], role);
        assert_eq!(user["is_active"], true);
        let tokens = app.login(&email, "password-123").await;
        let me: Value = app
            .get("/api/v1/auth/me", Some(&tokens.access_token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], role);
        let read: Value = app
            .get(
                &format!("/api/v1/users/{}", user["id"].as_str().unwrap()),
                Some(&admin),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read, user);
    }

    let taken = app
        .post_json(
            "/api/v1/users",
            Some(&admin),
            &json!({"email": "MANAGER-1@example.com", "password": "password-123"}),
        )
        .await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(taken).await, "email_taken");

    let short = app
        .post_json(
            "/api/v1/users",
            Some(&admin),
            &json!({"email": "new@example.com", "password": "short"}),
        )
        .await;
    assert_eq!(short.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad_role = app
        .post_json(
            "/api/v1/users",
            Some(&admin),
            &json!({"email": "new@example.com", "password": "password-123", "role": "root"}),
        )
        .await;
    assert_eq!(bad_role.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = app
        .get(
            &format!("/api/v1/users/{}", uuid::Uuid::now_v7()),
            Some(&admin),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let not_uuid = app.get("/api/v1/users/abc", Some(&admin)).await;
    assert_eq!(not_uuid.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn admins_change_names_and_roles(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let user = app.create_user(&admin, "pat@example.com", "agent").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());

    let res = app
        .patch_json(
            &path,
            &admin,
            &json!({"role": "manager", "full_name": "Pat Smith"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["role"], "manager");
    assert_eq!(changed["full_name"], "Pat Smith");
    assert_eq!(changed["email"], "pat@example.com");

    // An absent field stays; null clears the name.
    let res = app
        .patch_json(&path, &admin, &json!({"full_name": null}))
        .await;
    let changed: Value = res.json().await.unwrap();
    assert_eq!(changed["role"], "manager");
    assert_eq!(changed["full_name"], Value::Null);

    // The new role holds for the user's next login.
    let pat = app
        .login("pat@example.com", "password-123")
        .await
        .access_token;
    assert_eq!(
        app.get("/api/v1/audit-logs", Some(&pat)).await.status(),
        StatusCode::OK
    );

    let bad = app
        .patch_json(&path, &admin, &json!({"role": "owner"}))
        .await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Unknown fields are ignored, as everywhere: the email cannot be changed here.
    let res = app
        .patch_json(&path, &admin, &json!({"email": "x@example.com"}))
        .await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["email"],
        "pat@example.com"
    );

    // An admin cannot lock themselves out.
    let me: Value = app
        .get("/api/v1/auth/me", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let own = format!("/api/v1/users/{}", me["id"].as_str().unwrap());
    let res = app
        .patch_json(&own, &admin, &json!({"is_active": false}))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = app
        .patch_json(&own, &admin, &json!({"role": "agent"}))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The change is audited with what changed.
    let logs: Value = app
        .get("/api/v1/audit-logs?action=user_updated", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(logs["total"], 3);
    assert_eq!(logs["items"][0]["audit_metadata"]["changes"], json!({}));
    let first = &logs["items"][2];
    assert_eq!(first["object_id"], user["id"]);
    assert_eq!(first["user_id"], me["id"]);
    assert_eq!(
        first["audit_metadata"]["changes"]["role"],
        json!({"from": "agent", "to": "manager"})
    );
    assert_eq!(
        first["audit_metadata"]["changes"]["full_name"],
        json!({"from": null, "to": "Pat Smith"})
    );
}

async fn deactivation_ends_login_refresh_and_bearer_at_once(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let user = app.create_user(&admin, "ida@example.com", "agent").await;
    let tokens = app.login("ida@example.com", "password-123").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    // In use before the change (so the API may have cached its session).
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&tokens.access_token))
            .await
            .status(),
        StatusCode::OK
    );

    let res = app
        .patch_json(&path, &admin, &json!({"is_active": false}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["is_active"], false);

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

    // Reactivated, the account logs in again, but the old sessions stay closed.
    let res = app
        .patch_json(&path, &admin, &json!({"is_active": true}))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let old = app.get("/api/v1/auth/me", Some(&tokens.access_token)).await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let fresh = app.login("ida@example.com", "password-123").await;
    assert_eq!(
        app.get("/api/v1/auth/me", Some(&fresh.access_token))
            .await
            .status(),
        StatusCode::OK
    );
}
