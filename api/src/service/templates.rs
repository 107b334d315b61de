//! What a template's content and options may be, and storing a version.
//!
//! Content is checked when it is saved, with the same parsers the workers render with (the
//! `template` crate), so a mistake shows at once rather than as a failed document later.

use axum::http::StatusCode;
use common::db::audit::AuditEvent;
use common::db::{Constraint, DbResultExt};
use common::model::{OutputFormat, Template, TemplateOptions, TemplateVersion};
use sha2::Digest;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, RequestMeta};

/// Refuses content the renderer cannot parse (HTML templates, XLSX sheet specs).
pub fn check_content(format: OutputFormat, content: &str) -> ApiResult<()> {
    let checked = match format {
        OutputFormat::Xlsx => template::xlsx::check_spec(content),
        OutputFormat::Html | OutputFormat::Pdf => template::check_syntax(content),
    };
    checked.map_err(|e| ApiError::invalid("content", e.to_string()))
}

/// Refuses page-layout options the PDF engine would not accept (HTML templates may be
/// rendered to PDF too) or does not know, and returns them as they are stored.
pub fn check_options(options: &TemplateOptions) -> ApiResult<TemplateOptions> {
    template::layout::canonical_options(options)
        .map_err(|e| ApiError::invalid("options", e.to_string()))
}

/// Checks `content` against the template's format, stores it as the next version and
/// records `template_version_created` (with `metadata` and the version number, when
/// metadata is given).
pub async fn store_version(
    state: &AppState,
    meta: &RequestMeta,
    user: &AuthUser,
    template: &Template,
    content: &str,
    source: &str,
    mut metadata: Option<serde_json::Value>,
) -> ApiResult<TemplateVersion> {
    check_content(template.format, content)?;
    let version = state
        .db
        .templates()
        .add_version(template.id, content, source, user.id())
        .await
        .on_constraint(Constraint::TemplateVersionsTemplateIdFkey, |_| {
            ApiError::not_found("Template not found.")
        })?;
    if let Some(serde_json::Value::Object(fields)) = &mut metadata {
        fields.insert("version".to_owned(), version.version.into());
    }
    let event = AuditEvent {
        user_id: Some(user.id()),
        action: "template_version_created",
        object_type: Some("template_version"),
        object_id: Some(version.id.to_string()),
        metadata,
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
    Ok(version)
}

/// A version sent as a file.
#[derive(Default)]
pub struct Upload {
    pub filename: Option<String>,
    pub file: Option<bytes::Bytes>,
    /// The SHA-256 the client computed, in hex (either case).
    pub checksum: Option<String>,
}

/// Adds an uploaded file as the next version: the checksum is checked first (a file
/// damaged on the way is reported as such), then that the file is UTF-8 text.
pub async fn upload_version(
    state: &AppState,
    meta: &RequestMeta,
    user: &AuthUser,
    template: &Template,
    upload: Upload,
) -> ApiResult<TemplateVersion> {
    let bytes = upload
        .file
        .ok_or_else(|| ApiError::invalid("file", "a `file` part is required"))?;
    if let Some(expected) = upload.checksum {
        let actual = hex::encode(sha2::Sha256::digest(&bytes));
        if !expected.trim().eq_ignore_ascii_case(&actual) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "checksum_mismatch",
                format!("The file's SHA-256 is {actual}, not the checksum sent."),
            ));
        }
    }
    let content = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::invalid("file", "the file must be UTF-8 text"))?;
    let metadata = serde_json::json!({"source": "upload", "filename": upload.filename});
    store_version(
        state,
        meta,
        user,
        template,
        content,
        "upload",
        Some(metadata),
    )
    .await
}
