//! One render job, from the queued row to the stored object.
//!
//! Jobs arrive at least once, so every step is safe to repeat: the claim counts the
//! attempt, the object key derives from the document id (a retry overwrites), and only the
//! attempt that claimed last may mark the row finished.

use std::time::Instant;

use bytes::Bytes;
use common::db::documents::Outcome;
use common::model::{Document, OutputFormat, Timings};
use common::queue::RenderJob;
use common::storage::Storage;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::Deps;
use crate::render::{self, RenderError};

/// How a job went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (bad template, unsupported format…): the document fails now.
    #[error("{0}")]
    Permanent(String),
    /// The database or the object store failed: worth another attempt.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl From<RenderError> for JobError {
    fn from(err: RenderError) -> Self {
        JobError::Permanent(err.to_string())
    }
}

impl From<common::db::DbError> for JobError {
    fn from(err: common::db::DbError) -> Self {
        JobError::Transient(err.into())
    }
}

/// Runs one job. `Err` means a transient failure the queue should retry; every other
/// outcome, failures included, is recorded on the row and returns `Ok`.
pub async fn process(deps: &Deps, job: &RenderJob) -> Result<(), JobError> {
    let Some(doc) = deps.db.documents().claim(job.document_id).await? else {
        info!("document already finished or deleted; nothing to do");
        return Ok(());
    };
    let attempt = doc.attempts;
    let format = doc.output_format.as_str();
    info!(attempt, format, "rendering");

    match render_and_store(deps, &doc).await {
        Ok((key, bytes, mut timings)) => {
            let checksum = hex::encode(Sha256::digest(&bytes));
            timings.queue_ms = doc
                .started_at
                .map(|started| (started - doc.created_at).num_milliseconds())
                .unwrap_or_default();
            let won = deps
                .db
                .documents()
                .finish(
                    doc.id,
                    attempt,
                    Outcome::Ready {
                        storage_key: &key,
                        size_bytes: bytes.len() as i64,
                        stored_bytes: bytes.len() as i64,
                        checksum: &checksum,
                        timings: &timings,
                    },
                )
                .await?;
            if won {
                deps.metrics.document_finished(format, "ready");
                info!(
                    size = bytes.len(),
                    render_ms = timings.render_ms,
                    "document ready"
                );
            } else {
                info!("another attempt finished this document first; result discarded");
            }
            Ok(())
        }
        Err(JobError::Permanent(reason)) => fail(deps, &doc, attempt, &reason).await,
        Err(JobError::Transient(err)) if attempt >= deps.settings.job_max_attempts => {
            let reason = format!("gave up after {attempt} attempts: {err:#}");
            fail(deps, &doc, attempt, &reason).await
        }
        Err(err) => {
            warn!(attempt, error = %err, "attempt failed; the job will be retried");
            deps.metrics.document_finished(format, "retried");
            Err(err)
        }
    }
}

async fn fail(deps: &Deps, doc: &Document, attempt: i32, reason: &str) -> Result<(), JobError> {
    warn!(attempt, reason, "document failed");
    let won = deps
        .db
        .documents()
        .finish(doc.id, attempt, Outcome::Failed { error: reason })
        .await?;
    if won {
        deps.metrics
            .document_finished(doc.output_format.as_str(), "failed");
    }
    Ok(())
}

async fn render_and_store(
    deps: &Deps,
    doc: &Document,
) -> Result<(String, Bytes, Timings), JobError> {
    let mut timings = Timings::default();
    let format = doc.output_format.as_str();

    let started = Instant::now();
    let source = match doc.template_version_id {
        Some(version_id) => {
            deps.db
                .templates()
                .version_by_id(version_id)
                .await?
                .ok_or_else(|| {
                    JobError::Permanent(format!("template version {version_id} no longer exists"))
                })?
                .content
        }
        None => render::BUILTIN_HTML.to_owned(),
    };
    let context = render_context(doc);
    let bytes = match doc.output_format {
        OutputFormat::Html => {
            let (fuel, limit) = (deps.settings.render_fuel, deps.settings.max_output_bytes);
            let html = tokio::task::spawn_blocking(move || {
                render::render_html(&source, &context, fuel, limit)
            })
            .await
            .map_err(|e| JobError::Transient(e.into()))??;
            Bytes::from(html)
        }
        other => {
            return Err(JobError::Permanent(format!(
                "output format {other} is not supported yet"
            )));
        }
    };
    let render_time = started.elapsed().as_secs_f64();
    timings.render_ms = render_time * 1000.0;
    deps.metrics.stage(format, "render", render_time);

    let started = Instant::now();
    let key = Storage::document_key(doc.id, doc.output_format);
    deps.storage.put(&key, bytes.clone()).await?;
    let store_time = started.elapsed().as_secs_f64();
    timings.store_ms = store_time * 1000.0;
    deps.metrics.stage(format, "store", store_time);

    Ok((key, bytes, timings))
}

/// The variables a template sees. `policy`, `client` and `company` stay null until the
/// business resources exist.
fn render_context(doc: &Document) -> serde_json::Value {
    serde_json::json!({
        "inline_context": doc.inline_context.0,
        "policy": null,
        "client": null,
        "company": null,
        "document": {
            "id": doc.id,
            "document_type": doc.document_type,
            "output_format": doc.output_format,
            "created_at": doc.created_at,
        },
        "now": common::now(),
    })
}
