//! `/api/v1/documents`: asking for documents, following their status, signed links and
//! downloads.
//!
//! Generation is asynchronous: the API records the request as a `queued` row, pushes a job
//! carrying only the document id, and answers 202 with `Location`. Clients poll
//! `GET /documents/{id}` until `ready` or `failed`. Agents see their own documents;
//! managers and admins see all. A document another agent owns answers 404, not 403, so
//! ids do not reveal what exists.

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::db::Page;
use common::db::audit::AuditEvent;
use common::db::documents::{DocumentFilter, NewDocument};
use common::limits::Spend;
use common::model::{Document, DocumentStatus, OutputFormat, Role};
use common::queue::RenderJob;
use common::settings::SignedUrlMode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(generate))
        .routes(routes!(purge_orphans))
        .routes(routes!(read, remove))
        .routes(routes!(signed_url))
        .routes(routes!(download))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = GenerateRequest)]
struct GenerateBody {
    document_type: String,
    template_id: Option<Uuid>,
    template_version_id: Option<Uuid>,
    policy_id: Option<Uuid>,
    inline_context: Option<serde_json::Value>,
    output_format: Option<OutputFormat>,
    /// Brotli at rest; `DEFAULT_COMPRESS` when absent.
    compress: Option<bool>,
    /// AES-256-GCM at rest; `DEFAULT_ENCRYPT` when absent.
    encrypt: Option<bool>,
}

/// How long `Prefer: wait=N` may hold a request.
const MAX_WAIT_SECONDS: u64 = 30;
/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

#[utoipa::path(
    post, path = "/generate", tag = "documents", operation_id = "generate_document",
    security(("bearer" = [])),
    params(
        ("Prefer" = Option<String>, Header, description = "`wait=N`: hold the answer until the document is finished or N seconds (at most 30) have passed."),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeating a key (within 24 h) answers the same document instead of making another."),
    ),
    request_body = GenerateBody,
    responses(
        (status = 202, description = "Queued; poll `Location`.", body = Document,
            headers(("Location" = String, description = "The document's path."), ("ETag" = String))),
        (status = 201, description = "With `Prefer: wait`: ready.", body = Document,
            headers(("Location" = String), ("ETag" = String), ("Preference-Applied" = String))),
        (status = 200, description = "With `Prefer: wait`: failed (see `error`); or an `Idempotency-Key` replay.", body = Document,
            headers(("Location" = String), ("ETag" = String))),
        (status = 404, description = "The template, version or policy named does not exist (or is not the caller's).", body = ErrorBody),
        (status = 409, description = "`reference_changed`: something named changed during the request.", body = ErrorBody),
        (status = 422, description = "An invalid field, an output format the template cannot give, or `idempotency_key_reused` with a different body.", body = ErrorBody),
        (status = 503, description = "Too many documents are queued; `Retry-After` says when to try again.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn generate(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<GenerateBody>,
) -> ApiResult<Response> {
    let wait = prefer_wait(&headers);
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::trim).unwrap_or_default().to_owned());
    if let Some(key) = &idempotency_key
        && (key.is_empty() || key.len() > 255)
    {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "must be 1 to 255 visible characters",
        ));
    }
    let request_hash = request_fingerprint(&body);
    if let Some(key) = &idempotency_key {
        let since = common::now() - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
        if let Some(existing) = state
            .db
            .documents()
            .find_idempotent(user.id(), key, since)
            .await?
        {
            return replay(&state, existing, &request_hash, wait).await;
        }
    }
    let document_type = body.document_type.trim();
    if document_type.is_empty() || document_type.chars().count() > 30 {
        return Err(ApiError::invalid(
            "document_type",
            "must be 1 to 30 characters long",
        ));
    }
    let inline_context =
        crate::routes::inline_context(body.inline_context, || serde_json::json!({}))?;
    let compress = body.compress.unwrap_or(state.settings.default_compress);
    let encrypt = body.encrypt.unwrap_or(state.settings.default_encrypt);
    if let Some(policy_id) = body.policy_id {
        crate::routes::policies::visible(&state, &user, policy_id).await?;
    }

    // The version named wins; else the template's latest; else the built-in layout.
    let (version_id, template_format) = match (body.template_version_id, body.template_id) {
        (Some(version_id), _) => {
            let version = state
                .db
                .templates()
                .version_by_id(version_id)
                .await?
                .ok_or_else(|| ApiError::not_found("Template version not found."))?;
            let template = state.db.templates().get(version.template_id).await?;
            (Some(version.id), template.map(|t| (t.format, t.is_active)))
        }
        (None, Some(template_id)) => {
            let template = state
                .db
                .templates()
                .get(template_id)
                .await?
                .ok_or_else(|| ApiError::not_found("Template not found."))?;
            let version = state
                .db
                .templates()
                .latest_version(template_id)
                .await?
                .ok_or_else(|| ApiError::not_found("The template has no version yet."))?;
            (
                Some(version.id),
                Some((template.format, template.is_active)),
            )
        }
        (None, None) => (None, None),
    };
    if let Some((_, false)) = template_format {
        return Err(ApiError::invalid(
            "template_id",
            "the template is not active",
        ));
    }
    let template_format = template_format.map(|(format, _)| format);
    let format = body
        .output_format
        .or(template_format)
        .unwrap_or(OutputFormat::Html);
    check_format(template_format, format)?;

    if state.queued_count().await? >= state.settings.max_queued_documents {
        return Err(ApiError::unavailable(
            "Too many documents are waiting to be rendered; try again shortly.",
            5,
        ));
    }

    // The row and its job are written in a task of their own: a client disconnecting
    // mid-request cancels this handler, and must not leave a row that no job refers to.
    let pending = PendingDocument {
        owner_id: user.id(),
        document_type: document_type.to_owned(),
        output_format: format,
        template_version_id: version_id,
        policy_id: body.policy_id,
        inline_context,
        compress,
        encrypt,
        request_id: meta.request_id.clone(),
        idempotency_key: idempotency_key.clone(),
        request_hash: request_hash.clone(),
    };
    let created = tokio::spawn(insert_and_enqueue(state.clone(), pending))
        .await
        .map_err(ApiError::internal)??;
    let Some(doc) = created else {
        // The same key raced in from a parallel request: answer with the winner's document.
        let key = idempotency_key.as_deref().unwrap_or_default();
        let since = common::now() - chrono::Duration::hours(IDEMPOTENCY_WINDOW_HOURS);
        let existing = state
            .db
            .documents()
            .find_idempotent(user.id(), key, since)
            .await?
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("idempotency conflict without a row"))
            })?;
        return replay(&state, existing, &request_hash, wait).await;
    };
    audit(
        &state,
        &meta,
        user.id(),
        "generate_document",
        &doc,
        serde_json::json!({"format": format}),
    )
    .await;

    answer(&state, doc, StatusCode::ACCEPTED, wait).await
}

/// A checked document request, owned so that it can outlive the request's handler.
struct PendingDocument {
    owner_id: Uuid,
    document_type: String,
    output_format: OutputFormat,
    template_version_id: Option<Uuid>,
    policy_id: Option<Uuid>,
    inline_context: serde_json::Value,
    compress: bool,
    encrypt: bool,
    request_id: Option<String>,
    idempotency_key: Option<String>,
    request_hash: String,
}

/// Inserts the document row and pushes its job; `None` when its `Idempotency-Key` is
/// already taken. When the queue refuses the job, the row is removed again and the client
/// told to retry.
async fn insert_and_enqueue(
    state: AppState,
    pending: PendingDocument,
) -> ApiResult<Option<Document>> {
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
            idempotency_key: pending.idempotency_key.as_deref(),
            request_hash: Some(&pending.request_hash),
            lease_until: common::now() + state.settings.queued_lease,
        })
        .await;
    let doc = match created {
        Ok(doc) => doc,
        Err(err) if err.is(common::db::Constraint::UqGeneratedDocumentsIdempotency) => {
            return Ok(None);
        }
        Err(err) => return Err(err.into()),
    };
    let job = RenderJob {
        document_id: doc.id,
        request_id: pending.request_id,
    };
    if let Err(err) = state.queue.push(job).await {
        tracing::error!(error = ?err, document_id = %doc.id, "cannot enqueue a document");
        state.db.documents().delete(doc.id).await?;
        return Err(ApiError::unavailable(
            "The job queue is unavailable; try again shortly.",
            5,
        ));
    }
    Ok(Some(doc))
}

/// The answer to a replayed `Idempotency-Key`: the same document, if the request is the same.
async fn replay(
    state: &AppState,
    doc: Document,
    request_hash: &str,
    wait: Option<u64>,
) -> ApiResult<Response> {
    if doc.request_hash.as_deref() != Some(request_hash) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        ));
    }
    answer(state, doc, StatusCode::OK, wait).await
}

/// The document with `Location`; with `Prefer: wait=N`, held until it is finished or N
/// seconds have passed: 201 when ready, 200 when failed, else `pending_status`.
async fn answer(
    state: &AppState,
    mut doc: Document,
    pending_status: StatusCode,
    wait: Option<u64>,
) -> ApiResult<Response> {
    if let Some(seconds) = wait {
        doc = wait_for_outcome(state, doc, Duration::from_secs(seconds)).await?;
    }
    let status = match doc.status {
        DocumentStatus::Ready if wait.is_some() => StatusCode::CREATED,
        DocumentStatus::Failed if wait.is_some() => StatusCode::OK,
        _ => pending_status,
    };
    let location = format!("/api/v1/documents/{}", doc.id);
    let etag = document_etag(&doc);
    let mut response = (status, Json(doc)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a path is a valid header value"),
    );
    headers.insert(header::ETAG, etag);
    if let Some(seconds) = wait {
        headers.insert(
            "preference-applied",
            HeaderValue::from_str(&format!("wait={seconds}")).expect("ascii"),
        );
    }
    Ok(response)
}

/// Polls the row until the document is finished or `limit` has passed. The worker may be
/// another process, so the database is what tells; the interval grows from 5 ms to 100 ms
/// so quick documents answer quickly and slow ones cost few queries.
async fn wait_for_outcome(
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

/// `Prefer: wait=N` (RFC 7240), capped at 30 s; `None` when absent or malformed.
fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.trim().strip_prefix("wait="))
        .find_map(|n| n.trim().parse::<u64>().ok())
        .map(|n| n.min(MAX_WAIT_SECONDS))
}

/// A stable hash of what a generate request asks for, to tell a replay from a different
/// request under the same `Idempotency-Key`. Object keys are sorted so that field order
/// does not matter.
fn request_fingerprint(body: &GenerateBody) -> String {
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
    let value = serde_json::json!([
        body.document_type.trim(),
        body.template_id,
        body.template_version_id,
        body.policy_id,
        body.inline_context.as_ref().map(canonical),
        body.output_format,
        body.compress,
        body.encrypt,
    ]);
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

/// The status resource's validator: it changes whenever the row does.
fn document_etag(doc: &Document) -> HeaderValue {
    let tag = format!("\"{}-{}\"", doc.updated_at.timestamp_micros(), doc.attempts);
    HeaderValue::from_str(&tag).expect("ascii")
}

/// An HTML template renders to HTML or PDF; an XLSX template only to XLSX; the built-in
/// layout (no template) to any format.
fn check_format(template: Option<OutputFormat>, output: OutputFormat) -> ApiResult<()> {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    status: Option<DocumentStatus>,
    policy_id: Option<Uuid>,
}

#[utoipa::path(
    get, path = "/", tag = "documents", operation_id = "list_documents",
    security(("bearer" = [])),
    params(Pagination, ListQuery),
    responses((status = 200, description = "A page of documents (an agent sees their own).", body = Page<Document>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    let (limit, offset) = query.page.checked()?;
    let filter = DocumentFilter {
        owner_id: (!user.sees_all()).then(|| user.id()),
        status: query.status,
        policy_id: query.policy_id,
    };
    Ok(Json(
        state.db.documents().list(&filter, limit, offset).await?,
    ))
}

/// The status clients poll; `If-None-Match` with the last `ETag` answers 304 while
/// nothing changed.
#[utoipa::path(
    get, path = "/{id}", tag = "documents", operation_id = "get_document",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The document id."),
        ("If-None-Match" = Option<String>, Header, description = "The last `ETag`: 304 while nothing changed."),
    ),
    responses(
        (status = 200, description = "The document's status.", body = Document, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `ETag` sent.", headers(("ETag" = String))),
    )
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let doc = visible(&state, &user, id).await?;
    let etag = document_etag(&doc);
    let current = etag.to_str().unwrap_or_default();
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == current || candidate.trim() == "*");
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag)], Json(doc)).into_response())
}

/// Admin: removes objects no document points to; marks failed the ready documents whose
/// object vanished.
#[utoipa::path(
    post, path = "/purge-orphans", tag = "documents", operation_id = "purge_orphans",
    security(("bearer" = [])),
    responses((status = 200, description = "Admins: what was removed (objects no document points to) and lost (ready documents whose file vanished, now failed).", body = worker::maintenance::PurgeReport))
)]
async fn purge_orphans(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
) -> ApiResult<Json<worker::maintenance::PurgeReport>> {
    user.require(Role::Admin)?;
    let report = worker::maintenance::purge_orphans(&state.db, &state.storage).await?;
    crate::routes::record(
        &state,
        &meta,
        AuditEvent {
            user_id: Some(user.id()),
            action: "purge_orphans",
            object_type: Some("document"),
            object_id: Some("*".to_owned()),
            metadata: Some(serde_json::json!({"removed": report.count, "lost": report.lost.len()})),
            ..Default::default()
        },
    )
    .await;
    Ok(Json(report))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "documents", operation_id = "delete_document",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id.")),
    responses((status = 204, description = "Deleted with its file."))
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let doc = visible(&state, &user, id).await?;
    if !state.db.documents().delete(id).await? {
        return Err(ApiError::not_found("Document not found."));
    }
    if let Some(key) = &doc.storage_key {
        // The row is gone; an object left behind is an orphan the purge job removes.
        if let Err(err) = state.storage.delete(key).await {
            tracing::warn!(error = ?err, %key, "cannot delete a document's object");
        }
    }
    audit(
        &state,
        &meta,
        user.id(),
        "document_deleted",
        &doc,
        serde_json::json!({}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TtlQuery {
    /// How long the link works, in seconds (at most `SIGNED_URL_MAX_TTL`).
    #[serde(default = "default_ttl")]
    #[param(minimum = 1, default = 300)]
    ttl_seconds: i64,
}

fn default_ttl() -> i64 {
    300
}

#[derive(Serialize, utoipa::ToSchema)]
struct SignedUrl {
    url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

#[utoipa::path(
    post, path = "/{id}/signed-url", tag = "documents", operation_id = "sign_document_link",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id."), TtlQuery),
    responses(
        (status = 200, description = "A link that downloads the document without a token until it expires.", body = SignedUrl),
        (status = 409, description = "`document_not_ready` or `document_failed`: only ready documents can be signed.", body = ErrorBody),
    )
)]
async fn signed_url(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<TtlQuery>,
) -> ApiResult<Json<SignedUrl>> {
    let max = state.settings.signed_url_max_ttl as i64;
    if !(1..=max).contains(&query.ttl_seconds) {
        return Err(ApiError::invalid(
            "ttl_seconds",
            format!("must be between 1 and {max}"),
        ));
    }
    let doc = visible(&state, &user, id).await?;
    ensure_ready(&doc)?;
    let expires_at = common::now() + chrono::Duration::seconds(query.ttl_seconds);
    let stored_plain = !doc.compress && !doc.encrypt;
    if state.settings.signed_url_mode == SignedUrlMode::S3
        && stored_plain
        && state.storage.can_presign()
    {
        let key = doc
            .storage_key
            .as_deref()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("ready document without object")))?;
        let url = state
            .storage
            .presigned_get(key, Duration::from_secs(query.ttl_seconds as u64))
            .await?;
        return Ok(Json(SignedUrl { url, expires_at }));
    }
    let exp = expires_at.timestamp();
    let sig = state.keys.sign(doc.id, exp);
    let url = format!(
        "{}/api/v1/documents/{}/download?exp={exp}&sig={sig}",
        state.public_base_url, doc.id
    );
    Ok(Json(SignedUrl { url, expires_at }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LinkQuery {
    /// A signed link's expiry (Unix seconds).
    exp: Option<i64>,
    /// A signed link's signature, `<kid>.<base64url MAC>`.
    sig: Option<String>,
}

/// With `exp` and `sig`, the link is the credential and no bearer token is needed; without
/// them, the caller must be the owner, a manager or an admin.
#[utoipa::path(
    get, path = "/{id}/download", tag = "documents", operation_id = "download_document",
    security((), ("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id."), LinkQuery),
    responses(
        (status = 200, description = "The document's bytes, streamed (with `X-Checksum`, the SHA-256 of the bytes).",
            content(
                (String = "text/html"),
                (Vec<u8> = "application/pdf"),
                (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            ),
            headers(("X-Checksum" = String), ("ETag" = String), ("Content-Disposition" = String))),
        (status = 401, description = "Neither a signed link nor a bearer token.", body = ErrorBody),
        (status = 403, description = "`invalid_link`: the link is incomplete, expired or its signature is wrong.", body = ErrorBody),
        (status = 409, description = "`document_not_ready` or `document_failed`.", body = ErrorBody),
        (status = 410, description = "`object_missing`: the file is no longer in storage.", body = ErrorBody),
    )
)]
async fn download(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Query(link): Query<LinkQuery>,
    mut parts: Parts,
) -> ApiResult<Response> {
    let link_sig = link.sig.clone();
    let (doc, user_id, signed) = match (link.exp, link.sig) {
        (None, None) => {
            let user = AuthUser::from_request_parts(&mut parts, &state).await?;
            (visible(&state, &user, id).await?, user.id(), false)
        }
        (Some(exp), Some(sig)) => {
            state
                .keys
                .verify(id, exp, &sig, chrono::Utc::now().timestamp())
                .map_err(|e| {
                    ApiError::forbidden("invalid_link", format!("{}.", capitalise(&e.to_string())))
                })?;
            let doc = state
                .db
                .documents()
                .get(id)
                .await?
                .ok_or_else(|| ApiError::not_found("Document not found."))?;
            let owner = doc.owner_id;
            (doc, owner, true)
        }
        _ => {
            return Err(ApiError::forbidden(
                "invalid_link",
                "The link is incomplete.",
            ));
        }
    };
    // `DOWNLOAD_RATE_LIMIT_PER_MINUTE`, per user for bearer downloads and per link for
    // signed ones (a shared link cannot be used to pull a document without end).
    let per_minute = state.settings.download_rate_limit_per_minute;
    if signed {
        let link = format!("{}:{}", doc.id, link_sig.as_deref().unwrap_or_default());
        state
            .rate_limit("download_link", &link, per_minute, Spend::Take)
            .await?;
    } else {
        state
            .rate_limit(
                "download_user",
                &user_id.to_string(),
                per_minute,
                Spend::Take,
            )
            .await?;
    }
    ensure_ready(&doc)?;
    let (Some(key), Some(checksum)) = (&doc.storage_key, &doc.checksum) else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "ready document {} has no object",
            doc.id
        )));
    };
    let object = state.storage.get(key).await.map_err(|err| {
        if common::storage::is_not_found(&err) {
            tracing::error!(document_id = %doc.id, "a ready document's object is missing");
            ApiError::new(
                StatusCode::GONE,
                "object_missing",
                "The document's file is no longer available.",
            )
        } else {
            ApiError::internal(err)
        }
    })?;
    audit(
        &state,
        &meta,
        user_id,
        "download_document",
        &doc,
        serde_json::json!({"signed": signed}),
    )
    .await;

    // Compressed or encrypted objects are opened as they stream: memory stays bounded
    // whatever the size, and a tampered object aborts the transfer instead of ending it
    // cleanly with altered bytes.
    let (length, body) = if doc.compress || doc.encrypt {
        let mut plain = common::envelope::open_stream(
            object.stream,
            doc.compress,
            doc.encrypt,
            state.settings.encryption_keys.clone(),
        );
        // The first piece proves the key and the header before any status is sent, so a
        // document the configured keys cannot open gets an error answer, not a cut stream.
        let first = match plain.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => {
                tracing::error!(error = %err, document_id = %doc.id, "a stored document cannot be opened");
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "document_unreadable",
                    "The stored document cannot be opened.",
                ));
            }
            None => Bytes::new(),
        };
        let plain =
            futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(plain);
        (
            doc.size_bytes.unwrap_or_default() as u64,
            Body::from_stream(plain),
        )
    } else {
        (object.size, Body::from_stream(object.stream))
    };
    let filename = download_name(&doc);
    let headers = [
        (header::CONTENT_TYPE, doc.mime_type.clone()),
        (header::CONTENT_LENGTH, length.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ),
        (header::ETAG, format!("\"{checksum}\"")),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ];
    let mut response = (headers, body).into_response();
    if let Ok(value) = HeaderValue::from_str(checksum) {
        response.headers_mut().insert("x-checksum", value);
    }
    Ok(response)
}

/// `attestation-0193a1b2.html`: the document type (letters, digits, `-`, `_` only) and the
/// start of the id.
fn download_name(doc: &Document) -> String {
    let kind: String = doc
        .document_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let id = doc.id.simple().to_string();
    format!(
        "{kind}-{}.{}",
        &id[id.len() - 12..],
        doc.output_format.extension()
    )
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn ensure_ready(doc: &Document) -> ApiResult<()> {
    match doc.status {
        DocumentStatus::Ready => Ok(()),
        DocumentStatus::Failed => Err(ApiError::conflict(
            "document_failed",
            "The document failed; it has no file.",
        )),
        _ => Err(ApiError::conflict(
            "document_not_ready",
            "The document is not ready yet.",
        )),
    }
}

/// The document, if the caller may see it: its owner, a manager or an admin.
async fn visible(state: &AppState, user: &AuthUser, id: Uuid) -> ApiResult<Document> {
    state
        .db
        .documents()
        .get(id)
        .await?
        .filter(|doc| doc.owner_id == user.id() || user.sees_all())
        .ok_or_else(|| ApiError::not_found("Document not found."))
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Uuid,
    action: &'static str,
    doc: &Document,
    metadata: serde_json::Value,
) {
    crate::routes::record(
        state,
        meta,
        AuditEvent {
            user_id: Some(user_id),
            action,
            object_type: Some("document"),
            object_id: Some(doc.id.to_string()),
            metadata: Some(metadata),
            ..Default::default()
        },
    )
    .await;
}
