use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{Backend, JWT_SECRET, SIGNATURE_KEYS, spawn_app};

/// Runs `monassurance-api create-admin` on `data_dir` with `password` on standard input.
fn create_admin(data_dir: &std::path::Path, email: &str, password: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_monassurance-api"))
        .args(["create-admin", "--email", email])
        .env_clear()
        .env("DATA_DIR", data_dir)
        .env("JWT_SECRET_KEY", JWT_SECRET)
        .env("SIGNATURE_KEYS", SIGNATURE_KEYS)
        .env("SIGNATURE_ACTIVE_KID", "k1")
        .env("LOG_LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("monassurance-api runs");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_admin_creates_or_promotes_with_a_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();

    let short = create_admin(dir.path(), "boss@example.com", "short");
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 8 characters"));

    let out = create_admin(dir.path(), "boss@example.com", "boss-password-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = spawn_app(Backend::Sqlite, &[("DATA_DIR", data_dir)]).await;
    let boss = app.login("boss@example.com", "boss-password-1").await;
    let me: Value = app
        .get("/api/v1/auth/me", Some(&boss.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");

    // An existing agent is promoted, with the new password.
    app.register_and_login("rita@example.com").await;
    let out = create_admin(dir.path(), "rita@example.com", "rita-admin-password");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rita = app.login("rita@example.com", "rita-admin-password").await;
    let me: Value = app
        .get("/api/v1/auth/me", Some(&rita.access_token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    app.stop().await;
}
