//! The service layer: the business rules between the HTTP handlers and the repositories.
//!
//! A handler extracts what the request carries, calls one function here, and maps the
//! answer to HTTP; the rules (who may see what, how an account is made, how a document is
//! asked for and opened, what a template may contain) are written once, here, whichever
//! route (or command, or batch) needs them. Functions answer [`ApiError`]s: the service
//! layer lives in the API crate, and its refusals are the API's (crates.io's controllers
//! do the same with their `AppError`).
//!
//! # Layout
//! - [`access`]: [`access::Scope`], the one rule of who reaches which client, policy and
//!   document.
//! - [`accounts`]: creating accounts (registration, admins, the `create-admin` command)
//!   and the public view of a user.
//! - [`batches`]: many documents in one request: checking a whole batch before writing
//!   it, its counts, cancel and retry, and its archive, streamed as a ZIP.
//! - [`csv`]: CSV records for the exports (the audit log, a batch's manifest).
//! - [`documents`]: asking for a document (template resolution, format check,
//!   backpressure, insert and enqueue, idempotency), waiting for it, opening what a worker
//!   stored, signed links, and template previews.
//! - [`ops`]: the operators' view of workers and the queue, and whether the pipeline
//!   is stalled.
//! - [`policies`]: what a policy must be, and updates that a concurrent change cannot
//!   slip past.
//! - [`sessions`]: logging in (with the brute-force guard) and refreshing tokens.
//! - [`templates`]: what a template's content and options may be.
//! - this module: the audit trail and the text checks every service uses.

pub mod access;
pub mod accounts;
pub mod batches;
pub mod csv;
pub mod documents;
pub mod ops;
pub mod policies;
pub mod sessions;
pub mod templates;
pub mod webhooks;

use common::db::audit::AuditEvent;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{AuthUser, RequestMeta};

/// Records an audit event with the request's IP, user agent and request id. An audit
/// failure is logged, never shown to the client: the action itself has happened.
pub async fn record(state: &AppState, meta: &RequestMeta, mut event: AuditEvent) {
    event.ip_address = meta.ip_address.clone();
    event.user_agent = meta.user_agent.clone();
    event.request_id = meta.request_id.clone();
    if let Err(err) = state.db.audit().record(&event).await {
        tracing::error!(error = %err, action = event.action, "cannot write the audit log");
    }
}

/// Records that `user` created, changed or deleted an object (`<object_type>_<verb>`).
pub async fn record_change(
    state: &AppState,
    meta: &RequestMeta,
    user: &AuthUser,
    action: &'static str,
    object_type: &'static str,
    id: uuid::Uuid,
) {
    let event = AuditEvent {
        user_id: Some(user.id()),
        action,
        object_type: Some(object_type),
        object_id: Some(id.to_string()),
        ..Default::default()
    };
    record(state, meta, event).await;
}

/// Refuses a blank text, or one longer than `max` characters.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters long"),
        ));
    }
    Ok(())
}
