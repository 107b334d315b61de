//! Companies, clients and policies: role rules, ownership, the policy rules, and documents
//! rendered with a policy's parties.

use common::model::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    companies_are_read_by_all_and_written_by_managers,
    clients_are_isolated_by_owner,
    clients_are_searched_and_kept_while_they_have_policies,
    policies_follow_their_rules,
    documents_render_the_policy_parties,
    the_client_list_answers_what_a_client_read_answers
);

async fn put(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

/// Registers a user and gives it `role` straight in the database (there is no users API
/// yet), then logs it in.
async fn user_with_role(app: &TestApp, email: &str, role: Role) -> String {
    app.register_and_login(email).await;
    let user = app
        .state
        .db
        .users()
        .find_by_email(email)
        .await
        .unwrap()
        .unwrap();
    app.state
        .db
        .users()
        .promote(user.id, role, &user.hashed_password)
        .await
        .unwrap();
    app.login(email, "password-123").await.access_token
}

async fn created(res: reqwest::Response) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// How many audit entries record `action` on `object_id`.
async fn audit_count(app: &TestApp, action: &str, object_id: &str) -> i64 {
    common::on_db!(&app.state.db, pool => {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM audit_logs WHERE action = $1 AND object_id = $2",
        )
        .bind(action)
        .bind(object_id)
        .fetch_one(pool)
        .await
        .unwrap()
    })
}

async fn create_client(app: &TestApp, token: &str, body: Value) -> Value {
    created(app.post_json("/api/v1/clients", Some(token), &body).await).await
}

fn policy_body(number: &str, client_id: &Value) -> Value {
    json!({
        "policy_number": number,
        "client_id": client_id,
        "product_name": "Auto",
        "premium_amount": 125000,
        "effective_date": "2026-01-01T00:00:00Z",
        "expiry_date": "2027-01-01T00:00:00Z",
    })
}

async fn companies_are_read_by_all_and_written_by_managers(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let manager = user_with_role(app, "manager@example.com", Role::Manager).await;
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;

    let body = json!({"name": "Assurances du Golfe", "code": "ADG", "api_mode": true,
                      "api_endpoint": "https://api.adg.example", "api_key": "s3cret-key"});
    let res = app
        .post_json("/api/v1/companies", Some(&agent), &body)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let company = created(
        app.post_json("/api/v1/companies", Some(&manager), &body)
            .await,
    )
    .await;
    let id = company["id"].as_str().unwrap();
    assert_eq!(company["code"], "ADG");
    assert_eq!(company["api_mode"], true);
    assert!(
        company.get("api_key").is_none(),
        "api_key echoed: {company}"
    );
    assert_eq!(audit_count(app, "company_created", id).await, 1);

    // Reads need a login, and then any role will do.
    assert_eq!(
        app.get("/api/v1/companies", None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let page: Value = app
        .get("/api/v1/companies", Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], id);
    assert!(page["items"][0].get("api_key").is_none());
    let read: Value = app
        .get(&format!("/api/v1/companies/{id}"), Some(&agent))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["name"], "Assurances du Golfe");
    assert!(!read.to_string().contains("s3cret-key"));

    // Name and code are each unique.
    for dup in [
        json!({"name": "Assurances du Golfe", "code": "OTHER"}),
        json!({"name": "Other", "code": "ADG"}),
    ] {
        let res = app.post_json("/api/v1/companies", Some(&admin), &dup).await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{dup}");
        assert_eq!(error_code(res).await, "company_exists");
    }
    created(
        app.post_json(
            "/api/v1/companies",
            Some(&admin),
            &json!({"name": "Other", "code": "OTH"}),
        )
        .await,
    )
    .await;
    for query in ["limit=1", "limit=1&offset=1"] {
        let page: Value = app
            .get(&format!("/api/v1/companies?{query}"), Some(&agent))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["total"], 2, "{query}");
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{query}");
    }
    let res = app.get("/api/v1/companies?limit=abc", Some(&agent)).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // PUT is partial, and conflicts are 409 there too.
    let path = format!("/api/v1/companies/{id}");
    let res = put(app, &path, &manager, &json!({"api_mode": false})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["api_mode"], false);
    assert_eq!(updated["code"], "ADG");
    assert!(updated.get("api_key").is_none());
    let res = put(app, &path, &manager, &json!({"code": "OTH"})).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = put(app, &path, &agent, &json!({"code": "NEW"})).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = put(app, &path, &manager, &json!({"name": "  "})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(audit_count(app, "company_updated", id).await, 1);

    // Only admins delete.
    assert_eq!(
        app.delete(&path, Some(&manager)).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete(&path, Some(&admin)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(audit_count(app, "company_deleted", id).await, 1);
    assert_eq!(
        app.get(&path, Some(&agent)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/companies/not-a-uuid", Some(&agent))
            .await
            .status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.delete(&path, Some(&admin)).await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn clients_are_isolated_by_owner(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let manager = user_with_role(app, "manager@example.com", Role::Manager).await;
    let alice = app
        .register_and_login("alice@example.com")
        .await
        .access_token;
    let bob = app.register_and_login("bob@example.com").await.access_token;

    let res = app
        .post_json(
            "/api/v1/clients",
            Some(&alice),
            &json!({"first_name": "Ada", "last_name": "Lovelace", "email": "not-an-email"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "email");

    let ada = create_client(
        app,
        &alice,
        json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.com"}),
    )
    .await;
    let ada_id = ada["id"].as_str().unwrap();
    assert_eq!(audit_count(app, "client_created", ada_id).await, 1);
    create_client(
        app,
        &bob,
        json!({"first_name": "Blaise", "last_name": "Pascal"}),
    )
    .await;

    let list = |token: String| async move {
        let page: Value = app
            .get("/api/v1/clients", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        page
    };
    let alice_page = list(alice.clone()).await;
    assert_eq!(alice_page["total"], 1);
    assert_eq!(alice_page["items"][0]["id"], ada_id);
    assert_eq!(list(bob.clone()).await["total"], 1);
    assert_eq!(list(manager.clone()).await["total"], 2);
    assert_eq!(list(admin.clone()).await["total"], 2);

    // Another agent's client is a missing one, whatever the verb.
    let path = format!("/api/v1/clients/{ada_id}");
    assert_eq!(
        app.get(&path, Some(&bob)).await.status(),
        StatusCode::NOT_FOUND
    );
    let res = put(app, &path, &bob, &json!({"first_name": "Eve"})).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&path, Some(&bob)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&path, Some(&manager)).await.status(),
        StatusCode::OK
    );

    // PUT is partial.
    let res = put(app, &path, &alice, &json!({"phone": "+237 600 000 000"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["phone"], "+237 600 000 000");
    assert_eq!(updated["first_name"], "Ada");
    assert_eq!(updated["email"], "ada@example.com");
    assert_eq!(audit_count(app, "client_updated", ada_id).await, 1);
    let res = put(app, &path, &alice, &json!({"email": "nope"})).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(
        app.delete(&path, Some(&alice)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(audit_count(app, "client_deleted", ada_id).await, 1);
    assert_eq!(
        app.get(&path, Some(&alice)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/clients/123", Some(&alice)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

async fn clients_are_searched_and_kept_while_they_have_policies(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let ada = create_client(
        app,
        &agent,
        json!({"first_name": "Ada", "last_name": "Lovelace", "email": "ada@analytical.example",
               "phone": "+237 699 11 22 33"}),
    )
    .await;
    create_client(
        app,
        &agent,
        json!({"first_name": "Grace", "last_name": "Hopper", "email": "grace@navy.example"}),
    )
    .await;
    create_client(
        app,
        &agent,
        json!({"first_name": "Al_ice", "last_name": "100%"}),
    )
    .await;

    let search = |q: &'static str| {
        let agent = agent.clone();
        async move {
            let res = app
                .client
                .get(app.url("/api/v1/clients"))
                .query(&[("q", q)])
                .bearer_auth(&agent)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let page: Value = res.json().await.unwrap();
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["last_name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(search("LOVE").await, ["Lovelace"], "last name, any case");
    assert_eq!(search("grA").await, ["Hopper"], "first name");
    assert_eq!(search("navy.EXAMPLE").await, ["Hopper"], "email");
    assert_eq!(search("699 11").await, ["Lovelace"], "phone");
    // `%` and `_` are matched literally, not as wildcards.
    assert_eq!(search("%").await, ["100%"]);
    assert_eq!(search("l_i").await, ["100%"]);
    assert!(search("zzz").await.is_empty());
    let res = app
        .get("/api/v1/clients?limit=1&offset=1", Some(&agent))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page: Value = res.json().await.unwrap();
    assert_eq!(
        (page["total"].as_i64(), page["limit"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["offset"], 1);

    let policy = created(
        app.post_json(
            "/api/v1/policies",
            Some(&agent),
            &policy_body("POL-1", &ada["id"]),
        )
        .await,
    )
    .await;
    let path = format!("/api/v1/clients/{}", ada["id"].as_str().unwrap());
    let res = app.delete(&path, Some(&agent)).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "client_has_policies");
    assert_eq!(
        app.delete(
            &format!("/api/v1/policies/{}", policy["id"].as_str().unwrap()),
            Some(&agent)
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete(&path, Some(&agent)).await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn policies_follow_their_rules(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let alice = app
        .register_and_login("alice@example.com")
        .await
        .access_token;
    let bob = app.register_and_login("bob@example.com").await.access_token;
    let ada = create_client(
        app,
        &alice,
        json!({"first_name": "Ada", "last_name": "Lovelace"}),
    )
    .await;
    let blaise = create_client(
        app,
        &bob,
        json!({"first_name": "Blaise", "last_name": "Pascal"}),
    )
    .await;
    let company = created(
        app.post_json(
            "/api/v1/companies",
            Some(&admin),
            &json!({"name": "Assurances du Golfe", "code": "ADG"}),
        )
        .await,
    )
    .await;

    // A client the caller cannot see, or a company that does not exist: 404.
    let res = app
        .post_json(
            "/api/v1/policies",
            Some(&alice),
            &policy_body("POL-X", &blaise["id"]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["detail"], "Client not found.");
    let mut body = policy_body("POL-X", &ada["id"]);
    body["company_id"] = json!(uuid::Uuid::now_v7());
    let res = app.post_json("/api/v1/policies", Some(&alice), &body).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    // The dates: expiry strictly after effect.
    let mut body = policy_body("POL-X", &ada["id"]);
    body["expiry_date"] = json!("2026-01-01T00:00:00Z");
    let res = app.post_json("/api/v1/policies", Some(&alice), &body).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let errors: Value = res.json().await.unwrap();
    assert_eq!(errors["errors"][0]["field"], "expiry_date");

    let mut body = policy_body("POL-1", &ada["id"]);
    body["company_id"] = company["id"].clone();
    let first = created(app.post_json("/api/v1/policies", Some(&alice), &body).await).await;
    let first_id = first["id"].as_str().unwrap();
    assert_eq!(first["status"], "active");
    assert_eq!(first["currency"], "XAF");
    assert_eq!(first["premium_amount"], 125000);
    assert_eq!(audit_count(app, "policy_created", first_id).await, 1);
    let mut body = policy_body("POL-2", &ada["id"]);
    body["status"] = json!("suspended");
    body["currency"] = json!("EUR");
    let second = created(app.post_json("/api/v1/policies", Some(&alice), &body).await).await;
    assert_eq!(second["status"], "suspended");
    assert_eq!(second["currency"], "EUR");
    let mut body = policy_body("POL-3", &ada["id"]);
    body["currency"] = json!("eur");
    let res = app.post_json("/api/v1/policies", Some(&alice), &body).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    created(
        app.post_json(
            "/api/v1/policies",
            Some(&bob),
            &policy_body("POL-B", &blaise["id"]),
        )
        .await,
    )
    .await;

    // Numbers are unique, across owners too.
    let res = app
        .post_json(
            "/api/v1/policies",
            Some(&bob),
            &policy_body("POL-1", &blaise["id"]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(res).await, "policy_exists");

    // Lists: only through the client's owner, with filters.
    let list = |token: String, query: String| async move {
        let res = app
            .get(&format!("/api/v1/policies{query}"), Some(&token))
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let page: Value = res.json().await.unwrap();
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy_number"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list(alice.clone(), String::new()).await, ["POL-2", "POL-1"]);
    assert_eq!(list(bob.clone(), String::new()).await, ["POL-B"]);
    assert_eq!(list(admin.clone(), String::new()).await.len(), 3);
    assert_eq!(
        list(alice.clone(), "?status=suspended".into()).await,
        ["POL-2"]
    );
    assert_eq!(
        list(
            admin.clone(),
            format!("?company_id={}", company["id"].as_str().unwrap())
        )
        .await,
        ["POL-1"]
    );
    assert_eq!(
        list(
            admin.clone(),
            format!("?client_id={}", blaise["id"].as_str().unwrap())
        )
        .await,
        ["POL-B"]
    );
    assert_eq!(
        list(alice.clone(), "?status=active&limit=1".into()).await,
        ["POL-1"]
    );
    let res = app
        .get("/api/v1/policies?status=lapsed", Some(&alice))
        .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let path = format!("/api/v1/policies/{first_id}");
    assert_eq!(
        app.get(&path, Some(&bob)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        put(app, &path, &bob, &json!({"premium_amount": 1}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&path, Some(&bob)).await.status(),
        StatusCode::NOT_FOUND
    );

    // A partial PUT keeps the rest, and the date rule is checked on the result.
    let res = put(
        app,
        &path,
        &alice,
        &json!({"expiry_date": "2025-06-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let errors: Value = res.json().await.unwrap();
    assert_eq!(errors["errors"][0]["field"], "expiry_date");
    let res = put(
        app,
        &path,
        &alice,
        &json!({"premium_amount": 99000, "status": "cancelled"}),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["premium_amount"], 99000);
    assert_eq!(updated["status"], "cancelled");
    assert_eq!(updated["policy_number"], "POL-1");
    assert_eq!(updated["company_id"], company["id"]);
    assert_eq!(updated["expiry_date"], first["expiry_date"]);
    assert_eq!(audit_count(app, "policy_updated", first_id).await, 1);
    let res = put(app, &path, &alice, &json!({"policy_number": "POL-2"})).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);

    // Deleting the company keeps the policy, without an insurer.
    let company_path = format!("/api/v1/companies/{}", company["id"].as_str().unwrap());
    assert_eq!(
        app.delete(&company_path, Some(&admin)).await.status(),
        StatusCode::NO_CONTENT
    );
    let read: Value = app.get(&path, Some(&alice)).await.json().await.unwrap();
    assert!(read["company_id"].is_null());

    assert_eq!(
        app.delete(&path, Some(&alice)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(audit_count(app, "policy_deleted", first_id).await, 1);
    assert_eq!(
        app.get(&path, Some(&alice)).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/policies/xyz", Some(&alice)).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

async fn documents_render_the_policy_parties(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let alice = app
        .register_and_login("alice@example.com")
        .await
        .access_token;
    let bob = app.register_and_login("bob@example.com").await.access_token;
    let company = created(
        app.post_json(
            "/api/v1/companies",
            Some(&admin),
            &json!({"name": "Assurances du Golfe", "code": "ADG", "api_key": "s3cret-key"}),
        )
        .await,
    )
    .await;
    let ada = create_client(
        app,
        &alice,
        json!({"first_name": "Ada", "last_name": "Lovelace"}),
    )
    .await;
    let mut body = policy_body("POL-42", &ada["id"]);
    body["company_id"] = company["id"].clone();
    let policy = created(app.post_json("/api/v1/policies", Some(&alice), &body).await).await;
    let template = app
        .create_template(
            &admin,
            "Attestation",
            "<p>{{ client.last_name }}|{{ policy.policy_number }}|{{ company.name }}|{{ company.api_key }}</p>",
        )
        .await;

    // Another agent's policy is a missing one.
    let request = json!({"document_type": "attestation", "template_id": template["id"],
                         "policy_id": policy["id"]});
    let res = app
        .post_json("/api/v1/documents/generate", Some(&bob), &request)
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["detail"], "Policy not found.");

    let queued = app.generate(&alice, &request).await;
    assert_eq!(queued["policy_id"], policy["id"]);
    let id = queued["id"].as_str().unwrap();
    let doc = app.wait_for_document(&alice, id).await;
    assert_eq!(doc["status"], "ready", "{doc}");
    let res = app
        .get(&format!("/api/v1/documents/{id}/download"), Some(&alice))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("<p>Lovelace|POL-42|Assurances du Golfe|</p>"),
        "{html}"
    );

    let listed: Value = app
        .get(
            &format!(
                "/api/v1/documents?policy_id={}&limit=10",
                policy["id"].as_str().unwrap()
            ),
            Some(&alice),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 1);

    // A preview sees the same parties.
    let res = app
        .post_json(
            &format!(
                "/api/v1/templates/{}/versions/1/preview",
                template["id"].as_str().unwrap()
            ),
            Some(&admin),
            &json!({"policy_id": policy["id"]}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("<p>Lovelace|POL-42|Assurances du Golfe|</p>")
    );
}

/// Every item of the client list is exactly what `GET /clients/{id}` answers (text that
/// needs escaping, nulls, times with 0, 3 or 6 digits of fraction), newest first, with the
/// total on every page. (It guarded an attempt to have the database build the list's JSON,
/// which measured slower and was dropped: see bench/RESULTS.md.)
async fn the_client_list_answers_what_a_client_read_answers(app: &TestApp) {
    let token = app
        .register_and_login("lister@example.com")
        .await
        .access_token;
    let names = [
        (
            "Zoë \"Q\" O'Hara",
            Some("zoe@example.com"),
            Some("+237 6 99 00 11 22"),
        ),
        ("back\\slash\ttab\nline", None, None),
        ("日本語 😀 </script>", Some("x@y.cm"), None),
        ("plain", None, Some("\u{7f}\u{1}")),
    ];
    let mut ids = Vec::new();
    for (name, email, phone) in names {
        let client = create_client(
            app,
            &token,
            json!({"first_name": name, "last_name": "Doe", "email": email, "phone": phone,
                   "address": if email.is_some() { Value::Null } else { json!("1 rue X\nDouala") }}),
        )
        .await;
        ids.push(client["id"].as_str().unwrap().to_owned());
    }
    // Times with a whole second, whole milliseconds and microseconds.
    let times = [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.000007Z",
        "2026-01-02T03:04:05.120Z",
        "2026-01-02T03:04:05.123456Z",
    ];
    for (id, time) in ids.iter().zip(times) {
        let at: chrono::DateTime<chrono::Utc> = time.parse().unwrap();
        let id: uuid::Uuid = id.parse().unwrap();
        common::on_db!(&app.state.db, pool => {
            sqlx::query("UPDATE clients SET created_at = $1, updated_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected()
        });
    }
    let res = app.get("/api/v1/clients?limit=10", Some(&token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["total"], 4);
    assert_eq!(page["limit"], 10);
    assert_eq!(page["offset"], 0);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    // Newest first: the times above are in increasing order.
    let listed: Vec<&str> = items.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let expected: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, expected);
    for item in items {
        let id = item["id"].as_str().unwrap();
        let read: Value = app
            .get(&format!("/api/v1/clients/{id}"), Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(item, &read);
    }
    let raw = app
        .get("/api/v1/clients?limit=1&offset=1", Some(&token))
        .await
        .text()
        .await
        .unwrap();
    let second: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(second["items"][0]["created_at"], "2026-01-02T03:04:05.120Z");
    assert_eq!(second["total"], 4);
    let empty: Value = app
        .get("/api/v1/clients?offset=9", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        empty,
        json!({"items": [], "total": 4, "limit": 50, "offset": 9})
    );
    let none: Value = app
        .get("/api/v1/clients?q=nobody", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        none,
        json!({"items": [], "total": 0, "limit": 50, "offset": 0})
    );
}
