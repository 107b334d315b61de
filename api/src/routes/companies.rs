//! `/api/v1/companies`: insurers. Any signed-in user reads them (the original left them
//! public); managers and admins write them; only admins delete. The `api_key` is
//! write-only: the model never serialises it, so no answer can echo it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::db::Page;
use common::db::companies::{CompanyPatch, NewCompany};
use common::db::{Constraint, DbError};
use common::model::{Company, Role};
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::{check_text, record_change};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CompanyCreate)]
struct CreateBody {
    #[schema(min_length = 1, max_length = 255)]
    name: String,
    #[schema(min_length = 1, max_length = 50)]
    code: String,
    #[serde(default)]
    api_mode: bool,
    #[schema(min_length = 1, max_length = 500)]
    api_endpoint: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    api_key: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = CompanyUpdate)]
struct UpdateBody {
    #[schema(min_length = 1, max_length = 255)]
    name: Option<String>,
    #[schema(min_length = 1, max_length = 50)]
    code: Option<String>,
    api_mode: Option<bool>,
    #[schema(min_length = 1, max_length = 500)]
    api_endpoint: Option<String>,
    #[schema(min_length = 1, max_length = 255)]
    api_key: Option<String>,
}

fn check_optional(field: &str, value: Option<&str>, max: usize) -> ApiResult<()> {
    match value {
        Some(value) => check_text(field, value, max),
        None => Ok(()),
    }
}

fn check_fields(
    name: Option<&str>,
    code: Option<&str>,
    api_endpoint: Option<&str>,
    api_key: Option<&str>,
) -> ApiResult<()> {
    check_optional("name", name, 255)?;
    check_optional("code", code, 50)?;
    check_optional("api_endpoint", api_endpoint, 500)?;
    check_optional("api_key", api_key, 255)
}

fn duplicate(err: DbError) -> ApiError {
    match err.constraint() {
        Some(Constraint::CompaniesNameKey | Constraint::CompaniesCodeKey) => ApiError::conflict(
            "company_exists",
            "A company with this name or code already exists.",
        ),
        _ => err.into(),
    }
}

#[utoipa::path(
    post, path = "/", tag = "companies", operation_id = "create_company",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new company.", body = Company),
        (status = 409, description = "`company_exists`: the name or code is taken.", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    user.require(Role::Manager)?;
    check_fields(
        Some(&body.name),
        Some(&body.code),
        body.api_endpoint.as_deref(),
        body.api_key.as_deref(),
    )?;
    let company = state
        .db
        .companies()
        .create(NewCompany {
            name: body.name.trim(),
            code: body.code.trim(),
            api_mode: body.api_mode,
            api_endpoint: body.api_endpoint.as_deref().map(str::trim),
            api_key: body.api_key.as_deref(),
        })
        .await
        .map_err(duplicate)?;
    record_change(
        &state,
        &meta,
        &user,
        "company_created",
        "company",
        company.id,
    )
    .await;
    Ok((StatusCode::CREATED, Json(company)))
}

#[utoipa::path(
    get, path = "/", tag = "companies", operation_id = "list_companies",
    security(("bearer" = [])),
    params(Pagination),
    responses((status = 200, description = "A page of companies (any logged-in user; `api_key` is never shown).", body = Page<Company>))
)]
async fn list(
    State(state): State<AppState>,
    _user: AuthUser,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<Company>>> {
    let (limit, offset) = page.checked()?;
    Ok(Json(state.db.companies().list(limit, offset).await?))
}

#[utoipa::path(
    get, path = "/{id}", tag = "companies", operation_id = "get_company",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The company id.")),
    responses((status = 200, description = "The company.", body = Company))
)]
async fn read(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Company>> {
    state
        .db
        .companies()
        .get(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("Company not found."))
}

#[utoipa::path(
    put, path = "/{id}", tag = "companies", operation_id = "update_company",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The company id.")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The changed company (absent fields stay as they are).", body = Company),
        (status = 409, description = "`company_exists`: the name or code is taken.", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateBody>,
) -> ApiResult<Json<Company>> {
    user.require(Role::Manager)?;
    check_fields(
        body.name.as_deref(),
        body.code.as_deref(),
        body.api_endpoint.as_deref(),
        body.api_key.as_deref(),
    )?;
    let patch = CompanyPatch {
        name: body.name.map(|s| s.trim().to_owned()),
        code: body.code.map(|s| s.trim().to_owned()),
        api_mode: body.api_mode,
        api_endpoint: body.api_endpoint.map(|s| s.trim().to_owned()),
        api_key: body.api_key,
    };
    let company = state
        .db
        .companies()
        .update(id, patch)
        .await
        .map_err(duplicate)?
        .ok_or_else(|| ApiError::not_found("Company not found."))?;
    record_change(&state, &meta, &user, "company_updated", "company", id).await;
    Ok(Json(company))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "companies", operation_id = "delete_company",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The company id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "`reference_changed`: policies still refer to it.", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    user.require(Role::Admin)?;
    if !state.db.companies().delete(id).await? {
        return Err(ApiError::not_found("Company not found."));
    }
    record_change(&state, &meta, &user, "company_deleted", "company", id).await;
    Ok(StatusCode::NO_CONTENT)
}
