//! One render job, from the queued row to the stored object.
//!
//! Jobs arrive at least once, so every step is safe to repeat: the claim counts the
//! attempt and takes a lease, the object key derives from the document id (a retry
//! overwrites), and only the attempt that claimed last may mark the row finished.
//!
//! Retries are ours, not the queue's: a transient failure (database, storage, engine
//! crash, timeout) puts the row back to `queued` and enqueues a delayed job with an
//! exponential backoff, until `JOB_MAX_ATTEMPTS`; a permanent one (bad template, output
//! too large) fails the document at once with a readable `error`. The handler therefore
//! tells the queue "done" in both cases, and the queue's own retry rules (which differ
//! between backends) never come into play.

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Settings;
use common::db::documents::Outcome;
use common::db::policies::PolicyParties;
use common::model::{Document, OutputFormat, Priority, TemplateOptions, Timings};
use common::queue::RenderJob;
use common::storage::Storage;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use common::envelope;

use crate::Deps;
use template::RenderError;
use template::layout::PageLayout;

use crate::pdf::PdfEngine;

/// How a job went wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Retrying cannot help (bad template, unsupported format…): the document fails now.
    #[error("{0}")]
    Permanent(String),
    /// The database, the object store or an engine failed: worth another attempt.
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

/// How long past its timeout a job's lease lasts: after that, the reconciler assumes the
/// worker died and enqueues the document again.
const LEASE_GRACE: Duration = Duration::from_secs(5);

/// Runs one job. `Err` only when the outcome could not be recorded (the database is
/// down): the queue then redelivers, and the reconciler backs it up.
pub async fn process(deps: &Deps, job: &RenderJob) -> anyhow::Result<()> {
    let settings = &deps.settings;
    let lease = common::now() + settings.worker.job_timeout + LEASE_GRACE;
    let Some(doc) = deps.db.documents().claim(job.document_id, lease).await? else {
        info!("document already finished or deleted; nothing to do");
        return Ok(());
    };
    let lane = doc.priority;
    let outcome = process_claimed(deps, doc).await;
    if lane == Priority::Bulk {
        deps.feeder.left_window();
    }
    outcome
}

/// Runs the attempt `doc`'s claim started, to a finished or requeued row.
async fn process_claimed(deps: &Deps, mut doc: Document) -> anyhow::Result<()> {
    let settings = &deps.settings;
    let attempt = doc.attempts;
    let format = doc.output_format.as_str();
    if attempt == 1
        && let Some(started) = doc.started_at
    {
        let wait = (started - doc.created_at).to_std().unwrap_or_default();
        deps.metrics
            .waited(doc.priority.as_str(), wait.as_secs_f64());
    }
    if attempt > settings.worker.job_max_attempts {
        // Only a job that took its worker down with it gets here (each redelivery counts).
        let reason = format!(
            "gave up after {} attempts: the worker stopped during each",
            attempt - 1
        );
        return fail(deps, &doc, attempt, &reason).await;
    }
    info!(attempt, format, "rendering");

    // The context moves into the render rather than being copied: a 100,000-row export is
    // tens of megabytes once parsed, and each copy counted in the worker's peak.
    let inline_context = std::mem::take(&mut doc.inline_context.0);
    let job = render_and_store(deps, &doc, inline_context);
    let result = match tokio::time::timeout(settings.worker.job_timeout, job).await {
        Ok(result) => result,
        Err(_) => Err(JobError::Transient(anyhow::anyhow!(
            "the job took longer than {} s",
            settings.worker.job_timeout.as_secs()
        ))),
    };
    match result {
        Ok(stored) => {
            let finished = deps
                .db
                .documents()
                .finish(
                    &doc,
                    attempt,
                    Outcome::Ready {
                        storage_key: &stored.key,
                        size_bytes: stored.size as i64,
                        stored_bytes: stored.stored_size as i64,
                        checksum: &stored.checksum,
                        timings: &stored.timings,
                    },
                    deps.hooks.lease(),
                )
                .await?;
            deps.hooks.hand(finished.handed);
            if finished.won {
                deps.finished(format, "ready");
                info!(
                    size = stored.size,
                    render_ms = stored.timings.render_ms,
                    "document ready"
                );
            } else {
                info!("another attempt finished this document first; result discarded");
            }
            Ok(())
        }
        Err(JobError::Permanent(reason)) => fail(deps, &doc, attempt, &reason).await,
        Err(JobError::Transient(err)) if attempt >= settings.worker.job_max_attempts => {
            let reason = format!("gave up after {attempt} attempts: {err:#}");
            fail(deps, &doc, attempt, &reason).await
        }
        Err(JobError::Transient(err)) => retry_later(deps, &doc, attempt, &err).await,
    }
}

/// The delay before attempt `attempt + 1`: base × 2^(attempt-1), capped.
pub fn backoff(base: Duration, max: Duration, attempt: i32) -> Duration {
    let exponent = attempt.clamp(1, 20) as u32 - 1;
    base.saturating_mul(1 << exponent).min(max)
}

async fn retry_later(
    deps: &Deps,
    doc: &Document,
    attempt: i32,
    err: &anyhow::Error,
) -> anyhow::Result<()> {
    let settings = &deps.settings;
    let delay = backoff(
        settings.worker.job_retry_base,
        settings.worker.job_retry_max,
        attempt,
    );
    let reason = format!(
        "attempt {attempt} failed, retrying in {} ms: {err:#}",
        delay.as_millis()
    );
    warn!(attempt, error = %err, delay_ms = delay.as_millis() as u64, "attempt failed; retrying later");
    let lease = common::now() + delay + settings.queue.queued_lease;
    if deps
        .db
        .documents()
        .requeue(doc.id, attempt, &reason, lease)
        .await?
    {
        deps.metrics
            .document_finished(doc.output_format.as_str(), "retried");
        let job = RenderJob {
            document_id: doc.id,
            request_id: doc.request_id.clone(),
        };
        if let Err(err) = deps.queue.push_after(job, delay).await {
            // The row is queued with a lease: the reconciler enqueues it when that expires.
            warn!(error = %err, "cannot enqueue the retry; the reconciler will");
        }
    }
    Ok(())
}

async fn fail(deps: &Deps, doc: &Document, attempt: i32, reason: &str) -> anyhow::Result<()> {
    warn!(attempt, reason, "document failed");
    let finished = deps
        .db
        .documents()
        .finish(
            doc,
            attempt,
            Outcome::Failed { error: reason },
            deps.hooks.lease(),
        )
        .await?;
    deps.hooks.hand(finished.handed);
    if finished.won {
        deps.finished(doc.output_format.as_str(), "failed");
    }
    Ok(())
}

/// What a successful attempt stored.
struct Stored {
    key: String,
    size: usize,
    stored_size: usize,
    checksum: String,
    timings: Timings,
}

async fn render_and_store(
    deps: &Deps,
    doc: &Document,
    inline_context: serde_json::Value,
) -> Result<Stored, JobError> {
    let mut timings = Timings {
        queue_ms: doc
            .started_at
            .map(|started| (started - doc.created_at).num_milliseconds())
            .unwrap_or_default(),
        ..Timings::default()
    };
    if let Some(stored) = stored_by_earlier_attempt(deps, doc, &timings).await? {
        return Ok(stored);
    }
    let format = doc.output_format.as_str();

    let started = Instant::now();
    let (source, options) = match doc.template_version_id {
        Some(version_id) => {
            let version = deps
                .db
                .templates()
                .version_by_id(version_id)
                .await?
                .ok_or_else(|| {
                    JobError::Permanent(format!("template version {version_id} no longer exists"))
                })?;
            let options = deps
                .db
                .templates()
                .get(version.template_id)
                .await?
                .map(|template| template.options.0)
                .unwrap_or_default();
            (Some(version.content), options)
        }
        None if doc.uses_template => {
            return Err(JobError::Permanent(
                "the template was deleted before the document was rendered".to_owned(),
            ));
        }
        None => (None, Default::default()),
    };
    let context = render_context(&deps.db, doc, inline_context).await?;
    let bytes = render_bytes(
        &deps.pdf,
        &deps.settings,
        doc.output_format,
        source,
        &options,
        context,
    )
    .await;
    deps.metrics
        .engine_totals(deps.pdf.restarts(), deps.pdf.recycled());
    let bytes = bytes?;
    let render_time = started.elapsed().as_secs_f64();
    timings.render_ms = render_time * 1000.0;
    deps.metrics.stage(format, "render", render_time);

    let checksum = hex::encode(Sha256::digest(&bytes));
    let size = bytes.len();
    let stored = if doc.compress || doc.encrypt {
        let (compress, encrypt) = (doc.compress, doc.encrypt);
        let keys = deps.settings.storage.encryption_keys.clone();
        let plain = bytes.clone();
        let (stored, compress_time, encrypt_time) = blocking(move || -> Result<_, JobError> {
            let started = Instant::now();
            let compressed = if compress {
                Bytes::from(envelope::seal(&plain, true, None).map_err(seal_error)?)
            } else {
                plain
            };
            let compress_time = started.elapsed();
            let started = Instant::now();
            let sealed = if encrypt {
                Bytes::from(envelope::seal(&compressed, false, Some(&keys)).map_err(seal_error)?)
            } else {
                compressed
            };
            Ok((sealed, compress_time, started.elapsed()))
        })
        .await??;
        if compress {
            timings.compress_ms = compress_time.as_secs_f64() * 1000.0;
            deps.metrics
                .stage(format, "compress", compress_time.as_secs_f64());
        }
        if encrypt {
            timings.encrypt_ms = encrypt_time.as_secs_f64() * 1000.0;
            deps.metrics
                .stage(format, "encrypt", encrypt_time.as_secs_f64());
        }
        stored
    } else {
        bytes
    };

    let started = Instant::now();
    let key = Storage::document_key(doc.id, doc.output_format);
    let stored_size = stored.len();
    deps.storage.put(&key, stored).await?;
    let store_time = started.elapsed().as_secs_f64();
    timings.store_ms = store_time * 1000.0;
    deps.metrics.stage(format, "store", store_time);

    Ok(Stored {
        key,
        size,
        stored_size,
        checksum,
        timings,
    })
}

/// The object an earlier attempt of this document stored before it stopped short of
/// recording it (a worker killed between the two): read back, its plain size and checksum
/// taken, and kept, rather than rendered and written a second time. Both stores write an
/// object whole or not at all (an S3 PUT; a temporary file renamed), so an object under
/// the document's key is complete. `None` on a first attempt, when there is no such
/// object, or when it cannot be read back (it is then rendered again).
async fn stored_by_earlier_attempt(
    deps: &Deps,
    doc: &Document,
    timings: &Timings,
) -> Result<Option<Stored>, JobError> {
    if doc.attempts < 2 {
        return Ok(None);
    }
    let key = Storage::document_key(doc.id, doc.output_format);
    let object = match deps.storage.get(&key).await {
        Ok(object) => object,
        Err(err) if common::storage::is_not_found(&err) => return Ok(None),
        Err(err) => return Err(JobError::Transient(err)),
    };
    let stored_size = object.size as usize;
    let keys = deps.settings.storage.encryption_keys.clone();
    let mut plain = envelope::open_stream(object.stream, doc.compress, doc.encrypt, keys);
    let (mut hasher, mut size) = (Sha256::new(), 0);
    while let Some(chunk) = plain.next().await {
        match chunk {
            Ok(chunk) => {
                hasher.update(&chunk);
                size += chunk.len();
            }
            Err(err) => {
                warn!(error = %err, "an earlier attempt's object cannot be read back; rendering again");
                return Ok(None);
            }
        }
    }
    info!("an earlier attempt stored this document before it stopped; its object is kept");
    Ok(Some(Stored {
        key,
        size,
        stored_size,
        checksum: hex::encode(hasher.finalize()),
        timings: timings.clone(),
    }))
}

/// Renders a template (`None`: the built-in layout) with `context` to `format`: HTML through
/// minijinja, PDF through the warm engine with the template's page layout, XLSX from the
/// sheet spec. Shared by jobs and template previews.
pub async fn render_bytes(
    pdf: &PdfEngine,
    settings: &Settings,
    format: OutputFormat,
    source: Option<String>,
    options: &TemplateOptions,
    context: serde_json::Value,
) -> Result<Bytes, JobError> {
    let (fuel, limit) = (
        settings.worker.render_fuel,
        settings.worker.max_output_bytes,
    );
    match format {
        OutputFormat::Html | OutputFormat::Pdf => {
            // The layout is checked before rendering: a bad option fails fast.
            let layout = (format == OutputFormat::Pdf)
                .then(|| PageLayout::from_template_options(options))
                .transpose()?;
            let source = source.unwrap_or_else(|| template::BUILTIN_HTML.to_owned());
            let html =
                blocking(move || template::render_html(&source, &context, fuel, limit)).await??;
            let Some(layout) = layout else {
                return Ok(Bytes::from(html));
            };
            let pdf = pdf
                .render(&html, &layout)
                .await
                .map_err(|e| JobError::Transient(anyhow::anyhow!("PDF engine: {e}")))?;
            if pdf.len() > limit {
                return Err(RenderError::TooLarge {
                    size: pdf.len(),
                    limit,
                }
                .into());
            }
            Ok(Bytes::from(pdf))
        }
        OutputFormat::Xlsx => {
            let xlsx = blocking(move || {
                template::xlsx::render_xlsx(source.as_deref(), context, fuel, limit)
            })
            .await??;
            Ok(Bytes::from(xlsx))
        }
    }
}

/// Runs CPU-bound work (template rendering, compression, encryption) off the async
/// runtime, which the API shares in the embedded mode.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| JobError::Transient(e.into()))
}

fn seal_error(err: envelope::EnvelopeError) -> JobError {
    JobError::Transient(anyhow::anyhow!("cannot seal the document: {err}"))
}

/// The variables a template sees: the request's `inline_context`, the `document`, `now`,
/// and the document's `policy` with its `client` and `company` (null without a policy, or
/// once it was deleted).
pub async fn render_context(
    db: &common::db::Db,
    doc: &Document,
    inline_context: serde_json::Value,
) -> Result<serde_json::Value, common::db::DbError> {
    let parties = match doc.policy_id {
        Some(policy_id) => db.policies().parties(policy_id).await?,
        None => None,
    };
    Ok(template_context(
        inline_context,
        serde_json::json!({
            "id": doc.id,
            "document_type": doc.document_type,
            "output_format": doc.output_format,
            "created_at": doc.created_at,
        }),
        parties.as_ref(),
    ))
}

/// The context for `inline_context`, a `document` description and a policy's parties.
/// A company's `api_key` never reaches a template: the model does not serialise it.
pub fn template_context(
    inline_context: serde_json::Value,
    document: serde_json::Value,
    parties: Option<&PolicyParties>,
) -> serde_json::Value {
    let (policy, client, company) = match parties {
        Some(p) => (
            serde_json::to_value(&p.policy).unwrap_or_default(),
            serde_json::to_value(&p.client).unwrap_or_default(),
            serde_json::to_value(&p.company).unwrap_or_default(),
        ),
        None => Default::default(),
    };
    // Built by moving the values in: `json!` would copy the inline context.
    let mut context = serde_json::Map::new();
    context.insert("inline_context".into(), inline_context);
    context.insert("policy".into(), policy);
    context.insert("client".into(), client);
    context.insert("company".into(), company);
    context.insert("document".into(), document);
    context.insert("now".into(), serde_json::json!(common::now()));
    serde_json::Value::Object(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=8).map(|a| backoff(base, max, a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(base, max, 0), base);
        assert_eq!(backoff(base, max, i32::MAX), max);
    }
}
