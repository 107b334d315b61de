//! Policies. A policy is visible through its client's owner: every read and write takes an
//! `owner` (`Some(user)` for agents, `None` for managers and admins) and joins `clients`
//! to apply it, so another agent's policy reads exactly like a missing one.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::{Client, Company, Policy, PolicyStatus};

macro_rules! policy_columns {
    () => {
        "p.id, p.policy_number, p.client_id, p.company_id, p.product_name, p.premium_amount, \
         p.effective_date, p.expiry_date, p.status, p.currency, p.created_at, p.updated_at"
    };
}

/// `$1`: owner, `$2`: client, `$3`: company, `$4`: status; each NULL for "any".
macro_rules! policy_filter {
    () => {
        "($1 IS NULL OR c.owner_id = $1) AND ($2 IS NULL OR p.client_id = $2) \
         AND ($3 IS NULL OR p.company_id = $3) AND ($4 IS NULL OR p.status = $4)"
    };
}

/// Every column of a policy, for inserts and full updates (the API merges a partial
/// update with the current row first, so its rules are checked on the result).
pub struct PolicyFields<'a> {
    pub policy_number: &'a str,
    pub client_id: Uuid,
    pub company_id: Option<Uuid>,
    pub product_name: &'a str,
    pub premium_amount: i64,
    pub effective_date: DateTime<Utc>,
    pub expiry_date: DateTime<Utc>,
    pub status: PolicyStatus,
    pub currency: &'a str,
}

/// Which policies a list returns; `None` matches any.
#[derive(Debug, Default)]
pub struct PolicyFilter {
    pub owner_id: Option<Uuid>,
    pub client_id: Option<Uuid>,
    pub company_id: Option<Uuid>,
    pub status: Option<PolicyStatus>,
}

/// A policy with its client and insurer: what a document template sees.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyParties {
    pub policy: Policy,
    pub client: Client,
    pub company: Option<Company>,
}

pub struct Policies<'a>(pub(super) &'a Db);

impl Policies<'_> {
    pub async fn create(&self, new: PolicyFields<'_>) -> DbResult<Policy> {
        let id = Uuid::now_v7();
        on_db!(self.0, pool => sqlx::query(
            "INSERT INTO policies (id, policy_number, client_id, company_id, product_name, premium_amount, \
             effective_date, expiry_date, status, currency, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .bind(id)
        .bind(new.policy_number)
        .bind(new.client_id)
        .bind(new.company_id)
        .bind(new.product_name)
        .bind(new.premium_amount)
        .bind(new.effective_date)
        .bind(new.expiry_date)
        .bind(new.status.as_str())
        .bind(new.currency)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|_| ()))
        .db()?;
        self.get(id, None)
            .await?
            .ok_or_else(|| super::DbError::Other(sqlx::Error::RowNotFound))
    }

    /// Policies matching `filter`, newest first.
    pub async fn list(
        &self,
        filter: &PolicyFilter,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Policy>> {
        let status = filter.status.map(PolicyStatus::as_str);
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Policy>(concat!(
                "SELECT ", policy_columns!(), " FROM policies p JOIN clients c ON c.id = p.client_id WHERE ",
                policy_filter!(), " ORDER BY p.created_at DESC, p.id DESC LIMIT $5 OFFSET $6"
            ))
            .bind(filter.owner_id)
            .bind(filter.client_id)
            .bind(filter.company_id)
            .bind(status)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar(concat!(
                "SELECT COUNT(*) FROM policies p JOIN clients c ON c.id = p.client_id WHERE ",
                policy_filter!()
            ))
            .bind(filter.owner_id)
            .bind(filter.client_id)
            .bind(filter.company_id)
            .bind(status)
            .fetch_one(pool)
            .await
            .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// A policy, if it exists and its client is `owner`'s (when given).
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<Policy>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Policy>(concat!(
            "SELECT ", policy_columns!(), " FROM policies p JOIN clients c ON c.id = p.client_id \
             WHERE p.id = $1 AND ($2 IS NULL OR c.owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Writes every field of an existing policy; `None` when it no longer exists.
    pub async fn update(&self, id: Uuid, fields: PolicyFields<'_>) -> DbResult<Option<Policy>> {
        let updated = on_db!(self.0, pool => sqlx::query(
            "UPDATE policies SET policy_number = $2, client_id = $3, company_id = $4, product_name = $5, \
             premium_amount = $6, effective_date = $7, expiry_date = $8, status = $9, currency = $10, \
             updated_at = $11 WHERE id = $1",
        )
        .bind(id)
        .bind(fields.policy_number)
        .bind(fields.client_id)
        .bind(fields.company_id)
        .bind(fields.product_name)
        .bind(fields.premium_amount)
        .bind(fields.effective_date)
        .bind(fields.expiry_date)
        .bind(fields.status.as_str())
        .bind(fields.currency)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .db()?;
        if updated == 0 {
            return Ok(None);
        }
        self.get(id, None).await
    }

    /// Deletes a policy; false when it does not exist or its client is not `owner`'s.
    /// Documents rendered for it stay, with their `policy_id` cleared.
    pub async fn delete(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query(
            "DELETE FROM policies WHERE id = $1 AND ($2 IS NULL OR client_id IN \
             (SELECT id FROM clients WHERE owner_id = $2))",
        )
        .bind(id)
        .bind(owner)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .db()
        .map(|n| n == 1)
    }

    /// A policy with its client and insurer, for a document's render context; `None` when
    /// the policy is gone.
    pub async fn parties(&self, id: Uuid) -> DbResult<Option<PolicyParties>> {
        let Some(policy) = self.get(id, None).await? else {
            return Ok(None);
        };
        let Some(client) = self.0.clients().get(policy.client_id, None).await? else {
            return Ok(None);
        };
        let company = match policy.company_id {
            Some(company_id) => self.0.companies().get(company_id).await?,
            None => None,
        };
        Ok(Some(PolicyParties {
            policy,
            client,
            company,
        }))
    }
}
