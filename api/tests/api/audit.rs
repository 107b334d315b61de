use common::db::audit::AuditEvent;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, TestApp, error_code};
use crate::on_both_backends;

on_both_backends!(
    entries_carry_user_ip_user_agent_and_request_id,
    only_managers_and_admins_read_the_log,
    filters_and_pagination,
    csv_export,
    filters_a_database_would_refuse_are_refused_before_any_byte,
    an_export_of_many_batches_is_complete,
    an_unreadable_row_fails_the_export_visibly,
);

impl TestApp {
    /// The audit log's JSON page for `query`, as `token`.
    async fn audit_logs(&self, token: &str, query: &[(&str, &str)]) -> Value {
        let res = self.get_query("/api/v1/audit-logs", token, query).await;
        assert_eq!(res.status(), StatusCode::OK, "audit logs {query:?}");
        res.json().await.unwrap()
    }

    async fn export(&self, token: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.get_query("/api/v1/audit-logs/export", token, query)
            .await
    }

    /// GET `path?query` as `token`.
    async fn get_query(
        &self,
        path: &str,
        token: &str,
        query: &[(&str, &str)],
    ) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Records `count` entries of action `bulk_entry`, with object ids `0`, `1`, … in
    /// order.
    async fn record_bulk(&self, count: usize) {
        for i in 0..count {
            let event = AuditEvent {
                action: "bulk_entry",
                object_id: Some(i.to_string()),
                ..AuditEvent::default()
            };
            self.state.db.audit().record(&event).await.unwrap();
        }
    }

    /// Gives the entry at `position` in the export's order (newest first) metadata that
    /// both databases store but cannot be read back (serde_json refuses a number beyond
    /// f64); returns its id.
    async fn make_unreadable(&self, position: i64) -> Uuid {
        common::on_db!(&self.state.db, pool => {
            let id: Uuid = sqlx::query_scalar("SELECT id FROM audit_logs ORDER BY id DESC LIMIT 1 OFFSET $1")
                .bind(position)
                .fetch_one(pool)
                .await
                .unwrap();
            sqlx::query("UPDATE audit_logs SET audit_metadata = '{\"n\": 1e400}' WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
            id
        })
    }

    async fn clear_metadata(&self, id: Uuid) {
        common::on_db!(&self.state.db, pool => {
            sqlx::query("UPDATE audit_logs SET audit_metadata = NULL WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .unwrap();
        });
    }

    /// Logs in with a chosen user agent and request id; returns the status and the body.
    async fn login_as(
        &self,
        email: &str,
        password: &str,
        ua: &str,
        rid: &str,
    ) -> (StatusCode, Value) {
        let res = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .header("user-agent", ua)
            .header("x-request-id", rid)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap())
    }
}

fn actions(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect()
}

async fn entries_carry_user_ip_user_agent_and_request_id(app: &TestApp) {
    let (status, body) = app
        .login_as(
            ADMIN_EMAIL,
            ADMIN_PASSWORD,
            "audit-agent/1.0",
            "rid-login-1",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let admin = body["access_token"].as_str().unwrap().to_owned();
    let admin_id = app
        .get("/api/v1/auth/me", Some(&admin))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .clone();
    let (status, _) = app
        .login_as(
            ADMIN_EMAIL,
            "wrong-password",
            "audit-agent/2.0",
            "rid-failed-1",
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let created = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&admin)
        .header("user-agent", "audit-agent/3.0")
        .header("x-request-id", "rid-create-1")
        .json(&json!({"email": "gus@example.com", "password": "password-123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let gus: Value = created.json().await.unwrap();

    let (_, body) = app
        .login_as(
            "gus@example.com",
            "password-123",
            "audit-agent/4.0",
            "rid-login-2",
        )
        .await;
    let gus_token = body["access_token"].as_str().unwrap().to_owned();
    let generated = app
        .client
        .post(app.url("/api/v1/documents/generate"))
        .bearer_auth(&gus_token)
        .header("user-agent", "audit-agent/5.0")
        .header("x-request-id", "rid-generate-1")
        .json(&json!({"document_type": "quote", "inline_context": {"premium": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(generated.status(), StatusCode::ACCEPTED);
    let doc: Value = generated.json().await.unwrap();

    let by_request = |page: &Value, rid: &str| -> Value {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["request_id"] == rid)
            .unwrap_or_else(|| panic!("no entry for {rid}: {page}"))
            .clone()
    };
    let page = app.audit_logs(&admin, &[("limit", "200")]).await;
    let login = by_request(&page, "rid-login-1");
    assert_eq!(login["action"], "login");
    assert_eq!(login["user_id"], admin_id);
    assert_eq!(login["ip_address"], "127.0.0.1");
    assert_eq!(login["user_agent"], "audit-agent/1.0");

    let failed = by_request(&page, "rid-failed-1");
    assert_eq!(failed["action"], "login_failed");
    assert_eq!(failed["ip_address"], "127.0.0.1");
    assert_eq!(failed["user_agent"], "audit-agent/2.0");
    assert_eq!(failed["audit_metadata"]["email"], ADMIN_EMAIL);

    let user_created = by_request(&page, "rid-create-1");
    assert_eq!(user_created["action"], "user_created");
    assert_eq!(user_created["user_id"], admin_id);
    assert_eq!(user_created["object_type"], "user");
    assert_eq!(user_created["object_id"], gus["id"]);
    assert_eq!(user_created["user_agent"], "audit-agent/3.0");
    assert_eq!(user_created["audit_metadata"]["role"], "agent");

    let generate = by_request(&page, "rid-generate-1");
    assert_eq!(generate["action"], "generate_document");
    assert_eq!(generate["user_id"], gus["id"]);
    assert_eq!(generate["object_type"], "document");
    assert_eq!(generate["object_id"], doc["id"]);
    assert_eq!(generate["ip_address"], "127.0.0.1");
    assert_eq!(generate["user_agent"], "audit-agent/5.0");
}

async fn only_managers_and_admins_read_the_log(app: &TestApp) {
    let agent = app.register_and_login("ann@example.com").await.access_token;
    for path in ["/api/v1/audit-logs", "/api/v1/audit-logs/export"] {
        let res = app.get(path, Some(&agent)).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_code(res).await, "insufficient_role");
        assert_eq!(app.get(path, None).await.status(), StatusCode::UNAUTHORIZED);
    }
    let admin = app.admin().await.access_token;
    let res = app
        .post_json(
            "/api/v1/users",
            Some(&admin),
            &json!({"email": "max@example.com", "password": "password-123", "role": "manager"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let manager = app
        .login("max@example.com", "password-123")
        .await
        .access_token;
    let page = app.audit_logs(&manager, &[]).await;
    assert!(page["total"].as_i64().unwrap() >= 4, "{page}");
    assert_eq!(
        app.get("/api/v1/audit-logs/export", Some(&manager))
            .await
            .status(),
        StatusCode::OK
    );
}

async fn filters_and_pagination(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let before = app.audit_logs(&admin, &[]).await;
    let first = before["items"][0].clone();
    assert_eq!(first["action"], "login");
    let cutoff = first["created_at"].as_str().unwrap().to_owned();

    let ann = app.register_and_login("ann@example.com").await.access_token;
    let ann_id = app
        .get("/api/v1/auth/me", Some(&ann))
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let res = app
            .post_json(
                "/api/v1/auth/login",
                None,
                &json!({"email": "ann@example.com", "password": "nope-nope-nope"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    app.generate(&ann, &json!({"document_type": "quote"})).await;

    // Newest first.
    let all = app.audit_logs(&admin, &[]).await;
    let total = all["total"].as_i64().unwrap();
    assert_eq!(all["items"].as_array().unwrap().len() as i64, total);
    assert_eq!(all["items"][0]["action"], "generate_document");
    assert_eq!(
        all["items"][total as usize - 1],
        before["items"][before["total"].as_u64().unwrap() as usize - 1]
    );

    let page = app
        .audit_logs(&admin, &[("limit", "2"), ("offset", "1")])
        .await;
    assert_eq!(page["total"], total);
    assert_eq!(page["limit"], 2);
    assert_eq!(page["offset"], 1);
    assert_eq!(
        page["items"].as_array().unwrap(),
        &all["items"].as_array().unwrap()[1..3]
    );

    let exact = app.audit_logs(&admin, &[("action", "login_failed")]).await;
    assert_eq!(exact["total"], 2);
    let none = app.audit_logs(&admin, &[("action", "LOGIN_FAILED")]).await;
    assert_eq!(none["total"], 0);
    let contains = app
        .audit_logs(&admin, &[("action_contains", "LOGIN")])
        .await;
    let mut found = actions(&contains);
    found.sort();
    found.dedup();
    assert_eq!(found, ["login", "login_failed"]);
    // `_` and `%` are literal characters, not wildcards.
    assert_eq!(
        app.audit_logs(&admin, &[("action_contains", "%")]).await["total"],
        0
    );
    assert_eq!(
        app.audit_logs(&admin, &[("action_contains", "n_f")]).await["total"],
        2
    );
    assert_eq!(
        app.audit_logs(&admin, &[("action_contains", "lo_in")])
            .await["total"],
        0
    );

    let docs = app.audit_logs(&admin, &[("object_type", "document")]).await;
    assert_eq!(actions(&docs), ["generate_document"]);
    let docs = app.audit_logs(&admin, &[("object_contains", "DOCU")]).await;
    assert_eq!(actions(&docs), ["generate_document"]);

    let ann_entries = app.audit_logs(&admin, &[("user_id", &ann_id)]).await;
    let mut ann_actions = actions(&ann_entries);
    ann_actions.sort();
    assert_eq!(ann_actions, ["generate_document", "login", "user_created"]);
    let combined = app
        .audit_logs(&admin, &[("user_id", &ann_id), ("action", "login")])
        .await;
    assert_eq!(combined["total"], 1);

    // Inclusive bounds, in RFC 3339.
    let up_to = app.audit_logs(&admin, &[("created_to", &cutoff)]).await;
    assert_eq!(up_to["total"], before["total"]);
    assert_eq!(up_to["items"][0], first);
    let from = app.audit_logs(&admin, &[("created_from", &cutoff)]).await;
    assert_eq!(
        from["total"].as_i64().unwrap(),
        total - before["total"].as_i64().unwrap() + 1
    );
    let window = app
        .audit_logs(
            &admin,
            &[("created_from", &cutoff), ("created_to", &cutoff)],
        )
        .await;
    assert_eq!(window["items"].as_array().unwrap(), &[first]);

    for bad in [
        ("created_from", "yesterday"),
        ("user_id", "not-a-uuid"),
        ("limit", "0"),
        ("limit", "201"),
        ("limit", "abc"),
    ] {
        let res = app
            .client
            .get(app.url("/api/v1/audit-logs"))
            .query(&[bad])
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
    }
}

async fn csv_export(app: &TestApp) {
    let admin = app.admin().await.access_token;
    // A user agent a spreadsheet would run as a formula, and metadata full of quotes and
    // commas.
    let (status, _) = app
        .login_as(
            ADMIN_EMAIL,
            ADMIN_PASSWORD,
            "=HYPERLINK(\"http://evil\",\"x\")",
            "rid-csv-1",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .login_as("who@example.com", "wrong-password", "-2+3", "rid-csv-2")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let res = app.export(&admin, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename=audit_logs.csv"
    );
    let body = res.text().await.unwrap();
    let lines: Vec<&str> = body.split_terminator("\r\n").collect();
    assert_eq!(
        lines[0],
        "id,created_at,user_id,action,object_type,object_id,ip_address,user_agent,request_id,audit_metadata"
    );
    let total = app.audit_logs(&admin, &[]).await["total"].as_u64().unwrap() as usize;
    assert_eq!(lines.len(), total + 1);
    let failed = lines.iter().find(|l| l.contains("rid-csv-2")).unwrap();
    assert!(failed.contains(",login_failed,"), "{failed}");
    assert!(failed.contains(",\"'-2+3\",rid-csv-2,"), "{failed}");
    assert!(
        failed.ends_with(",\"{\"\"email\"\":\"\"who@example.com\"\"}\""),
        "{failed}"
    );
    let formula = lines.iter().find(|l| l.contains("rid-csv-1")).unwrap();
    assert!(
        formula.contains(",\"'=HYPERLINK(\"\"http://evil\"\",\"\"x\"\")\",rid-csv-1,"),
        "{formula}"
    );

    // Filters apply; other delimiters; no metadata column.
    let res = app
        .export(
            &admin,
            &[
                ("action", "login_failed"),
                ("delimiter", ";"),
                ("include_metadata", "false"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    let lines: Vec<&str> = body.split_terminator("\r\n").collect();
    assert_eq!(
        lines[0],
        "id;created_at;user_id;action;object_type;object_id;ip_address;user_agent;request_id"
    );
    assert_eq!(lines.len(), 2);
    let fields: Vec<&str> = lines[1].split(';').collect();
    assert_eq!(fields.len(), 9);
    assert_eq!(fields[3], "login_failed");
    assert_eq!(fields[8], "rid-csv-2");
    assert!(!lines[1].contains("who@example.com"));

    for (delimiter, expected) in [("\t", "id\tcreated_at\t"), ("|", "id|created_at|")] {
        let res = app.export(&admin, &[("delimiter", delimiter)]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.text().await.unwrap().starts_with(expected));
    }
    for bad in [":", ",,", "x"] {
        let res = app.export(&admin, &[("delimiter", bad)]).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        assert_eq!(error_code(res).await, "validation_error");
    }
}

/// A NUL character in a text filter (Postgres refuses it; SQLite's `LIKE` would stop at it
/// and match the wrong rows) or a year outside 0000–9999 (Postgres refuses some; SQLite
/// would compare it as text) gets a JSON 422 from both routes on both databases: the
/// export answers it before sending any byte.
async fn filters_a_database_would_refuse_are_refused_before_any_byte(app: &TestApp) {
    let admin = app.admin().await.access_token;
    let refusals = [
        ("action", "log\0in", "unstorable_text"),
        ("object_type", "log\0in", "unstorable_text"),
        ("action_contains", "log\0in", "unstorable_text"),
        ("object_contains", "log\0in", "unstorable_text"),
        ("created_from", "+10000-01-01T00:00:00Z", "validation_error"),
        ("created_to", "-5000-01-01T00:00:00Z", "validation_error"),
    ];
    for (field, value, code) in refusals {
        for path in ["/api/v1/audit-logs/export", "/api/v1/audit-logs"] {
            let res = app.get_query(path, &admin, &[(field, value)]).await;
            assert_eq!(
                res.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} {field}={value:?}"
            );
            assert_eq!(res.headers()["content-type"], "application/json");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], code, "{path} {field}: {body}");
            assert!(
                body["detail"].as_str().unwrap().starts_with(field),
                "{body}"
            );
        }
    }
    // The edges of that range are accepted.
    let res = app
        .export(
            &admin,
            &[
                ("created_from", "0000-01-01T00:00:00Z"),
                ("created_to", "9999-12-31T23:59:59Z"),
            ],
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains(",login,"));
}

/// An export of several batches (500 rows each) has every row once, newest first, whether
/// the last batch is short or exactly full.
async fn an_export_of_many_batches_is_complete(app: &TestApp) {
    let admin = app.admin().await.access_token;
    app.record_bulk(1000).await;

    let res = app.export(&admin, &[("action", "bulk_entry")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    let rows: Vec<Vec<&str>> = body
        .split_terminator("\r\n")
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 1000);
    assert_newest_first(&rows);
    let mut objects: Vec<usize> = rows.iter().map(|f| f[5].parse().unwrap()).collect();
    objects.sort();
    assert_eq!(objects, (0..1000).collect::<Vec<_>>());

    let res = app.export(&admin, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    let rows: Vec<Vec<&str>> = body
        .split_terminator("\r\n")
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let total = app.audit_logs(&admin, &[]).await["total"].as_u64().unwrap() as usize;
    assert!(total > 1000 && !total.is_multiple_of(500), "{total}");
    assert_eq!(rows.len(), total);
    assert_newest_first(&rows);
}

/// Each row's id (the first field) is below the one before it.
fn assert_newest_first(rows: &[Vec<&str>]) {
    let ids: Vec<Uuid> = rows.iter().map(|f| f[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "not newest first");
}

/// A row that cannot be read fails the export with a JSON 500 when it is in the first
/// batch, and cuts the body short (the client's read fails) when it is in a later one.
async fn an_unreadable_row_fails_the_export_visibly(app: &TestApp) {
    let admin = app.admin().await.access_token;
    app.record_bulk(1200).await;

    let early = app.make_unreadable(100).await;
    let res = app.export(&admin, &[]).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(error_code(res).await, "internal_error");
    app.clear_metadata(early).await;

    app.make_unreadable(700).await;
    let mut res = app.export(&admin, &[]).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut received = Vec::new();
    let failure = loop {
        match res.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break None,
            Err(err) => break Some(err),
        }
    };
    assert!(failure.is_some(), "the export ended as if complete");
    let received = String::from_utf8(received).unwrap();
    let lines: Vec<&str> = received.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 501, "the header and the first batch");
    assert!(received.ends_with("\r\n"));
}
