//! Sessions (one per login and device) and their rotating refresh tokens.
//!
//! A refresh token is stored only as its SHA-256. Each use revokes it and issues a child in
//! the same session; presenting a token that was already rotated means it leaked, so the
//! whole session is revoked (reuse detection). Access tokens carry the session id and are
//! refused once their session is revoked.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Db, DbResult, SqlxResultExt, on_db};
use crate::model::Session;

/// Where a login or a refresh came from.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub device_label: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was valid; a child token now replaces it.
    Rotated { user_id: Uuid, session_id: Uuid },
    /// The token had already been rotated: its session is now revoked.
    ReuseDetected { user_id: Uuid, session_id: Uuid },
    /// Unknown, expired, or its session is closed.
    Invalid,
}

pub struct Sessions<'a>(pub(super) &'a Db);

const INSERT_TOKEN: &str = "INSERT INTO refresh_tokens \
    (id, user_id, session_id, parent_id, token_hash, device_label, ip_address, user_agent, issued_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Revokes a session and all its tokens inside the transaction `$tx`; evaluates to true
/// when the session was open. A macro rather than a function: the body must compile for
/// each database's transaction type.
macro_rules! revoke_session_in {
    ($tx:expr, $session_id:expr, $now:expr) => {{
        let closed = sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind($session_id)
        .bind($now)
        .execute(&mut *$tx)
        .await
        .db()?
        .rows_affected()
            == 1;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL",
        )
        .bind($session_id)
        .bind($now)
        .execute(&mut *$tx)
        .await
        .db()?;
        closed
    }};
}

impl Sessions<'_> {
    /// Opens a session for a login and stores its first refresh token. Returns the
    /// session id.
    pub async fn open(
        &self,
        user_id: Uuid,
        token_hash: &str,
        expires_at: DateTime<Utc>,
        client: &ClientInfo,
    ) -> DbResult<Uuid> {
        let now = crate::now();
        let session_id = Uuid::now_v7();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            sqlx::query(
                "INSERT INTO auth_sessions (id, user_id, device_label, ip_address, user_agent, created_at, last_used_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
            )
            .bind(session_id)
            .bind(user_id)
            .bind(client.device_label.as_deref())
            .bind(client.ip_address.as_deref())
            .bind(client.user_agent.as_deref())
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .db()?;
            sqlx::query(INSERT_TOKEN)
                .bind(Uuid::now_v7())
                .bind(user_id)
                .bind(session_id)
                .bind(None::<Uuid>)
                .bind(token_hash)
                .bind(client.device_label.as_deref())
                .bind(client.ip_address.as_deref())
                .bind(client.user_agent.as_deref())
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
        });
        Ok(session_id)
    }

    /// Exchanges a refresh token for `new_hash`, detecting reuse. All in one transaction:
    /// of two concurrent uses of one token, exactly one rotates and the other is a reuse.
    pub async fn rotate(
        &self,
        token_hash: &str,
        new_hash: &str,
        new_expires_at: DateTime<Utc>,
        client: &ClientInfo,
    ) -> DbResult<RotateOutcome> {
        let now = crate::now();
        let outcome: DbResult<RotateOutcome> = on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let used: Option<(Uuid, Uuid, Uuid)> = sqlx::query_as(
                "UPDATE refresh_tokens SET revoked_at = $2 \
                 WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 \
                 RETURNING id, user_id, session_id",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .db()?;

            let Some((token_id, user_id, session_id)) = used else {
                let known: Option<(Uuid, Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
                    "SELECT user_id, session_id, revoked_at FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await
                .db()?;
                let outcome = match known {
                    Some((user_id, session_id, Some(_))) => {
                        let closed = revoke_session_in!(tx, session_id, now);
                        if closed {
                            RotateOutcome::ReuseDetected { user_id, session_id }
                        } else {
                            RotateOutcome::Invalid
                        }
                    }
                    _ => RotateOutcome::Invalid,
                };
                tx.commit().await.db()?;
                return self.forgetting(outcome);
            };

            let open = sqlx::query(
                "UPDATE auth_sessions SET last_used_at = $2, expires_at = $3, ip_address = $4, user_agent = $5 \
                 WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
            )
            .bind(session_id)
            .bind(now)
            .bind(new_expires_at)
            .bind(client.ip_address.as_deref())
            .bind(client.user_agent.as_deref())
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected()
                == 1;
            if !open {
                tx.rollback().await.db()?;
                return Ok(RotateOutcome::Invalid);
            }
            sqlx::query(INSERT_TOKEN)
                .bind(Uuid::now_v7())
                .bind(user_id)
                .bind(session_id)
                .bind(Some(token_id))
                .bind(new_hash)
                .bind(client.device_label.as_deref())
                .bind(client.ip_address.as_deref())
                .bind(client.user_agent.as_deref())
                .bind(now)
                .bind(new_expires_at)
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
            Ok(RotateOutcome::Rotated { user_id, session_id })
        });
        self.forgetting(outcome?)
    }

    /// Forgets the cached sessions of a user whose session a reuse just closed.
    fn forgetting(&self, outcome: RotateOutcome) -> DbResult<RotateOutcome> {
        if let RotateOutcome::ReuseDetected { user_id, .. } = outcome {
            self.0.session_cache().forget_user(user_id);
        }
        Ok(outcome)
    }

    /// Ends the session a refresh token belongs to (logout). Returns the user and session
    /// when a live session was closed.
    pub async fn revoke_by_token(&self, token_hash: &str) -> DbResult<Option<(Uuid, Uuid)>> {
        let now = crate::now();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let found: Option<(Uuid, Uuid)> =
                sqlx::query_as("SELECT user_id, session_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?;
            let closed = match found {
                Some((user_id, session_id)) => {
                    revoke_session_in!(tx, session_id, now).then_some((user_id, session_id))
                }
                None => None,
            };
            tx.commit().await.db()?;
            Ok(closed)
        })
        .inspect(|closed| {
            if let Some((user_id, _)) = closed {
                self.0.session_cache().forget_user(*user_id);
            }
        })
    }

    /// Ends one of the user's sessions; false when it is not theirs or already closed.
    pub async fn revoke(&self, user_id: Uuid, session_id: Uuid) -> DbResult<bool> {
        let now = crate::now();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let mine: Option<(Uuid,)> =
                sqlx::query_as("SELECT id FROM auth_sessions WHERE id = $1 AND user_id = $2")
                    .bind(session_id)
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?;
            let closed = match mine {
                Some(_) => revoke_session_in!(tx, session_id, now),
                None => false,
            };
            tx.commit().await.db()?;
            Ok(closed)
        })
        .inspect(|_| self.0.session_cache().forget_user(user_id))
    }

    /// Ends every session of a user. Returns how many were open.
    pub async fn revoke_all(&self, user_id: Uuid) -> DbResult<u64> {
        let now = crate::now();
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let closed = sqlx::query(
                "UPDATE auth_sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .db()?
            .rows_affected();
            sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(user_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
            Ok(closed)
        })
        .inspect(|_| self.0.session_cache().forget_user(user_id))
    }

    /// The user's open sessions, newest first.
    pub async fn list_open(&self, user_id: Uuid) -> DbResult<Vec<Session>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Session>(
            "SELECT id, user_id, device_label, ip_address, user_agent, created_at, expires_at, last_used_at \
             FROM auth_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY created_at DESC, id DESC",
        )
        .bind(user_id)
        .bind(crate::now())
        .fetch_all(pool)
        .await)
        .db()
    }
}
