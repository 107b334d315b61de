//! Sessions: logging in (with the brute-force guard) and refreshing with rotation and
//! reuse detection. A session is a device: one row per login, its refresh token rotated
//! on every use, a rotated token presented again revoking the whole session.

use common::auth::{dummy_password_hash, new_refresh_token, refresh_token_hash, verify_password};
use common::db::audit::AuditEvent;
use common::db::sessions::{ClientInfo, RotateOutcome};
use common::limits::Spend;
use common::model::User;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::RequestMeta;

/// What a login presents.
pub struct Credentials<'a> {
    pub email: &'a str,
    pub password: String,
    /// Names the session in the caller's list of devices (at most 100 characters kept).
    pub device_label: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Opens a session for the account behind `credentials`: 401 for a wrong email or
/// password (the same answer, in the same time, for both), 403 for a disabled account, 429
/// once the IP or the account has spent its failed attempts.
pub async fn login(
    state: &AppState,
    meta: &RequestMeta,
    credentials: Credentials<'_>,
) -> ApiResult<TokenPair> {
    let email = credentials.email.trim().to_lowercase();
    let guard = LoginGuard::new(state, meta, &email);
    if let Err(refused) = guard.check().await {
        let metadata = serde_json::json!({"email": email, "reason": "rate_limited"});
        audit_user(state, meta, None, "login_failed", None, Some(metadata)).await;
        return Err(refused);
    }
    let user = state.db.users().find_by_email(&email).await?;
    // Unknown emails cost a hash check too, so timing does not tell which emails exist.
    let hash = user
        .as_ref()
        .map(|u| u.hashed_password.clone())
        .unwrap_or_else(|| dummy_password_hash().to_owned());
    let password_ok = verify_password(credentials.password, hash).await?;
    let Some(user) = user.filter(|_| password_ok) else {
        guard.count_failure().await;
        let metadata = serde_json::json!({"email": email});
        audit_user(state, meta, None, "login_failed", None, Some(metadata)).await;
        return Err(ApiError::unauthorized("Incorrect email or password."));
    };
    if !user.is_active {
        audit_user(
            state,
            meta,
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
            credentials
                .device_label
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
            refresh_expiry(state),
            &client,
        )
        .await?;
    audit_user(state, meta, Some(user.id), "login", Some(user.id), None).await;
    token_pair(state, &user, session_id, refresh_token)
}

/// Rotates a refresh token: the old one stops working, and presenting it again (reuse)
/// revokes the session.
pub async fn refresh(
    state: &AppState,
    meta: &RequestMeta,
    refresh_token: &str,
) -> ApiResult<TokenPair> {
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
            &refresh_token_hash(refresh_token),
            &refresh_token_hash(&new_token),
            refresh_expiry(state),
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
            audit_user(state, meta, Some(user.id), "refresh", Some(user.id), None).await;
            token_pair(state, &user, session_id, new_token)
        }
        RotateOutcome::ReuseDetected {
            user_id,
            session_id,
        } => {
            tracing::warn!(%user_id, %session_id, "refresh token reused: session revoked");
            let metadata = serde_json::json!({"session_id": session_id});
            audit_user(
                state,
                meta,
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
        if !settings.limits.login_attempts_enabled {
            return Vec::new();
        }
        let mut budgets = Vec::with_capacity(2);
        if let Some(ip) = &self.ip {
            budgets.push((
                "login_ip",
                ip.as_str(),
                settings.limits.login_attempts_ip_per_minute,
            ));
        }
        budgets.push((
            "login_account",
            self.email,
            settings.limits.login_attempts_account_per_minute,
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
    common::now() + state.settings.auth.refresh_token_ttl
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
pub async fn audit_user(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Option<Uuid>,
    action: &'static str,
    object_id: Option<Uuid>,
    metadata: Option<serde_json::Value>,
) {
    let event = AuditEvent {
        user_id,
        action,
        object_type: Some("user"),
        object_id: object_id.map(|id| id.to_string()),
        metadata,
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
}
