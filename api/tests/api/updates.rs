//! Partial updates are one statement each: updates of different fields of one company,
//! client, template or policy that run at the same time all stay, and two policy updates
//! that are each valid but together would put the expiry before the effective date cannot
//! both succeed.
//!
//! Each scenario runs rounds; in each, one request per field changes that field at the same
//! time as the others change theirs, and then every field must show its new value. An
//! update that read the row, merged its field and wrote the whole row back would restore
//! the fields another request had just changed.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    concurrent_company_updates_all_stay,
    concurrent_client_updates_all_stay,
    concurrent_template_updates_all_stay,
    concurrent_policy_updates_all_stay,
    concurrent_policy_dates_stay_ordered,
);

/// How many times each scenario repeats its concurrent requests.
const ROUNDS: usize = 5;

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn created(app: &TestApp, path: &str, token: &str, body: Value) -> Value {
    let res = send(app, Method::POST, path, token, &body).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Sends every body to `path` at once, asserts each succeeded, and returns the resource
/// as a read answers it afterwards.
async fn update_concurrently(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    bodies: &[Value],
) -> Value {
    let answers = join_all(
        bodies
            .iter()
            .map(|body| send(app, method.clone(), path, token, body)),
    )
    .await;
    for (res, body) in answers.into_iter().zip(bodies) {
        let status = res.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{body}: {}",
            res.text().await.unwrap()
        );
    }
    let res = app.get(path, Some(token)).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

/// Asserts that `resource` holds every field each of `bodies` set.
fn assert_all_applied(resource: &Value, bodies: &[Value], round: usize) {
    for body in bodies {
        for (field, value) in body.as_object().unwrap() {
            assert_eq!(
                &resource[field], value,
                "round {round}: the change of {field} was lost: {resource}"
            );
        }
    }
}

async fn concurrent_company_updates_all_stay(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let company = created(
        app,
        "/api/v1/companies",
        &admin,
        json!({"name": "Initial", "code": "INIT"}),
    )
    .await;
    let id = company["id"].as_str().unwrap();
    let path = format!("/api/v1/companies/{id}");
    for round in 0..ROUNDS {
        let bodies = [
            json!({"name": format!("Name {round}")}),
            json!({"code": format!("CODE-{round}")}),
            json!({"api_mode": round % 2 == 0}),
            json!({"api_endpoint": format!("https://{round}.example.com")}),
            json!({"api_key": format!("key-{round}")}),
        ];
        let company = update_concurrently(app, Method::PUT, &path, &admin, &bodies).await;
        // The key is write-only: the answer never shows it.
        assert_all_applied(&company, &bodies[..4], round);
        let stored = app
            .state
            .db
            .companies()
            .get(id.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.api_key.as_deref(),
            Some(format!("key-{round}").as_str()),
            "round {round}: the change of api_key was lost"
        );
    }
}

async fn concurrent_client_updates_all_stay(app: &TestApp) {
    let agent = app
        .register_and_login("agent@example.com")
        .await
        .access_token;
    let client = created(
        app,
        "/api/v1/clients",
        &agent,
        json!({"first_name": "Ada", "last_name": "Lovelace"}),
    )
    .await;
    let path = format!("/api/v1/clients/{}", client["id"].as_str().unwrap());
    for round in 0..ROUNDS {
        let bodies = [
            json!({"first_name": format!("First {round}")}),
            json!({"last_name": format!("Last {round}")}),
            json!({"email": format!("client{round}@example.com")}),
            json!({"phone": format!("+237 600 000 00{round}")}),
            json!({"address": format!("{round} rue de la Paix")}),
        ];
        let client = update_concurrently(app, Method::PUT, &path, &agent, &bodies).await;
        assert_all_applied(&client, &bodies, round);
    }
}

async fn concurrent_template_updates_all_stay(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let template = app
        .create_template(&admin, "initial", "<p>{{ document.id }}</p>")
        .await;
    let path = format!("/api/v1/templates/{}", template["id"].as_str().unwrap());
    let formats = ["pdf", "xlsx", "html"];
    for round in 0..ROUNDS {
        let bodies = [
            json!({"name": format!("name {round}")}),
            json!({"type": format!("type-{round}")}),
            json!({"format": formats[round % formats.len()]}),
            json!({"scope": format!("scope-{round}")}),
            json!({"is_active": round % 2 == 1}),
            json!({"options": {"margin_mm": round as f64 + 1.5}}),
        ];
        let template = update_concurrently(app, Method::PATCH, &path, &admin, &bodies).await;
        assert_all_applied(&template, &bodies, round);
    }
}

/// A client and two companies, made by `admin`; returns their ids.
async fn policy_parties(app: &TestApp, admin: &str) -> (Value, [Value; 2]) {
    let client = created(
        app,
        "/api/v1/clients",
        admin,
        json!({"first_name": "Ada", "last_name": "Lovelace"}),
    )
    .await;
    let mut companies = Vec::new();
    for code in ["A", "B"] {
        let company = created(
            app,
            "/api/v1/companies",
            admin,
            json!({"name": format!("Insurer {code}"), "code": code}),
        )
        .await;
        companies.push(company["id"].clone());
    }
    (client["id"].clone(), companies.try_into().unwrap())
}

/// Midnight `n` days after 2030-01-01, as the API writes dates.
fn day(n: i64) -> String {
    let start: chrono::DateTime<chrono::Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    (start + chrono::Duration::days(n)).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

async fn concurrent_policy_updates_all_stay(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let (client_id, companies) = policy_parties(app, &admin).await;
    let policy = created(
        app,
        "/api/v1/policies",
        &admin,
        json!({
            "policy_number": "POL-0",
            "client_id": client_id,
            "product_name": "Auto",
            "premium_amount": 1000,
            "effective_date": day(0),
            "expiry_date": day(300),
        }),
    )
    .await;
    let path = format!("/api/v1/policies/{}", policy["id"].as_str().unwrap());
    let statuses = ["suspended", "active"];
    let currencies = ["EUR", "XAF"];
    for round in 0..ROUNDS {
        let bodies = [
            json!({"policy_number": format!("POL-{}", round + 1)}),
            json!({"company_id": companies[round % 2]}),
            json!({"product_name": format!("Product {round}")}),
            json!({"premium_amount": 2000 + round}),
            json!({"status": statuses[round % 2]}),
            json!({"currency": currencies[round % 2]}),
        ];
        let policy = update_concurrently(app, Method::PUT, &path, &admin, &bodies).await;
        assert_all_applied(&policy, &bodies, round);
    }
}

/// Two updates, each valid on the policy they read — one moves the effective date past
/// where the other moves the expiry — run at once: one succeeds and the other is refused,
/// whether the handler's own check or the table's catches it, and the stored policy keeps
/// its expiry after its effective date.
async fn concurrent_policy_dates_stay_ordered(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let (client_id, _) = policy_parties(app, &admin).await;
    let policy = created(
        app,
        "/api/v1/policies",
        &admin,
        json!({
            "policy_number": "POL-1",
            "client_id": client_id,
            "product_name": "Auto",
            "premium_amount": 1000,
            "effective_date": day(0),
            "expiry_date": day(100),
        }),
    )
    .await;
    let path = format!("/api/v1/policies/{}", policy["id"].as_str().unwrap());
    let initial = json!({"effective_date": day(0), "expiry_date": day(100)});
    let later_start = json!({"effective_date": day(60)});
    let earlier_end = json!({"expiry_date": day(30)});
    for round in 0..ROUNDS {
        let res = send(app, Method::PUT, &path, &admin, &initial).await;
        assert_eq!(res.status(), StatusCode::OK);
        let answers = join_all(
            [&later_start, &earlier_end].map(|body| send(app, Method::PUT, &path, &admin, body)),
        )
        .await;
        let mut applied = Vec::new();
        for (res, body) in answers.into_iter().zip([&later_start, &earlier_end]) {
            match res.status() {
                StatusCode::OK => applied.push(body),
                StatusCode::UNPROCESSABLE_ENTITY => {
                    assert_eq!(error_code(res).await, "validation_error");
                }
                other => panic!("round {round}: {body} answered {other}"),
            }
        }
        assert_eq!(
            applied.len(),
            1,
            "round {round}: exactly one of the two updates may succeed, not {applied:?}"
        );
        let stored: Value = app.get(&path, Some(&admin)).await.json().await.unwrap();
        assert_all_applied(&stored, &[applied[0].clone()], round);
        let effective: chrono::DateTime<chrono::Utc> =
            stored["effective_date"].as_str().unwrap().parse().unwrap();
        let expiry: chrono::DateTime<chrono::Utc> =
            stored["expiry_date"].as_str().unwrap().parse().unwrap();
        assert!(expiry > effective, "round {round}: {stored}");
    }
}
