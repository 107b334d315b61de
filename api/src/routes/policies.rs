//! `/api/v1/policies`: the clients' policies. A policy is visible to whoever sees its
//! client (its owner, managers and admins), so creating one on a client the caller cannot
//! see answers 404 "Client not found." (the original accepted any client). A PUT is merged
//! with the current policy before the rules are checked, so a partial update cannot leave
//! `expiry_date` before `effective_date`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use common::db::Page;
use common::db::policies::{PolicyFields, PolicyFilter, PolicyPatch};
use common::model::{Policy, PolicyStatus};
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::access::Scope;
use crate::service::{policies, record_change};

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
        currency: currency.unwrap_or(policies::DEFAULT_CURRENCY),
    };
    let policy = policies::create(&state, &user, fields).await?;
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
        owner_id: Scope::of(&user).owner(),
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
    Scope::of(&user).policy(&state.db, id).await.map(Json)
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
    let policy_number = body.policy_number.map(|s| s.trim().to_owned());
    let product_name = body.product_name.map(|s| s.trim().to_owned());
    let currency = body.currency.map(|s| s.trim().to_owned());
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
    let policy = policies::update(&state, &user, id, patch).await?;
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
    if !state
        .db
        .policies()
        .delete(id, Scope::of(&user).owner())
        .await?
    {
        return Err(not_found());
    }
    record_change(&state, &meta, &user, "policy_deleted", "policy", id).await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found() -> ApiError {
    ApiError::not_found("Policy not found.")
}
