//! Webhooks: endpoints and their checks, events posted to a real receiver and verified
//! with the Standard Webhooks Python library, retries from the database (through a worker
//! restart), giving up, redelivery, 410, timeouts, redirects, secret rotation, and
//! destinations in private networks refused.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::receiver::{Answer, Receiver, verify};
use crate::helpers::{Backend, TestApp, error_code, sigterm, spawn_app_with};
use crate::{for_each_backend, on_both_backends_with};

/// Receivers on loopback are allowed; retries come quickly.
const LOCAL: &[(&str, &str)] = &[
    ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
    ("WEBHOOK_RETRY_SCHEDULE", "1,1"),
    ("WEBHOOK_POLL_MS", "50"),
];

on_both_backends_with!(
    endpoints_are_checked_owned_and_audited => super::LOCAL,
    document_events_arrive_signed_with_a_working_download_link => super::LOCAL,
    a_failing_endpoint_is_retried_then_given_up_then_redelivered => super::LOCAL,
    gone_disables_slow_times_out_and_redirects_are_not_followed => &[
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
        ("WEBHOOK_RETRY_SCHEDULE", "1"),
        ("WEBHOOK_POLL_MS", "50"),
        ("WEBHOOK_TIMEOUT_SECONDS", "1"),
    ],
    a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends => &[
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
        ("WEBHOOK_POLL_MS", "50"),
        ("WEBHOOK_SECRET_OVERLAP_SECONDS", "3"),
    ],
    private_destinations_are_refused => &[("WEBHOOK_POLL_MS", "50")],
);
for_each_backend!(
    a_delivery_survives_a_worker_restart_between_attempts,
    a_stopping_worker_gives_back_the_deliveries_it_has_not_sent,
    a_batch_announces_its_completion_once,
);

/// A template whose render fails: the document ends `failed` with a readable error.
const BROKEN: &str = "<p>{{ no_such_function() }}</p>";

async fn create_endpoint(app: &TestApp, token: &str, body: &Value) -> Value {
    let res = app.post_json("/api/v1/webhooks", Some(token), body).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    res.json().await.unwrap()
}

/// A new agent, a receiver, and that agent's endpoint taking every event on it: the
/// agent's token, the receiver, and the endpoint as created (with its secret).
async fn agent_with_endpoint(app: &TestApp, email: &str) -> (String, Receiver, Value) {
    let agent = app.register_and_login(email).await.access_token;
    let receiver = Receiver::start().await;
    let body = json!({"url": receiver.url("/in"), "events": ["*"]});
    let endpoint = create_endpoint(app, &agent, &body).await;
    (agent, receiver, endpoint)
}

async fn patch_endpoint(app: &TestApp, token: &str, id: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/v1/webhooks/{id}")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post(app: &TestApp, token: &str, path: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn deliveries(app: &TestApp, token: &str, endpoint: &str) -> Vec<Value> {
    let res = app
        .get(
            &format!("/api/v1/webhooks/{endpoint}/deliveries"),
            Some(token),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    page["items"].as_array().unwrap().clone()
}

/// Reads the delivery log until `check` holds for the delivery `id` (the worker records an
/// attempt just after the receiver answers it), within 30 s.
async fn until_delivery(
    app: &TestApp,
    token: &str,
    endpoint: &str,
    id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = deliveries(app, token, endpoint).await;
        let delivery = log.iter().find(|d| d["id"] == id).cloned();
        if let Some(d) = &delivery
            && check(d)
        {
            return d.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery {id} never got there: {delivery:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn endpoints_are_checked_owned_and_audited(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("hooks-agent@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("hooks-other@example.com")
        .await
        .access_token;

    let created = create_endpoint(
        app,
        &agent,
        &json!({"url": "https://hooks.example.com/in", "events": ["document.ready", "document.ready"],
                "description": "Our CRM"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["events"], json!(["document.ready"]));
    assert_eq!(created["scope"], "own");
    assert_eq!(created["is_active"], true);

    // The secret is shown once.
    let read: Value = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["url"], "https://hooks.example.com/in");
    assert!(read.get("secret").is_none(), "{read}");
    let listed: Value = app
        .get("/api/v1/webhooks", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);
    assert!(listed["items"][0].get("secret").is_none());

    // Another agent neither sees nor touches it; an admin does.
    for res in [
        app.get(&format!("/api/v1/webhooks/{id}"), Some(&other))
            .await,
        app.delete(&format!("/api/v1/webhooks/{id}"), Some(&other))
            .await,
        post(app, &other, &format!("/api/v1/webhooks/{id}/test")).await,
    ] {
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let theirs: Value = app
        .get("/api/v1/webhooks", Some(&other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["total"], 0);
    let res = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&admin))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // A manager sees it and may test it, but changes only their own: changing another's
    // URL or secret would hand them its events.
    app.create_user(&admin, "hooks-manager@example.com", "manager")
        .await;
    let manager = app
        .login("hooks-manager@example.com", "password-123")
        .await
        .access_token;
    let res = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&manager))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = post(app, &manager, &format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let patch = patch_endpoint(
        app,
        &manager,
        &id,
        &json!({"url": "https://manager.example.com/"}),
    )
    .await;
    let rotate = post(
        app,
        &manager,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
    )
    .await;
    let delete = app
        .delete(&format!("/api/v1/webhooks/{id}"), Some(&manager))
        .await;
    for res in [patch, rotate, delete] {
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }

    // Validation names the field; nothing is created.
    for (body, field) in [
        (
            json!({"url": "ftp://hooks.example.com/", "events": ["*"]}),
            "url",
        ),
        (json!({"url": "not a url", "events": ["*"]}), "url"),
        (
            json!({"url": "https://hooks.example.com/", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["document.ready", "document.exploded"]}),
            "events[1]",
        ),
        (
            json!({"url": "https://hooks.example.com/", "events": ["*"], "scope": "galaxy"}),
            "scope",
        ),
    ] {
        let res = app.post_json("/api/v1/webhooks", Some(&agent), &body).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let error: Value = res.json().await.unwrap();
        assert_eq!(error["errors"][0]["field"], field, "{error}");
    }
    let res = app
        .post_json(
            "/api/v1/webhooks",
            Some(&agent),
            &json!({"url": "https://x.example.com/", "events": ["*"], "scope": "all"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let everyone = create_endpoint(
        app,
        &admin,
        &json!({"url": "https://ops.example.com/", "events": ["*"], "scope": "all"}),
    )
    .await;
    assert_eq!(everyone["scope"], "all");

    // PATCH: absent fields stay, null clears, an unknown event is refused.
    let res = patch_endpoint(
        app,
        &agent,
        &id,
        &json!({"events": ["*"], "description": null, "is_active": false}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["events"], json!(["*"]));
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["is_active"], false);
    assert_eq!(patched["url"], "https://hooks.example.com/in");
    let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "endpoint_disabled");
    let res = patch_endpoint(app, &agent, &id, &json!({"events": ["nope"]})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let res = app
        .delete(&format!("/api/v1/webhooks/{id}"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    for action in ["webhook_created", "webhook_updated", "webhook_deleted"] {
        assert!(app.audited(&admin, action, &id).await, "{action}");
    }
}

async fn document_events_arrive_signed_with_a_working_download_link(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let agent = app
        .register_and_login("hooks-docs@example.com")
        .await
        .access_token;
    let other = app
        .register_and_login("hooks-docs-other@example.com")
        .await
        .access_token;
    let receiver = Receiver::start().await;
    let endpoint = create_endpoint(
        app,
        &agent,
        &json!({"url": receiver.url("/hooks"), "events": ["document.ready", "document.failed"]}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap();
    let broken = app.create_template(&admin, "Broken", BROKEN).await;

    let ready = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "inline_context": {"n": 7}}),
        )
        .await;
    let ready = app
        .wait_for_document(&agent, ready["id"].as_str().unwrap())
        .await;
    assert_eq!(ready["status"], "ready");
    let requests = receiver.wait_for(1, Duration::from_secs(20)).await;
    let failed = app
        .generate(
            &agent,
            &json!({"document_type": "quote", "template_id": broken["id"]}),
        )
        .await;
    let failed = app
        .wait_for_document(&agent, failed["id"].as_str().unwrap())
        .await;
    assert_eq!(failed["status"], "failed");
    // Another owner's document is not this endpoint's business.
    let theirs = app
        .generate(&other, &json!({"document_type": "quote"}))
        .await;
    app.wait_for_document(&other, theirs["id"].as_str().unwrap())
        .await;
    let requests = [
        requests,
        receiver.wait_for(2, Duration::from_secs(20)).await[1..].to_vec(),
    ]
    .concat();

    let event = requests[0].json();
    assert_eq!(requests[0].path, "/hooks");
    assert_eq!(event["type"], "document.ready");
    assert!(event["timestamp"].is_string());
    assert_eq!(event["data"]["id"], ready["id"]);
    assert_eq!(event["data"]["status"], "ready");
    assert_eq!(event["data"]["checksum"], ready["checksum"]);
    // The link downloads the document, with no token.
    let link = event["data"]["download_url"].as_str().unwrap();
    assert!(link.starts_with(&app.address), "{link}");
    let res = app.client.get(link).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["x-checksum"].to_str().unwrap(),
        ready["checksum"]
    );

    let event = requests[1].json();
    assert_eq!(event["type"], "document.failed");
    assert_eq!(event["data"]["id"], failed["id"]);
    assert_eq!(event["data"]["error"], failed["error"]);
    assert!(event["data"].get("download_url").is_none());

    // Standard Webhooks headers, verified by the project's own library.
    for request in &requests {
        verify(secret, request).unwrap_or_else(|e| panic!("signature refused: {e}"));
        assert_eq!(request.header("content-type"), "application/json");
        assert!(request.header("user-agent").starts_with("MONASSURANCE"));
        assert_eq!(request.header("webhook-signature").split(' ').count(), 1);
    }
    let mut tampered = requests[0].clone();
    tampered.body = tampered
        .body
        .iter()
        .map(|b| if *b == b'7' { b'8' } else { *b })
        .collect();
    assert!(
        verify(secret, &tampered).is_err(),
        "a changed body must not verify"
    );
    assert!(verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &requests[0]).is_err());

    // The log: newest first, each delivered once, its id the webhook-id.
    let id = endpoint["id"].as_str().unwrap();
    let log = deliveries(app, &agent, id).await;
    assert_eq!(log.len(), 2, "{log:#?}");
    for (delivery, request) in log.iter().rev().zip(&requests) {
        let delivery = until_delivery(app, &agent, id, delivery["id"].as_str().unwrap(), |d| {
            d["status"] == "succeeded"
        })
        .await;
        assert_eq!(
            request.header("webhook-id"),
            delivery["id"].as_str().unwrap()
        );
        assert_eq!(delivery["attempts"], 1);
        assert_eq!(delivery["last_status_code"], 200);
        assert_eq!(delivery["last_response"], "thanks");
        assert!(delivery["delivered_at"].is_string());
    }
    assert_eq!(log[0]["event_type"], "document.failed");
    assert_eq!(log[1]["event_type"], "document.ready");
    if app.backend == Backend::Sqlite {
        let metrics = app.metrics().await;
        let succeeded = metrics.get(
            "webhook_deliveries_total",
            &[("event", "document.ready"), ("outcome", "succeeded")],
        );
        assert_eq!(succeeded, Some(1.0));
    }
}

async fn a_failing_endpoint_is_retried_then_given_up_then_redelivered(app: &TestApp) {
    let (agent, receiver, endpoint) = agent_with_endpoint(app, "hooks-retry@example.com").await;
    let id = endpoint["id"].as_str().unwrap();

    // 500, 500, then 200: the third attempt (the schedule is 1 s, 1 s) succeeds.
    receiver.answer([Answer::Status(500, "boom"), Answer::Status(500, "boom")]);
    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let requests = receiver.wait_for(3, Duration::from_secs(30)).await;
    let webhook_id = requests[0].header("webhook-id");
    assert!(
        requests
            .iter()
            .all(|r| r.header("webhook-id") == webhook_id)
    );
    assert!(requests.iter().all(|r| r.json()["data"]["id"] == doc["id"]));
    let delivery =
        until_delivery(app, &agent, id, webhook_id, |d| d["status"] == "succeeded").await;
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["last_status_code"], 200);
    assert_eq!(delivery["last_error"], Value::Null);

    // Three 500s: the schedule is spent, the delivery is failed with what was answered.
    receiver.answer([
        Answer::Status(500, "still broken"),
        Answer::Status(500, "still broken"),
        Answer::Status(500, "still broken"),
    ]);
    let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let test: Value = res.json().await.unwrap();
    assert_eq!(test["event_type"], "webhook.test");
    let test_id = test["id"].as_str().unwrap();
    let given_up = until_delivery(app, &agent, id, test_id, |d| d["status"] == "failed").await;
    assert_eq!(given_up["attempts"], 3);
    assert_eq!(given_up["last_status_code"], 500);
    assert_eq!(given_up["last_response"], "still broken");
    assert_eq!(given_up["last_error"], "the endpoint answered 500");
    assert_eq!(given_up["next_attempt_at"], Value::Null);
    assert_eq!(receiver.received().len(), 6);
    // The operators' queue view lists it with its error.
    let admin = app.admin().await.access_token;
    let queue = app.ops(&admin, "queue").await;
    let failing = queue["failing_webhooks"].as_array().unwrap();
    let listed = failing
        .iter()
        .find(|d| d["id"] == test_id)
        .expect("listed as failing");
    assert_eq!(listed["url"], receiver.url("/in"));
    assert_eq!(listed["status"], "failed");
    assert_eq!(listed["last_error"], "the endpoint answered 500");
    assert_eq!(queue["webhooks_pending"], 0);

    // Redelivered: sent again under the same id, and this time received.
    let res = post(
        app,
        &agent,
        &format!("/api/v1/webhooks/{id}/deliveries/{test_id}/redeliver"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["status"], "pending");
    let requests = receiver.wait_for(7, Duration::from_secs(20)).await;
    assert_eq!(requests[6].header("webhook-id"), test_id);
    assert_eq!(requests[6].json()["type"], "webhook.test");
    let delivered = until_delivery(app, &agent, id, test_id, |d| d["status"] == "succeeded").await;
    assert_eq!(delivered["attempts"], 1);
    let res = post(
        app,
        &agent,
        &format!(
            "/api/v1/webhooks/{id}/deliveries/{}/redeliver",
            uuid::Uuid::nil()
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(app.audited(&admin, "webhook_redelivered", test_id).await);
}

async fn gone_disables_slow_times_out_and_redirects_are_not_followed(app: &TestApp) {
    let (agent, receiver, endpoint) = agent_with_endpoint(app, "hooks-gone@example.com").await;
    let id = endpoint["id"].as_str().unwrap();
    let send_test = || async {
        let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let test: Value = res.json().await.unwrap();
        test["id"].as_str().unwrap().to_owned()
    };

    // Too slow (the timeout is 1 s): the attempt fails and the retry succeeds.
    receiver.answer([Answer::Slow(Duration::from_secs(3))]);
    let slow = send_test().await;
    let delivered = until_delivery(app, &agent, id, &slow, |d| d["status"] == "succeeded").await;
    assert_eq!(delivered["attempts"], 2);

    // A redirect is an answer, not a destination: never followed.
    receiver.answer([
        Answer::Redirect(receiver.url("/elsewhere")),
        Answer::Redirect(receiver.url("/elsewhere")),
    ]);
    let redirected = send_test().await;
    let failed = until_delivery(app, &agent, id, &redirected, |d| d["status"] == "failed").await;
    assert_eq!(failed["last_status_code"], 302);
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed")
    );
    assert!(receiver.received().iter().all(|r| r.path == "/in"));

    // 410 Gone: the endpoint is turned off, the delivery not retried, nothing more sent.
    receiver.answer([Answer::Status(410, "gone")]);
    let gone = send_test().await;
    let failed = until_delivery(app, &agent, id, &gone, |d| d["status"] == "failed").await;
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["last_status_code"], 410);
    let endpoint: Value = app
        .get(&format!("/api/v1/webhooks/{id}"), Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(endpoint["is_active"], false);
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    let before = deliveries(app, &agent, id).await.len();
    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    app.wait_for_document(&agent, doc["id"].as_str().unwrap())
        .await;
    assert_eq!(
        deliveries(app, &agent, id).await.len(),
        before,
        "a disabled endpoint gets no events"
    );

    // Turned back on, it hears again.
    let res = patch_endpoint(app, &agent, id, &json!({"is_active": true})).await;
    let endpoint: Value = res.json().await.unwrap();
    assert_eq!(endpoint["disabled_reason"], Value::Null);
    let count = receiver.received().len();
    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let requests = receiver.wait_for(count + 1, Duration::from_secs(20)).await;
    assert_eq!(requests[count].json()["data"]["id"], doc["id"]);
}

async fn a_rotated_secret_signs_beside_the_new_one_until_the_overlap_ends(app: &TestApp) {
    let (agent, receiver, endpoint) = agent_with_endpoint(app, "hooks-rotate@example.com").await;
    let id = endpoint["id"].as_str().unwrap();
    let old = endpoint["secret"].as_str().unwrap().to_owned();

    let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/rotate-secret")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated: Value = res.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let until: chrono::DateTime<chrono::Utc> = rotated["previous_secret_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // Within the overlap: two signatures, and either secret verifies.
    let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let requests = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        requests[0].header("webhook-signature").split(' ').count(),
        2
    );
    verify(&old, &requests[0]).expect("the old secret still verifies");
    verify(&new, &requests[0]).expect("the new secret verifies");

    // After it: only the new secret signs. (The overlap is a time window: wait it out.)
    let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
    let requests = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(
        requests[1].header("webhook-signature").split(' ').count(),
        1
    );
    verify(&new, &requests[1]).expect("the new secret verifies");
    assert!(
        verify(&old, &requests[1]).is_err(),
        "the old secret must no longer verify"
    );
    let admin = app.admin().await.access_token;
    assert!(app.audited(&admin, "webhook_secret_rotated", id).await);
}

async fn private_destinations_are_refused(app: &TestApp) {
    let agent = app
        .register_and_login("hooks-private@example.com")
        .await
        .access_token;
    let receiver = Receiver::start().await;
    let port = receiver.port;
    for url in [
        format!("http://hooks.example.com:{port}/"),
        format!("https://127.0.0.1:{port}/"),
        format!("https://localhost:{port}/"),
        format!("https://[::1]:{port}/"),
        format!("https://[::ffff:127.0.0.1]:{port}/"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        "https://10.0.0.8/".to_owned(),
        "https://192.168.1.20/".to_owned(),
        // Other spellings of 127.0.0.1, read as the HTTP client reads them.
        format!("https://2130706433:{port}/"),
        format!("https://0x7f.1:{port}/"),
        format!("https://127.0.0.1.:{port}/"),
        format!("https://127.0.0.1%2e:{port}/"),
    ] {
        let res = app
            .post_json(
                "/api/v1/webhooks",
                Some(&agent),
                &json!({"url": url, "events": ["*"]}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        assert_eq!(error_code(res).await, "validation_error", "{url}");
    }

    // A name checked when the endpoint was made may resolve elsewhere later (DNS
    // rebinding): an endpoint written straight to the database stands for one. Its
    // deliveries are refused on the address they would connect to.
    let user: Value = app
        .get("/api/v1/auth/me", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    let owner: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    let secret = common::webhooks::Secret::generate();
    let events = common::db::webhooks::EventList(vec!["*".into()]);
    for (url, expected) in [
        (
            format!("https://localhost:{port}/in"),
            "resolves only to addresses where webhooks are not sent (127.0.0.1",
        ),
        (
            format!("https://2130706433:{port}/in"),
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("https://127.0.0.1.:{port}/in"),
            "127.0.0.1 is a loopback address",
        ),
    ] {
        let endpoint = app
            .state
            .db
            .webhook_endpoints()
            .create(common::db::webhooks::NewEndpoint {
                owner_id: owner,
                url: &url,
                description: None,
                events: &events,
                scope: "own",
                secret: &secret,
            })
            .await
            .unwrap();
        let id = endpoint.id.to_string();
        let res = post(app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
        let test: Value = res.json().await.unwrap();
        let attempt = until_delivery(app, &agent, &id, test["id"].as_str().unwrap(), |d| {
            d["attempts"] == 1 && d["last_error"].is_string()
        })
        .await;
        let error = attempt["last_error"].as_str().unwrap();
        assert!(error.contains(expected), "{url}: {error}");
        assert_eq!(attempt["last_status_code"], Value::Null);
    }
    assert!(
        receiver.received().is_empty(),
        "nothing may reach a private address"
    );
}

async fn a_delivery_survives_a_worker_restart_between_attempts(backend: Backend) {
    let settings = [
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
        ("WEBHOOK_RETRY_SCHEDULE", "2"),
        ("WEBHOOK_POLL_MS", "50"),
    ];
    let app = spawn_app_with(backend, &settings, false).await;
    let (agent, receiver, endpoint) = agent_with_endpoint(&app, "hooks-restart@example.com").await;
    let id = endpoint["id"].as_str().unwrap();

    receiver.answer([Answer::Status(503, "down for a moment")]);
    let mut worker = app.start_worker(&[]);
    let doc = app
        .generate(&agent, &json!({"document_type": "quote"}))
        .await;
    let first = receiver.wait_for(1, Duration::from_secs(30)).await;
    let webhook_id = first[0].header("webhook-id").to_owned();
    until_delivery(&app, &agent, id, &webhook_id, |d| {
        d["attempts"] == 1 && d["last_status_code"] == 503
    })
    .await;
    // Killed between the attempts; another worker takes the retry from the database.
    worker.kill().await.unwrap();
    let _worker = app.start_worker(&[]);
    let second = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(second[1].header("webhook-id"), webhook_id);
    assert_eq!(second[1].json()["data"]["id"], doc["id"]);
    let delivered = until_delivery(&app, &agent, id, &webhook_id, |d| {
        d["status"] == "succeeded"
    })
    .await;
    assert_eq!(delivered["attempts"], 2);
    app.stop().await;
}

/// The worker that finishes a document sends its deliveries without claiming them; when
/// it stops gracefully with some not yet started (one endpoint slow, one delivery at a
/// time), it gives them back, and another worker sends them at once, not when their lease
/// (`WEBHOOK_TIMEOUT_SECONDS` + 30 s) would have run out.
async fn a_stopping_worker_gives_back_the_deliveries_it_has_not_sent(backend: Backend) {
    let settings = [
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
        ("WEBHOOK_POLL_MS", "50"),
        ("WEBHOOK_CONCURRENCY", "1"),
        ("WEBHOOK_TIMEOUT_SECONDS", "10"),
    ];
    let app = spawn_app_with(backend, &settings, false).await;
    let (agent, receiver, endpoint) = agent_with_endpoint(&app, "hooks-handed@example.com").await;
    let id = endpoint["id"].as_str().unwrap();

    receiver.answer([Answer::Slow(Duration::from_secs(4))]);
    let mut first_worker = app.start_worker(&[("WORKER_CONCURRENCY", "4")]);
    let docs = app.generate_quotes(&agent, 3).await;
    for doc in &docs {
        let ready = app.wait_for_document(&agent, doc).await;
        assert_eq!(ready["status"], "ready");
    }
    // One delivery is in flight to the slow endpoint; the other two wait in the worker.
    receiver.wait_for(1, Duration::from_secs(30)).await;
    let stopped_at = tokio::time::Instant::now();
    let status = sigterm(&mut first_worker).await;
    assert!(status.success(), "the worker drains and exits: {status}");
    assert_eq!(
        receiver.received().len(),
        1,
        "a stopping worker starts no delivery"
    );

    let _second_worker = app.start_worker(&[]);
    let all = receiver.wait_for(3, Duration::from_secs(30)).await;
    let took = stopped_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "given back, not left to their 40 s lease: {took:?}"
    );
    let mut about: Vec<String> = all
        .iter()
        .map(|r| r.json()["data"]["id"].as_str().unwrap().to_owned())
        .collect();
    about.sort();
    let mut expected = docs.clone();
    expected.sort();
    assert_eq!(about, expected, "one delivery per document");
    for request in &all {
        let webhook_id = request.header("webhook-id");
        let delivered =
            until_delivery(&app, &agent, id, webhook_id, |d| d["status"] == "succeeded").await;
        assert_eq!(
            delivered["attempts"], 1,
            "a delivery given back unsent does not count an attempt"
        );
    }
    app.stop().await;
}

async fn a_batch_announces_its_completion_once(backend: Backend) {
    let settings = [
        ("WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true"),
        ("WEBHOOK_POLL_MS", "50"),
        ("WORKER_CONCURRENCY", "8"),
    ];
    let app = spawn_app_with(backend, &settings, false).await;
    let agent = app
        .register_and_login("hooks-batch@example.com")
        .await
        .access_token;
    let receiver = Receiver::start().await;
    create_endpoint(
        &app,
        &agent,
        &json!({"url": receiver.url("/in"), "events": ["batch.completed"]}),
    )
    .await;

    // Cancelled with nothing rendering: complete at once (sent once a worker runs).
    let items: Vec<Value> = (0..3)
        .map(|n| json!({"inline_context": {"n": n}}))
        .collect();
    let body = json!({"document_type": "quote", "items": items});
    let res = app
        .post_json("/api/v1/document-batches", Some(&agent), &body)
        .await;
    let cancelled: Value = res.json().await.unwrap();
    let res = post(
        &app,
        &agent,
        &format!(
            "/api/v1/document-batches/{}/cancel",
            cancelled["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Rendered by two workers at once: one event, when the last item is done.
    let items: Vec<Value> = (0..60)
        .map(|n| json!({"inline_context": {"n": n}}))
        .collect();
    let body = json!({"document_type": "quote", "items": items});
    let res = app
        .post_json("/api/v1/document-batches", Some(&agent), &body)
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let batch: Value = res.json().await.unwrap();
    let _workers = [app.start_worker(&[]), app.start_worker(&[])];
    let requests = receiver.wait_for(2, Duration::from_secs(60)).await;
    let events: Vec<Value> = requests.iter().map(|r| r.json()).collect();
    assert!(
        events.iter().all(|e| e["type"] == "batch.completed"),
        "{events:#?}"
    );
    let of = |id: &Value| {
        events
            .iter()
            .find(|e| e["data"]["id"] == *id)
            .cloned()
            .unwrap()
    };
    let event = of(&cancelled["id"]);
    assert_eq!(event["data"]["status"], "cancelled");
    assert_eq!(event["data"]["cancelled"], 3);
    let event = of(&batch["id"]);
    assert_eq!(event["data"]["status"], "completed");
    assert_eq!(event["data"]["ready"], 60);
    assert_eq!(event["data"]["queued"], 0);
    assert_eq!(event["data"]["processing"], 0);
    // Cancelling it now changes nothing and announces nothing.
    let res = post(
        &app,
        &agent,
        &format!(
            "/api/v1/document-batches/{}/cancel",
            batch["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // No second announcement, and no document events (not subscribed): a test event sent
    // now is the next request.
    let endpoint: Value = app
        .get("/api/v1/webhooks", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    let id = endpoint["items"][0]["id"].as_str().unwrap();
    post(&app, &agent, &format!("/api/v1/webhooks/{id}/test")).await;
    let requests = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(
        requests[2].json()["type"],
        "webhook.test",
        "{:?}",
        requests[2].json()
    );
    assert_eq!(requests.len(), 3);
    app.stop().await;
}
