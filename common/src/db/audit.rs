//! The audit log: who did what, from where, under which request id.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::model::AuditLog;

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

/// The audit list's filters, every one optional and ANDed.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exact action.
    pub action: Option<String>,
    /// Exact object type.
    pub object_type: Option<String>,
    /// Case-insensitive substring of the action.
    pub action_contains: Option<String>,
    /// Case-insensitive substring of the object type or the object id.
    pub object_contains: Option<String>,
    pub user_id: Option<Uuid>,
    /// Inclusive lower bound on `created_at`.
    pub created_from: Option<DateTime<Utc>>,
    /// Inclusive upper bound on `created_at`.
    pub created_to: Option<DateTime<Utc>>,
}

/// A `LIKE` pattern matching `needle` anywhere, lowercased, with `\`, `%` and `_` escaped
/// so they match themselves (the SQL says `ESCAPE '\'`).
fn contains_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The filter's WHERE clause over `$1`…`$7`; `$8` is a keyset bound (ids below it) used
/// by the export's paging. Each condition is `$n IS NULL OR …`, so one statement serves
/// every combination on both databases.
macro_rules! audit_filter {
    () => {
        "($1 IS NULL OR action = $1) AND ($2 IS NULL OR object_type = $2) \
         AND ($3 IS NULL OR lower(action) LIKE $3 ESCAPE '\\') \
         AND ($4 IS NULL OR lower(COALESCE(object_type, '')) LIKE $4 ESCAPE '\\' \
              OR lower(COALESCE(object_id, '')) LIKE $4 ESCAPE '\\') \
         AND ($5 IS NULL OR user_id = $5) AND ($6 IS NULL OR created_at >= $6) \
         AND ($7 IS NULL OR created_at <= $7) AND ($8 IS NULL OR id < $8)"
    };
}

macro_rules! audit_columns {
    () => {
        "id, created_at, user_id, action, object_type, object_id, ip_address, user_agent, request_id, audit_metadata"
    };
}

/// Binds the filter's seven parameters and the keyset bound, in order.
macro_rules! bind_filter {
    ($query:expr, $filter:expr, $before:expr) => {
        $query
            .bind($filter.action.as_deref())
            .bind($filter.object_type.as_deref())
            .bind($filter.action_contains.as_deref().map(contains_pattern))
            .bind($filter.object_contains.as_deref().map(contains_pattern))
            .bind($filter.user_id)
            .bind($filter.created_from)
            .bind($filter.created_to)
            .bind($before)
    };
}

impl Audit<'_> {
    /// A page of entries matching `filter`, newest first (ids are time-ordered UUIDv7).
    pub async fn list(
        &self,
        filter: &AuditFilter,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<AuditLog>> {
        let none: Option<Uuid> = None;
        on_db!(self.0, pool => {
            let items = bind_filter!(
                sqlx::query_as::<_, AuditLog>(concat!(
                    "SELECT ", audit_columns!(), " FROM audit_logs WHERE ", audit_filter!(),
                    " ORDER BY id DESC LIMIT $9 OFFSET $10"
                )),
                filter,
                none
            )
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = bind_filter!(
                sqlx::query_scalar(concat!("SELECT COUNT(*) FROM audit_logs WHERE ", audit_filter!())),
                filter,
                none
            )
            .fetch_one(pool)
            .await
            .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// Up to `limit` entries matching `filter` with ids below `before`, newest first: the
    /// export pages through a large log with this keyset instead of loading it whole, and
    /// rows written meanwhile cannot shift a page.
    pub async fn batch(
        &self,
        filter: &AuditFilter,
        before: Option<Uuid>,
        limit: i64,
    ) -> DbResult<Vec<AuditLog>> {
        on_db!(self.0, pool => bind_filter!(
            sqlx::query_as::<_, AuditLog>(concat!(
                "SELECT ", audit_columns!(), " FROM audit_logs WHERE ", audit_filter!(),
                " ORDER BY id DESC LIMIT $9"
            )),
            filter,
            before
        )
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("Doc"), "%doc%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
