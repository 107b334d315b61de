//! PDF through the warm engine, and documents at rest: compression, encryption, rotation,
//! tampering, S3 presigned links.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, services_skipped, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    xlsx_documents_follow_the_sheet_spec,
    pdf_documents_come_from_the_template_layout,
    pdf_templates_reach_neither_the_network_nor_local_files,
    compressed_and_encrypted_documents_download_as_the_original,
    a_tampered_ciphertext_never_downloads_as_garbage,
);

/// The text of a PDF, through poppler's `pdftotext`.
fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pdfinfo`'s "Page size" line.
fn pdf_page_size(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdfinfo")
        .arg(&path)
        .output()
        .expect("pdfinfo runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("Page size:"))
        .unwrap_or_default()
        .to_owned()
}

/// Everything an object stream holds.
async fn stored_bytes(object: common::storage::ObjectStream) -> Vec<u8> {
    futures::TryStreamExt::try_fold(object.stream, Vec::new(), |mut all, chunk| async move {
        all.extend_from_slice(&chunk);
        Ok(all)
    })
    .await
    .unwrap()
}

async fn download(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    let res = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(token))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    res
}

async fn pdf_documents_come_from_the_template_layout(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let res = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Certificate", "type": "attestation", "format": "pdf",
                    "options": {"page_size": "A4", "orientation": "landscape", "margin_mm": 10},
                    "content": "<h1>Certificate of insurance</h1><p>Insured: {{ inline_context.insured }}</p>"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let template: Value = res.json().await.unwrap();
    let queued = app
        .generate(&admin, &json!({"document_type": "attestation", "template_id": template["id"], "inline_context": {"insured": "Grace Hopper"}}))
        .await;
    assert_eq!(
        queued["output_format"], "pdf",
        "the template's format is the default"
    );
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(doc["mime_type"], "application/pdf");

    let res = download(app, &admin, doc["id"].as_str().unwrap()).await;
    assert_eq!(res.headers()["content-type"], "application/pdf");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".pdf\"")
    );
    let pdf = res.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF"));
    let text = pdf_text(&pdf);
    assert!(
        text.contains("Certificate of insurance") && text.contains("Grace Hopper"),
        "{text}"
    );
    assert!(
        pdf_page_size(&pdf).contains("842 x 595"),
        "landscape A4: {}",
        pdf_page_size(&pdf)
    );

    // The same HTML template also renders to HTML on request; an HTML one cannot become XLSX.
    let html = app
        .generate(&admin, &json!({"document_type": "attestation", "template_id": template["id"], "output_format": "html"}))
        .await;
    assert_eq!(
        app.wait_for_document(&admin, html["id"].as_str().unwrap())
            .await["status"],
        "ready"
    );
    let bad_layout = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Odd", "format": "pdf", "options": {"page_size": "B9"}}),
        )
        .await;
    assert_eq!(bad_layout.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

async fn pdf_templates_reach_neither_the_network_nor_local_files(app: &TestApp) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok(_) => {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };

    let admin = app.admin().await.access_token;
    let content = format!(
        r#"<h1>Hostile</h1>
        <img src="http://127.0.0.1:{port}/pixel.png">
        <link rel="stylesheet" href="http://127.0.0.1:{port}/style.css">
        <iframe src="http://127.0.0.1:{port}/frame"></iframe>
        <img src="http://169.254.169.254/latest/meta-data/">
        <iframe src="file:///etc/passwd"></iframe>
        <img src="file:///etc/passwd">"#
    );
    let res = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Hostile", "format": "pdf", "content": content}),
        )
        .await;
    let template: Value = res.json().await.unwrap();
    let queued = app
        .generate(
            &admin,
            &json!({"document_type": "probe", "template_id": template["id"]}),
        )
        .await;
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(
        doc["status"], "ready",
        "blocked resources do not fail the document: {doc}"
    );
    let pdf = download(app, &admin, doc["id"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    let text = pdf_text(&pdf);
    assert!(text.contains("Hostile"));
    assert!(!text.contains("root:"), "local files must not leak: {text}");
    // Connections would have been made during the render, which is over.
    stop.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the template reached the network"
    );
}

async fn compressed_and_encrypted_documents_download_as_the_original(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let rows: serde_json::Map<String, Value> = (0..300)
        .map(|i| {
            (
                format!("line {i:03}"),
                json!("the same premium schedule text"),
            )
        })
        .collect();
    let mut sizes = Vec::new();
    for (compress, encrypt) in [(false, false), (true, false), (false, true), (true, true)] {
        let queued = app
            .generate(&agent, &json!({"document_type": "statement", "inline_context": rows, "compress": compress, "encrypt": encrypt}))
            .await;
        assert_eq!(queued["compressed"], compress);
        assert_eq!(queued["encrypted"], encrypt);
        let id = queued["id"].as_str().unwrap();
        let doc = app.wait_for_document(&agent, id).await;
        assert_eq!(doc["status"], "ready", "{doc}");
        let res = download(app, &agent, id).await;
        assert_eq!(
            res.headers()["content-length"],
            doc["size_bytes"].to_string()
        );
        let body = res.bytes().await.unwrap();
        assert_eq!(body.len() as i64, doc["size_bytes"].as_i64().unwrap());
        assert_eq!(
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
            doc["checksum"]
        );
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("<th>line 299</th>")
        );

        let stored = app
            .state
            .storage
            .get(&format!("documents/{id}.html"))
            .await
            .unwrap();
        assert_eq!(stored.size as i64, doc["stored_bytes"].as_i64().unwrap());
        let raw: Vec<u8> = stored_bytes(stored).await;
        let readable = String::from_utf8_lossy(&raw).contains("premium schedule");
        assert_eq!(
            readable,
            !compress && !encrypt,
            "what the store holds (compress {compress}, encrypt {encrypt})"
        );
        if encrypt {
            assert!(raw.starts_with(b"MAEN"), "the versioned header");
            assert_eq!(&raw[6..8], b"e2", "the active key id is recorded");
        }
        sizes.push(raw.len());
    }
    assert!(
        sizes[1] * 5 < sizes[0],
        "brotli shrinks repetitive HTML: {sizes:?}"
    );
}

async fn a_tampered_ciphertext_never_downloads_as_garbage(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let big: serde_json::Map<String, Value> = (0..4000)
        .map(|i| (format!("k{i}"), json!(format!("value {i}"))))
        .collect();
    let queued = app
        .generate(
            &agent,
            &json!({"document_type": "export", "inline_context": big, "encrypt": true}),
        )
        .await;
    let id = queued["id"].as_str().unwrap();
    assert_eq!(app.wait_for_document(&agent, id).await["status"], "ready");
    let key = format!("documents/{id}.html");
    let stored = app.state.storage.get(&key).await.unwrap();
    let mut raw: Vec<u8> = stored_bytes(stored).await;
    assert!(raw.len() > 70_000, "more than one chunk");
    let middle = raw.len() - 100;
    raw[middle] ^= 0x01;
    app.state.storage.put(&key, raw.into()).await.unwrap();

    // The first chunk verifies, so the answer starts; the flipped one aborts the transfer,
    // before or after the headers reach the client depending on buffering.
    let url = app.url(&format!("/api/v1/documents/{id}/download"));
    match app.client.get(url).bearer_auth(&agent).send().await {
        Err(err) => assert!(err.is_request(), "{err}"),
        Ok(res) => assert!(
            res.bytes().await.is_err(),
            "a tampered object must not download completely"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_encrypted_before_a_key_rotation_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let before = spawn_app(
        Backend::Sqlite,
        &[("DATA_DIR", data_dir), ("ENCRYPTION_ACTIVE_KID", "old")],
    )
    .await;
    let agent = before
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let queued = before
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"a": "before"}, "encrypt": true}),
        )
        .await;
    let old_id = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(
        before.wait_for_document(&agent, &old_id).await["status"],
        "ready"
    );
    before.stop().await;

    // Rotated: "e2" is active, "old" is kept to read what it sealed.
    let after = spawn_app(Backend::Sqlite, &[("DATA_DIR", data_dir)]).await;
    let agent = after
        .login("agent@example.com", "password-123")
        .await
        .access_token;
    let body = download(&after, &agent, &old_id)
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("before"));
    let queued = after
        .generate(&agent, &json!({"document_type": "quote", "encrypt": true}))
        .await;
    let new_id = queued["id"].as_str().unwrap();
    after.wait_for_document(&agent, new_id).await;
    let stored = after
        .state
        .storage
        .get(&format!("documents/{new_id}.html"))
        .await
        .unwrap();
    let raw: Vec<u8> = stored_bytes(stored).await;
    assert_eq!(&raw[6..8], b"e2");
    after.stop().await;

    // A ring that lost the old key refuses the old document instead of returning garbage.
    let forgot = spawn_app(
        Backend::Sqlite,
        &[
            ("DATA_DIR", data_dir),
            (
                "ENCRYPTION_KEYS",
                r#"{"e2":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}"#,
            ),
        ],
    )
    .await;
    let agent = forgot
        .login("agent@example.com", "password-123")
        .await
        .access_token;
    let res = forgot
        .get(
            &format!("/api/v1/documents/{old_id}/download"),
            Some(&agent),
        )
        .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(crate::helpers::error_code(res).await, "document_unreadable");
    forgot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_mode_hands_out_presigned_links_for_plain_documents() {
    if services_skipped() {
        return;
    }
    let app = spawn_app(Backend::PostgresRedis, &[("SIGNED_URL_MODE", "s3")]).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let plain = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"x": "plain"}}),
        )
        .await;
    let plain = plain["id"].as_str().unwrap();
    app.wait_for_document(&agent, plain).await;
    let link: Value = app
        .post_json(
            &format!("/api/v1/documents/{plain}/signed-url?ttl_seconds=60"),
            Some(&agent),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(app.env["S3_ENDPOINT"].as_str()) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("plain"));
    let forged = url.replace("X-Amz-Expires=60", "X-Amz-Expires=6000");
    assert_eq!(
        app.client.get(&forged).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    // An encrypted document can only be opened by the API: its link points there.
    let sealed = app
        .generate(&agent, &json!({"document_type": "quote", "encrypt": true}))
        .await;
    let sealed = sealed["id"].as_str().unwrap();
    app.wait_for_document(&agent, sealed).await;
    let link: Value = app
        .post_json(
            &format!("/api/v1/documents/{sealed}/signed-url"),
            Some(&agent),
            &json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(link["url"].as_str().unwrap().starts_with(&app.address));
    app.stop().await;
}

/// The text of every worksheet and the shared strings of an XLSX file.
fn xlsx_xml(xlsx: &[u8]) -> String {
    let mut archive =
        zip::ZipArchive::new(std::io::Cursor::new(xlsx)).expect("an XLSX is a zip archive");
    let mut all = String::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let name = file.name().unwrap().into_owned();
        if name.starts_with("xl/worksheets/") || name == "xl/sharedStrings.xml" {
            std::io::Read::read_to_string(&mut file, &mut all).unwrap();
        }
    }
    all
}

const POLICY_SHEET: &str = r#"{"sheets": [{
    "name": "Policies",
    "rows": "inline_context.policies",
    "title": ["Portfolio of {{ inline_context.client }}"],
    "columns": [
        {"header": "Number", "value": "row.number", "format": "text", "width": 16},
        {"header": "Premium", "value": "row.premium", "format": "currency", "currency": "XAF"},
        {"header": "Start", "value": "row.start", "format": "date"}
    ],
    "totals": {"label": "Total", "columns": ["Premium"]}
}]}"#;

async fn xlsx_documents_follow_the_sheet_spec(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let res = app
        .post_json("/api/v1/templates", Some(&admin), &json!({"name": "Portfolio", "type": "export", "format": "xlsx", "content": POLICY_SHEET}))
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let template: Value = res.json().await.unwrap();
    let context = json!({"client": "Ada & Co", "policies": [
        {"number": "POL-001", "premium": 125000, "start": "2026-01-15"},
        {"number": "POL-002", "premium": 80000, "start": "2026-03-01"}
    ]});
    let queued = app.generate(&admin, &json!({"document_type": "export", "template_id": template["id"], "inline_context": context})).await;
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    assert_eq!(
        doc["mime_type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    let xlsx = download(app, &admin, doc["id"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    let xml = xlsx_xml(&xlsx);
    for expected in [
        "Portfolio of Ada &amp; Co",
        "Number",
        "Premium",
        "POL-002",
        "125000",
        "SUM(",
    ] {
        assert!(xml.contains(expected), "{expected} missing from {xml}");
    }

    // Without a template: the inline context as key/value rows, never a debug dump.
    let queued = app
        .generate(&admin, &json!({"document_type": "export", "output_format": "xlsx", "inline_context": {"client": {"city": "Douala"}, "items": [{"n": 1}]}}))
        .await;
    let doc = app
        .wait_for_document(&admin, queued["id"].as_str().unwrap())
        .await;
    let xml = xlsx_xml(
        &download(app, &admin, doc["id"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert!(
        xml.contains("client.city") && xml.contains("Douala") && xml.contains("items[0].n"),
        "{xml}"
    );
    assert!(
        !xml.contains('{'.to_string().as_str()),
        "no debug form of a map: {xml}"
    );

    let broken = app
        .post_json(
            "/api/v1/templates",
            Some(&admin),
            &json!({"name": "Broken sheet", "format": "xlsx", "content": "{\"sheets\": []}"}),
        )
        .await;
    assert_eq!(broken.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let html_to_xlsx = app
        .post_json(
            "/api/v1/documents/generate",
            Some(&admin),
            &json!({"document_type": "x", "template_id": template["id"], "output_format": "pdf"}),
        )
        .await;
    assert_eq!(
        html_to_xlsx.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "an XLSX template renders only to XLSX"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_row_workbook_renders() {
    let app = spawn_app(Backend::Sqlite, &[("MAX_BODY_BYTES", "20000000")]).await;
    let admin = app.admin().await.access_token;
    let res = app
        .post_json("/api/v1/templates", Some(&admin), &json!({"name": "Portfolio", "type": "export", "format": "xlsx", "content": POLICY_SHEET}))
        .await;
    let template: Value = res.json().await.unwrap();
    let policies: Vec<Value> = (0..100_000)
        .map(|i| json!({"number": format!("POL-{i:06}"), "premium": 1000 + i, "start": "2026-01-15"}))
        .collect();
    let queued = app
        .generate(&admin, &json!({"document_type": "export", "template_id": template["id"], "inline_context": {"client": "Big", "policies": policies}}))
        .await;
    let doc = app
        .wait_for_document_within(
            &admin,
            queued["id"].as_str().unwrap(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(doc["status"], "ready", "{doc}");
    let xml = xlsx_xml(
        &download(&app, &admin, doc["id"].as_str().unwrap())
            .await
            .bytes()
            .await
            .unwrap(),
    );
    assert!(xml.contains("POL-099999"), "the last row is there");
    app.stop().await;
}
