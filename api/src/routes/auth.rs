//! `/api/v1/auth`: registration, login, refresh with rotation and reuse detection, logout,
//! revocation, the caller's profile and their devices (sessions).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::auth::refresh_token_hash;
use common::model::{Role, Session};
use serde::Deserialize;
use uuid::Uuid;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, RequestMeta};
use crate::service::accounts::{self, NewAccount, UserOut};
use crate::service::sessions::{self, TokenPair, audit_user as audit};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(revoke))
        .routes(routes!(revoke_all))
        .routes(routes!(me))
        .routes(routes!(devices))
        .routes(routes!(delete_device))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = RegisterRequest)]
struct RegisterBody {
    email: String,
    password: String,
    full_name: Option<String>,
    role: Option<Role>,
}

#[utoipa::path(
    post, path = "/register", tag = "auth", operation_id = "register",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "The new agent account.", body = UserOut),
        (status = 403, description = "`role_not_allowed`: registration creates agents only.", body = ErrorBody),
        (status = 409, description = "`email_taken`.", body = ErrorBody),
    )
)]
async fn register(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RegisterBody>,
) -> ApiResult<impl IntoResponse> {
    if body.role.is_some_and(|r| r != Role::Agent) {
        return Err(ApiError::forbidden(
            "role_not_allowed",
            "Registration creates agents; an admin creates other roles through /api/v1/users.",
        ));
    }
    let account = NewAccount {
        email: &body.email,
        password: body.password,
        full_name: body.full_name.as_deref(),
        role: Role::Agent,
        is_active: true,
    };
    let user =
        accounts::create(&state.db, state.settings.auth.password_min_length, account).await?;
    audit(
        &state,
        &meta,
        Some(user.id),
        "user_created",
        Some(user.id),
        None,
    )
    .await;
    Ok((StatusCode::CREATED, Json(UserOut::from(user))))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = LoginRequest)]
struct LoginBody {
    email: String,
    password: String,
    device_label: Option<String>,
}

#[utoipa::path(
    post, path = "/login", tag = "auth", operation_id = "login",
    request_body = LoginBody,
    responses(
        (status = 200, description = "A new session's tokens.", body = TokenPair),
        (status = 401, description = "Incorrect email or password.", body = ErrorBody),
        (status = 403, description = "`account_disabled`.", body = ErrorBody),
    )
)]
async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<LoginBody>,
) -> ApiResult<Json<TokenPair>> {
    let credentials = sessions::Credentials {
        email: &body.email,
        password: body.password,
        device_label: body.device_label,
    };
    Ok(Json(sessions::login(&state, &meta, credentials).await?))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = RefreshRequest)]
struct RefreshBody {
    refresh_token: String,
}

#[utoipa::path(
    post, path = "/refresh", tag = "auth", operation_id = "refresh",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "Rotated tokens; the old refresh token stops working (reusing it revokes the session).", body = TokenPair),
        (status = 401, description = "The refresh token is invalid, expired or revoked.", body = ErrorBody),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RefreshBody>,
) -> ApiResult<Json<TokenPair>> {
    Ok(Json(
        sessions::refresh(&state, &meta, &body.refresh_token).await?,
    ))
}

/// Logout and revoke: owning the refresh token is the proof; always 204 so the answer
/// does not tell whether a token existed.
#[utoipa::path(
    post, path = "/logout", tag = "auth", operation_id = "logout",
    request_body = RefreshBody,
    responses((status = 204, description = "The refresh token's session is closed (204 whether or not it existed)."))
)]
async fn logout(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RefreshBody>,
) -> ApiResult<StatusCode> {
    if let Some((user_id, session_id)) = state
        .db
        .sessions()
        .revoke_by_token(&refresh_token_hash(&body.refresh_token))
        .await?
    {
        let metadata = serde_json::json!({"session_id": session_id});
        audit(
            &state,
            &meta,
            Some(user_id),
            "logout",
            Some(user_id),
            Some(metadata),
        )
        .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/revoke", tag = "auth", operation_id = "revoke",
    request_body = RefreshBody,
    responses((status = 204, description = "Same as logout."))
)]
async fn revoke(
    state: State<AppState>,
    meta: RequestMeta,
    body: Json<RefreshBody>,
) -> ApiResult<StatusCode> {
    logout(state, meta, body).await
}

#[utoipa::path(
    post, path = "/revoke-all", tag = "auth", operation_id = "revoke_all",
    security(("bearer" = [])),
    responses((status = 204, description = "Every session of the caller is closed; their access tokens stop working."))
)]
async fn revoke_all(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
) -> ApiResult<StatusCode> {
    let count = state.db.sessions().revoke_all(user.id()).await?;
    let metadata = serde_json::json!({"sessions": count});
    audit(
        &state,
        &meta,
        Some(user.id()),
        "revoke_all",
        Some(user.id()),
        Some(metadata),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/me", tag = "auth", operation_id = "me",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller.", body = UserOut))
)]
async fn me(user: AuthUser) -> Json<UserOut> {
    Json(UserOut::from(user.user))
}

#[utoipa::path(
    get, path = "/devices", tag = "auth", operation_id = "list_devices",
    security(("bearer" = [])),
    responses((status = 200, description = "The caller's open sessions (one per login).", body = Vec<Session>))
)]
async fn devices(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Vec<Session>>> {
    Ok(Json(state.db.sessions().list_open(user.id()).await?))
}

#[utoipa::path(
    delete, path = "/devices/{id}", tag = "auth", operation_id = "revoke_device",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The device (session) id.")),
    responses((status = 204, description = "The session is closed; its tokens stop working."))
)]
async fn delete_device(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    if !state.db.sessions().revoke(user.id(), id).await? {
        return Err(ApiError::not_found("Device not found."));
    }
    let metadata = serde_json::json!({"session_id": id});
    audit(
        &state,
        &meta,
        Some(user.id()),
        "device_revoked",
        Some(user.id()),
        Some(metadata),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
