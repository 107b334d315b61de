//! `/api/v1/policies`: the clients' policies. A policy is visible to whoever sees its
//! client (its owner, managers and admins), so creating one on a client the caller cannot
//! see answers 404 "Client not found." (the original accepted any client). A PUT is merged
//! with the current policy before the rules are checked, so a partial update cannot leave
//! `expiry_date` before `effective_date`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use common::db::policies::{PolicyFields, PolicyFilter, PolicyPatch};
use common::db::{Constraint, DbError, Page};
use common::model::{Policy, PolicyStatus};
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::clients::owner_scope;
use crate::routes::{Pagination, check_text, record_change};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PolicyCreate)]
struct CreateBody {
    #[schema(min_length = 1, max_length = 100)]
    policy_number: String,
    client_id: Uuid,
    company_id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 255)]
    product_name: String,
    #[schema(minimum = 0)]
    premium_amount: i64,
    effective_date: DateTime<Utc>,
    expiry_date: DateTime<Utc>,
    status: Option<PolicyStatus>,
    /// ISO 4217, three capitals; `XAF` when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = PolicyUpdate)]
struct UpdateBody {
    #[schema(min_length = 1, max_length = 100)]
    policy_number: Option<String>,
    client_id: Option<Uuid>,
    company_id: Option<Uuid>,
    #[schema(min_length = 1, max_length = 255)]
    product_name: Option<String>,
    #[schema(minimum = 0)]
    premium_amount: Option<i64>,
    effective_date: Option<DateTime<Utc>>,
    expiry_date: Option<DateTime<Utc>>,
    status: Option<PolicyStatus>,
    /// ISO 4217, three capitals; `XAF` when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    client_id: Option<Uuid>,
    company_id: Option<Uuid>,
    status: Option<PolicyStatus>,
}

/// The currency new policies get when the request names none.
const DEFAULT_CURRENCY: &str = "XAF";

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
    crate::routes::clients::visible(state, user, fields.client_id).await?;
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

#[utoipa::path(
    post, path = "/", tag = "policies", operation_id = "create_policy",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 404, description = "The client or company named does not exist (or the client is not the caller's).", body = ErrorBody),
        (status = 201, description = "The new policy.", body = Policy),
        (status = 409, description = "`policy_exists`: the number is taken.", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    let currency = body.currency.as_deref().map(str::trim);
    let fields = PolicyFields {
        policy_number: body.policy_number.trim(),
        client_id: body.client_id,
        company_id: body.company_id,
        product_name: body.product_name.trim(),
        premium_amount: body.premium_amount,
        effective_date: body.effective_date,
        expiry_date: body.expiry_date,
        status: body.status.unwrap_or(PolicyStatus::Active),
        currency: currency.unwrap_or(DEFAULT_CURRENCY),
    };
    check(&state, &user, &fields).await?;
    let policy = state
        .db
        .policies()
        .create(fields)
        .await
        .map_err(write_error)?;
    record_change(&state, &meta, &user, "policy_created", "policy", policy.id).await;
    Ok((StatusCode::CREATED, Json(policy)))
}

#[utoipa::path(
    get, path = "/", tag = "policies", operation_id = "list_policies",
    security(("bearer" = [])),
    params(Pagination, ListQuery),
    responses((status = 200, description = "A page of policies (an agent sees their clients').", body = Page<Policy>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Page<Policy>>> {
    let (limit, offset) = query.page.checked()?;
    let filter = PolicyFilter {
        owner_id: owner_scope(&user),
        client_id: query.client_id,
        company_id: query.company_id,
        status: query.status,
    };
    Ok(Json(
        state.db.policies().list(&filter, limit, offset).await?,
    ))
}

#[utoipa::path(
    get, path = "/{id}", tag = "policies", operation_id = "get_policy",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The policy id.")),
    responses((status = 200, description = "The policy.", body = Policy))
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Policy>> {
    visible(&state, &user, id).await.map(Json)
}

#[utoipa::path(
    put, path = "/{id}", tag = "policies", operation_id = "update_policy",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The policy id.")),
    request_body = UpdateBody,
    responses(
        (status = 404, description = "The client or company named does not exist (or the client is not the caller's).", body = ErrorBody),
        (status = 200, description = "The changed policy (absent fields stay as they are).", body = Policy),
        (status = 409, description = "`policy_exists`: the number is taken.", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateBody>,
) -> ApiResult<Json<Policy>> {
    let current = visible(&state, &user, id).await?;
    let policy_number = body.policy_number.map(|s| s.trim().to_owned());
    let product_name = body.product_name.map(|s| s.trim().to_owned());
    let currency = body.currency.map(|s| s.trim().to_owned());
    let fields = PolicyFields {
        policy_number: policy_number.as_deref().unwrap_or(&current.policy_number),
        client_id: body.client_id.unwrap_or(current.client_id),
        company_id: body.company_id.or(current.company_id),
        product_name: product_name.as_deref().unwrap_or(&current.product_name),
        premium_amount: body.premium_amount.unwrap_or(current.premium_amount),
        effective_date: body.effective_date.unwrap_or(current.effective_date),
        expiry_date: body.expiry_date.unwrap_or(current.expiry_date),
        status: body.status.unwrap_or(current.status),
        currency: currency.as_deref().unwrap_or(&current.currency),
    };
    check(&state, &user, &fields).await?;
    let patch = PolicyPatch {
        policy_number: policy_number.as_deref(),
        client_id: body.client_id,
        company_id: body.company_id,
        product_name: product_name.as_deref(),
        premium_amount: body.premium_amount,
        effective_date: body.effective_date,
        expiry_date: body.expiry_date,
        status: body.status,
        currency: currency.as_deref(),
    };
    let policy = state
        .db
        .policies()
        .update(id, owner_scope(&user), patch)
        .await
        .map_err(write_error)?
        .ok_or_else(not_found)?;
    record_change(&state, &meta, &user, "policy_updated", "policy", id).await;
    Ok(Json(policy))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "policies", operation_id = "delete_policy",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The policy id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "`reference_changed`: something still refers to it.", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    if !state.db.policies().delete(id, owner_scope(&user)).await? {
        return Err(not_found());
    }
    record_change(&state, &meta, &user, "policy_deleted", "policy", id).await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found() -> ApiError {
    ApiError::not_found("Policy not found.")
}

/// The policy, if `user` may see it (through its client's owner); 404 otherwise.
pub async fn visible(state: &AppState, user: &AuthUser, id: Uuid) -> ApiResult<Policy> {
    state
        .db
        .policies()
        .get(id, owner_scope(user))
        .await?
        .ok_or_else(not_found)
}
