//! `/api/v1/documents`: asking for documents, following their status, signed links and
//! downloads.
//!
//! Generation is asynchronous: the API records the request as a `queued` row, pushes a job
//! carrying only the document id, and answers 202 with `Location`. Clients poll
//! `GET /documents/{id}` until `ready` or `failed`. Agents see their own documents;
//! managers and admins see all. A document another agent owns answers 404, not 403, so
//! ids do not reveal what exists.

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::db::audit::AuditEvent;
use common::db::documents::{DocumentFilter, NewDocument};
use common::model::{Document, DocumentStatus, OutputFormat};
use common::queue::RenderJob;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(list))
        .route("/generate", post(generate))
        .route("/{id}", get(read).delete(remove))
        .route("/{id}/signed-url", post(signed_url))
        .route("/{id}/download", get(download))
}

#[derive(Deserialize)]
struct GenerateBody {
    document_type: String,
    template_id: Option<Uuid>,
    template_version_id: Option<Uuid>,
    policy_id: Option<Uuid>,
    inline_context: Option<serde_json::Value>,
    output_format: Option<OutputFormat>,
    #[serde(default)]
    compress: bool,
    #[serde(default)]
    encrypt: bool,
}

async fn generate(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<GenerateBody>,
) -> ApiResult<Response> {
    let document_type = body.document_type.trim();
    if document_type.is_empty() || document_type.chars().count() > 30 {
        return Err(ApiError::invalid(
            "document_type",
            "must be 1 to 30 characters long",
        ));
    }
    let inline_context = match body.inline_context {
        None | Some(serde_json::Value::Null) => serde_json::json!({}),
        Some(value @ serde_json::Value::Object(_)) => value,
        Some(_) => return Err(ApiError::invalid("inline_context", "must be a JSON object")),
    };
    if body.compress || body.encrypt {
        return Err(ApiError::invalid(
            if body.compress { "compress" } else { "encrypt" },
            "compression and encryption at rest are not available on this server yet",
        ));
    }
    if body.policy_id.is_some() {
        return Err(ApiError::not_found("Policy not found."));
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

    let doc = state
        .db
        .documents()
        .create(NewDocument {
            owner_id: user.id(),
            document_type,
            output_format: format,
            template_version_id: version_id,
            policy_id: body.policy_id,
            inline_context: &inline_context,
            compress: body.compress,
            encrypt: body.encrypt,
            request_id: meta.request_id.as_deref(),
        })
        .await?;
    let job = RenderJob {
        document_id: doc.id,
        request_id: meta.request_id.clone(),
    };
    if let Err(err) = state.queue.push(job).await {
        tracing::error!(error = ?err, document_id = %doc.id, "cannot enqueue a document");
        state.db.documents().delete(doc.id).await?;
        return Err(ApiError::unavailable(
            "The job queue is unavailable; try again shortly.",
            5,
        ));
    }
    audit(
        &state,
        &meta,
        user.id(),
        "generate_document",
        &doc,
        serde_json::json!({"format": format}),
    )
    .await;

    let location = format!("/api/v1/documents/{}", doc.id);
    let mut response = (StatusCode::ACCEPTED, Json(doc)).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("a path is a valid header value"),
    );
    Ok(response)
}

/// An HTML template renders to HTML or PDF; an XLSX template only to XLSX. PDF and XLSX
/// rendering are not built yet, so they are refused here rather than failing later.
fn check_format(template: Option<OutputFormat>, output: OutputFormat) -> ApiResult<()> {
    let compatible = match template {
        None | Some(OutputFormat::Html) | Some(OutputFormat::Pdf) => output != OutputFormat::Xlsx,
        Some(OutputFormat::Xlsx) => output == OutputFormat::Xlsx,
    };
    if !compatible {
        return Err(ApiError::invalid(
            "output_format",
            format!(
                "a {} template cannot be rendered to {output}",
                template.map_or("built-in", |f| f.as_str())
            ),
        ));
    }
    if output != OutputFormat::Html {
        return Err(ApiError::invalid(
            "output_format",
            format!("{output} output is not available on this server yet; use html"),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    page: Pagination,
    status: Option<DocumentStatus>,
    policy_id: Option<Uuid>,
}

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

async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Document>> {
    Ok(Json(visible(&state, &user, id).await?))
}

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

#[derive(Deserialize)]
struct TtlQuery {
    #[serde(default = "default_ttl")]
    ttl_seconds: i64,
}

fn default_ttl() -> i64 {
    300
}

#[derive(Serialize)]
struct SignedUrl {
    url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

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
    let exp = expires_at.timestamp();
    let sig = state.keys.sign(doc.id, exp);
    let url = format!(
        "{}/api/v1/documents/{}/download?exp={exp}&sig={sig}",
        state.public_base_url, doc.id
    );
    Ok(Json(SignedUrl { url, expires_at }))
}

#[derive(Deserialize)]
struct LinkQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

/// With `exp` and `sig`, the link is the credential and no bearer token is needed; without
/// them, the caller must be the owner, a manager or an admin.
async fn download(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path(id): Path<Uuid>,
    Query(link): Query<LinkQuery>,
    mut parts: Parts,
) -> ApiResult<Response> {
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
    ensure_ready(&doc)?;
    let (Some(key), Some(checksum)) = (&doc.storage_key, &doc.checksum) else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "ready document {} has no object",
            doc.id
        )));
    };
    let object = state.storage.get(key).await.map_err(|err| {
        tracing::error!(error = ?err, document_id = %doc.id, "a ready document's object is missing");
        ApiError::new(StatusCode::GONE, "object_missing", "The document's file is no longer available.")
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

    let filename = download_name(&doc);
    let headers = [
        (header::CONTENT_TYPE, doc.mime_type.clone()),
        (header::CONTENT_LENGTH, object.size.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{filename}\""),
        ),
        (header::ETAG, format!("\"{checksum}\"")),
        (header::CACHE_CONTROL, "private, no-store".to_owned()),
    ];
    let mut response = (headers, Body::from_stream(object.stream)).into_response();
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
