//! `/api/v1/clients`: a broker's clients. A client belongs to the user who created it;
//! agents see and change only their own, managers and admins all of them. Another agent's
//! client answers 404, like a missing one, so ids do not reveal what exists.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::db::clients::{ClientPatch, NewClient};
use common::db::{Constraint, DbResultExt, Page};
use common::model::Client;
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::access::Scope;
use crate::service::accounts::valid_email;
use crate::service::{check_text, record_change};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ClientCreate)]
struct CreateBody {
    #[schema(min_length = 1, max_length = 100)]
    first_name: String,
    #[schema(min_length = 1, max_length = 100)]
    last_name: String,
    email: Option<String>,
    #[schema(min_length = 1, max_length = 50)]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 1000)]
    address: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ClientUpdate)]
struct UpdateBody {
    #[schema(min_length = 1, max_length = 100)]
    first_name: Option<String>,
    #[schema(min_length = 1, max_length = 100)]
    last_name: Option<String>,
    email: Option<String>,
    #[schema(min_length = 1, max_length = 50)]
    phone: Option<String>,
    #[schema(min_length = 1, max_length = 1000)]
    address: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    #[serde(flatten)]
    #[param(ignore)]
    page: Pagination,
    /// A case-insensitive substring of a name, the email or the phone.
    q: Option<String>,
}

fn check_fields(body: &UpdateBody) -> ApiResult<()> {
    if let Some(first_name) = &body.first_name {
        check_text("first_name", first_name, 100)?;
    }
    if let Some(last_name) = &body.last_name {
        check_text("last_name", last_name, 100)?;
    }
    if let Some(email) = &body.email
        && !valid_email(email.trim())
    {
        return Err(ApiError::invalid("email", "is not a valid email address"));
    }
    if let Some(phone) = &body.phone {
        check_text("phone", phone, 50)?;
    }
    if let Some(address) = &body.address {
        check_text("address", address, 1000)?;
    }
    Ok(())
}

fn trimmed(value: Option<String>) -> Option<String> {
    value.map(|s| s.trim().to_owned())
}

#[utoipa::path(
    post, path = "/", tag = "clients", operation_id = "create_client",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "The new client.", body = Client),

    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<CreateBody>,
) -> ApiResult<impl IntoResponse> {
    let body = UpdateBody {
        first_name: Some(body.first_name),
        last_name: Some(body.last_name),
        email: body.email,
        phone: body.phone,
        address: body.address,
    };
    check_fields(&body)?;
    let (first_name, last_name) = (trimmed(body.first_name), trimmed(body.last_name));
    let (email, phone, address) = (
        trimmed(body.email),
        trimmed(body.phone),
        trimmed(body.address),
    );
    let client = state
        .db
        .clients()
        .create(NewClient {
            owner_id: user.id(),
            first_name: first_name.as_deref().unwrap_or_default(),
            last_name: last_name.as_deref().unwrap_or_default(),
            email: email.as_deref(),
            phone: phone.as_deref(),
            address: address.as_deref(),
        })
        .await?;
    record_change(&state, &meta, &user, "client_created", "client", client.id).await;
    Ok((StatusCode::CREATED, Json(client)))
}

#[utoipa::path(
    get, path = "/", tag = "clients", operation_id = "list_clients",
    security(("bearer" = [])),
    params(Pagination, ListQuery),
    responses((status = 200, description = "A page of clients (an agent sees their own).", body = Page<Client>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Page<Client>>> {
    let (limit, offset) = query.page.checked()?;
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    Ok(Json(
        state
            .db
            .clients()
            .list(Scope::of(&user).owner(), q, limit, offset)
            .await?,
    ))
}

#[utoipa::path(
    get, path = "/{id}", tag = "clients", operation_id = "get_client",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The client id.")),
    responses((status = 200, description = "The client.", body = Client))
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Client>> {
    Scope::of(&user).client(&state.db, id).await.map(Json)
}

#[utoipa::path(
    put, path = "/{id}", tag = "clients", operation_id = "update_client",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The client id.")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The changed client (absent fields stay as they are).", body = Client),

    )
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateBody>,
) -> ApiResult<Json<Client>> {
    check_fields(&body)?;
    let patch = ClientPatch {
        first_name: trimmed(body.first_name),
        last_name: trimmed(body.last_name),
        email: trimmed(body.email),
        phone: trimmed(body.phone),
        address: trimmed(body.address),
    };
    let client = state
        .db
        .clients()
        .update(id, Scope::of(&user).owner(), patch)
        .await?
        .ok_or_else(not_found)?;
    record_change(&state, &meta, &user, "client_updated", "client", id).await;
    Ok(Json(client))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "clients", operation_id = "delete_client",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The client id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "`client_has_policies`: delete its policies first.", body = ErrorBody),
    )
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let deleted = state
        .db
        .clients()
        .delete(id, Scope::of(&user).owner())
        .await
        .on_constraint(Constraint::PoliciesClientIdFkey, |_| {
            ApiError::conflict(
                "client_has_policies",
                "The client still has policies; delete them first.",
            )
        })?;
    if !deleted {
        return Err(not_found());
    }
    record_change(&state, &meta, &user, "client_deleted", "client", id).await;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found() -> ApiError {
    ApiError::not_found("Client not found.")
}
