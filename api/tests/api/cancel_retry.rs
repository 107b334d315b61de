//! Cancel and retry: a queued document can be cancelled (its late job does nothing); a
//! failed or cancelled one goes back to the queue under the same id and object key.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::for_each_backend;
use crate::helpers::{Backend, TestApp, error_code, spawn_app_with};
use crate::lifecycle::{SLOW_TEMPLATE, wait_for_status};

for_each_backend!(
    a_cancelled_document_is_never_rendered,
    failed_and_cancelled_documents_are_retried_under_the_same_id,
    only_queued_documents_cancel_and_only_finished_ones_retry,
);

async fn post(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.post_json(path, Some(token), &json!({})).await
}

async fn document(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(&format!("/api/v1/documents/{id}"), Some(token))
        .await
        .json()
        .await
        .unwrap()
}

async fn a_cancelled_document_is_never_rendered(backend: Backend) {
    let app = spawn_app_with(backend, &[], false).await;
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let ids = app.generate_quotes(&agent, 2).await;

    // The owner cancels one; an admin (as a manager could) cancels the other.
    for (id, token) in ids.iter().zip([&agent, &admin]) {
        let res = post(&app, token, &format!("/api/v1/documents/{id}/cancel")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let cancelled: Value = res.json().await.unwrap();
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
        assert!(cancelled["finished_at"].is_string());
    }
    let id = &ids[0];
    let res = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "document_cancelled");

    // A worker takes the queue, the cancelled documents' jobs included: each finds nothing
    // to do. The next document is queued after them, so by the time it is ready, their
    // jobs have come and gone.
    let _worker = app.start_worker(&[]);
    let after = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let after = app
        .wait_for_document(&agent, after["id"].as_str().unwrap())
        .await;
    assert_eq!(after["status"], "ready");
    for id in &ids {
        let doc = document(&app, &agent, id).await;
        assert_eq!(doc["status"], "cancelled", "{doc}");
        assert_eq!(doc["attempts"], 0, "{doc}");
        assert!(app.audited(&admin, "document_cancelled", id).await);
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.value(
            "documents_total",
            &[("format", "html"), ("outcome", "cancelled")]
        ),
        2.0
    );
    app.stop().await;
}

async fn failed_and_cancelled_documents_are_retried_under_the_same_id(backend: Backend) {
    let app = spawn_app_with(backend, &[], false).await;
    let admin = app.admin().await.access_token;
    let runaway = app
        .create_template(
            &admin,
            "Runaway",
            "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
        )
        .await;
    let cancelled = app
        .generate(&admin, &json!({"document_type": "quote"}))
        .await;
    let cancelled = cancelled["id"].as_str().unwrap().to_owned();
    let res = post(
        &app,
        &admin,
        &format!("/api/v1/documents/{cancelled}/cancel"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let failing = app
        .generate(
            &admin,
            &json!({"document_type": "quote", "template_id": runaway["id"]}),
        )
        .await;
    let failing = failing["id"].as_str().unwrap().to_owned();
    let _worker = app.start_worker(&[]);
    let failed = app.wait_for_document(&admin, &failing).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 1);

    // The cancelled document, retried, is rendered under its id and its own object key.
    let res = post(
        &app,
        &admin,
        &format!("/api/v1/documents/{cancelled}/retry"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(
        res.headers()["location"],
        format!("/api/v1/documents/{cancelled}").as_str()
    );
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["id"], cancelled.as_str());
    let ready = app.wait_for_document(&admin, &cancelled).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let row = app
        .state
        .db
        .documents()
        .get(cancelled.parse::<Uuid>().unwrap())
        .await
        .unwrap()
        .unwrap();
    let key = row.storage_key.expect("a ready document has an object");
    assert_eq!(
        common::storage::Storage::document_id(&key),
        Some(row.id),
        "the object key derives from the same id"
    );

    // The failed document, retried, starts over: attempts reset, error cleared; it runs
    // (and fails) again.
    let res = post(&app, &admin, &format!("/api/v1/documents/{failing}/retry")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let requeued: Value = res.json().await.unwrap();
    assert_eq!(requeued["attempts"], 0, "{requeued}");
    assert!(requeued["error"].is_null(), "{requeued}");
    let again = app.wait_for_document(&admin, &failing).await;
    assert_eq!(again["status"], "failed");
    assert_eq!(again["attempts"], 1, "{again}");
    assert!(app.audited(&admin, "document_retried", &failing).await);
    assert!(app.audited(&admin, "document_retried", &cancelled).await);
    assert_eq!(
        app.metrics().await.value(
            "documents_total",
            &[("format", "html"), ("outcome", "resubmitted")]
        ),
        2.0
    );
    app.stop().await;
}

async fn only_queued_documents_cancel_and_only_finished_ones_retry(backend: Backend) {
    // Fuel for the slow template's four million loop turns.
    let app = spawn_app_with(backend, &[("RENDER_FUEL", "1000000000")], true).await;
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("other@example.com")
        .await
        .access_token;
    let slow = app.create_template(&admin, "Slow", SLOW_TEMPLATE).await;
    let doc = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "template_id": slow["id"]}),
        )
        .await;
    let id = doc["id"].as_str().unwrap().to_owned();

    // Someone else's document does not exist for them.
    for action in ["cancel", "retry"] {
        let res = post(&app, &other, &format!("/api/v1/documents/{id}/{action}")).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{action}");
    }
    // Being rendered: it will finish, it cannot be cancelled; nor retried.
    wait_for_status(&app, &agent, &id, "processing").await;
    let res = post(&app, &agent, &format!("/api/v1/documents/{id}/cancel")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "not_cancellable");
    let res = post(&app, &agent, &format!("/api/v1/documents/{id}/retry")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "not_retryable");

    // Ready: nothing to cancel, nothing to retry.
    let ready = app.wait_for_document(&agent, &id).await;
    assert_eq!(ready["status"], "ready");
    for (action, code) in [("cancel", "not_cancellable"), ("retry", "not_retryable")] {
        let res = post(&app, &agent, &format!("/api/v1/documents/{id}/{action}")).await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{action}");
        assert_eq!(error_code(res).await, code);
    }
    app.stop().await;
}
