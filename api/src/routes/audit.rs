//! `/api/v1/audit-logs`: the audit trail for managers and admins, as pages of JSON or as
//! one CSV file.
//!
//! The export streams: it pages through the log by id (a keyset, so rows written while it
//! runs cannot shift a page) and writes each batch as it arrives, so memory stays bounded
//! however large the log is. Fields are quoted when they hold the delimiter, a quote or a
//! line break, and a field starting with `=`, `+`, `-` or `@` gets a `'` prefix so a
//! spreadsheet shows it as text instead of running it as a formula.
//!
//! Once a streamed answer has sent its status it cannot take it back, so the export settles
//! all it can before the first byte: the filters are parsed first (`AuditFilter::try_from`
//! below), and the first batch is read before the answer starts, so a failing query still
//! gets a JSON error. A batch that fails later ends the body without its final chunk (after
//! a grace that lets the rows already produced get out): the client sees a truncated
//! transfer and the log says why. (Rejected: reading the whole log first gives up bounded
//! memory; answering 200 and writing an error row into the CSV hands a spreadsheet a file
//! that looks complete.)

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use common::db::audit::AuditFilter;
use common::db::{Db, DbError, DbResult, Page};
use common::model::{AuditLog, Role};
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AuthUser, Json, Query};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(export))
}

/// How many rows the export reads per query.
const EXPORT_BATCH: i64 = 500;

/// How long a failed export holds its connection before cutting it, so that the rows
/// already produced (at most hyper's write buffer and one batch) reach the client.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// The filters both routes accept.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FilterQuery {
    action: Option<String>,
    object_type: Option<String>,
    action_contains: Option<String>,
    object_contains: Option<String>,
    user_id: Option<Uuid>,
    created_from: Option<DateTime<Utc>>,
    created_to: Option<DateTime<Utc>>,
}

impl TryFrom<FilterQuery> for AuditFilter {
    type Error = ApiError;

    /// Refuses, before any query, the filters a database would refuse or misread: a NUL
    /// character (Postgres cannot store one; SQLite's `LIKE` stops at it, so it would match
    /// the wrong rows) and a time outside RFC 3339's years 0000–9999 (Postgres refuses
    /// some; SQLite compares times as text, where `+10000-…` sorts before `2026-…`).
    fn try_from(q: FilterQuery) -> ApiResult<Self> {
        let text = |field: &str, value: Option<String>| match value {
            Some(v) if v.contains('\0') => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unstorable_text",
                format!("{field}: contains a character that cannot be stored (NUL)."),
            )),
            value => Ok(value.filter(|v| !v.is_empty())),
        };
        let time = |field: &str, value: Option<DateTime<Utc>>| match value {
            Some(t) if !(0..=9999).contains(&t.year()) => Err(ApiError::invalid(
                field,
                "the year must be between 0000 and 9999",
            )),
            value => Ok(value),
        };
        Ok(AuditFilter {
            action: text("action", q.action)?,
            object_type: text("object_type", q.object_type)?,
            action_contains: text("action_contains", q.action_contains)?,
            object_contains: text("object_contains", q.object_contains)?,
            user_id: q.user_id,
            created_from: time("created_from", q.created_from)?,
            created_to: time("created_to", q.created_to)?,
        })
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    filter: FilterQuery,
    #[serde(flatten)]
    page: ListPage,
}

/// `limit`/`offset` as strings: serde's `flatten` hands numbers to the inner struct as
/// text, so they are parsed here.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListPage {
    /// Rows per page, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// Rows to skip (default 0).
    #[param(value_type = Option<i64>, minimum = 0)]
    offset: Option<String>,
}

impl ListPage {
    fn checked(&self) -> ApiResult<(i64, i64)> {
        let parse = |field: &str, value: &Option<String>, default: i64| match value {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| ApiError::invalid(field, "must be an integer")),
        };
        crate::routes::Pagination {
            limit: parse("limit", &self.limit, 50)?,
            offset: parse("offset", &self.offset, 0)?,
        }
        .checked()
    }
}

#[utoipa::path(
    get, path = "/", tag = "audit", operation_id = "list_audit_logs",
    security(("bearer" = [])),
    params(FilterQuery, ListPage),
    responses((status = 200, description = "A page of entries, newest first (managers and admins).", body = Page<AuditLog>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Page<AuditLog>>> {
    user.require(Role::Manager)?;
    let (limit, offset) = query.page.checked()?;
    let filter = AuditFilter::try_from(query.filter)?;
    Ok(Json(state.db.audit().list(&filter, limit, offset).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ExportQuery {
    #[serde(flatten)]
    #[param(ignore)]
    filter: FilterQuery,
    /// `,` (default), `;`, `|`, or a tab (`tab` or `%09`).
    #[param(pattern = "^(,|;|\\||\t|tab)$")]
    delimiter: Option<String>,
    /// Whether to add the `audit_metadata` column (`true`, default, or `false`).
    #[param(pattern = "^(true|false|1|0)$")]
    include_metadata: Option<String>,
}

impl ExportQuery {
    /// The filter and the CSV's shape, or a 422 naming the field at fault.
    fn parse(self) -> ApiResult<(AuditFilter, Csv)> {
        let delimiter = match self.delimiter.as_deref() {
            None | Some(",") => b',',
            Some(";") => b';',
            Some("\t") | Some("tab") => b'\t',
            Some("|") => b'|',
            Some(_) => {
                return Err(ApiError::invalid(
                    "delimiter",
                    "must be one of ',', ';', tab or '|'",
                ));
            }
        };
        let include_metadata = match self.include_metadata.as_deref() {
            None | Some("true") | Some("1") => true,
            Some("false") | Some("0") => false,
            Some(_) => {
                return Err(ApiError::invalid(
                    "include_metadata",
                    "must be true or false",
                ));
            }
        };
        let csv = Csv {
            delimiter,
            include_metadata,
        };
        Ok((AuditFilter::try_from(self.filter)?, csv))
    }
}

#[utoipa::path(
    get, path = "/export", tag = "audit", operation_id = "export_audit_logs",
    security(("bearer" = [])),
    params(FilterQuery, ExportQuery),
    responses((status = 200, description = "Every matching entry as CSV, newest first, streamed.", content_type = "text/csv",
        body = String, headers(("Content-Disposition" = String))))
)]
async fn export(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    user.require(Role::Manager)?;
    let (filter, csv) = query.parse()?;
    let body = CsvExport::start(state.db.clone(), filter, csv).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=audit_logs.csv",
            ),
        ],
        body,
    )
        .into_response())
}

/// The export's body, batch by batch.
struct CsvExport {
    db: Db,
    filter: AuditFilter,
    csv: Csv,
}

impl CsvExport {
    /// Reads the first batch, then answers the body: the header and that batch, then the
    /// later batches as the client takes them. A failure before the first byte is the
    /// caller's error answer; one after it is logged and cuts the body short.
    async fn start(db: Db, filter: AuditFilter, csv: Csv) -> ApiResult<Body> {
        let export = CsvExport { db, filter, csv };
        let first = export.batch(None).await?;
        let mut head = export.csv.header();
        let next = export.write(&mut head, &first);
        let head = futures::stream::once(async move { Ok::<_, DbError>(Bytes::from(head)) });
        let rest = futures::stream::try_unfold((export, next), |(export, before)| async move {
            let Some(before) = before else {
                return Ok(None);
            };
            let (chunk, next) = export.later_batch(before).await?;
            Ok(Some((chunk, (export, next))))
        });
        Ok(Body::from_stream(head.chain(rest)))
    }

    /// The rows below `before` as CSV, and the next batch's keyset bound. A failure is
    /// logged at once but reported only after [`FLUSH_GRACE`]: a failing body makes hyper
    /// close the connection straight away, dropping what it has not written yet, which can
    /// be the status line itself.
    async fn later_batch(&self, before: Uuid) -> DbResult<(Bytes, Option<Uuid>)> {
        match self.batch(Some(before)).await {
            Ok(batch) => {
                let mut chunk = Vec::with_capacity(batch.len() * 160);
                let next = self.write(&mut chunk, &batch);
                Ok((Bytes::from(chunk), next))
            }
            Err(err) => {
                tracing::error!(
                    error = ?err,
                    "the audit export failed after it started; the client gets a truncated file"
                );
                tokio::time::sleep(FLUSH_GRACE).await;
                Err(err)
            }
        }
    }

    /// Up to [`EXPORT_BATCH`] matching rows with ids below `before`, newest first.
    async fn batch(&self, before: Option<Uuid>) -> DbResult<Vec<AuditLog>> {
        self.db
            .audit()
            .batch(&self.filter, before, EXPORT_BATCH)
            .await
    }

    /// Writes `batch` to `out`; returns the keyset bound of the next batch, or `None` when
    /// this one was the last (shorter than a full batch).
    fn write(&self, out: &mut Vec<u8>, batch: &[AuditLog]) -> Option<Uuid> {
        for row in batch {
            self.csv.write_row(out, row);
        }
        let full = batch.len() as i64 == EXPORT_BATCH;
        batch.last().filter(|_| full).map(|row| row.id)
    }
}

/// How the export writes CSV.
#[derive(Debug, Clone, Copy)]
struct Csv {
    delimiter: u8,
    include_metadata: bool,
}

impl Csv {
    const COLUMNS: [&'static str; 9] = [
        "id",
        "created_at",
        "user_id",
        "action",
        "object_type",
        "object_id",
        "ip_address",
        "user_agent",
        "request_id",
    ];

    fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut fields: Vec<&str> = Self::COLUMNS.to_vec();
        if self.include_metadata {
            fields.push("audit_metadata");
        }
        self.write_fields(&mut out, fields.into_iter());
        out
    }

    fn write_row(&self, out: &mut Vec<u8>, row: &AuditLog) {
        let id = row.id.to_string();
        let created_at = row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let user_id = row.user_id.map(|u| u.to_string()).unwrap_or_default();
        let metadata = row
            .audit_metadata
            .as_ref()
            .map(|m| m.0.to_string())
            .unwrap_or_default();
        let mut fields = vec![
            id.as_str(),
            created_at.as_str(),
            user_id.as_str(),
            row.action.as_str(),
            row.object_type.as_deref().unwrap_or(""),
            row.object_id.as_deref().unwrap_or(""),
            row.ip_address.as_deref().unwrap_or(""),
            row.user_agent.as_deref().unwrap_or(""),
            row.request_id.as_deref().unwrap_or(""),
        ];
        if self.include_metadata {
            fields.push(metadata.as_str());
        }
        self.write_fields(out, fields.into_iter());
    }

    /// One record, CRLF-terminated (RFC 4180).
    fn write_fields<'a>(&self, out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
        crate::service::csv::write_record(out, self.delimiter, fields);
    }

    #[cfg(test)]
    fn write_field(&self, out: &mut Vec<u8>, field: &str) {
        crate::service::csv::write_field(out, self.delimiter, field);
    }
}

#[cfg(test)]
mod tests {
    use super::Csv;

    fn field(delimiter: u8, value: &str) -> String {
        let mut out = Vec::new();
        Csv {
            delimiter,
            include_metadata: true,
        }
        .write_field(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field(b',', "plain"), "plain");
        assert_eq!(field(b',', "a,b"), "\"a,b\"");
        assert_eq!(field(b';', "a,b"), "a,b");
        assert_eq!(field(b';', "a;b"), "\"a;b\"");
        assert_eq!(field(b',', "say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field(b',', "two\nlines"), "\"two\nlines\"");
        assert_eq!(field(b'\t', "a\tb"), "\"a\tb\"");
    }

    #[test]
    fn formulas_are_neutralised() {
        assert_eq!(
            field(b',', "=HYPERLINK(\"x\")"),
            "\"'=HYPERLINK(\"\"x\"\")\""
        );
        assert_eq!(field(b',', "+1"), "\"'+1\"");
        assert_eq!(field(b',', "-1"), "\"'-1\"");
        assert_eq!(field(b',', "@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(field(b',', "a=b"), "a=b");
    }
}
