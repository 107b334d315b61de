//! `monassurance-api`: the HTTP API and its administration commands.
//!
//! ```text
//! monassurance-api [serve]       the API alone (workers run as monassurance-worker)
//! monassurance-api all           the API and a worker in one process (embedded default)
//! monassurance-api migrate       apply database migrations and exit
//! monassurance-api create-admin --email EMAIL [--full-name NAME]
//!                                create an admin (or promote an existing user); the
//!                                password comes from ADMIN_PASSWORD or the first line of
//!                                standard input
//! ```

use std::io::BufRead;

use anyhow::{Context, bail};
use common::telemetry;
use common::{Db, Settings};
use monassurance_api::{Application, admin};

const USAGE: &str = "usage: monassurance-api [serve | all | migrate | create-admin --email EMAIL [--full-name NAME]]";

fn main() -> anyhow::Result<()> {
    tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

/// glibc's malloc, tuned before any thread exists (`mallopt` is not meant to race with
/// allocations on other threads).
///
/// Hashing a password (argon2id) allocates 19 MiB. glibc serves the first such block with
/// `mmap` and unmaps it when freed, but then raises its mmap threshold to that size, so
/// every later one comes from the heap of the calling thread's arena and stays resident
/// after it is freed: each blocking thread that ever hashed or checked a password kept its
/// 19 MiB (an idle API that had served a few logins sat at 75 MB, against 18 MB with this
/// setting, measured by `scripts/bench-api`). A fixed threshold turns the adjustment off:
/// blocks of 1 MiB or more are always mapped and unmapped. Password checks (logins) do not
/// pay the page faults again: they keep their argon2 memory between checks
/// (`common::auth::verify_password_blocking`); ordinary requests allocate far less.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt only sets a parameter of the allocator; it is called first thing in
    // main, before the runtime (or anything else) has started a thread.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = Settings::from_env()?;
    telemetry::init_tracing(&settings);
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(settings, false).await,
        Some("all") => serve(settings, true).await,
        Some("migrate") => {
            Db::connect(&settings).await?.migrate().await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some("create-admin") => create_admin(settings, &args[1..]).await,
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

async fn serve(settings: Settings, embedded_worker: bool) -> anyhow::Result<()> {
    let app = Application::build(settings, embedded_worker).await?;
    app.run_until(common::shutdown_signal()).await
}

async fn create_admin(settings: Settings, args: &[String]) -> anyhow::Result<()> {
    let mut email = None;
    let mut full_name = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--email" => email = Some(value.clone()),
            "--full-name" => full_name = Some(value.clone()),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let email = email.with_context(|| format!("--email is required\n{USAGE}"))?;
    let password = match std::env::var("ADMIN_PASSWORD") {
        Ok(password) if !password.is_empty() => password,
        _ => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let db = Db::connect(&settings).await?;
    db.migrate().await?;
    let user = admin::create_or_promote(
        &db,
        &email,
        &password,
        full_name.as_deref(),
        settings.password_min_length,
    )
    .await?;
    db.close().await;
    println!("admin {} ({}) is ready", user.email, user.id);
    Ok(())
}
