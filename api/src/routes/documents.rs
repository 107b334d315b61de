//! `/api/v1/documents`: asking for documents, following their status, signed links and
//! downloads.
//!
//! Generation is asynchronous: the API records the request as a `queued` row, pushes a job
//! carrying only the document id, and answers 202 with `Location`. Clients poll
//! `GET /documents/{id}` until `ready` or `failed`. Agents see their own documents;
//! managers and admins see all. A document another agent owns answers 404, not 403, so
//! ids do not reveal what exists.
//!
//! The rules are [`crate::service::documents`]'s; this module reads the HTTP parts
//! (`Prefer: wait`, `Idempotency-Key`, a signed link or a bearer token) and writes the
//! answer (status, `Location`, `ETag`, download headers).

use axum::body::Body;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::db::Page;
use common::db::documents::DocumentFilter;
use common::model::{Document, DocumentStatus, OutputFormat, Priority, Role};
use serde::Deserialize;
use std::time::Duration;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::{LinkQuery, Pagination, TtlQuery, unchanged};
use crate::service::access::Scope;
use crate::service::documents::{self, Idempotency, SignedUrl, Submitted};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(generate))
        .routes(routes!(purge_orphans))
        .routes(routes!(read, remove))
        .routes(routes!(cancel))
        .routes(routes!(retry))
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
    /// `interactive` (the default): queued at once and taken before any bulk work;
    /// `bulk`: waits in the bulk lane, shared fairly between owners, like a batch item.
    priority: Option<Priority>,
}

impl From<GenerateBody> for documents::Request {
    fn from(body: GenerateBody) -> Self {
        documents::Request {
            document_type: body.document_type,
            template_id: body.template_id,
            template_version_id: body.template_version_id,
            policy_id: body.policy_id,
            inline_context: body.inline_context,
            output_format: body.output_format,
            compress: body.compress,
            encrypt: body.encrypt,
            priority: body.priority,
        }
    }
}

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
    let request = documents::Request::from(body);
    let idempotency = match headers.get("idempotency-key") {
        Some(key) => Some(Idempotency::new(
            key.to_str().unwrap_or_default(),
            &request,
        )?),
        None => None,
    };
    match documents::submit(&state, &meta, &user, request, idempotency).await? {
        Submitted::Created(doc) => answer(&state, doc, StatusCode::ACCEPTED, wait).await,
        Submitted::Replayed(doc) => answer(&state, doc, StatusCode::OK, wait).await,
    }
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
        doc = documents::wait_for_outcome(state, doc, Duration::from_secs(seconds)).await?;
    }
    let status = match doc.status {
        DocumentStatus::Ready if wait.is_some() => StatusCode::CREATED,
        DocumentStatus::Failed | DocumentStatus::Cancelled if wait.is_some() => StatusCode::OK,
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

/// `Prefer: wait=N` (RFC 7240), capped at 30 s; `None` when absent or malformed.
fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.trim().strip_prefix("wait="))
        .find_map(|n| n.trim().parse::<u64>().ok())
        .map(|n| n.min(documents::MAX_WAIT.as_secs()))
}

/// The status resource's validator: it changes whenever the row does.
fn document_etag(doc: &Document) -> HeaderValue {
    let tag = format!("\"{}-{}\"", doc.updated_at.timestamp_micros(), doc.attempts);
    HeaderValue::from_str(&tag).expect("ascii")
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    status: Option<DocumentStatus>,
    policy_id: Option<Uuid>,
    /// Only this batch's items.
    batch_id: Option<Uuid>,
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
        owner_id: Scope::of(&user).owner(),
        status: query.status,
        policy_id: query.policy_id,
        batch_id: query.batch_id,
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
    let doc = Scope::of(&user).document(&state.db, id).await?;
    let etag = document_etag(&doc);
    let current = etag.to_str().unwrap_or_default();
    if unchanged(&headers, current) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag)], Json(doc)).into_response())
}

/// Admin: removes objects no document points to; marks failed the ready documents whose
/// object vanished.
#[utoipa::path(
    post, path = "/purge-orphans", tag = "documents", operation_id = "purge_orphans",
    security(("bearer" = [])),
    responses((status = 200, description = "Admins: what was removed (objects no document points to) and lost (ready documents whose file vanished, now failed).", body = common::maintenance::PurgeReport))
)]
async fn purge_orphans(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
) -> ApiResult<Json<common::maintenance::PurgeReport>> {
    user.require(Role::Admin)?;
    Ok(Json(documents::purge_orphans(&state, &meta, &user).await?))
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
    documents::delete(&state, &meta, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/{id}/cancel", tag = "documents", operation_id = "cancel_document",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id.")),
    responses(
        (status = 200, description = "The document, now `cancelled`: its job will do nothing.", body = Document),
        (status = 409, description = "`not_cancellable`: being rendered (it will finish) or finished already.", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Document>> {
    Ok(Json(documents::cancel(&state, &meta, &user, id).await?))
}

#[utoipa::path(
    post, path = "/{id}/retry", tag = "documents", operation_id = "retry_document",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The document id.")),
    responses(
        (status = 202, description = "The document, `queued` again: same id and object key, attempts reset, error cleared.", body = Document, headers(("Location" = String))),
        (status = 409, description = "`not_retryable`: only a failed or cancelled document can be retried.", body = ErrorBody),
    )
)]
async fn retry(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Response> {
    let doc = documents::retry(&state, &meta, &user, id).await?;
    answer(&state, doc, StatusCode::ACCEPTED, None).await
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
    let link = documents::sign_link(&state, &user, id, query.ttl_seconds).await?;
    Ok(Json(link))
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
    let credential = link.credential(&mut parts, &state).await?;
    let (doc, opened) = documents::download(&state, &meta, id, credential).await?;
    let checksum = doc.checksum.clone().unwrap_or_default();
    let headers = [
        (header::CONTENT_TYPE, doc.mime_type.clone()),
        (header::CONTENT_LENGTH, opened.length.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", download_name(&doc)),
        ),
        (header::ETAG, format!("\"{checksum}\"")),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ];
    let mut response = (headers, Body::from_stream(opened.body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&checksum) {
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
