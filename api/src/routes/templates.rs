//! `/api/v1/templates`: versioned document templates, managed by managers and admins.

use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::db::Page;
use common::db::templates::{NewTemplate, TemplatePatch};
use common::db::{Constraint, DbError};
use common::model::{OutputFormat, Role, Template, TemplateOptions, TemplateVersion};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::templates::{
    Upload, check_content, check_options, store_version, upload_version,
};
use crate::service::{check_text, record_change};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update, remove))
        .routes(routes!(add_version))
        .routes(routes!(upload))
        .routes(routes!(read_version))
        .routes(routes!(preview))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TemplateCreate)]
struct CreateBody {
    name: String,
    /// What the template is for (`attestation`, `quote`…); default `document`.
    #[serde(rename = "type", default = "default_type")]
    #[schema(required = false, default = "document")]
    template_type: String,
    /// Default `html`.
    #[serde(default = "default_format")]
    #[schema(required = false, default = "html")]
    format: OutputFormat,
    /// Default `global`.
    #[serde(default = "default_scope")]
    #[schema(required = false, default = "global")]
    scope: String,
    #[serde(default = "default_true")]
    #[schema(required = false, default = true)]
    is_active: bool,
    /// Version 1's content, when given.
    content: Option<String>,
    /// The PDF layout.
    #[serde(default)]
    #[schema(value_type = common::model::LayoutOptions)]
    options: TemplateOptions,
}

fn default_type() -> String {
    "document".to_owned()
}
fn default_format() -> OutputFormat {
    OutputFormat::Html
}
fn default_scope() -> String {
    "global".to_owned()
}
fn default_true() -> bool {
    true
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TemplatePatch)]
struct PatchBody {
    name: Option<String>,
    #[serde(rename = "type")]
    template_type: Option<String>,
    format: Option<OutputFormat>,
    scope: Option<String>,
    is_active: Option<bool>,
    #[schema(value_type = Option<common::model::LayoutOptions>)]
    options: Option<TemplateOptions>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = TemplateVersionCreate)]
struct VersionBody {
    content: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    active: Option<bool>,
}

/// A template with its versions in ascending order.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TemplateWithVersions)]
struct TemplateOut {
    #[serde(flatten)]
    template: Template,
    versions: Vec<TemplateVersion>,
}

fn duplicate(err: DbError) -> ApiError {
    match err.constraint() {
        Some(Constraint::UqTemplateNameTypeScope) => ApiError::conflict(
            "template_exists",
            "A template with this name, type and scope already exists.",
        ),
        _ => err.into(),
    }
}

#[utoipa::path(
    post, path = "/", tag = "templates", operation_id = "create_template",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new template; `content` became version 1.", body = TemplateOut),
        (status = 409, description = "`template_exists`: the (name, type, scope) is taken.", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    check_text("name", &body.name, 255)?;
    check_text("type", &body.template_type, 30)?;
    check_text("scope", &body.scope, 20)?;
    if let Some(content) = &body.content {
        check_content(body.format, content)?;
    }
    let new = NewTemplate {
        name: body.name.trim(),
        template_type: body.template_type.trim(),
        format: body.format,
        scope: body.scope.trim(),
        is_active: body.is_active,
        options: check_options(&body.options)?,
        created_by: user.id(),
    };
    let templates = state.db.templates();
    let created = templates.create(new, body.content.as_deref()).await;
    let (template, version) = created.map_err(duplicate)?;
    let id = template.id;
    record_change(&state, &meta, &user, "template_created", "template", id).await;
    let out = TemplateOut {
        template,
        versions: version.into_iter().collect(),
    };
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(
    get, path = "/", tag = "templates", operation_id = "list_templates",
    security(("bearer" = [])),
    params(Pagination, ListQuery),
    responses((status = 200, description = "A page of templates.", body = Page<Template>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    let (limit, offset) = query.page.checked()?;
    Ok(Json(
        state
            .db
            .templates()
            .list(query.active, limit, offset)
            .await?,
    ))
}

#[utoipa::path(
    get, path = "/{id}", tag = "templates", operation_id = "get_template",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template id.")),
    responses((status = 200, description = "The template with its versions in ascending order.", body = TemplateOut))
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<TemplateOut>> {
    user.require(Role::Manager)?;
    let template = find(&state, id).await?;
    let versions = state.db.templates().versions(id).await?;
    Ok(Json(TemplateOut { template, versions }))
}

#[utoipa::path(
    patch, path = "/{id}", tag = "templates", operation_id = "update_template",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template id.")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The changed template.", body = Template),
        (status = 409, description = "`template_exists`.", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<PatchBody>,
) -> ApiResult<Json<Template>> {
    user.require(Role::Manager)?;
    if let Some(name) = &body.name {
        check_text("name", name, 255)?;
    }
    if let Some(kind) = &body.template_type {
        check_text("type", kind, 30)?;
    }
    if let Some(scope) = &body.scope {
        check_text("scope", scope, 20)?;
    }
    let options = body.options.as_ref().map(check_options).transpose()?;
    let patch = TemplatePatch {
        name: body.name.map(|s| s.trim().to_owned()),
        template_type: body.template_type.map(|s| s.trim().to_owned()),
        format: body.format,
        scope: body.scope.map(|s| s.trim().to_owned()),
        is_active: body.is_active,
        options,
    };
    let template = state
        .db
        .templates()
        .update(id, patch)
        .await
        .map_err(duplicate)?
        .ok_or_else(|| ApiError::not_found("Template not found."))?;
    record_change(&state, &meta, &user, "template_updated", "template", id).await;
    Ok(Json(template))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "templates", operation_id = "delete_template",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template id.")),
    responses(
        (status = 204, description = "Deleted with its versions."),
        (status = 409, description = "`reference_changed`: something still refers to it.", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    user.require(Role::Manager)?;
    if !state.db.templates().delete(id).await? {
        return Err(ApiError::not_found("Template not found."));
    }
    record_change(&state, &meta, &user, "template_deleted", "template", id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/{id}/versions", tag = "templates", operation_id = "add_template_version",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template id.")),
    request_body = VersionBody,
    responses((status = 201, description = "The new version (numbers increase from 1).", body = TemplateVersion))
)]
async fn add_version(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<VersionBody>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    let template = find(&state, id).await?;
    let version = store_version(&state, &meta, &user, &template, &body.content, "db", None).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

/// Adds a version from a multipart upload: the `file` part is the content (UTF-8), and an
/// optional `checksum` part (lowercase or uppercase hex SHA-256) must match it.
#[utoipa::path(
    post, path = "/{id}/upload", tag = "templates", operation_id = "upload_template_version",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The template id.")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "The new version.", body = TemplateVersion),
        (status = 422, description = "`checksum_mismatch`, or an invalid file (`validation_error`).", body = ErrorBody),
    )
)]
async fn upload(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    let template = find(&state, id).await?;
    let upload = read_upload(multipart).await?;
    let version = upload_version(&state, &meta, &user, &template, upload).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

/// The parts of an upload form: `file` (its name kept printable and bounded, for the audit
/// log) and `checksum`.
async fn read_upload(multipart: Result<Multipart, MultipartRejection>) -> ApiResult<Upload> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Send the file as multipart/form-data: {}", e.body_text()),
        )
    })?;
    let mut upload = Upload::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") => {
                upload.filename = field
                    .file_name()
                    .map(|name| name.chars().filter(|c| !c.is_control()).take(255).collect());
                upload.file = Some(field.bytes().await.map_err(multipart_error)?);
            }
            Some("checksum") => {
                upload.checksum = Some(field.text().await.map_err(multipart_error)?)
            }
            _ => {}
        }
    }
    Ok(upload)
}

/// The multipart form of an upload (for the OpenAPI description; the handler reads the
/// parts itself).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The template's content, UTF-8.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
    /// The content's SHA-256, in hex; the upload is refused when it does not match.
    checksum: Option<String>,
}

/// A multipart body that cannot be read: too large (413) or malformed (400).
fn multipart_error(err: MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        crate::extract::payload_too_large()
    } else {
        ApiError::bad_request(
            "malformed_multipart",
            format!("The multipart body cannot be read: {}", err.body_text()),
        )
    }
}

#[utoipa::path(
    get, path = "/{id}/versions/{version}", tag = "templates", operation_id = "get_template_version",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The template id."),
        ("version" = i32, Path, description = "The version number."),
    ),
    responses((status = 200, description = "The version with its content.", body = TemplateVersion))
)]
async fn read_version(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, version)): Path<(Uuid, i32)>,
) -> ApiResult<Json<TemplateVersion>> {
    user.require(Role::Manager)?;
    state
        .db
        .templates()
        .version(id, version)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("Template version not found."))
}

async fn find(state: &AppState, id: Uuid) -> ApiResult<Template> {
    state
        .db
        .templates()
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("Template not found."))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = TemplatePreview)]
struct PreviewBody {
    inline_context: Option<serde_json::Value>,
    policy_id: Option<Uuid>,
}

/// Renders a version now, on a worker, with the request's context or a built-in sample,
/// and answers the bytes in the template's format. Nothing is kept.
#[utoipa::path(
    post, path = "/{id}/versions/{version}/preview", tag = "templates", operation_id = "preview_template_version",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The template id."),
        ("version" = i32, Path, description = "The version number."),
    ),
    request_body(content = Option<PreviewBody>, description = "Optional: without a body (or with neither field) a built-in sample is rendered."),
    responses(
        (status = 200, description = "The rendered bytes in the template's format; nothing is stored.",
            content(
                (String = "text/html"),
                (Vec<u8> = "application/pdf"),
                (Vec<u8> = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
            )),
        (status = 422, description = "The template cannot be rendered (`content`: the reason, as a document would fail).", body = ErrorBody),
        (status = 503, description = "No worker rendered the preview within 30 s; `Retry-After` says when to try again.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    )
)]
async fn preview(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(version): Path<(Uuid, i32)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::response::Response> {
    user.require(Role::Manager)?;
    let body: PreviewBody = if body.iter().all(u8::is_ascii_whitespace) {
        PreviewBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::invalid("body", e.to_string()),
            _ => ApiError::bad_request("malformed_json", "The request body is not valid JSON."),
        })?
    };
    let rendered = crate::service::documents::preview(
        &state,
        &meta,
        &user,
        version,
        body.inline_context,
        body.policy_id,
    )
    .await?;
    let content_type = [(axum::http::header::CONTENT_TYPE, rendered.mime_type)];
    Ok((content_type, rendered.bytes).into_response())
}
