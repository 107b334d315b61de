//! The API's one error type.
//!
//! Every failure a handler reports becomes `{"detail": "...", "code": "..."}` (plus
//! `"errors": [{field, message}]` for validation) with the status the contract names.
//! Database and other internal errors are logged with their whole chain and answer a
//! generic 500: the client never sees internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::db::DbError;
use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    retry_after: Option<u64>,
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// A short English sentence for people.
    detail: &'a str,
    /// A stable identifier for programs, e.g. `validation_error`, `not_found`.
    code: &'a str,
    /// On validation errors: each invalid field and why.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "not_authenticated", detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422 naming the field at fault.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            format!("{field}: {message}"),
        );
        err.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
        err
    }

    /// 422 naming every field at fault; `errors` must not be empty.
    pub fn invalid_fields(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [] => "The request is invalid.".to_owned(),
            [only] => format!("{}: {}", only.field, only.message),
            [first, rest @ ..] => format!(
                "{}: {} (and {} more invalid fields)",
                first.field,
                first.message,
                rest.len()
            ),
        };
        let mut err = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", detail);
        err.errors = errors;
        err
    }

    /// 503 with `Retry-After`: something the request needs is busy or down for now.
    pub fn unavailable(code: &'static str, detail: impl Into<String>, retry_after: u64) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail);
        err.retry_after = Some(retry_after);
        err
    }

    /// 503 `database_unavailable` with `Retry-After`: the database does not answer. Logged
    /// as a warning: the outage is the operator's to see, not a defect of the request.
    pub fn database_unavailable(err: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "the database is unavailable");
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "The database is unavailable; try again shortly.",
        );
        err.retry_after = Some(DATABASE_RETRY_AFTER_SECONDS);
        err
    }

    /// 429 with `Retry-After`: a rate limit refused the request.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("Too many requests; try again in {retry_after} s."),
        );
        err.retry_after = Some(retry_after);
        err
    }

    /// Logs an unexpected failure and answers a generic 500.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        let err = err.into();
        tracing::error!(error = ?err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error.",
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The answer to a database error no call site mapped: call sites name the constraints
/// they expect (`on_constraint`), so a refusal getting here is one nobody foresaw.
impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Conflict(_) => ApiError::conflict("conflict", "This resource already exists."),
            // Handlers check references first; getting here means one changed under the
            // request (deleted concurrently, or still in use): the client's to retry.
            DbError::ForeignKey(_) => ApiError::conflict(
                "reference_changed",
                "Something this request refers to was changed or is still in use; try again.",
            ),
            // The request's fault, not the server's.
            DbError::UnstorableText(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unstorable_text",
                "A text contains a character that cannot be stored (such as NUL).",
            ),
            DbError::Unavailable(err) => ApiError::database_unavailable(&err),
            other => ApiError::internal(other),
        }
    }
}

/// An error from deeper down (a service step with context): a database outage anywhere in
/// its chain still answers 503, anything else 500.
impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        if common::db::is_outage(&err) {
            ApiError::database_unavailable(&format!("{err:#}"))
        } else {
            ApiError::internal(err)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            detail: &self.detail,
            code: self.code,
            errors: &self.errors,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    /// The detail the client reads (for a command line, say).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The `Retry-After` of a database outage: long enough not to hammer a recovering server,
/// short enough that clients come back soon after it does.
const DATABASE_RETRY_AFTER_SECONDS: u64 = 5;

/// Handler results.
pub type ApiResult<T> = Result<T, ApiError>;
