//! Documents: asking for one, waiting for it, opening what a worker stored, signing links,
//! and template previews.
//!
//! Generation is asynchronous: [`submit`] records the request as a `queued` row and pushes
//! a job carrying only the document id; a worker renders it and marks the row `ready` or
//! `failed`. Every way of asking for a document goes through [`submit`]'s steps (template
//! resolution, format check, backpressure, insert and enqueue with compensation,
//! idempotency), so a batch or a preview cannot skip a rule a single request follows.
//!
//! A preview is rendered by a worker too, as a short-lived row the API waits for (like
//! `Prefer: wait`), answers and deletes ([`preview`]). The API never renders: an API
//! replica carries no template engine state and no PDF process, and a preview's outcome is
//! the pipeline's (a broken template fails it with the readable reason any document would
//! get). Rejected: rendering previews in the API with its own PDF pool, which gave every
//! replica a wkhtmltopdf pool and made the preview's status depend on how the pipeline
//! classified its errors.

use std::time::Duration;

use bytes::Bytes;
use common::db::audit::AuditEvent;
use common::db::documents::NewDocument;
use common::limits::Spend;
use common::model::{Document, DocumentStatus, OutputFormat, Priority};
use common::queue::RenderJob;
use common::settings::SignedUrlMode;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, RequestMeta};
use crate::service::access::Scope;

/// How long a request may be held waiting for its document (`Prefer: wait`, previews).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// What a client asks for, as sent.
#[derive(Debug, Default)]
pub struct Request {
    pub document_type: String,
    /// The template's latest version, unless `template_version_id` names one.
    pub template_id: Option<Uuid>,
    pub template_version_id: Option<Uuid>,
    pub policy_id: Option<Uuid>,
    /// A JSON object; absent or null is `{}`.
    pub inline_context: Option<serde_json::Value>,
    /// The template's format when absent (HTML for the built-in layout).
    pub output_format: Option<OutputFormat>,
    /// `DEFAULT_COMPRESS` / `DEFAULT_ENCRYPT` when absent.
    pub compress: Option<bool>,
    pub encrypt: Option<bool>,
    /// `interactive` when absent.
    pub priority: Option<Priority>,
}

impl Request {
    /// A stable hash of what is asked for, to tell a replay from a different request under
    /// the same `Idempotency-Key`. Object keys are sorted so that field order does not
    /// matter.
    pub fn fingerprint(&self) -> String {
        let value = serde_json::json!([
            self.document_type.trim(),
            self.template_id,
            self.template_version_id,
            self.policy_id,
            self.inline_context,
            self.output_format,
            self.compress,
            self.encrypt,
            self.priority,
        ]);
        fingerprint(&value)
    }
}

/// A stable hash of a JSON request: object keys are sorted, so field order does not matter.
pub fn fingerprint(value: &serde_json::Value) -> String {
    fn canonical(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(canonical).collect())
            }
            other => other.clone(),
        }
    }
    hex::encode(Sha256::digest(canonical(value).to_string().as_bytes()))
}

/// A client's `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Clone)]
pub struct Idempotency {
    key: String,
    request_hash: String,
}

impl Idempotency {
    /// Checks the key (1 to 255 characters once trimmed).
    pub fn new(key: &str, request: &Request) -> ApiResult<Idempotency> {
        Idempotency::with_fingerprint(key, request.fingerprint())
    }

    /// The key, for a request whose [`fingerprint`] is `request_hash`.
    pub fn with_fingerprint(key: &str, request_hash: String) -> ApiResult<Idempotency> {
        let key = key.trim();
        if key.is_empty() || key.len() > 255 {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 visible characters",
            ));
        }
        Ok(Idempotency {
            key: key.to_owned(),
            request_hash,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn request_hash(&self) -> &str {
        &self.request_hash
    }

    /// 422 `idempotency_key_reused` unless `stored` (what the key's first request hashed
    /// to) is this request's hash.
    pub fn check_replay(&self, stored: Option<&str>) -> ApiResult<()> {
        if stored == Some(self.request_hash.as_str()) {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        ))
    }
}

/// When an `Idempotency-Key` used earlier than this is forgotten.
pub fn idempotency_window_start() -> chrono::DateTime<chrono::Utc> {
    common::now() - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS)
}

/// What [`submit`] did.
pub enum Submitted {
    /// A new document, queued.
    Created(Document),
    /// The document an earlier request with the same `Idempotency-Key` created.
    Replayed(Document),
}

/// Asks for a document on behalf of `caller`: checks the request, resolves its template,
/// refuses work past `MAX_QUEUED_DOCUMENTS`, writes the row and pushes its job, and audits
/// it. A replayed `Idempotency-Key` answers the first document instead.
pub async fn submit(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    request: Request,
    idempotency: Option<Idempotency>,
) -> ApiResult<Submitted> {
    if let Some(idempotency) = &idempotency
        && let Some(existing) = find_replay(state, caller.id(), idempotency).await?
    {
        return Ok(Submitted::Replayed(existing));
    }
    let document_type = request.document_type.trim();
    if document_type.is_empty() || document_type.chars().count() > 30 {
        return Err(ApiError::invalid(
            "document_type",
            "must be 1 to 30 characters long",
        ));
    }
    let inline_context = inline_context(request.inline_context, || serde_json::json!({}))?;
    if let Some(policy_id) = request.policy_id {
        Scope::of(caller).policy(&state.db, policy_id).await?;
    }
    let template =
        resolve_template(state, request.template_version_id, request.template_id).await?;
    let format = request
        .output_format
        .or(template.format)
        .unwrap_or(OutputFormat::Html);
    check_format(template.format, format)?;
    if state.queued_count().await? >= state.settings.queue.max_queued_documents {
        return Err(ApiError::unavailable(
            "unavailable",
            "Too many documents are waiting to be rendered; try again shortly.",
            5,
        ));
    }
    let pending = Pending {
        owner_id: caller.id(),
        document_type: document_type.to_owned(),
        output_format: format,
        template_version_id: template.version_id,
        policy_id: request.policy_id,
        inline_context,
        compress: request
            .compress
            .unwrap_or(state.settings.storage.default_compress),
        encrypt: request
            .encrypt
            .unwrap_or(state.settings.storage.default_encrypt),
        request_id: meta.request_id.clone(),
        idempotency: idempotency.clone(),
        priority: request.priority.unwrap_or(Priority::Interactive),
        preview: false,
    };
    let Some(doc) = insert_and_enqueue(state, pending).await? else {
        // The same key raced in from a parallel request, whose row won: answer with it.
        let idempotency = idempotency.expect("only a keyed insert conflicts");
        let winner = find_replay(state, caller.id(), &idempotency).await?;
        return winner.map(Submitted::Replayed).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("idempotency conflict without a row"))
        });
    };
    let metadata = serde_json::json!({"format": format});
    audit(
        state,
        meta,
        caller.id(),
        "generate_document",
        &doc,
        metadata,
    )
    .await;
    Ok(Submitted::Created(doc))
}

/// The document an earlier request with this key made, if the request is the same;
/// 422 `idempotency_key_reused` if it is not.
async fn find_replay(
    state: &AppState,
    owner_id: Uuid,
    idempotency: &Idempotency,
) -> ApiResult<Option<Document>> {
    let Some(existing) = state
        .db
        .documents()
        .find_idempotent(owner_id, &idempotency.key, idempotency_window_start())
        .await?
    else {
        return Ok(None);
    };
    idempotency.check_replay(existing.request_hash.as_deref())?;
    Ok(Some(existing))
}

/// The template version a request resolves to and the template's format.
pub struct ResolvedTemplate {
    pub version_id: Option<Uuid>,
    pub format: Option<OutputFormat>,
}

/// The version named wins; else the template's latest; else the built-in layout. An
/// inactive template is refused.
pub async fn resolve_template(
    state: &AppState,
    version_id: Option<Uuid>,
    template_id: Option<Uuid>,
) -> ApiResult<ResolvedTemplate> {
    let templates = state.db.templates();
    let (version_id, template) = match (version_id, template_id) {
        (Some(version_id), _) => {
            let version = templates
                .version_by_id(version_id)
                .await?
                .ok_or_else(|| ApiError::not_found("Template version not found."))?;
            (version.id, templates.get(version.template_id).await?)
        }
        (None, Some(template_id)) => {
            let template = templates
                .get(template_id)
                .await?
                .ok_or_else(|| ApiError::not_found("Template not found."))?;
            let version = templates
                .latest_version(template_id)
                .await?
                .ok_or_else(|| ApiError::not_found("The template has no version yet."))?;
            (version.id, Some(template))
        }
        (None, None) => {
            return Ok(ResolvedTemplate {
                version_id: None,
                format: None,
            });
        }
    };
    if template.as_ref().is_some_and(|t| !t.is_active) {
        return Err(ApiError::invalid(
            "template_id",
            "the template is not active",
        ));
    }
    Ok(ResolvedTemplate {
        version_id: Some(version_id),
        format: template.map(|t| t.format),
    })
}

/// An HTML template renders to HTML or PDF; an XLSX template only to XLSX; the built-in
/// layout (no template) to any format.
pub fn check_format(template: Option<OutputFormat>, output: OutputFormat) -> ApiResult<()> {
    let compatible = match template {
        None => true,
        Some(OutputFormat::Html) | Some(OutputFormat::Pdf) => output != OutputFormat::Xlsx,
        Some(OutputFormat::Xlsx) => output == OutputFormat::Xlsx,
    };
    if compatible {
        Ok(())
    } else {
        let template = template.map_or("built-in", |f| f.as_str());
        Err(ApiError::invalid(
            "output_format",
            format!("a {template} template cannot be rendered to {output}"),
        ))
    }
}

/// A request's `inline_context`: a JSON object, or `default()` when absent or null.
pub fn inline_context(
    value: Option<serde_json::Value>,
    default: impl FnOnce() -> serde_json::Value,
) -> ApiResult<serde_json::Value> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(default()),
        Some(value @ serde_json::Value::Object(_)) => Ok(value),
        Some(_) => Err(ApiError::invalid("inline_context", "must be a JSON object")),
    }
}

/// A checked document request, owned so that it can outlive the request's handler.
struct Pending {
    owner_id: Uuid,
    document_type: String,
    output_format: OutputFormat,
    template_version_id: Option<Uuid>,
    policy_id: Option<Uuid>,
    inline_context: serde_json::Value,
    compress: bool,
    encrypt: bool,
    request_id: Option<String>,
    idempotency: Option<Idempotency>,
    priority: Priority,
    preview: bool,
}

/// Inserts the document row and pushes its job; `None` when its `Idempotency-Key` is
/// already taken. When the queue refuses the job, the row stays (accepted all the same)
/// and the outbox relay enqueues it as soon as the queue answers.
///
/// Runs in a task of its own: a client disconnecting mid-request cancels the handler, and
/// must not leave a row that no job refers to.
async fn insert_and_enqueue(state: &AppState, pending: Pending) -> ApiResult<Option<Document>> {
    tokio::spawn(write_and_push(state.clone(), pending))
        .await
        .map_err(ApiError::internal)?
}

async fn write_and_push(state: AppState, pending: Pending) -> ApiResult<Option<Document>> {
    let (idempotency_key, request_hash) = match &pending.idempotency {
        Some(i) => (Some(i.key.as_str()), Some(i.request_hash.as_str())),
        None => (None, None),
    };
    let created = state
        .db
        .documents()
        .create(NewDocument {
            owner_id: pending.owner_id,
            document_type: &pending.document_type,
            output_format: pending.output_format,
            template_version_id: pending.template_version_id,
            policy_id: pending.policy_id,
            inline_context: &pending.inline_context,
            compress: pending.compress,
            encrypt: pending.encrypt,
            request_id: pending.request_id.as_deref(),
            idempotency_key,
            request_hash,
            priority: pending.priority,
            lease_until: common::now() + state.settings.queue.queued_lease,
            preview: pending.preview,
        })
        .await;
    let doc = match created {
        Ok(doc) => doc,
        Err(err) if err.is(common::db::Constraint::UqGeneratedDocumentsIdempotency) => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    enqueue(&state, &doc).await?;
    Ok(Some(doc))
}

/// Hands a queued document's job to the queue. The row is the truth and the queue only a
/// delivery: when the queue refuses the job (or is known to be down), the document stays
/// accepted, and the outbox relay hands it to the queue once the queue answers again. A
/// bulk document waits for its place in the bulk window instead ([`common::feeder`]).
async fn enqueue(state: &AppState, doc: &Document) -> ApiResult<()> {
    if doc.priority == Priority::Bulk {
        state.feed_bulk_lane();
        return Ok(());
    }
    let job = RenderJob {
        document_id: doc.id,
        request_id: doc.request_id.clone(),
    };
    let pushed = match state.outbox.in_outage() {
        true => false,
        false => match state.queue.push(job).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), document_id = %doc.id, "the queue refused a job; it is kept for the outbox relay");
                false
            }
        },
    };
    if !pushed {
        state.db.documents().end_lease(doc.id).await?;
        state.metrics.deferred.inc();
        state.outbox.defer();
    }
    Ok(())
}

/// Cancels a queued document the caller may see: it becomes `cancelled` at once, and its
/// job, when delivered, finds nothing to do. A document being rendered finishes (409
/// `not_cancellable`), and so does any finished one.
pub async fn cancel(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<Document> {
    let seen = Scope::of(caller).document(&state.db, id).await?;
    let Some(doc) = state.db.documents().cancel(&seen).await? else {
        let status = current_status(state, &seen).await?;
        let detail = match status {
            DocumentStatus::Processing => {
                "The document is being rendered and will finish; it cannot be cancelled.".to_owned()
            }
            other => format!("The document is {other}; only a queued document can be cancelled."),
        };
        return Err(ApiError::conflict("not_cancellable", detail));
    };
    state
        .metrics
        .document_finished(doc.output_format.as_str(), "cancelled");
    audit(
        state,
        meta,
        caller.id(),
        "document_cancelled",
        &doc,
        serde_json::json!({}),
    )
    .await;
    Ok(doc)
}

/// Puts a `failed` or `cancelled` document the caller may see back in the queue, as new:
/// same id and object key, attempts reset, error cleared. Anything else is 409
/// `not_retryable`.
pub async fn retry(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<Document> {
    let seen = Scope::of(caller).document(&state.db, id).await?;
    let lease = common::now() + state.settings.queue.queued_lease;
    let Some(doc) = state.db.documents().resubmit(id, lease).await? else {
        let status = current_status(state, &seen).await?;
        return Err(ApiError::conflict(
            "not_retryable",
            format!(
                "The document is {status}; only a failed or cancelled document can be retried."
            ),
        ));
    };
    enqueue(state, &doc).await?;
    state
        .metrics
        .document_finished(doc.output_format.as_str(), "resubmitted");
    let metadata = serde_json::json!({"previous_status": seen.status});
    audit(state, meta, caller.id(), "document_retried", &doc, metadata).await;
    Ok(doc)
}

/// A document's status now (it may have moved since `seen` was read); 404 if it is gone.
async fn current_status(state: &AppState, seen: &Document) -> ApiResult<DocumentStatus> {
    state
        .db
        .documents()
        .get(seen.id)
        .await?
        .map(|doc| doc.status)
        .ok_or_else(|| ApiError::not_found("Document not found."))
}

/// Polls the row until the document is finished or `limit` has passed. The worker may be
/// another process, so the database is what tells; the interval grows from 5 ms to 100 ms
/// so quick documents answer quickly and slow ones cost few queries.
pub async fn wait_for_outcome(
    state: &AppState,
    mut doc: Document,
    limit: Duration,
) -> ApiResult<Document> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut interval = Duration::from_millis(5);
    while matches!(
        doc.status,
        DocumentStatus::Queued | DocumentStatus::Processing
    ) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(100));
        match state.db.documents().get(doc.id).await? {
            Some(current) => doc = current,
            None => return Err(ApiError::not_found("Document not found.")),
        }
    }
    Ok(doc)
}

/// A stored document's bytes, as they stream out of storage: decompressed and decrypted
/// on the way, so memory stays bounded whatever the size.
pub struct Opened {
    /// The document's size (what the client receives).
    pub length: u64,
    pub body: BoxStream<'static, std::io::Result<Bytes>>,
}

/// Opens a ready document's object. The first piece is read before anything is answered:
/// it proves the key and the header, so a document the configured keys cannot open gets
/// an error answer, not a cut stream. A tampered object later in the stream aborts the
/// transfer instead of ending it cleanly with altered bytes.
pub async fn open(state: &AppState, doc: &Document) -> ApiResult<Opened> {
    ensure_ready(doc)?;
    let Some(key) = &doc.storage_key else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "ready document {} has no object",
            doc.id
        )));
    };
    let object = state.storage.get(key).await.map_err(|err| {
        if common::storage::is_not_found(&err) {
            tracing::error!(document_id = %doc.id, "a ready document's object is missing");
            ApiError::new(
                axum::http::StatusCode::GONE,
                "object_missing",
                "The document's file is no longer available.",
            )
        } else {
            // An object store that does not answer is an outage, like a database that does
            // not: the client may come back.
            tracing::warn!(error = %err, document_id = %doc.id, "cannot read a document's object");
            ApiError::unavailable(
                "storage_unavailable",
                "The document store is unavailable; try again shortly.",
                5,
            )
        }
    })?;
    if !doc.compress && !doc.encrypt {
        return Ok(Opened {
            length: object.size,
            body: object.stream.boxed(),
        });
    }
    let mut plain = common::envelope::open_stream(
        object.stream,
        doc.compress,
        doc.encrypt,
        state.settings.storage.encryption_keys.clone(),
    );
    let first = match plain.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(err)) => {
            tracing::error!(error = %err, document_id = %doc.id, "a stored document cannot be opened");
            return Err(ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "document_unreadable",
                "The stored document cannot be opened.",
            ));
        }
        None => Bytes::new(),
    };
    let document_id = doc.id;
    let rest = plain.inspect_err(move |err| {
        tracing::error!(error = %err, %document_id, "a stored document failed midway; the transfer is cut");
    });
    Ok(Opened {
        length: doc.size_bytes.unwrap_or_default() as u64,
        body: futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed(),
    })
}

/// 409 unless the document is ready.
fn ensure_ready(doc: &Document) -> ApiResult<()> {
    match doc.status {
        DocumentStatus::Ready => Ok(()),
        DocumentStatus::Failed => Err(ApiError::conflict(
            "document_failed",
            "The document failed; it has no file.",
        )),
        DocumentStatus::Cancelled => Err(ApiError::conflict(
            "document_cancelled",
            "The document was cancelled; it has no file.",
        )),
        _ => Err(ApiError::conflict(
            "document_not_ready",
            "The document is not ready yet.",
        )),
    }
}

/// What lets a download through.
pub enum Credential {
    /// A signed link: its expiry (Unix seconds) and signature.
    Link { exp: i64, sig: String },
    /// A bearer token's user, who must be allowed to see the document.
    User(AuthUser),
}

/// A download: checks the credential and the download rate limit
/// (`DOWNLOAD_RATE_LIMIT_PER_MINUTE`, per user for bearer downloads and per link for
/// signed ones, so a shared link cannot pull a document without end), opens the document
/// and audits it.
pub async fn download(
    state: &AppState,
    meta: &RequestMeta,
    id: Uuid,
    credential: Credential,
) -> ApiResult<(Document, Opened)> {
    let (doc, user_id, signed) = match admit(state, id, credential).await? {
        Admitted::User(user) => {
            let doc = Scope::of(&user).document(&state.db, id).await?;
            (doc, user.id(), false)
        }
        Admitted::Link => {
            let doc = state
                .db
                .documents()
                .get(id)
                .await?
                .ok_or_else(|| ApiError::not_found("Document not found."))?;
            let owner = doc.owner_id;
            (doc, owner, true)
        }
    };
    let opened = open(state, &doc).await?;
    let metadata = serde_json::json!({"signed": signed});
    audit(state, meta, user_id, "download_document", &doc, metadata).await;
    Ok((doc, opened))
}

/// Who a download of `id` (a document, or a batch's archive) is let through for.
pub enum Admitted {
    /// A bearer token's user; the caller checks that they may see `id`.
    User(AuthUser),
    /// A signed link for `id`, checked: it is the credential.
    Link,
}

/// Checks a download's credential and takes one from its rate limit
/// (`DOWNLOAD_RATE_LIMIT_PER_MINUTE`, per user for bearer downloads and per link for
/// signed ones, so a shared link cannot pull without end). A signed link for another id,
/// expired or tampered with is 403 `invalid_link`.
pub async fn admit(state: &AppState, id: Uuid, credential: Credential) -> ApiResult<Admitted> {
    let per_minute = state.settings.limits.download_rate_limit_per_minute;
    match credential {
        Credential::User(user) => {
            let key = user.id().to_string();
            state
                .rate_limit("download_user", &key, per_minute, Spend::Take)
                .await?;
            Ok(Admitted::User(user))
        }
        Credential::Link { exp, sig } => {
            let now = chrono::Utc::now().timestamp();
            state.keys.verify(id, exp, &sig, now).map_err(|e| {
                ApiError::forbidden("invalid_link", format!("{}.", capitalise(&e.to_string())))
            })?;
            let link = format!("{id}:{sig}");
            state
                .rate_limit("download_link", &link, per_minute, Spend::Take)
                .await?;
            Ok(Admitted::Link)
        }
    }
}

/// 422 unless `ttl_seconds` is 1 to `SIGNED_URL_MAX_TTL`; else when the link expires.
pub fn link_expiry(state: &AppState, ttl_seconds: i64) -> ApiResult<chrono::DateTime<chrono::Utc>> {
    let max = state.settings.auth.signed_url_max_ttl as i64;
    if !(1..=max).contains(&ttl_seconds) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("must be between 1 and {max}"),
        ));
    }
    Ok(common::now() + chrono::Duration::seconds(ttl_seconds))
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// A link that downloads a document without a token until it expires.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Signs a download link for a ready document, valid `ttl_seconds` (1 to
/// `SIGNED_URL_MAX_TTL`): a presigned S3 GET with `SIGNED_URL_MODE=s3` for objects stored
/// plain, an HMAC-signed API link otherwise.
pub async fn sign_link(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    ttl_seconds: i64,
) -> ApiResult<SignedUrl> {
    let expires_at = link_expiry(state, ttl_seconds)?;
    let doc = Scope::of(caller).document(&state.db, id).await?;
    ensure_ready(&doc)?;
    let stored_plain = !doc.compress && !doc.encrypt;
    if state.settings.storage.signed_url_mode == SignedUrlMode::S3
        && stored_plain
        && state.storage.can_presign()
        && let Some(key) = doc.storage_key.as_deref()
    {
        let ttl = Duration::from_secs(ttl_seconds as u64);
        let url = state.storage.presigned_get(key, ttl).await?;
        return Ok(SignedUrl { url, expires_at });
    }
    let exp = expires_at.timestamp();
    let sig = state.keys.sign(doc.id, exp);
    let url = format!(
        "{}/api/v1/documents/{}/download?exp={exp}&sig={sig}",
        state.public_base_url, doc.id
    );
    Ok(SignedUrl { url, expires_at })
}

/// Deletes a document the caller may see, with its file.
pub async fn delete(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<()> {
    let doc = Scope::of(caller).document(&state.db, id).await?;
    if !state.db.documents().delete(id).await? {
        return Err(ApiError::not_found("Document not found."));
    }
    remove_object(state, &doc).await;
    audit(
        state,
        meta,
        caller.id(),
        "document_deleted",
        &doc,
        serde_json::json!({}),
    )
    .await;
    Ok(())
}

/// Deletes a document's object, if it has one. The row is gone already: an object left
/// behind is an orphan the purge removes, so a failure is only logged.
async fn remove_object(state: &AppState, doc: &Document) {
    if let Some(key) = &doc.storage_key
        && let Err(err) = state.storage.delete(key).await
    {
        tracing::warn!(error = ?err, %key, "cannot delete a document's object");
    }
}

/// Admins: removes objects no document points to and marks failed the ready documents
/// whose object vanished.
pub async fn purge_orphans(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
) -> ApiResult<common::maintenance::PurgeReport> {
    let report = common::maintenance::purge_orphans(&state.db, &state.storage).await?;
    let event = AuditEvent {
        user_id: Some(caller.id()),
        action: "purge_orphans",
        object_type: Some("document"),
        object_id: Some("*".to_owned()),
        metadata: Some(serde_json::json!({"removed": report.count, "lost": report.lost.len()})),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
    Ok(report)
}

/// What a preview rendered.
pub struct Rendered {
    pub mime_type: String,
    pub bytes: Bytes,
}

/// What a preview renders when the request gives no context.
fn sample_context() -> serde_json::Value {
    serde_json::json!({
        "example": "Preview",
        "client": "Jane Doe",
        "insured": "Jane Doe",
        "policy_number": "POL-0001",
        "premium": 125000,
        "currency": "XAF",
        "policies": [
            {"number": "POL-0001", "premium": 125000, "start": "2026-01-01"},
            {"number": "POL-0002", "premium": 80000, "start": "2026-02-01"}
        ]
    })
}

/// Renders version `number` of a template with `inline_context` (or a built-in sample)
/// and the parties of `policy_id`, on a worker, and answers the bytes. Nothing is kept:
/// the preview's row and object are deleted once read (or once given up on; the workers'
/// maintenance sweeps what a stopped API leaves).
pub async fn preview(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    (template_id, number): (Uuid, i32),
    inline_context: Option<serde_json::Value>,
    policy_id: Option<Uuid>,
) -> ApiResult<Rendered> {
    if let Some(policy_id) = policy_id {
        Scope::of(caller).policy(&state.db, policy_id).await?;
    }
    let inline_context = self::inline_context(inline_context, sample_context)?;
    let templates = state.db.templates();
    let template = templates
        .get(template_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Template not found."))?;
    let version = templates
        .version(template_id, number)
        .await?
        .ok_or_else(|| ApiError::not_found("Template version not found."))?;
    let pending = Pending {
        owner_id: caller.id(),
        document_type: template.template_type,
        output_format: template.format,
        template_version_id: Some(version.id),
        policy_id,
        inline_context,
        compress: state.settings.storage.default_compress,
        encrypt: state.settings.storage.default_encrypt,
        request_id: meta.request_id.clone(),
        idempotency: None,
        priority: Priority::Interactive,
        preview: true,
    };
    let doc = insert_and_enqueue(state, pending)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a preview without its row")))?;
    let (id, doc) = (doc.id, wait_for_outcome(state, doc, MAX_WAIT).await);
    let rendered = match doc {
        Ok(doc) => read_preview(state, &doc).await,
        Err(err) => Err(err),
    };
    discard_preview(state, id).await;
    rendered
}

/// A finished preview's bytes, or why there are none.
async fn read_preview(state: &AppState, doc: &Document) -> ApiResult<Rendered> {
    match doc.status {
        DocumentStatus::Ready => {
            let opened = open(state, doc).await?;
            let chunks: Vec<Bytes> = opened.body.try_collect().await.map_err(|err| {
                ApiError::internal(anyhow::anyhow!("cannot read a preview back: {err}"))
            })?;
            Ok(Rendered {
                mime_type: doc.mime_type.clone(),
                bytes: Bytes::from(chunks.concat()),
            })
        }
        // Previews cannot be cancelled: `cancelled` is here for completeness.
        DocumentStatus::Failed | DocumentStatus::Cancelled => Err(ApiError::invalid(
            "content",
            doc.error.clone().unwrap_or_default(),
        )),
        DocumentStatus::Queued | DocumentStatus::Processing => Err(ApiError::unavailable(
            "unavailable",
            "No worker rendered the preview in time; try again shortly.",
            5,
        )),
    }
}

/// Deletes a preview's row, then its object (read fresh: a worker may have stored it
/// while the API was giving up).
async fn discard_preview(state: &AppState, id: Uuid) {
    let doc = match state.db.documents().get(id).await {
        Ok(Some(doc)) => doc,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(error = %err, document_id = %id, "cannot read a preview to discard it");
            return;
        }
    };
    match state.db.documents().delete(id).await {
        Ok(_) => remove_object(state, &doc).await,
        Err(err) => tracing::warn!(error = %err, document_id = %id, "cannot discard a preview"),
    }
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Uuid,
    action: &'static str,
    doc: &Document,
    metadata: serde_json::Value,
) {
    let event = AuditEvent {
        user_id: Some(user_id),
        action,
        object_type: Some("document"),
        object_id: Some(doc.id.to_string()),
        metadata: Some(metadata),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
}
