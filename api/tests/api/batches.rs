//! Batches: many documents in one request, checked whole before anything is written, with
//! their progress, cancel, retry, deletion and a ZIP archive opened and read here; and the
//! bulk lane they wait in, which never holds up an interactive document.

use std::io::Read;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app_with};
use crate::{for_each_backend, on_both_backends_with};

on_both_backends_with!(
    a_batch_renders_its_items_and_streams_them_as_an_archive => &[("DEFAULT_COMPRESS", "true"), ("DEFAULT_ENCRYPT", "true")],
    a_batch_is_checked_whole_before_anything_is_written => &[("MAX_BATCH_ITEMS", "5")],
);
for_each_backend!(
    cancelling_a_batch_cancels_its_queued_items,
    an_interactive_document_is_not_stuck_behind_a_running_batch,
);

/// An item template that prints `inline_context.x.y`, and fails for an item without it.
const ITEM_TEMPLATE: &str = "<p>Item {{ inline_context.x.y }} of {{ inline_context.insurer }}</p>";

async fn batch(app: &TestApp, token: &str, id: &str) -> Value {
    let res = app
        .get(&format!("/api/v1/document-batches/{id}"), Some(token))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// Polls a batch until it is `completed` or `cancelled` with nothing running.
async fn wait_for_batch(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = batch(app, token, id).await;
        if batch["finished_at"].is_string() {
            return batch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch never finished: {batch}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.post_json("/api/v1/document-batches", Some(token), body)
        .await
}

async fn accepted(app: &TestApp, token: &str, body: &Value) -> Value {
    let res = submit(app, token, body).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let batch: Value = res.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/document-batches/{}", batch["id"].as_str().unwrap())
    );
    batch
}

async fn policy(app: &TestApp, token: &str, client: &Value, number: &str) -> Value {
    let body = json!({
        "policy_number": number, "client_id": client["id"], "product_name": "Auto",
        "premium_amount": 125000, "effective_date": "2026-01-01T00:00:00Z",
        "expiry_date": "2027-01-01T00:00:00Z",
    });
    let res = app.post_json("/api/v1/policies", Some(token), &body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

async fn client(app: &TestApp, token: &str, email: &str) -> Value {
    let body = json!({"first_name": "Ada", "last_name": "Lovelace", "email": email});
    let res = app.post_json("/api/v1/clients", Some(token), &body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

/// The archive's entries, by name.
fn unzip(bytes: &[u8]) -> Vec<(String, String)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP archive");
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let name = file.name().unwrap().into_owned();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            (name, text)
        })
        .collect()
}

async fn archive(app: &TestApp, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn a_batch_renders_its_items_and_streams_them_as_an_archive(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("other@example.com")
        .await
        .access_token;
    let template = app.create_template(&admin, "Item", ITEM_TEMPLATE).await;
    let ada = client(app, &agent, "ada@example.com").await;
    let p1 = policy(app, &agent, &ada, "P-1").await;

    let body = json!({
        "document_type": "attestation", "template_id": template["id"],
        "inline_context": {"insurer": "Acme"},
        "items": [
            {"policy_id": p1["id"], "inline_context": {"x": {"y": "one"}}},
            {"reference": "custom-ref", "inline_context": {"x": {"y": "two"}}},
            {"reference": "broken"},
        ],
    });
    let created = accepted(app, &agent, &body).await;
    assert_eq!(created["total"], 3);
    assert_eq!(created["output_format"], "html");
    assert_eq!(created["encrypted"], true);
    let id = created["id"].as_str().unwrap().to_owned();

    let done = wait_for_batch(app, &agent, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (done["ready"].clone(), done["failed"].clone()),
        (json!(2), json!(1))
    );
    assert_eq!(
        (done["queued"].clone(), done["processing"].clone()),
        (json!(0), json!(0))
    );
    assert!(done["started_at"].is_string());

    // Progress polls are conditional.
    let res = app
        .get(&format!("/api/v1/document-batches/{id}"), Some(&agent))
        .await;
    let etag = res.headers()["etag"].clone();
    let res = app
        .client
        .get(app.url(&format!("/api/v1/document-batches/{id}")))
        .bearer_auth(&agent)
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // Its documents, each with its reference; by status; and through /documents.
    let items: Value = app
        .get(
            &format!("/api/v1/document-batches/{id}/documents"),
            Some(&agent),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(items["total"], 3);
    let mut references: Vec<&str> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reference"].as_str().unwrap())
        .collect();
    references.sort();
    assert_eq!(references, ["P-1", "broken", "custom-ref"]);
    let failed: Value = app
        .get(
            &format!("/api/v1/document-batches/{id}/documents?status=failed"),
            Some(&agent),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["total"], 1);
    let broken = &failed["items"][0];
    assert_eq!(broken["reference"], "broken");
    assert_eq!(broken["priority"], "bulk");
    assert!(
        broken["error"].as_str().unwrap().contains("undefined"),
        "{broken}"
    );
    let listed: Value = app
        .get(&format!("/api/v1/documents?batch_id={id}"), Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 3);

    // The archive: each ready document under its reference, decrypted and decompressed,
    // and the manifest of all three.
    let res = archive(
        app,
        &app.url(&format!("/api/v1/document-batches/{id}/archive")),
        Some(&agent),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/zip");
    let entries = unzip(&res.bytes().await.unwrap());
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["P-1.html", "custom-ref.html", "manifest.csv"]);
    assert!(
        entries[0].1.contains("Item one of Acme"),
        "{}",
        entries[0].1
    );
    assert!(
        entries[1].1.contains("Item two of Acme"),
        "{}",
        entries[1].1
    );
    let manifest: Vec<&str> = entries[2].1.lines().collect();
    assert_eq!(
        manifest[0],
        "reference,document_id,status,error,size_bytes,checksum"
    );
    assert_eq!(manifest.len(), 4);
    assert!(
        manifest[3].starts_with("broken,") && manifest[3].contains(",failed,"),
        "{manifest:?}"
    );
    let ready_row: Vec<&str> = manifest[1].split(',').collect();
    assert_eq!(ready_row[2], "ready");
    assert_eq!(
        ready_row[4],
        entries[0].1.len().to_string(),
        "size_bytes is the plain size"
    );
    assert_eq!(ready_row[5].len(), 64, "a SHA-256");

    // A signed link needs no token; a tampered one is refused.
    let link: Value = app
        .post_json(
            &format!("/api/v1/document-batches/{id}/signed-url?ttl_seconds=60"),
            Some(&agent),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    let res = archive(app, url, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(unzip(&res.bytes().await.unwrap()).len(), 3);
    let res = archive(app, &url.replace("sig=", "sig=x"), None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(res).await, "invalid_link");

    // Retry puts the failed item back (it fails again: its context is still wrong).
    let res = app
        .post_json(
            &format!("/api/v1/document-batches/{id}/retry"),
            Some(&agent),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let retried: Value = res.json().await.unwrap();
    assert_eq!(retried["failed"], 0, "{retried}");
    let again = wait_for_batch(app, &agent, &id).await;
    assert_eq!(
        (again["ready"].clone(), again["failed"].clone()),
        (json!(2), json!(1))
    );

    // Ownership: another agent sees nothing of it; an admin sees it.
    let res = app
        .get(&format!("/api/v1/document-batches/{id}"), Some(&other))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = archive(
        app,
        &app.url(&format!("/api/v1/document-batches/{id}/archive")),
        Some(&other),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let theirs: Value = app
        .get("/api/v1/document-batches", Some(&other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["total"], 0);
    let all: Value = app
        .get("/api/v1/document-batches", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 1);
    assert_eq!(all["items"][0]["ready"], 2);
    let res = app
        .delete(&format!("/api/v1/document-batches/{id}"), Some(&other))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // Deleting it takes its documents along.
    let res = app
        .delete(&format!("/api/v1/document-batches/{id}"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&format!("/api/v1/document-batches/{id}"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let doc_id = broken["id"].as_str().unwrap();
    let res = app
        .get(&format!("/api/v1/documents/{doc_id}"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    for action in [
        "batch_created",
        "batch_retried",
        "download_batch_archive",
        "batch_deleted",
    ] {
        assert!(app.audited(&admin, action, &id).await, "{action} audited");
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metrics.value("document_batches_total", &[("event", "created")]),
        1.0
    );
    assert_eq!(metrics.value("document_batch_items_total", &[]), 3.0);
}

async fn a_batch_is_checked_whole_before_anything_is_written(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("other@example.com")
        .await
        .access_token;
    let ada = client(app, &agent, "ada@example.com").await;
    let p1 = policy(app, &agent, &ada, "P-1").await;
    let p2 = policy(app, &agent, &ada, "P/2").await;
    let bob = client(app, &other, "bob@example.com").await;
    let theirs = policy(app, &other, &bob, "T-1").await;

    let body = json!({"document_type": "attestation", "items": [
        {"policy_id": p1["id"]},
        {"policy_id": theirs["id"]},
        {"reference": "../escape"},
        {"reference": "same"},
        {"reference": "same", "inline_context": "not an object"},
    ]});
    let res = submit(app, &agent, &body).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let err: Value = res.json().await.unwrap();
    let fields: Vec<&str> = err["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "items[1].policy_id",
            "items[2].reference",
            "items[4].reference",
            "items[4].inline_context"
        ]
    );
    let none: Value = app
        .get("/api/v1/document-batches", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0, "nothing created");
    let none: Value = app
        .get("/api/v1/documents", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0, "no document either");

    let item = json!({"reference": "a"});
    for (body, field) in [
        (json!({"document_type": "attestation"}), "items"),
        (
            json!({"document_type": "attestation", "items": []}),
            "items",
        ),
        (
            json!({"document_type": "attestation", "items": vec![item.clone(); 6]}),
            "items",
        ),
        (
            json!({"document_type": "attestation", "items": [item], "policy_filter": {}}),
            "items",
        ),
        (
            json!({"document_type": "", "items": [item]}),
            "document_type",
        ),
        (
            json!({"document_type": "x", "policy_filter": {"status": "expired"}}),
            "policy_filter",
        ),
        (
            json!({"document_type": "x", "items": [{"policy_id": "nope"}]}),
            "items[0].policy_id",
        ),
    ] {
        let res = submit(app, &agent, &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["errors"][0]["field"], field, "{body}: {err}");
    }

    // A policy filter: one item per policy the caller can see, named by its number (one
    // that cannot name a file falls back to the document id).
    let by_filter = accepted(
        app,
        &agent,
        &json!({"document_type": "attestation", "policy_filter": {"client_id": ada["id"]}}),
    )
    .await;
    assert_eq!(by_filter["total"], 2);
    let id = by_filter["id"].as_str().unwrap();
    let items: Value = app
        .get(
            &format!("/api/v1/document-batches/{id}/documents"),
            Some(&agent),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut pairs: Vec<(String, String)> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["policy_id"].as_str().unwrap().to_owned(),
                d["reference"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    let p2_doc = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["policy_id"] == p2["id"])
        .unwrap();
    assert!(pairs.contains(&(p1["id"].as_str().unwrap().to_owned(), "P-1".to_owned())));
    assert_eq!(p2_doc["reference"], p2_doc["id"], "P/2 cannot name a file");

    // Idempotency: the same key and body answer the same batch; another body is refused.
    let body = json!({"document_type": "attestation", "items": [{"reference": "k"}]});
    let send = |body: Value| {
        app.client
            .post(app.url("/api/v1/document-batches"))
            .bearer_auth(&agent)
            .header("idempotency-key", "renewals-2026")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let replay = send(body).await.unwrap();
    assert_eq!(replay.status(), StatusCode::OK);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    let reused = send(json!({"document_type": "attestation", "items": [{"reference": "other"}]}))
        .await
        .unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_code(reused).await, "idempotency_key_reused");
}

async fn cancelling_a_batch_cancels_its_queued_items(backend: Backend) {
    let app = spawn_app_with(backend, &[], false).await;
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let items: Vec<Value> = (0..5)
        .map(|n| json!({"reference": format!("r{n}")}))
        .collect();
    let created = accepted(
        &app,
        &agent,
        &json!({"document_type": "quote", "items": items}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (created["status"].clone(), created["queued"].clone()),
        (json!("queued"), json!(5))
    );
    // A single document asked for in the bulk lane waits there too.
    let single = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "priority": "bulk"}),
        )
        .await;
    assert_eq!(single["priority"], "bulk");

    let queue = app.ops(&admin, "queue").await;
    let lanes = queue["lanes"].as_array().unwrap();
    assert_eq!(lanes[0]["lane"], "interactive");
    assert_eq!(lanes[0]["queued"], 0);
    assert_eq!(lanes[1]["lane"], "bulk");
    assert_eq!(lanes[1]["queued"], 6, "{queue}");
    assert!(lanes[1]["oldest_queued_seconds"].is_number());
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("queue_lane_depth", &[("lane", "bulk")]), 6.0);

    let res = app
        .post_json(
            &format!("/api/v1/document-batches/{id}/archive"),
            Some(&agent),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = archive(
        &app,
        &app.url(&format!("/api/v1/document-batches/{id}/archive")),
        Some(&agent),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "nothing_ready");

    let res = app
        .post_json(
            &format!("/api/v1/document-batches/{id}/cancel"),
            Some(&agent),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let cancelled: Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        (cancelled["cancelled"].clone(), cancelled["queued"].clone()),
        (json!(5), json!(0))
    );
    assert!(cancelled["finished_at"].is_string());
    assert!(app.audited(&admin, "batch_cancelled", &id).await);

    // A worker comes: the single bulk document is rendered, the cancelled items never are.
    let _worker = app.start_worker(&[]);
    let single = app
        .wait_for_document(&agent, single["id"].as_str().unwrap())
        .await;
    assert_eq!(single["status"], "ready");
    let after = batch(&app, &agent, &id).await;
    assert_eq!(
        (after["cancelled"].clone(), after["ready"].clone()),
        (json!(5), json!(0))
    );
    app.stop().await;
}

/// With a batch of 400 waiting ahead of it, an interactive document asked for afterwards
/// is rendered while most of the batch still waits: it queued behind the bulk window, not
/// behind the batch.
async fn an_interactive_document_is_not_stuck_behind_a_running_batch(backend: Backend) {
    let app = spawn_app_with(backend, &[("BULK_WINDOW", "4")], false).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let items: Vec<Value> = (0..400)
        .map(|n| json!({"inline_context": {"n": n}}))
        .collect();
    let created = accepted(
        &app,
        &agent,
        &json!({"document_type": "quote", "items": items}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let single = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    assert_eq!(single["priority"], "interactive");

    let _worker = app.start_worker(&[("BULK_WINDOW", "4")]);
    let single = app
        .wait_for_document(&agent, single["id"].as_str().unwrap())
        .await;
    assert_eq!(single["status"], "ready");
    let progress = batch(&app, &agent, &id).await;
    let done = progress["ready"].as_i64().unwrap() + progress["processing"].as_i64().unwrap();
    assert!(
        done < 100,
        "the interactive document waited for {done} bulk items: {progress}"
    );

    let finished = wait_for_batch(&app, &agent, &id).await;
    assert_eq!(finished["ready"], 400, "{finished}");
    app.stop().await;
}
