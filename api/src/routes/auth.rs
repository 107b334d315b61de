//! `/api/v1/auth`: registration, login, refresh with rotation and reuse detection, logout,
//! revocation, the caller's profile and their devices (sessions).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::auth::{
    dummy_password_hash, hash_password, new_refresh_token, refresh_token_hash, verify_password,
};
use common::db::audit::AuditEvent;
use common::db::sessions::{ClientInfo, RotateOutcome};
use common::db::users::NewUser;
use common::db::{Constraint, DbResultExt};
use common::limits::Spend;
use common::model::{Role, Session, User};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, RequestMeta};

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

/// The public view of a user.
#[derive(Serialize, ToSchema)]
pub struct UserOut {
    id: Uuid,
    email: String,
    full_name: Option<String>,
    role: Role,
    is_active: bool,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl From<User> for UserOut {
    fn from(u: User) -> Self {
        UserOut {
            id: u.id,
            email: u.email,
            full_name: u.full_name,
            role: u.role,
            is_active: u.is_active,
            created_at: u.created_at,
        }
    }
}

/// A deliberately simple check: one `@`, something on each side, a dot in the domain, no
/// spaces. Deliverability is the mail server's business.
pub fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
}

/// The rules every new account follows, whether registered or created by an admin: a
/// plausible email, a password of `PASSWORD_MIN_LENGTH`, a name of at most 255 characters.
/// Returns the trimmed email and name (a blank name is none).
pub fn validate_account<'a>(
    state: &AppState,
    email: &'a str,
    password: &str,
    full_name: Option<&'a str>,
) -> ApiResult<(&'a str, Option<&'a str>)> {
    let email = email.trim();
    if !valid_email(email) {
        return Err(ApiError::invalid("email", "is not a valid email address"));
    }
    let min = state.settings.password_min_length;
    if password.chars().count() < min {
        return Err(ApiError::invalid(
            "password",
            format!("must be at least {min} characters long"),
        ));
    }
    let full_name = full_name.map(str::trim).filter(|n| !n.is_empty());
    if full_name.is_some_and(|n| n.chars().count() > 255) {
        return Err(ApiError::invalid(
            "full_name",
            "must be at most 255 characters long",
        ));
    }
    Ok((email, full_name))
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
    let (email, full_name) = validate_account(
        &state,
        &body.email,
        &body.password,
        body.full_name.as_deref(),
    )?;
    let hash = hash_password(body.password).await?;
    let user = state
        .db
        .users()
        .create(NewUser {
            email,
            full_name,
            hashed_password: &hash,
            role: Role::Agent,
            is_active: true,
        })
        .await
        .on_constraint(Constraint::UsersEmailKey, |_| {
            ApiError::conflict("email_taken", "This email is already registered.")
        })?;
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

#[derive(Serialize, ToSchema)]
struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
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
    let email = body.email.trim().to_lowercase();
    let guard = LoginGuard::new(&state, &meta, &email);
    if let Err(refused) = guard.check().await {
        let metadata = serde_json::json!({"email": email, "reason": "rate_limited"});
        audit(&state, &meta, None, "login_failed", None, Some(metadata)).await;
        return Err(refused);
    }
    let user = state.db.users().find_by_email(&email).await?;
    // Unknown emails cost a hash check too, so timing does not tell which emails exist.
    let hash = user
        .as_ref()
        .map(|u| u.hashed_password.clone())
        .unwrap_or_else(|| dummy_password_hash().to_owned());
    let password_ok = verify_password(body.password, hash).await?;
    let Some(user) = user.filter(|_| password_ok) else {
        guard.count_failure().await;
        let metadata = serde_json::json!({"email": email});
        audit(&state, &meta, None, "login_failed", None, Some(metadata)).await;
        return Err(ApiError::unauthorized("Incorrect email or password."));
    };
    if !user.is_active {
        audit(
            &state,
            &meta,
            Some(user.id),
            "login_failed",
            Some(user.id),
            Some(serde_json::json!({"reason": "disabled"})),
        )
        .await;
        return Err(ApiError::forbidden(
            "account_disabled",
            "This account is disabled.",
        ));
    }
    let client = ClientInfo {
        device_label: Some(
            body.device_label
                .map(|l| l.chars().take(100).collect())
                .unwrap_or_else(|| "login".to_owned()),
        ),
        ip_address: meta.ip_address.clone(),
        user_agent: meta.user_agent.clone(),
    };
    let refresh_token = new_refresh_token();
    let session_id = state
        .db
        .sessions()
        .open(
            user.id,
            &refresh_token_hash(&refresh_token),
            refresh_expiry(&state),
            &client,
        )
        .await?;
    audit(&state, &meta, Some(user.id), "login", Some(user.id), None).await;
    Ok(Json(token_pair(&state, &user, session_id, refresh_token)?))
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
    let invalid = || ApiError::unauthorized("The refresh token is invalid, expired or revoked.");
    let new_token = new_refresh_token();
    let client = ClientInfo {
        device_label: None,
        ip_address: meta.ip_address.clone(),
        user_agent: meta.user_agent.clone(),
    };
    let outcome = state
        .db
        .sessions()
        .rotate(
            &refresh_token_hash(&body.refresh_token),
            &refresh_token_hash(&new_token),
            refresh_expiry(&state),
            &client,
        )
        .await?;
    match outcome {
        RotateOutcome::Rotated {
            user_id,
            session_id,
        } => {
            let user = state
                .db
                .users()
                .find_by_id(user_id)
                .await?
                .ok_or_else(invalid)?;
            if !user.is_active {
                state.db.sessions().revoke(user.id, session_id).await?;
                return Err(invalid());
            }
            audit(&state, &meta, Some(user.id), "refresh", Some(user.id), None).await;
            Ok(Json(token_pair(&state, &user, session_id, new_token)?))
        }
        RotateOutcome::ReuseDetected {
            user_id,
            session_id,
        } => {
            tracing::warn!(%user_id, %session_id, "refresh token reused: session revoked");
            let metadata = serde_json::json!({"session_id": session_id});
            audit(
                &state,
                &meta,
                Some(user_id),
                "refresh_reuse_detected",
                Some(user_id),
                Some(metadata),
            )
            .await;
            Err(invalid())
        }
        RotateOutcome::Invalid => Err(invalid()),
    }
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

/// The login brute-force guard (`LOGIN_ATTEMPTS_*`): failed attempts per IP and per
/// account.
///
/// Only failures count: a user who logs in successfully many times is never locked out,
/// and a shared office IP is not blocked by its users' normal logins. Once either budget
/// is spent, every attempt is refused with 429 *before* the password is checked, so a
/// locked-out guesser cannot learn whether a guess was right. Attempts on unknown emails
/// count against that email, so probing for accounts is throttled the same way.
struct LoginGuard<'a> {
    state: &'a AppState,
    ip: Option<String>,
    email: &'a str,
}

impl<'a> LoginGuard<'a> {
    fn new(state: &'a AppState, meta: &RequestMeta, email: &'a str) -> Self {
        LoginGuard {
            state,
            ip: meta.ip_address.clone(),
            email,
        }
    }

    /// The budgets this attempt falls under: (scope, key, per minute).
    fn budgets(&self) -> Vec<(&'static str, &str, u32)> {
        let settings = &self.state.settings;
        if !settings.login_attempts_enabled {
            return Vec::new();
        }
        let mut budgets = Vec::with_capacity(2);
        if let Some(ip) = &self.ip {
            budgets.push((
                "login_ip",
                ip.as_str(),
                settings.login_attempts_ip_per_minute,
            ));
        }
        budgets.push((
            "login_account",
            self.email,
            settings.login_attempts_account_per_minute,
        ));
        budgets
    }

    /// Refuses (429) when the IP or the account has no failed attempt left this minute.
    async fn check(&self) -> ApiResult<()> {
        for (scope, key, per_minute) in self.budgets() {
            self.state
                .rate_limit(scope, key, per_minute, Spend::Peek)
                .await?;
        }
        Ok(())
    }

    /// Spends one failed attempt of the IP and of the account.
    async fn count_failure(&self) {
        for (scope, key, per_minute) in self.budgets() {
            // Already full: the next attempt's check refuses; nothing more to record.
            let _ = self
                .state
                .limiter
                .check(&format!("{scope}:{key}"), per_minute, Spend::Take)
                .await;
        }
    }
}

fn refresh_expiry(state: &AppState) -> chrono::DateTime<chrono::Utc> {
    common::now() + state.settings.refresh_token_ttl
}

fn token_pair(
    state: &AppState,
    user: &User,
    session_id: Uuid,
    refresh_token: String,
) -> ApiResult<TokenPair> {
    Ok(TokenPair {
        access_token: state.tokens.issue(user.id, user.role, session_id)?,
        refresh_token,
        token_type: "bearer",
        expires_in: state.tokens.ttl().as_secs(),
    })
}

/// Records a user-related event. An audit failure is logged, never shown to the client.
async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Option<Uuid>,
    action: &'static str,
    object_id: Option<Uuid>,
    metadata: Option<serde_json::Value>,
) {
    crate::routes::record(
        state,
        meta,
        AuditEvent {
            user_id,
            action,
            object_type: Some("user"),
            object_id: object_id.map(|id| id.to_string()),
            metadata,
            ..Default::default()
        },
    )
    .await;
}
