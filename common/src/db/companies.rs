//! Insurers. Names and codes are unique: a taken one comes back as a refusal by
//! [`Constraint::CompaniesNameKey`](super::Constraint::CompaniesNameKey) or
//! [`Constraint::CompaniesCodeKey`](super::Constraint::CompaniesCodeKey).

use uuid::Uuid;

use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::Company;

macro_rules! company_columns {
    () => {
        "id, name, code, api_mode, api_endpoint, api_key, created_at, updated_at"
    };
}

/// The fields of a new company.
pub struct NewCompany<'a> {
    pub name: &'a str,
    pub code: &'a str,
    pub api_mode: bool,
    pub api_endpoint: Option<&'a str>,
    pub api_key: Option<&'a str>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Default)]
pub struct CompanyPatch {
    pub name: Option<String>,
    pub code: Option<String>,
    pub api_mode: Option<bool>,
    pub api_endpoint: Option<String>,
    pub api_key: Option<String>,
}

pub struct Companies<'a>(pub(super) &'a Db);

impl Companies<'_> {
    pub async fn create(&self, new: NewCompany<'_>) -> DbResult<Company> {
        on_db!(self.0, pool => sqlx::query_as::<_, Company>(concat!(
            "INSERT INTO companies (id, name, code, api_mode, api_endpoint, api_key, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ",
            company_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(new.name)
        .bind(new.code)
        .bind(new.api_mode)
        .bind(new.api_endpoint)
        .bind(new.api_key)
        .bind(crate::now())
        .fetch_one(pool)
        .await)
        .db()
    }

    /// Companies, newest first.
    pub async fn list(&self, limit: i64, offset: i64) -> DbResult<Page<Company>> {
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Company>(concat!(
                "SELECT ", company_columns!(), " FROM companies ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
            ))
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM companies")
                .fetch_one(pool)
                .await
                .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    pub async fn get(&self, id: Uuid) -> DbResult<Option<Company>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Company>(concat!(
            "SELECT ", company_columns!(), " FROM companies WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Applies a partial update in one statement, so that concurrent updates of different
    /// fields all stay; `None` when the company does not exist.
    pub async fn update(&self, id: Uuid, patch: CompanyPatch) -> DbResult<Option<Company>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Company>(concat!(
            "UPDATE companies SET name = COALESCE($2, name), code = COALESCE($3, code), \
             api_mode = COALESCE($4, api_mode), api_endpoint = COALESCE($5, api_endpoint), \
             api_key = COALESCE($6, api_key), updated_at = $7 WHERE id = $1 RETURNING ",
            company_columns!()
        ))
        .bind(id)
        .bind(patch.name)
        .bind(patch.code)
        .bind(patch.api_mode)
        .bind(patch.api_endpoint)
        .bind(patch.api_key)
        .bind(crate::now())
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Deletes a company (its policies keep existing without an insurer); false when it
    /// did not exist.
    pub async fn delete(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM companies WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .db()
        .map(|n| n == 1)
    }
}
