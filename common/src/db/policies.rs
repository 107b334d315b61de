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

/// Every column of a new policy.
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

/// A partial update; `None` leaves a field as it is.
///
/// The API checks the patch merged with the policy it read, but writes only the patch: a
/// concurrent update of other fields stays, and the table's own
/// [`Constraint::PoliciesCheck`](super::Constraint::PoliciesCheck) checks the dates again
/// on the row as it is when the write lands, so two updates that are each valid on the
/// row they read (one moving the effective date, the other the expiry) cannot together
/// store an expiry before the effective date: the second is refused.
#[derive(Debug, Default)]
pub struct PolicyPatch<'a> {
    pub policy_number: Option<&'a str>,
    pub client_id: Option<Uuid>,
    pub company_id: Option<Uuid>,
    pub product_name: Option<&'a str>,
    pub premium_amount: Option<i64>,
    pub effective_date: Option<DateTime<Utc>>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub status: Option<PolicyStatus>,
    pub currency: Option<&'a str>,
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

    /// The policy numbers of those of `ids` that exist and whose client is `owner`'s (when
    /// given): a batch checks all its items' policies at once.
    pub async fn numbers(
        &self,
        ids: &[Uuid],
        owner: Option<Uuid>,
    ) -> DbResult<Vec<(Uuid, String)>> {
        match self.0.pool() {
            super::Pool::Postgres(pool) => sqlx::query_as(
                "SELECT p.id, p.policy_number FROM policies p JOIN clients c ON c.id = p.client_id \
                 WHERE p.id = ANY($1) AND ($2::uuid IS NULL OR c.owner_id = $2)",
            )
            .bind(ids)
            .bind(owner)
            .fetch_all(pool)
            .await
            .db(),
            // In process: one indexed lookup per policy costs microseconds.
            super::Pool::Sqlite(pool) => {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    let number: Option<(Uuid, String)> = sqlx::query_as(
                        "SELECT p.id, p.policy_number FROM policies p JOIN clients c ON c.id = p.client_id \
                         WHERE p.id = $1 AND ($2 IS NULL OR c.owner_id = $2)",
                    )
                    .bind(id)
                    .bind(owner)
                    .fetch_optional(pool)
                    .await
                    .db()?;
                    found.extend(number);
                }
                Ok(found)
            }
        }
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

    /// Applies a partial update in one statement (see [`PolicyPatch`]); `None` when the
    /// policy does not exist or its client is not `owner`'s (when given).
    pub async fn update(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
        patch: PolicyPatch<'_>,
    ) -> DbResult<Option<Policy>> {
        let updated = on_db!(self.0, pool => sqlx::query(
            "UPDATE policies SET policy_number = COALESCE($3, policy_number), client_id = COALESCE($4, client_id), \
             company_id = COALESCE($5, company_id), product_name = COALESCE($6, product_name), \
             premium_amount = COALESCE($7, premium_amount), effective_date = COALESCE($8, effective_date), \
             expiry_date = COALESCE($9, expiry_date), status = COALESCE($10, status), \
             currency = COALESCE($11, currency), updated_at = $12 \
             WHERE id = $1 AND ($2 IS NULL OR client_id IN (SELECT id FROM clients WHERE owner_id = $2))",
        )
        .bind(id)
        .bind(owner)
        .bind(patch.policy_number)
        .bind(patch.client_id)
        .bind(patch.company_id)
        .bind(patch.product_name)
        .bind(patch.premium_amount)
        .bind(patch.effective_date)
        .bind(patch.expiry_date)
        .bind(patch.status.map(PolicyStatus::as_str))
        .bind(patch.currency)
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
