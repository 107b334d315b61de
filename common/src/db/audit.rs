//! The audit log: who did what, from where, under which request id.

use uuid::Uuid;

use super::{Db, DbResult, SqlxResultExt, on_db};

/// One event to record.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub user_id: Option<Uuid>,
    pub action: &'static str,
    pub object_type: Option<&'static str>,
    pub object_id: Option<String>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
}

pub struct Audit<'a>(pub(super) &'a Db);

impl Audit<'_> {
    pub async fn record(&self, event: &AuditEvent) -> DbResult<()> {
        on_db!(self.0, pool => sqlx::query(
            "INSERT INTO audit_logs (id, user_id, action, object_type, object_id, ip_address, user_agent, request_id, audit_metadata, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(Uuid::now_v7())
        .bind(event.user_id)
        .bind(event.action)
        .bind(event.object_type)
        .bind(event.object_id.as_deref())
        .bind(event.ip_address.as_deref())
        .bind(event.user_agent.as_deref())
        .bind(event.request_id.as_deref())
        .bind(event.metadata.as_ref().map(sqlx::types::Json))
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .db()
        .map(|_| ())
    }
}
