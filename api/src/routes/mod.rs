//! The router: one module per resource, found from its URL.

pub mod audit;
pub mod auth;
pub mod documents;
pub mod ops;
pub mod templates;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::{AppState, middleware};

/// Every route, with the cross-cutting layers (see [`crate::middleware`] for their order).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .nest("/auth", auth::router())
        .nest("/templates", templates::router())
        .nest("/documents", documents::router())
        .nest("/users", users::router())
        .nest("/audit-logs", audit::router());
    Router::new()
        .nest("/api/v1", api)
        .merge(ops::router())
        .fallback(|| async { ApiError::not_found("Not found.") })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit,
        ))
        .layer(axum::middleware::from_fn(middleware::json_errors))
        .layer(cors(&state.settings))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::security_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_id,
        ))
        .with_state(state)
}

/// CORS from `CORS_*`. A `*` entry allows any value; combined with credentials the
/// request's own value is mirrored, since browsers refuse a literal `*` with credentials.
fn cors(settings: &common::Settings) -> CorsLayer {
    let credentials = settings.cors_allow_credentials;
    let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
    let origin = if wildcard(&settings.cors_origins) {
        if credentials {
            AllowOrigin::mirror_request()
        } else {
            AllowOrigin::any()
        }
    } else {
        AllowOrigin::list(
            settings
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let methods = if wildcard(&settings.cors_allow_methods) {
        if credentials {
            AllowMethods::mirror_request()
        } else {
            AllowMethods::any()
        }
    } else {
        AllowMethods::list(
            settings
                .cors_allow_methods
                .iter()
                .filter_map(|m| m.parse::<Method>().ok()),
        )
    };
    let headers = if wildcard(&settings.cors_allow_headers) {
        if credentials {
            AllowHeaders::mirror_request()
        } else {
            AllowHeaders::any()
        }
    } else {
        AllowHeaders::list(
            settings
                .cors_allow_headers
                .iter()
                .filter_map(|h| h.parse().ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods(methods)
        .allow_headers(headers)
        .allow_credentials(credentials)
        .expose_headers([
            "x-request-id".parse().unwrap(),
            "x-response-time".parse().unwrap(),
            "x-checksum".parse().unwrap(),
            axum::http::header::LOCATION,
            axum::http::header::CONTENT_DISPOSITION,
        ])
}

/// `limit` and `offset` of list routes.
#[derive(Debug, serde::Deserialize)]
pub struct Pagination {
    #[serde(default = "default_limit")]
    pub limit: i64,
    #[serde(default)]
    pub offset: i64,
}

fn default_limit() -> i64 {
    50
}

impl Pagination {
    /// Checks the bounds: `limit` 1..=200, `offset` ≥ 0.
    pub fn checked(&self) -> Result<(i64, i64), ApiError> {
        if !(1..=200).contains(&self.limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 200"));
        }
        if self.offset < 0 {
            return Err(ApiError::invalid("offset", "must not be negative"));
        }
        Ok((self.limit, self.offset))
    }
}

/// Records an audit event with the request's IP, user agent and request id. An audit
/// failure is logged, never shown to the client: the action itself has happened.
pub async fn record(
    state: &AppState,
    meta: &crate::extract::RequestMeta,
    mut event: common::db::audit::AuditEvent,
) {
    event.ip_address = meta.ip_address.clone();
    event.user_agent = meta.user_agent.clone();
    event.request_id = meta.request_id.clone();
    if let Err(err) = state.db.audit().record(&event).await {
        tracing::error!(error = %err, action = event.action, "cannot write the audit log");
    }
}
