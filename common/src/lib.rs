//! What the API and the worker share.
//!
//! # Layout
//! - [`settings`]: configuration from the environment (and an optional `.env`), with the
//!   embedded mode's generated secrets.
//! - [`db`]: the [`db::Db`] handle over Postgres or SQLite, migrations, and one repository
//!   per table. Every query is written once and runs unchanged on both databases.
//! - [`model`]: domain types shared by the HTTP layer and the worker.
//! - [`auth`]: password hashing, access tokens (JWT) and refresh-token material.
//! - [`signing`]: HMAC-signed download links and their key ring.
//! - [`queue`]: the job payload and the producer side of the job queue (SQLite or Redis).
//! - [`storage`]: the object store where rendered documents live.
//! - [`limits`]: rate limits (GCRA), shared through Redis or kept in memory.
//! - [`envelope`]: documents at rest: brotli, then AES-256-GCM in chunks, streamable.
//! - [`feeder`]: the bulk lane: batch items fed to the queue a window at a time, shared
//!   fairly between owners.
//! - [`maintenance`]: the reconciler (lost jobs), orphan purge, preview sweep, retention.
//! - [`telemetry`]: logging set-up and the Prometheus registry.
//! - [`webhooks`]: Standard Webhooks secrets and signatures, events, and the destination
//!   rule (no private networks).
//!
//! This crate knows nothing of HTTP or rendering: those live in `api` and `worker` (and
//! what a template is, in the `template` crate beside this one).

pub mod auth;
pub mod db;
pub mod envelope;
pub mod feeder;
pub mod limits;
pub mod maintenance;
pub mod model;
pub mod queue;
pub mod settings;
pub mod signing;
pub mod storage;
pub mod telemetry;
pub mod webhooks;

pub use db::Db;
pub use settings::Settings;

/// The current time, truncated to microseconds: both databases keep microseconds, so a
/// value read back compares equal to the one written.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// Completes on SIGTERM or Ctrl-C: the signals that start a graceful drain.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
