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
    // Each preview was rendered by a worker as a short-lived row, then deleted with its
    // object once answered.
    let rows: i64 = common::on_db!(&app.state.db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM generated_documents")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    assert_eq!(rows, 0, "no preview row is left");
    let objects: Vec<String> = (app.state.storage.list_documents().await.unwrap())
        .into_iter()
        .map(|object| object.key)
        .collect();
    assert!(objects.is_empty(), "no preview object is left: {objects:?}");
}

on_both_backends!(uploads_add_checked_versions);

/// `POST /templates/{id}/upload`: a multipart `file` becomes the next version; a `checksum`
/// that does not match, an unparsable template, a missing part or an oversized body is
/// refused and adds nothing.
async fn uploads_add_checked_versions(app: &TestApp) {
    use reqwest::multipart::{Form, Part};
    use sha2::Digest;

    let admin = app.admin().await.access_token;
    let created = app
        .create_template(&admin, "Quote", "<p>{{ policy.policy_number }}</p>")
        .await;
    let id = created["id"].as_str().unwrap();
    let upload = |form: Form| {
        app.client
            .post(app.url(&format!("/api/v1/templates/{id}/upload")))
            .bearer_auth(&admin)
            .multipart(form)
            .send()
    };
    let file = |content: &str| Part::text(content.to_owned()).file_name("quote.html");
    let versions = || async {
        let detail: Value = app
            .get(&format!("/api/v1/templates/{id}"), Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        detail["versions"].as_array().unwrap().len()
    };

    let content = "<h1>Quote {{ policy.policy_number }}</h1>";
    let res = upload(Form::new().part("file", file(content)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let v2: Value = res.json().await.unwrap();
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["content"], content);
    assert_eq!(v2["storage_backend"], "upload");
    let sum = hex::encode(sha2::Sha256::digest(content.as_bytes()));
    assert_eq!(v2["checksum"], sum);

    // A matching checksum (any hex case) is accepted.
    let res = upload(
        Form::new()
            .part("file", file(content))
            .text("checksum", sum.to_uppercase()),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 3);

    // A control character in a part's header is malformed multipart (400); a long name is
    // cut to 255 characters in the audit log.
    let res = upload(Form::new().part(
        "file",
        Part::text(content.to_owned()).file_name("odd\u{0}name.html"),
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = upload(Form::new().part(
        "file",
        Part::text(content.to_owned()).file_name(format!("{}.html", "n".repeat(300))),
    ))
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.json::<Value>().await.unwrap()["version"], 4);

    let res = upload(
        Form::new()
            .part("file", file("<p>tampered</p>"))
            .text("checksum", sum.clone()),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(res).await, "checksum_mismatch");

    let res = upload(Form::new().part("file", file("<p>{% if %}</p>")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "content", "{body}");

    let res = upload(Form::new().text("checksum", sum.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "file", "{body}");

    let res = upload(Form::new().part("file", Part::bytes(vec![0xff, 0xfe, 0x00])))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Over MAX_BODY_BYTES (10 MiB by default): 413 with the JSON error shape.
    let big = "x".repeat(10 * 1024 * 1024 + 1);
    let res = upload(Form::new().part("file", Part::text(big).file_name("big.html")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(res).await, "payload_too_large");

    let res = app
        .post_json(
            &format!("/api/v1/templates/{id}/upload"),
            Some(&admin),
            &json!({"content": content}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    error_code(res).await;

    assert_eq!(versions().await, 4, "refused uploads added a version");

    let unknown = app
        .client
        .post(app.url(&format!(
            "/api/v1/templates/{}/upload",
            uuid::Uuid::now_v7()
        )))
        .bearer_auth(&admin)
        .multipart(Form::new().part("file", file(content)))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let res = app
        .client
        .post(app.url(&format!("/api/v1/templates/{id}/upload")))
        .bearer_auth(&agent)
        .multipart(Form::new().part("file", file(content)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    let audit: Value = app
        .get(
            "/api/v1/audit-logs?action=template_version_created",
            Some(&admin),
        )
        .await
        .json()
        .await
        .unwrap();
    let uploads: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["audit_metadata"]["source"] == "upload")
        .collect();
    assert_eq!(uploads.len(), 3, "{audit}");
    let names: Vec<&str> = uploads
        .iter()
        .map(|e| e["audit_metadata"]["filename"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"n".repeat(255).as_str()), "{names:?}");
    assert!(names.contains(&"quote.html"), "{names:?}");
    assert!(
        uploads
            .iter()
            .all(|e| e["audit_metadata"]["version"].is_i64()),
        "{audit}"
    );
    assert_eq!(uploads[0]["object_type"], "template_version");
}

on_both_backends!(template_options_are_checked_and_stored_as_used);

/// `options` may only name the layout options; margins are stored as they will be used,
/// so what the database keeps reads back (a number like 1e-300 once broke Postgres reads).
async fn template_options_are_checked_and_stored_as_used(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let res = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Typo", "options": {"pageSize": "A4"}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "options");
    assert!(
        body["detail"].as_str().unwrap().contains("pageSize"),
        "{body}"
    );

    let res = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Tiny", "options": {"margin_top": 1e-300, "page_size": " a5", "orientation": "Landscape", "margin_mm": null}}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.unwrap();
    assert_eq!(
        created["options"],
        json!({"margin_top": 0.0, "page_size": "A5", "orientation": "landscape"})
    );
    let id = created["id"].as_str().unwrap();

    let res = app
        .client
        .patch(app.url(&format!("/api/v1/templates/{id}")))
        .bearer_auth(&admin)
        .json(&json!({"options": {"margin_mm": 12.3456}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let read: Value = app
        .get(&format!("/api/v1/templates/{id}"), Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["options"], json!({"margin_mm": 12.35}));
}
