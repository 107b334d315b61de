//! Templates and their numbered versions.

use sha2::{Digest, Sha256};
use sqlx::types::Json;
use uuid::Uuid;

use super::{Constraint, Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::{OutputFormat, Template, TemplateOptions, TemplateVersion};

macro_rules! template_columns {
    () => {
        "id, name, template_type, format, scope, is_active, options, created_by, created_at, updated_at"
    };
}
macro_rules! version_columns {
    () => {
        "id, template_id, version, storage_backend, content, checksum, created_by, created_at"
    };
}

/// The fields of a new template.
pub struct NewTemplate<'a> {
    pub name: &'a str,
    pub template_type: &'a str,
    pub format: OutputFormat,
    pub scope: &'a str,
    pub is_active: bool,
    pub options: TemplateOptions,
    pub created_by: Uuid,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Default)]
pub struct TemplatePatch {
    pub name: Option<String>,
    pub template_type: Option<String>,
    pub format: Option<OutputFormat>,
    pub scope: Option<String>,
    pub is_active: Option<bool>,
    pub options: Option<TemplateOptions>,
}

/// The lowercase hex SHA-256 of a template's content.
pub fn content_checksum(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

pub struct Templates<'a>(pub(super) &'a Db);

impl Templates<'_> {
    /// Inserts a template, and its version 1 when `content` is given, in one transaction.
    pub async fn create(
        &self,
        new: NewTemplate<'_>,
        content: Option<&str>,
    ) -> DbResult<(Template, Option<TemplateVersion>)> {
        let now = crate::now();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let template = sqlx::query_as::<_, Template>(concat!(
                "INSERT INTO templates (id, name, template_type, format, scope, is_active, options, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING ",
                template_columns!()
            ))
            .bind(Uuid::now_v7())
            .bind(new.name)
            .bind(new.template_type)
            .bind(new.format.as_str())
            .bind(new.scope)
            .bind(new.is_active)
            .bind(Json(&new.options))
            .bind(new.created_by)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .db()?;
            let version = match content {
                Some(content) => Some(
                    sqlx::query_as::<_, TemplateVersion>(concat!(
                        "INSERT INTO template_versions (id, template_id, version, storage_backend, content, checksum, created_by, created_at) \
                         VALUES ($1, $2, 1, 'db', $3, $4, $5, $6) RETURNING ",
                        version_columns!()
                    ))
                    .bind(Uuid::now_v7())
                    .bind(template.id)
                    .bind(content)
                    .bind(content_checksum(content))
                    .bind(new.created_by)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .db()?,
                ),
                None => None,
            };
            tx.commit().await.db()?;
            Ok((template, version))
        })
    }

    /// Templates by creation date, optionally only the active (or inactive) ones.
    pub async fn list(
        &self,
        active: Option<bool>,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Template>> {
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Template>(concat!(
                "SELECT ", template_columns!(), " FROM templates WHERE ($1 IS NULL OR is_active = $1) \
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(active)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM templates WHERE ($1 IS NULL OR is_active = $1)")
                .bind(active)
                .fetch_one(pool)
                .await
                .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    pub async fn get(&self, id: Uuid) -> DbResult<Option<Template>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Template>(concat!(
            "SELECT ", template_columns!(), " FROM templates WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Applies a partial update in one statement, so that concurrent updates of different
    /// fields all stay; `None` when the template does not exist.
    pub async fn update(&self, id: Uuid, patch: TemplatePatch) -> DbResult<Option<Template>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Template>(concat!(
            "UPDATE templates SET name = COALESCE($2, name), template_type = COALESCE($3, template_type), \
             format = COALESCE($4, format), scope = COALESCE($5, scope), is_active = COALESCE($6, is_active), \
             options = COALESCE($7, options), updated_at = $8 WHERE id = $1 RETURNING ",
            template_columns!()
        ))
        .bind(id)
        .bind(patch.name)
        .bind(patch.template_type)
        .bind(patch.format.map(OutputFormat::as_str))
        .bind(patch.scope)
        .bind(patch.is_active)
        .bind(patch.options.map(Json))
        .bind(crate::now())
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Deletes a template and its versions; false when it did not exist.
    pub async fn delete(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .db()
        .map(|n| n == 1)
    }

    /// Every version of a template, in ascending order.
    pub async fn versions(&self, template_id: Uuid) -> DbResult<Vec<TemplateVersion>> {
        on_db!(self.0, pool => sqlx::query_as::<_, TemplateVersion>(concat!(
            "SELECT ", version_columns!(), " FROM template_versions WHERE template_id = $1 ORDER BY version"
        ))
        .bind(template_id)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Appends a version numbered one past the highest. Two concurrent additions race for
    /// the same number; the loser retries with the next one.
    pub async fn add_version(
        &self,
        template_id: Uuid,
        content: &str,
        storage_backend: &str,
        created_by: Uuid,
    ) -> DbResult<TemplateVersion> {
        let checksum = content_checksum(content);
        let mut attempts = 0;
        loop {
            let inserted = on_db!(self.0, pool => sqlx::query_as::<_, TemplateVersion>(concat!(
                "INSERT INTO template_versions (id, template_id, version, storage_backend, content, checksum, created_by, created_at) \
                 SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, $6, $7 FROM template_versions WHERE template_id = $2 \
                 RETURNING ",
                version_columns!()
            ))
            .bind(Uuid::now_v7())
            .bind(template_id)
            .bind(storage_backend)
            .bind(content)
            .bind(&checksum)
            .bind(created_by)
            .bind(crate::now())
            .fetch_one(pool)
            .await)
            .db();
            match inserted {
                Err(err) if err.is(Constraint::UqTemplateVersion) && attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    /// A version by its number within a template.
    pub async fn version(
        &self,
        template_id: Uuid,
        version: i32,
    ) -> DbResult<Option<TemplateVersion>> {
        on_db!(self.0, pool => sqlx::query_as::<_, TemplateVersion>(concat!(
            "SELECT ", version_columns!(), " FROM template_versions WHERE template_id = $1 AND version = $2"
        ))
        .bind(template_id)
        .bind(version)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// A version by its own id.
    pub async fn version_by_id(&self, id: Uuid) -> DbResult<Option<TemplateVersion>> {
        on_db!(self.0, pool => sqlx::query_as::<_, TemplateVersion>(concat!(
            "SELECT ", version_columns!(), " FROM template_versions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// The highest-numbered version of a template.
    pub async fn latest_version(&self, template_id: Uuid) -> DbResult<Option<TemplateVersion>> {
        on_db!(self.0, pool => sqlx::query_as::<_, TemplateVersion>(concat!(
            "SELECT ", version_columns!(), " FROM template_versions WHERE template_id = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(template_id)
        .fetch_optional(pool)
        .await)
        .db()
    }
}
