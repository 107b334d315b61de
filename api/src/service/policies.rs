//! Policies: what a policy must be, checked on the whole policy (a new one, or a partial
//! update merged with the row it changes), and written so that a concurrent change cannot
//! slip past the checks: the update writes only the fields named, and the table's own
//! CHECK re-checks the dates on the row as it is when the write lands.

use common::db::policies::{PolicyFields, PolicyPatch};
use common::db::{Constraint, DbError};
use common::model::Policy;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::service::access::Scope;
use crate::service::check_text;

/// The currency new policies get when the request names none.
pub const DEFAULT_CURRENCY: &str = "XAF";

/// Checks a complete policy (a new one, or the result of a partial update) and that its
/// client and company are reachable by `user`.
async fn check(state: &AppState, user: &AuthUser, fields: &PolicyFields<'_>) -> ApiResult<()> {
    check_text("policy_number", fields.policy_number, 100)?;
    check_text("product_name", fields.product_name, 255)?;
    if fields.premium_amount < 0 {
        return Err(ApiError::invalid("premium_amount", "must not be negative"));
    }
    if fields.expiry_date <= fields.effective_date {
        return Err(ApiError::invalid(
            "expiry_date",
            "must be after effective_date",
        ));
    }
    if fields.currency.len() != 3 || !fields.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(
            "currency",
            "must be three uppercase letters (ISO 4217)",
        ));
    }
    Scope::of(user).client(&state.db, fields.client_id).await?;
    if let Some(company_id) = fields.company_id {
        company_exists(state, company_id).await?;
    }
    Ok(())
}

async fn company_exists(state: &AppState, id: Uuid) -> ApiResult<()> {
    match state.db.companies().get(id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("Company not found.")),
    }
}

/// Maps the database's refusals: a duplicate number, a client or company deleted between
/// the checks and the write, or dates that a concurrent update made invalid together.
fn write_error(err: DbError) -> ApiError {
    match err.constraint() {
        Some(Constraint::PoliciesPolicyNumberKey) => {
            ApiError::conflict("policy_exists", "A policy with this number already exists.")
        }
        Some(Constraint::PoliciesClientIdFkey | Constraint::PoliciesCompanyIdFkey) => {
            ApiError::not_found("Client or company not found.")
        }
        Some(Constraint::PoliciesCheck) => {
            ApiError::invalid("expiry_date", "must be after effective_date")
        }
        _ => err.into(),
    }
}

/// Creates a policy on a client `user` reaches.
pub async fn create(
    state: &AppState,
    user: &AuthUser,
    fields: PolicyFields<'_>,
) -> ApiResult<Policy> {
    check(state, user, &fields).await?;
    state
        .db
        .policies()
        .create(fields)
        .await
        .map_err(write_error)
}

/// Changes the fields `patch` names on a policy `user` reaches; the rules are checked on
/// the policy as it will be.
pub async fn update(
    state: &AppState,
    user: &AuthUser,
    id: Uuid,
    patch: PolicyPatch<'_>,
) -> ApiResult<Policy> {
    let scope = Scope::of(user);
    let current = scope.policy(&state.db, id).await?;
    let merged = PolicyFields {
        policy_number: patch.policy_number.unwrap_or(&current.policy_number),
        client_id: patch.client_id.unwrap_or(current.client_id),
        company_id: patch.company_id.or(current.company_id),
        product_name: patch.product_name.unwrap_or(&current.product_name),
        premium_amount: patch.premium_amount.unwrap_or(current.premium_amount),
        effective_date: patch.effective_date.unwrap_or(current.effective_date),
        expiry_date: patch.expiry_date.unwrap_or(current.expiry_date),
        status: patch.status.unwrap_or(current.status),
        currency: patch.currency.unwrap_or(&current.currency),
    };
    check(state, user, &merged).await?;
    state
        .db
        .policies()
        .update(id, scope.owner(), patch)
        .await
        .map_err(write_error)?
        .ok_or_else(|| ApiError::not_found("Policy not found."))
}
