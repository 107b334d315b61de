//! `/api/v1/users`: the admins' view of accounts. Only admins may list, create (with any
//! role), read and change users. Deactivating an account also ends its sessions, so its
//! refresh tokens die at once; its access tokens are refused by [`AuthUser`] on the next
//! request (403 `account_disabled`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::db::Page;
use common::db::audit::AuditEvent;
use common::model::Role;
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::accounts::{self, NewAccount, UserOut};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update))
}

#[utoipa::path(
    get, path = "/", tag = "users", operation_id = "list_users",
    security(("bearer" = [])),
    params(Pagination),
    responses((status = 200, description = "A page of users (admins only).", body = Page<UserOut>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<UserOut>>> {
    user.require(Role::Admin)?;
    let (limit, offset) = page.checked()?;
    let page = state.db.users().list(limit, offset).await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(UserOut::from).collect(),
        total: page.total,
        limit: page.limit,
        offset: page.offset,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UserCreate)]
struct CreateBody {
    email: String,
    password: String,
    full_name: Option<String>,
    #[serde(default = "default_role")]
    #[schema(required = false)]
    role: Role,
    #[serde(default = "default_active")]
    #[schema(required = false)]
    is_active: bool,
}

fn default_role() -> Role {
    Role::Agent
}

fn default_active() -> bool {
    true
}

#[utoipa::path(
    post, path = "/", tag = "users", operation_id = "create_user",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new user, with any role.", body = UserOut),
        (status = 409, description = "`email_taken`.", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    admin: AuthUser,
    Json(body): Json<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    admin.require(Role::Admin)?;
    let account = NewAccount {
        email: &body.email,
        password: body.password,
        full_name: body.full_name.as_deref(),
        role: body.role,
        is_active: body.is_active,
    };
    let user =
        accounts::create(&state.db, state.settings.auth.password_min_length, account).await?;
    let metadata = serde_json::json!({
        "email": user.email,
        "role": user.role,
        "is_active": user.is_active,
    });
    audit(&state, &meta, &admin, "user_created", user.id, metadata).await;
    Ok((StatusCode::CREATED, Json(UserOut::from(user))))
}

#[utoipa::path(
    get, path = "/{id}", tag = "users", operation_id = "get_user",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user id.")),
    responses((status = 200, description = "The user.", body = UserOut))
)]
async fn read(
    State(state): State<AppState>,
    admin: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<UserOut>> {
    admin.require(Role::Admin)?;
    let user = state
        .db
        .users()
        .find_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found."))?;
    Ok(Json(UserOut::from(user)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = UserUpdate)]
struct UpdateBody {
    /// Absent: unchanged; `null` or blank: cleared.
    #[serde(default, deserialize_with = "crate::routes::present")]
    full_name: Option<Option<String>>,
    role: Option<Role>,
    is_active: Option<bool>,
}

#[utoipa::path(
    patch, path = "/{id}", tag = "users", operation_id = "update_user",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user id.")),
    request_body = UpdateBody,
    responses((status = 200, description = "The changed user. Deactivation ends their sessions at once.", body = UserOut))
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    admin: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateBody>,
) -> ApiResult<Json<UserOut>> {
    admin.require(Role::Admin)?;
    let changes = accounts::AccountChanges {
        full_name: body.full_name,
        role: body.role,
        is_active: body.is_active,
    };
    let user = accounts::update(&state, &meta, &admin, id, changes).await?;
    Ok(Json(UserOut::from(user)))
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    admin: &AuthUser,
    action: &'static str,
    user_id: Uuid,
    metadata: serde_json::Value,
) {
    let event = AuditEvent {
        user_id: Some(admin.id()),
        action,
        object_type: Some("user"),
        object_id: Some(user_id.to_string()),
        metadata: Some(metadata),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
}
