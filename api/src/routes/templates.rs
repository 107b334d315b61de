//! `/api/v1/templates`: versioned document templates, managed by managers and admins.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use common::db::DbError;
use common::db::audit::AuditEvent;
use common::db::templates::{NewTemplate, TemplatePatch};
use common::model::{OutputFormat, Role, Template, TemplateOptions, TemplateVersion};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::{Pagination, check_text};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", post(create).get(list))
        .route("/{id}", get(read).patch(update).delete(remove))
        .route("/{id}/versions", post(add_version))
        .route("/{id}/versions/{version}", get(read_version))
        .route("/{id}/versions/{version}/preview", post(preview))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(rename = "type", default = "default_type")]
    template_type: String,
    #[serde(default = "default_format")]
    format: OutputFormat,
    #[serde(default = "default_scope")]
    scope: String,
    #[serde(default = "default_true")]
    is_active: bool,
    content: Option<String>,
    #[serde(default)]
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

#[derive(Deserialize)]
struct PatchBody {
    name: Option<String>,
    #[serde(rename = "type")]
    template_type: Option<String>,
    format: Option<OutputFormat>,
    scope: Option<String>,
    is_active: Option<bool>,
    options: Option<TemplateOptions>,
}

#[derive(Deserialize)]
struct VersionBody {
    content: String,
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    page: Pagination,
    active: Option<bool>,
}

/// A template with its versions in ascending order.
#[derive(Serialize)]
struct TemplateOut {
    #[serde(flatten)]
    template: Template,
    versions: Vec<TemplateVersion>,
}

/// Refuses content the renderer cannot parse (HTML templates, XLSX sheet specs), so the
/// mistake shows when it is saved rather than as a failed document later.
fn check_content(format: OutputFormat, content: &str) -> ApiResult<()> {
    let checked = match format {
        OutputFormat::Xlsx => worker::render::xlsx::check_spec(content),
        OutputFormat::Html | OutputFormat::Pdf => worker::render::check_syntax(content),
    };
    checked.map_err(|e| ApiError::invalid("content", e.to_string()))
}

/// Refuses page-layout options the PDF engine would not accept (HTML templates may be
/// rendered to PDF too).
fn check_options(format: OutputFormat, options: &TemplateOptions) -> ApiResult<()> {
    if format == OutputFormat::Xlsx {
        return Ok(());
    }
    worker::render::pdf::PdfOptions::from_template_options(options)
        .map(|_| ())
        .map_err(|e| ApiError::invalid("options", e.to_string()))
}

fn duplicate(err: DbError) -> ApiError {
    match err {
        DbError::Conflict(_) => ApiError::conflict(
            "template_exists",
            "A template with this name, type and scope already exists.",
        ),
        other => other.into(),
    }
}

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
    check_options(body.format, &body.options)?;
    let (template, version) = state
        .db
        .templates()
        .create(
            NewTemplate {
                name: body.name.trim(),
                template_type: body.template_type.trim(),
                format: body.format,
                scope: body.scope.trim(),
                is_active: body.is_active,
                options: body.options,
                created_by: user.id(),
            },
            body.content.as_deref(),
        )
        .await
        .map_err(duplicate)?;
    audit(&state, &meta, &user, "template_created", template.id).await;
    let out = TemplateOut {
        template,
        versions: version.into_iter().collect(),
    };
    Ok((StatusCode::CREATED, Json(out)))
}

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
    if let Some(options) = &body.options {
        let format = match body.format {
            Some(format) => format,
            None => find(&state, id).await?.format,
        };
        check_options(format, options)?;
    }
    let patch = TemplatePatch {
        name: body.name.map(|s| s.trim().to_owned()),
        template_type: body.template_type.map(|s| s.trim().to_owned()),
        format: body.format,
        scope: body.scope.map(|s| s.trim().to_owned()),
        is_active: body.is_active,
        options: body.options,
    };
    let template = state
        .db
        .templates()
        .update(id, patch)
        .await
        .map_err(duplicate)?
        .ok_or_else(|| ApiError::not_found("Template not found."))?;
    audit(&state, &meta, &user, "template_updated", id).await;
    Ok(Json(template))
}

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
    audit(&state, &meta, &user, "template_deleted", id).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_version(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<VersionBody>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    let template = find(&state, id).await?;
    check_content(template.format, &body.content)?;
    let version = state
        .db
        .templates()
        .add_version(id, &body.content, "db", user.id())
        .await
        .map_err(|e| match e {
            DbError::ForeignKey(_) => ApiError::not_found("Template not found."),
            other => other.into(),
        })?;
    audit(&state, &meta, &user, "template_version_created", version.id).await;
    Ok((StatusCode::CREATED, Json(version)))
}

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

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    user: &AuthUser,
    action: &'static str,
    id: Uuid,
) {
    let object_type = if action.starts_with("template_version") {
        "template_version"
    } else {
        "template"
    };
    crate::routes::record(
        state,
        meta,
        AuditEvent {
            user_id: Some(user.id()),
            action,
            object_type: Some(object_type),
            object_id: Some(id.to_string()),
            ..Default::default()
        },
    )
    .await;
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

#[derive(Deserialize, Default)]
struct PreviewBody {
    inline_context: Option<serde_json::Value>,
    policy_id: Option<Uuid>,
}

/// Renders a version now, with the request's context or a built-in sample, and answers
/// the bytes in the template's format. Nothing is stored.
async fn preview(
    State(state): State<AppState>,
    user: AuthUser,
    Path((id, number)): Path<(Uuid, i32)>,
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
    let parties = match body.policy_id {
        Some(policy_id) => {
            crate::routes::policies::visible(&state, &user, policy_id).await?;
            state.db.policies().parties(policy_id).await?
        }
        None => None,
    };
    let inline_context = crate::routes::inline_context(body.inline_context, sample_context)?;
    let template = find(&state, id).await?;
    let version = state
        .db
        .templates()
        .version(id, number)
        .await?
        .ok_or_else(|| ApiError::not_found("Template version not found."))?;
    let document = serde_json::json!({
        "id": null,
        "document_type": template.template_type,
        "output_format": template.format,
        "created_at": common::now(),
    });
    let context = worker::pipeline::template_context(&inline_context, document, parties.as_ref());
    let bytes = worker::pipeline::render_bytes(
        &state.pdf,
        &state.settings,
        template.format,
        Some(version.content),
        &template.options.0,
        context,
    )
    .await
    .map_err(|e| match e {
        worker::pipeline::JobError::Permanent(reason) => ApiError::invalid("content", reason),
        worker::pipeline::JobError::Transient(err) => {
            tracing::warn!(error = %err, "preview failed");
            ApiError::unavailable("The renderer is unavailable; try again shortly.", 5)
        }
    })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            template.format.mime_type(),
        )],
        bytes,
    )
        .into_response())
}
