use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    template_lifecycle,
    templates_need_a_manager,
    template_errors_are_client_errors
);

async fn template_lifecycle(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let created = app
        .create_template(&admin, "Attestation", "<p>{{ inline_context.name }}</p>")
        .await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["type"], "attestation");
    assert_eq!(created["format"], "html");
    assert_eq!(created["versions"][0]["version"], 1);
    assert_eq!(
        created["versions"][0]["checksum"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            b"<p>{{ inline_context.name }}</p>"
        ))
    );

    // Both spellings of the collection answer, without a redirect.
    for path in ["/api/v1/templates", "/api/v1/templates/"] {
        let res = app.get(path, Some(&admin)).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let page: Value = res.json().await.unwrap();
        assert_eq!(page["total"], 1);
        assert_eq!(page["limit"], 50);
        assert_eq!(page["items"][0]["id"], id);
    }

    let res = app
        .post_json(
            &format!("/api/v1/templates/{id}/versions"),
            Some(&admin),
            &json!({"content": "<p>v2</p>"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let v2: Value = res.json().await.unwrap();
    assert_eq!(v2["version"], 2);

    let detail: Value = app
        .get(&format!("/api/v1/templates/{id}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    let versions: Vec<i64> = detail["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);

    let got: Value = app
        .get(&format!("/api/v1/templates/{id}/versions/2"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["content"], "<p>v2</p>");
    let missing = app
        .get(&format!("/api/v1/templates/{id}/versions/9"), Some(&admin))
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let res = app
        .client
        .patch(app.url(&format!("/api/v1/templates/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["is_active"], false);
    assert_eq!(
        patched["name"], "Attestation",
        "absent fields stay as they are"
    );
    let inactive: Value = app
        .get("/api/v1/templates?active=false", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(inactive["total"], 1);
    let active: Value = app
        .get("/api/v1/templates?active=true", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(active["total"], 0);

    assert_eq!(
        app.delete(&format!("/api/v1/templates/{id}"), Some(&admin))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get(&format!("/api/v1/templates/{id}"), Some(&admin))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/api/v1/templates/{id}"), Some(&admin))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

async fn templates_need_a_manager(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let res = app
        .post_json(
            "/api/v1/templates",
            Some(&agent),
            &json!({"name": "Sneaky", "content": "x"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "insufficient_role");
    assert_eq!(
        app.get("/api/v1/templates", Some(&agent)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/api/v1/templates", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

async fn template_errors_are_client_errors(app: &TestApp) {
    let admin = app.admin().await.access_token;
    app.create_template(&admin, "Quote", "<p>quote</p>").await;

    let duplicate = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Quote", "type": "attestation", "content": "other"}),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(duplicate).await, "template_exists");
    let other_scope = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Quote", "type": "attestation", "scope": "company"}),
        )
        .await;
    assert_eq!(
        other_scope.status(),
        StatusCode::CREATED,
        "uniqueness is over name, type and scope"
    );

    let broken = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Broken", "content": "{% if %}"}),
        )
        .await;
    assert_eq!(broken.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = broken.json().await.unwrap();
    assert_eq!(err["errors"][0]["field"], "content");
    assert!(err["detail"].as_str().unwrap().contains("syntax"), "{err}");

    let bad_format = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Doc", "format": "docx"}),
        )
        .await;
    assert_eq!(bad_format.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let empty_name = app
        .post_json("/api/v1/templates", Some(&admin), &json!({"name": "  "}))
        .await;
    assert_eq!(empty_name.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let not_uuid = app.get("/api/v1/templates/not-a-uuid", Some(&admin)).await;
    assert_eq!(not_uuid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    error_code(not_uuid).await;
    let unknown = app
        .get(
            &format!("/api/v1/templates/{}", uuid::Uuid::now_v7()),
            Some(&admin),
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let version_of_unknown = app
        .post_json(
            &format!("/api/v1/templates/{}/versions", uuid::Uuid::now_v7()),
            Some(&admin),
            &json!({"content": "x"}),
        )
        .await;
    assert_eq!(version_of_unknown.status(), StatusCode::NOT_FOUND);
    for query in ["limit=0", "limit=201", "limit=abc", "offset=-1"] {
        let res = app
            .get(&format!("/api/v1/templates?{query}"), Some(&admin))
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
    }
}

on_both_backends!(previews_render_without_storing_anything);

async fn previews_render_without_storing_anything(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let html = app
        .create_template(&admin, "Quote", "<p>Dear {{ inline_context.client }}</p>")
        .await;
    let id = html["id"].as_str().unwrap();
    let preview = |body: Option<Value>, token: &str| {
        let mut req = app
            .client
            .post(app.url(&format!("/api/v1/templates/{id}/versions/1/preview")))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send()
    };
    let res = preview(None, &admin).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        res.text().await.unwrap(),
        "<p>Dear Jane Doe</p>",
        "the built-in sample"
    );
    let res = preview(Some(json!({"inline_context": {"client": "<Bob>"}})), &admin)
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "<p>Dear &lt;Bob&gt;</p>");

    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    assert_eq!(
        preview(None, &agent).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let missing = app
        .post_json(
            &format!("/api/v1/templates/{id}/versions/7/preview"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let failing = app
        .create_template(&admin, "Failing", "{{ inline_context.a.b.c }}")
        .await;
    let res = app
        .post_json(
            &format!(
                "/api/v1/templates/{}/versions/1/preview",
                failing["id"].as_str().unwrap()
            ),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let res = app
        .post_json("/api/v1/templates", Some(&admin), &json!({"name": "Letter", "format": "pdf", "content": "<h1>{{ inline_context.example }}</h1>"}))
        .await;
    let pdf: Value = res.json().await.unwrap();
    let res = app
        .post_json(
            &format!(
                "/api/v1/templates/{}/versions/1/preview",
                pdf["id"].as_str().unwrap()
            ),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/pdf");
    assert!(res.bytes().await.unwrap().starts_with(b"%PDF"));

    let listed: Value = app
        .get("/api/v1/documents", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 0, "a preview is not a document");
}
