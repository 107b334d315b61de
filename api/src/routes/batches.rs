//! `/api/v1/document-batches`: many documents in one request, their progress, cancel and
//! retry, and their archive.
//!
//! Agents see their own batches; managers and admins see all; another agent's batch
//! answers 404. The rules are [`crate::service::batches`]'s; this module reads the HTTP
//! parts (`Idempotency-Key`, `If-None-Match`, a signed link or a bearer token) and writes
//! the answers.

use axum::body::Body;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::db::Page;
use common::db::documents::DocumentFilter;
use common::model::{Batch, Document, DocumentStatus};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::routes::{LinkQuery, TtlQuery, unchanged};
use crate::service::access::Scope;
use crate::service::batches::{self, Accepted, BatchRequest};
use crate::service::documents::SignedUrl;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, remove))
        .routes(routes!(documents))
        .routes(routes!(cancel))
        .routes(routes!(retry))
        .routes(routes!(signed_url))
        .routes(routes!(archive))
}

#[utoipa::path(
    post, path = "/", tag = "batches", operation_id = "create_batch",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeating a key (within 24 h) answers the same batch instead of making another.")),
    request_body = BatchRequest,
    responses(
        (status = 202, description = "Accepted: every item is a queued document in the bulk lane; poll `Location`.", body = Batch,
            headers(("Location" = String, description = "The batch's path."))),
        (status = 200, description = "An `Idempotency-Key` replay: the first batch.", body = Batch, headers(("Location" = String))),
        (status = 404, description = "The template or version named does not exist.", body = ErrorBody),
        (status = 422, description = "The batch was checked whole and nothing was created: `errors` names each fault (`items[17].policy_id`).", body = ErrorBody),
        (status = 503, description = "Too many batch items are waiting; `Retry-After` says when to try again.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<BatchRequest>,
) -> ApiResult<Response> {
    let key = headers
        .get("idempotency-key")
        .map(|k| k.to_str().unwrap_or_default());
    let (status, batch) = match batches::submit(&state, &meta, &user, body, key).await? {
        Accepted::Created(batch) => (StatusCode::ACCEPTED, batch),
        Accepted::Replayed(batch) => (StatusCode::OK, batch),
    };
    let location = format!("/api/v1/document-batches/{}", batch.id);
    let mut response = (status, Json(batch)).into_response();
    let location = HeaderValue::from_str(&location).expect("a path is a valid header value");
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

#[utoipa::path(
    get, path = "/", tag = "batches", operation_id = "list_batches",
    security(("bearer" = [])),
    params(Pagination),
    responses((status = 200, description = "A page of batches, newest first, with their counts (an agent sees their own).", body = Page<Batch>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<Batch>>> {
    let (limit, offset) = page.checked()?;
    let owner = Scope::of(&user).owner();
    Ok(Json(state.db.batches().list(owner, limit, offset).await?))
}

/// The progress clients poll; `If-None-Match` with the last `ETag` answers 304 while
/// nothing changed.
#[utoipa::path(
    get, path = "/{id}", tag = "batches", operation_id = "get_batch",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The batch id."),
        ("If-None-Match" = Option<String>, Header, description = "The last `ETag`: 304 while nothing changed."),
    ),
    responses(
        (status = 200, description = "The batch with its counts.", body = Batch, headers(("ETag" = String))),
        (status = 304, description = "Unchanged since the `ETag` sent.", headers(("ETag" = String))),
    )
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let batch = batches::find(&state, &user, id).await?;
    let etag = batch_etag(&batch);
    if unchanged(&headers, etag.to_str().unwrap_or_default()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok(([(header::ETAG, etag)], Json(batch)).into_response())
}

/// Changes whenever a count, the status or the finish time does.
fn batch_etag(batch: &Batch) -> HeaderValue {
    let finished = batch.finished_at.map_or(0, |at| at.timestamp_micros());
    let tag = format!(
        "\"{}-{}-{}-{}-{}-{}-{finished}\"",
        batch.status, batch.queued, batch.processing, batch.ready, batch.failed, batch.cancelled
    );
    HeaderValue::from_str(&tag).expect("ascii")
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ItemsQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    status: Option<DocumentStatus>,
}

#[utoipa::path(
    get, path = "/{id}/documents", tag = "batches", operation_id = "list_batch_documents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id."), Pagination, ItemsQuery),
    responses((status = 200, description = "A page of the batch's documents, each with its `reference`.", body = Page<Document>))
)]
async fn documents(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<ItemsQuery>,
) -> ApiResult<Json<Page<Document>>> {
    let (limit, offset) = query.page.checked()?;
    let batch = batches::find(&state, &user, id).await?;
    let filter = DocumentFilter {
        status: query.status,
        batch_id: Some(batch.id),
        ..DocumentFilter::default()
    };
    let page = state.db.documents().list(&filter, limit, offset).await?;
    Ok(Json(page))
}

#[utoipa::path(
    post, path = "/{id}/cancel", tag = "batches", operation_id = "cancel_batch",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id.")),
    responses((status = 200, description = "The batch, `cancelled`: every queued item is cancelled; items being rendered finish.", body = Batch))
)]
async fn cancel(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Batch>> {
    Ok(Json(batches::cancel(&state, &meta, &user, id).await?))
}

#[utoipa::path(
    post, path = "/{id}/retry", tag = "batches", operation_id = "retry_batch",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id.")),
    responses((status = 200, description = "The batch: every failed item is queued again (cancelled items stay cancelled; retry them one by one).", body = Batch))
)]
async fn retry(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Batch>> {
    Ok(Json(batches::retry(&state, &meta, &user, id).await?))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "batches", operation_id = "delete_batch",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id.")),
    responses((status = 204, description = "Deleted with its documents and their files."))
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    batches::delete(&state, &meta, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/{id}/signed-url", tag = "batches", operation_id = "sign_batch_archive_link",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id."), TtlQuery),
    responses(
        (status = 200, description = "A link that downloads the archive without a token until it expires.", body = SignedUrl),
        (status = 409, description = "`nothing_ready`: no item is ready yet.", body = ErrorBody),
    )
)]
async fn signed_url(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(query): Query<TtlQuery>,
) -> ApiResult<Json<SignedUrl>> {
    let link = batches::sign_link(&state, &user, id, query.ttl_seconds).await?;
    Ok(Json(link))
}

/// With `exp` and `sig`, the link is the credential; without them, a bearer token of the
/// owner, a manager or an admin.
#[utoipa::path(
    get, path = "/{id}/archive", tag = "batches", operation_id = "download_batch_archive",
    security((), ("bearer" = [])),
    params(("id" = Uuid, Path, description = "The batch id."), LinkQuery),
    responses(
        (status = 200, description = "A ZIP, streamed: each ready document under `<reference>.<extension>`, decrypted and decompressed, then `manifest.csv` (`reference, document_id, status, error, size_bytes, checksum`) for every item.",
            content((Vec<u8> = "application/zip")), headers(("Content-Disposition" = String))),
        (status = 401, description = "Neither a signed link nor a bearer token.", body = ErrorBody),
        (status = 403, description = "`invalid_link`: the link is incomplete, expired or its signature is wrong.", body = ErrorBody),
        (status = 409, description = "`nothing_ready`: no item is ready yet.", body = ErrorBody),
    )
)]
async fn archive(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Query(link): Query<LinkQuery>,
    mut parts: Parts,
) -> ApiResult<Response> {
    let credential = link.credential(&mut parts, &state).await?;
    let (batch, body) = batches::archive(&state, &meta, id, credential).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/zip".to_owned()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"batch-{}.zip\"", batch.id),
        ),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ];
    Ok((headers, Body::from_stream(body)).into_response())
}
