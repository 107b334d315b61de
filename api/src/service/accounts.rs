//! Accounts: the one way an account is made, whether an agent registers, an admin creates
//! a user, or an operator runs `create-admin` (or sets `BOOTSTRAP_ADMIN_*`).

use common::Db;
use common::db::audit::AuditEvent;
use common::db::users::{NewUser, UserChanges};
use common::db::{Constraint, DbResultExt};
use common::model::{Role, User};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, RequestMeta};

/// The public view of a user.
#[derive(Serialize, utoipa::ToSchema)]
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

/// A full name as stored: trimmed, a blank one is none, at most 255 characters.
pub fn full_name(name: Option<&str>) -> ApiResult<Option<&str>> {
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 255) {
        return Err(ApiError::invalid(
            "full_name",
            "must be at most 255 characters long",
        ));
    }
    Ok(name)
}

/// Who a new account is for.
pub struct NewAccount<'a> {
    pub email: &'a str,
    pub password: String,
    pub full_name: Option<&'a str>,
    pub role: Role,
    pub is_active: bool,
}

/// The rules every new account follows: a plausible email, a password of
/// `min_password` characters, a name of at most 255 characters.
fn check_password(password: &str, min_password: usize) -> ApiResult<()> {
    if password.chars().count() < min_password {
        return Err(ApiError::invalid(
            "password",
            format!("must be at least {min_password} characters long"),
        ));
    }
    Ok(())
}

/// Creates an account; 409 `email_taken` when the email is registered already.
pub async fn create(db: &Db, min_password: usize, account: NewAccount<'_>) -> ApiResult<User> {
    let email = account.email.trim();
    if !valid_email(email) {
        return Err(ApiError::invalid("email", "is not a valid email address"));
    }
    check_password(&account.password, min_password)?;
    let full_name = full_name(account.full_name)?;
    let hash = common::auth::hash_password(account.password).await?;
    db.users()
        .create(NewUser {
            email,
            full_name,
            hashed_password: &hash,
            role: account.role,
            is_active: account.is_active,
        })
        .await
        .on_constraint(Constraint::UsersEmailKey, |_| {
            ApiError::conflict("email_taken", "This email is already registered.")
        })
}

/// Creates an admin, or makes an existing user an active admin with this password (the
/// `create-admin` command and the bootstrap admin).
pub async fn create_or_promote_admin(
    db: &Db,
    min_password: usize,
    email: &str,
    password: &str,
    full_name: Option<&str>,
) -> ApiResult<User> {
    let Some(existing) = db.users().find_by_email(email.trim()).await? else {
        let account = NewAccount {
            email,
            password: password.to_owned(),
            full_name,
            role: Role::Admin,
            is_active: true,
        };
        return create(db, min_password, account).await;
    };
    check_password(password, min_password)?;
    let hash = common::auth::hash_password(password.to_owned()).await?;
    Ok(db.users().promote(existing.id, Role::Admin, &hash).await?)
}

/// What an admin may change on an account.
pub struct AccountChanges {
    /// Absent: unchanged; `Some(None)` or blank: cleared.
    pub full_name: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

/// An admin changes an account. An admin cannot lock themselves out (and so cannot remove
/// the last admin by mistake). Deactivating an account also ends its sessions, so its
/// refresh tokens die at once. The audit entry lists each change with its old value.
pub async fn update(
    state: &AppState,
    meta: &RequestMeta,
    admin: &AuthUser,
    id: Uuid,
    changes: AccountChanges,
) -> ApiResult<User> {
    let before = state
        .db
        .users()
        .find_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found."))?;
    // An admin cannot lock themselves out (and so cannot remove the last admin by mistake).
    if id == admin.id() {
        if changes.is_active == Some(false) {
            return Err(ApiError::invalid(
                "is_active",
                "you cannot deactivate yourself",
            ));
        }
        if changes.role.is_some_and(|r| r != Role::Admin) {
            return Err(ApiError::invalid("role", "you cannot demote yourself"));
        }
    }
    let full_name = match &changes.full_name {
        Some(name) => Some(full_name(name.as_deref())?.map(str::to_owned)),
        None => None,
    };
    let changes = UserChanges {
        full_name,
        role: changes.role,
        is_active: changes.is_active,
    };
    let after = state
        .db
        .users()
        .update(id, &changes)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found."))?;
    let mut changed = serde_json::Map::new();
    if before.full_name != after.full_name {
        changed.insert(
            "full_name".into(),
            serde_json::json!({"from": before.full_name, "to": after.full_name}),
        );
    }
    if before.role != after.role {
        changed.insert(
            "role".into(),
            serde_json::json!({"from": before.role, "to": after.role}),
        );
    }
    if before.is_active != after.is_active {
        changed.insert(
            "is_active".into(),
            serde_json::json!({"from": before.is_active, "to": after.is_active}),
        );
    }
    let mut metadata = serde_json::json!({ "changes": changed });
    if !after.is_active {
        // Ends the refresh tokens of a deactivated account; done even when it was already
        // inactive, in case a session survived an earlier race.
        let sessions = state.db.sessions().revoke_all(id).await?;
        metadata["sessions_revoked"] = sessions.into();
    }
    let event = AuditEvent {
        user_id: Some(admin.id()),
        action: "user_updated",
        object_type: Some("user"),
        object_id: Some(id.to_string()),
        metadata: Some(metadata),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
    Ok(after)
}
