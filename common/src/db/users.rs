//! Users.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, Row};
use uuid::Uuid;

use super::session_cache::Cached;
use super::{Db, DbResult, SqlxResultExt, on_db};
use crate::model::{Role, User};

macro_rules! columns {
    () => {
        "id, email, full_name, hashed_password, role, is_active, created_at"
    };
}

/// The fields of a new user.
pub struct NewUser<'a> {
    pub email: &'a str,
    pub full_name: Option<&'a str>,
    pub hashed_password: &'a str,
    pub role: Role,
    pub is_active: bool,
}

pub struct Users<'a>(pub(super) &'a Db);

impl Users<'_> {
    /// Inserts a user; a taken email is refused by
    /// [`Constraint::UsersEmailKey`](super::Constraint::UsersEmailKey). Emails are stored
    /// lowercased so lookups ignore case.
    pub async fn create(&self, new: NewUser<'_>) -> DbResult<User> {
        let now = crate::now();
        let sql = concat!(
            "INSERT INTO users (id, email, full_name, hashed_password, role, is_active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING ",
            columns!(),
            ""
        );
        on_db!(self.0, pool => sqlx::query_as::<_, User>(sql)
            .bind(Uuid::now_v7())
            .bind(new.email.to_lowercase())
            .bind(new.full_name)
            .bind(new.hashed_password)
            .bind(new.role.as_str())
            .bind(new.is_active)
            .bind(now)
            .fetch_one(pool)
            .await)
        .db()
    }

    pub async fn find_by_email(&self, email: &str) -> DbResult<Option<User>> {
        let sql = concat!("SELECT ", columns!(), " FROM users WHERE email = $1");
        on_db!(self.0, pool => sqlx::query_as::<_, User>(sql)
            .bind(email.to_lowercase())
            .fetch_optional(pool)
            .await)
        .db()
    }

    pub async fn find_by_id(&self, id: Uuid) -> DbResult<Option<User>> {
        let sql = concat!("SELECT ", columns!(), " FROM users WHERE id = $1");
        on_db!(self.0, pool => sqlx::query_as::<_, User>(sql)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .db()
    }

    /// The user behind an access token, provided the token's session is still open:
    /// revoking a session or a device ends its access tokens at once, not at their expiry.
    /// Answered from the [session cache](super::session_cache) when it can be, so an
    /// authenticated request usually costs no query.
    pub async fn find_for_session(
        &self,
        user_id: Uuid,
        session_id: Uuid,
    ) -> DbResult<Option<User>> {
        let cache = self.0.session_cache();
        let generation = match cache.get(user_id, session_id) {
            Cached::Hit(user) => return Ok(Some(user)),
            Cached::Miss(generation) => generation,
        };
        let sql = "SELECT u.id, u.email, u.full_name, u.hashed_password, u.role, u.is_active, u.created_at, \
                   s.expires_at AS session_expires_at \
                   FROM users u JOIN auth_sessions s ON s.user_id = u.id \
                   WHERE u.id = $1 AND s.id = $2 AND s.revoked_at IS NULL AND s.expires_at > $3";
        let found: Option<(User, DateTime<Utc>)> = on_db!(self.0, pool => {
            let row = sqlx::query(sql)
                .bind(user_id)
                .bind(session_id)
                .bind(crate::now())
                .fetch_optional(pool)
                .await
                .db()?;
            row.map(|row| Ok((User::from_row(&row)?, row.try_get("session_expires_at")?)))
                .transpose()
                .db()?
        });
        Ok(found.map(|(user, expires_at)| {
            // A disabled account is not cached: its sessions are being closed.
            if user.is_active {
                cache.store(generation, session_id, &user, expires_at);
            }
            user
        }))
    }

    /// Gives an existing user a role and a new password (used by `create-admin` on an
    /// email that already exists).
    pub async fn promote(&self, id: Uuid, role: Role, hashed_password: &str) -> DbResult<User> {
        let sql = concat!(
            "UPDATE users SET role = $2, hashed_password = $3, is_active = $4, updated_at = $5 \
             WHERE id = $1 RETURNING ",
            columns!(),
            ""
        );
        on_db!(self.0, pool => sqlx::query_as::<_, User>(sql)
            .bind(id)
            .bind(role.as_str())
            .bind(hashed_password)
            .bind(true)
            .bind(crate::now())
            .fetch_one(pool)
            .await)
        .db()
        .inspect(|user| self.0.session_cache().forget_user(user.id))
    }

    /// Activates or deactivates an account; false when the user does not exist.
    pub async fn set_active(&self, id: Uuid, is_active: bool) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("UPDATE users SET is_active = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(is_active)
            .bind(crate::now())
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1))
        .db()
        .inspect(|_| self.0.session_cache().forget_user(id))
    }
}

/// The fields an admin may change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    /// `Some(None)` clears the name.
    pub full_name: Option<Option<String>>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

impl Users<'_> {
    /// A page of users, oldest first (ids are time-ordered).
    pub async fn list(&self, limit: i64, offset: i64) -> DbResult<super::Page<User>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM users ORDER BY id LIMIT $1 OFFSET $2"
        );
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, User>(sql)
                .bind(limit)
                .bind(offset)
                .fetch_all(pool)
                .await
                .db()?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
                .fetch_one(pool)
                .await
                .db()?;
            Ok(super::Page { items, total, limit, offset })
        })
    }

    /// Applies `changes` in one statement; `None` when the user does not exist.
    pub async fn update(&self, id: Uuid, changes: &UserChanges) -> DbResult<Option<User>> {
        let sql = concat!(
            "UPDATE users SET \
             full_name = CASE WHEN $2 THEN $3 ELSE full_name END, \
             role = COALESCE($4, role), \
             is_active = COALESCE($5, is_active), \
             updated_at = $6 \
             WHERE id = $1 RETURNING ",
            columns!(),
            ""
        );
        on_db!(self.0, pool => sqlx::query_as::<_, User>(sql)
            .bind(id)
            .bind(changes.full_name.is_some())
            .bind(changes.full_name.clone().flatten())
            .bind(changes.role.map(|r| r.as_str()))
            .bind(changes.is_active)
            .bind(crate::now())
            .fetch_optional(pool)
            .await)
        .db()
        .inspect(|_| self.0.session_cache().forget_user(id))
    }
}
