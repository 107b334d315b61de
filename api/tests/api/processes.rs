//! Which process does what: rendering happens in workers only.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_EMAIL, ADMIN_PASSWORD, Backend, free_port, spawn_app, wait_for_port};

/// The ids of the live `wkhtmltopdf` processes whose parent is `parent`.
fn pdf_engines_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: the command name may hold spaces, so split at the
        // last parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let (state, ppid) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok()));
        if comm == "wkhtmltopdf" && ppid == Some(parent) && state != Some("Z") {
            found.push(pid);
        }
    }
    found
}

/// `monassurance-api serve` starts no wkhtmltopdf process: with a worker process beside
/// it, a PDF preview and a PDF document both come back, rendered by the worker, whose
/// warm engines are the only ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_starts_no_pdf_engine() {
    let app = spawn_app(Backend::PostgresRedis, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_monassurance-api"))
        .arg("serve")
        .env_clear()
        .envs(&app.env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", dir.path())
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .kill_on_drop(true)
        .spawn()
        .expect("monassurance-api serve starts");
    wait_for_port(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let tokens: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = tokens["access_token"].as_str().unwrap();
    let template: Value = client
        .post(format!("{base}/api/v1/templates"))
        .bearer_auth(admin)
        .json(&json!({"name": "Letter", "format": "pdf", "content": "<h1>{{ inline_context.example }}</h1>"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = template["id"].as_str().unwrap();

    let preview = client
        .post(format!("{base}/api/v1/templates/{id}/versions/1/preview"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), StatusCode::OK);
    assert!(preview.bytes().await.unwrap().starts_with(b"%PDF"));
    let document = client
        .post(format!("{base}/api/v1/documents/generate"))
        .bearer_auth(admin)
        .header("prefer", "wait=30")
        .json(&json!({"document_type": "letter", "template_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        document.status(),
        StatusCode::CREATED,
        "ready within the wait"
    );

    let api_pid = api.id().expect("the API runs");
    assert_eq!(
        pdf_engines_of(api_pid),
        Vec::<u32>::new(),
        "the API's own engines"
    );
    let workers = app.worker_pids();
    assert!(
        workers.iter().any(|&pid| !pdf_engines_of(pid).is_empty()),
        "the worker rendered both and keeps its engines warm"
    );
    api.start_kill().unwrap();
    tokio::time::timeout(Duration::from_secs(10), api.wait())
        .await
        .expect("the API stops")
        .unwrap();
    app.stop().await;
}
