use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, SIGNATURE_KEYS, TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    generate_poll_sign_and_download,
    signed_links_are_checked,
    documents_are_private_to_their_owner,
    broken_templates_fail_with_a_reason,
    generate_refuses_bad_requests,
    deleting_a_document_removes_its_file,
);

async fn generate_poll_sign_and_download(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let template = app
        .create_template(
            &admin,
            "Attestation",
            "<h1>{{ document.document_type }}</h1><p>{{ inline_context.client }}</p>",
        )
        .await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;

    let res = app
        .client
        .post(app.url("/api/v1/documents/generate"))
        .bearer_auth(&agent)
        .header("x-request-id", "tour-42")
        .json(&json!({"document_type": "attestation", "template_id": template["id"], "inline_context": {"client": "Ada <Lovelace>"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["x-request-id"], "tour-42");
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let queued: Value = res.json().await.unwrap();
    let id = queued["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/documents/{id}"));
    assert_eq!(queued["status"], "queued");
    assert_eq!(
        queued["template_version_id"], template["versions"][0]["id"],
        "template_id means its latest version"
    );

    let doc = app.wait_for_document(&agent, id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["attempts"], 1);
    assert!(doc["error"].is_null());
    assert_eq!(doc["mime_type"], "text/html; charset=utf-8");
    assert!(doc["started_at"].is_string() && doc["finished_at"].is_string());

    if app.backend == Backend::PostgresRedis {
        let log = app.worker_log();
        assert!(
            log.lines().any(|line| line.contains("tour-42")
                && line.contains(id)
                && line.contains("document ready")),
            "the worker process logs the API's request id with the job:\n{log}"
        );
    }

    let res = app
        .post_json(
            &format!("/api/v1/documents/{id}/signed-url?ttl_seconds=120"),
            Some(&agent),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let link: Value = res.json().await.unwrap();
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "{}/api/v1/documents/{id}/download?exp=",
            app.address
        )),
        "{url}"
    );

    // The link is the credential: no bearer token.
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    let body = res.bytes().await.unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    assert_eq!(text, "<h1>attestation</h1><p>Ada &lt;Lovelace&gt;</p>");
    let checksum = hex::encode(Sha256::digest(&body));
    assert_eq!(doc["checksum"], checksum);
    assert_eq!(doc["size_bytes"], body.len());
    assert_eq!(headers["etag"], format!("\"{checksum}\""));
    assert_eq!(headers["x-checksum"], checksum);
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"attestation-")
            && disposition.ends_with(".html\""),
        "{disposition}"
    );

    // Without a link: the owner's bearer token.
    let res = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap(), body);
    let anonymous = app
        .get(&format!("/api/v1/documents/{id}/download"), None)
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let listed: Value = app
        .get("/api/v1/documents?status=ready", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["items"][0]["id"], id);
    let none: Value = app
        .get("/api/v1/documents?status=failed", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0);
}

async fn signed_links_are_checked(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"premium": 1200}}),
        )
        .await;
    let id = queued["id"].as_str().unwrap();
    assert_eq!(app.wait_for_document(&agent, id).await["status"], "ready");
    let link: Value = app
        .post_json(
            &format!("/api/v1/documents/{id}/signed-url"),
            Some(&agent),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    let (base, query) = url.split_once('?').unwrap();
    let params: std::collections::HashMap<&str, &str> =
        query.split('&').filter_map(|p| p.split_once('=')).collect();
    let (exp, sig) = (params["exp"].parse::<i64>().unwrap(), params["sig"]);
    assert!(sig.starts_with("k1."), "signed with the active key: {sig}");

    let tampered_sig = format!(
        "{}{}",
        &sig[..sig.len() - 1],
        if sig.ends_with('A') { 'B' } else { 'A' }
    );
    let attempts = [
        format!("{base}?exp={}&sig={sig}", exp + 60),
        format!("{base}?exp={exp}&sig={tampered_sig}"),
        format!("{base}?exp={exp}&sig=nokey.{}", &sig[3..]),
        format!("{base}?exp={exp}"),
    ];
    for attempt in &attempts {
        let res = app.client.get(attempt).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{attempt}");
        assert_eq!(error_code(res).await, "invalid_link");
    }

    // A genuine signature whose time has passed, and one from the previous key.
    let settings = common::Settings::from_lookup(|k| match k {
        "JWT_SECRET_KEY" => Some("unused-but-required-0123456789abcdef".into()),
        "SIGNATURE_KEYS" => Some(SIGNATURE_KEYS.into()),
        "SIGNATURE_ACTIVE_KID" => Some("old".into()),
        "ENCRYPTION_KEYS" => Some(crate::helpers::ENCRYPTION_KEYS.into()),
        "ENCRYPTION_ACTIVE_KID" => Some("e2".into()),
        _ => None,
    })
    .unwrap();
    let ring = settings.auth.signature_keys.clone();
    let doc_id = id.parse().unwrap();
    let past = chrono::Utc::now().timestamp() - 5;
    let expired = app
        .client
        .get(format!("{base}?exp={past}&sig={}", ring.sign(doc_id, past)))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), StatusCode::FORBIDDEN);
    assert!(
        expired.json::<Value>().await.unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let old_key = app
        .client
        .get(format!("{base}?exp={exp}&sig={}", ring.sign(doc_id, exp)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        old_key.status(),
        StatusCode::OK,
        "links signed before a rotation still open"
    );

    for ttl in ["0", "3601", "abc"] {
        let res = app
            .post_json(
                &format!("/api/v1/documents/{id}/signed-url?ttl_seconds={ttl}"),
                Some(&agent),
                &json!({}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "ttl {ttl}");
    }
}

async fn documents_are_private_to_their_owner(app: &TestApp) {
    let alice = app
        .register_and_login("alice@example.com")
        .await
        .access_token;
    let bob = app.register_and_login("bob@example.com").await.access_token;
    let admin = app.admin().await.access_token;
    let queued = app
        .generate(&alice, &json!({"document_type": "statement"}))
        .await;
    let id = queued["id"].as_str().unwrap();
    app.wait_for_document(&alice, id).await;

    for path in [
        format!("/api/v1/documents/{id}"),
        format!("/api/v1/documents/{id}/download"),
    ] {
        let res = app.get(&path, Some(&bob)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let sign = app
        .post_json(
            &format!("/api/v1/documents/{id}/signed-url"),
            Some(&bob),
            &json!({}),
        )
        .await;
    assert_eq!(sign.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&format!("/api/v1/documents/{id}"), Some(&bob))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let bobs: Value = app
        .get("/api/v1/documents", Some(&bob))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["total"], 0);

    let all: Value = app
        .get("/api/v1/documents", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 1, "admins see everyone's documents");
    assert_eq!(
        app.get(&format!("/api/v1/documents/{id}/download"), Some(&admin))
            .await
            .status(),
        StatusCode::OK
    );
}

async fn broken_templates_fail_with_a_reason(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let runaway = app
        .create_template(
            &admin,
            "Runaway",
            "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
        )
        .await;
    let queued = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": runaway["id"]}),
        )
        .await;
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "failed");
    assert!(
        doc["error"].as_str().unwrap().contains("ran too long"),
        "{doc}"
    );
    assert_eq!(doc["attempts"], 1, "a permanent failure is not retried");

    let undefined = app
        .create_template(
            &admin,
            "Undefined",
            "{{ inline_context.client.name.first }}",
        )
        .await;
    let queued = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": undefined["id"]}),
        )
        .await;
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "failed");
    assert!(
        doc["error"].as_str().unwrap().starts_with("template error"),
        "{doc}"
    );

    let id = doc["id"].as_str().unwrap();
    let sign = app
        .post_json(
            &format!("/api/v1/documents/{id}/signed-url"),
            Some(&admin),
            &json!({}),
        )
        .await;
    assert_eq!(sign.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(sign).await, "document_failed");
}

async fn generate_refuses_bad_requests(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let template = app.create_template(&admin, "Quote", "<p>quote</p>").await;
    let unknown = uuid::Uuid::now_v7();
    let cases = [
        (
            json!({"document_type": "q", "template_version_id": unknown}),
            StatusCode::NOT_FOUND,
            "Template version",
        ),
        (
            json!({"document_type": "q", "template_id": unknown}),
            StatusCode::NOT_FOUND,
            "Template",
        ),
        (
            json!({"document_type": "q", "policy_id": unknown}),
            StatusCode::NOT_FOUND,
            "Policy",
        ),
        (
            json!({"document_type": "q", "template_id": template["id"], "output_format": "xlsx"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "output_format",
        ),
        (
            json!({"document_type": "q", "compress": "yes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "compress",
        ),
        (
            json!({"document_type": "q", "output_format": "docx"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "output_format",
        ),
        (
            json!({"document_type": "q", "inline_context": [1, 2]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "inline_context",
        ),
        (
            json!({"document_type": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "document_type",
        ),
        (
            json!({"inline_context": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "document_type",
        ),
        (
            json!({"document_type": "q", "template_id": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "template_id",
        ),
    ];
    for (body, status, mention) in cases {
        let res = app
            .post_json("/api/v1/documents/generate", Some(&admin), &body)
            .await;
        assert_eq!(res.status(), status, "{body}");
        let err: Value = res.json().await.unwrap();
        assert!(
            err["detail"].as_str().unwrap().contains(mention),
            "{body} → {err}"
        );
    }
    let listed: Value = app
        .get("/api/v1/documents", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["total"], 0,
        "refused requests leave no document behind"
    );
    let anonymous = app
        .post_json(
            "/api/v1/documents/generate",
            None,
            &json!({"document_type": "q"}),
        )
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

async fn deleting_a_document_removes_its_file(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = app
        .generate(
            &agent,
            &json!({"document_type": "export", "inline_context": {"a": 1}}),
        )
        .await;
    let id = queued["id"].as_str().unwrap();
    app.wait_for_document(&agent, id).await;
    let link: Value = app
        .post_json(
            &format!("/api/v1/documents/{id}/signed-url"),
            Some(&agent),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = format!("documents/{id}.html");
    assert!(app.object_exists(&key).await);

    assert_eq!(
        app.delete(&format!("/api/v1/documents/{id}"), Some(&agent))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        !app.object_exists(&key).await,
        "the stored file goes with the row"
    );
    assert_eq!(
        app.get(&format!("/api/v1/documents/{id}"), Some(&agent))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let res = app
        .client
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "a link to a deleted document opens nothing"
    );
}
