//! The router: one module per resource, found from its URL.

pub mod audit;
pub mod auth;
pub mod batches;
pub mod clients;
pub mod companies;
pub mod documents;
pub mod ops;
pub mod policies;
pub mod templates;
pub mod users;
pub mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::AuthUser;
use crate::service::documents::Credential;
use crate::{AppState, middleware};

/// Every route, with the cross-cutting layers (see [`crate::middleware`] for their order).
pub fn router(state: AppState) -> Router {
    let (routes, api) = described_routes();
    routes
        .merge(crate::openapi::router(&api))
        .merge(crate::console::router())
        .fallback(|| async { ApiError::not_found("Not found.") })
        .layer(DefaultBodyLimit::max(state.settings.http.max_body_bytes))
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

/// Every route with its OpenAPI description: `routes!` registers both together.
pub fn described_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .nest("/auth", auth::router())
        .nest("/companies", companies::router())
        .nest("/clients", clients::router())
        .nest("/policies", policies::router())
        .nest("/templates", templates::router())
        .nest("/documents", documents::router())
        .nest("/document-batches", batches::router())
        .nest("/users", users::router())
        .nest("/audit-logs", audit::router())
        .nest("/webhooks", webhooks::router())
        .nest("/ops", ops::api_router());
    let (routes, mut description) = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .nest("/api/v1", api)
        .merge(ops::router())
        .split_for_parts();
    crate::openapi::conventions(&mut description);
    (routes, description)
}

/// CORS from `CORS_*`. A `*` entry allows any value; combined with credentials the
/// request's own value is mirrored, since browsers refuse a literal `*` with credentials.
fn cors(settings: &common::Settings) -> CorsLayer {
    let credentials = settings.http.cors.allow_credentials;
    let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
    let origin = if wildcard(&settings.http.cors.origins) {
        if credentials {
            AllowOrigin::mirror_request()
        } else {
            AllowOrigin::any()
        }
    } else {
        AllowOrigin::list(
            settings
                .http
                .cors
                .origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let methods = if wildcard(&settings.http.cors.allow_methods) {
        if credentials {
            AllowMethods::mirror_request()
        } else {
            AllowMethods::any()
        }
    } else {
        AllowMethods::list(
            settings
                .http
                .cors
                .allow_methods
                .iter()
                .filter_map(|m| m.parse::<Method>().ok()),
        )
    };
    let headers = if wildcard(&settings.http.cors.allow_headers) {
        if credentials {
            AllowHeaders::mirror_request()
        } else {
            AllowHeaders::any()
        }
    } else {
        AllowHeaders::list(
            settings
                .http
                .cors
                .allow_headers
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
///
/// Route queries embed it with `#[serde(flatten)]`, and a flattened struct receives query
/// values as strings: the numbers are therefore parsed from either form.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Pagination {
    /// Rows per page.
    #[serde(default = "default_limit", deserialize_with = "number")]
    #[param(minimum = 1, maximum = 200, default = 50)]
    pub limit: i64,
    /// Rows to skip.
    #[serde(default, deserialize_with = "number")]
    #[param(minimum = 0, default = 0)]
    pub offset: i64,
}

/// For `PATCH` bodies: tells an explicit `null` (`Some(None)`) from an absent field
/// (`None`, with `#[serde(default)]`).
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn default_limit() -> i64 {
    50
}

/// An integer given as a number or as the text of one.
fn number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Number;
    impl serde::de::Visitor<'_> for Number {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(E::custom)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
            v.parse()
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
        }
    }
    deserializer.deserialize_any(Number)
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TtlQuery {
    /// How long the link works, in seconds (at most `SIGNED_URL_MAX_TTL`).
    #[serde(default = "default_ttl")]
    #[param(minimum = 1, default = 300)]
    pub ttl_seconds: i64,
}

fn default_ttl() -> i64 {
    300
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkQuery {
    /// A signed link's expiry (Unix seconds).
    exp: Option<i64>,
    /// A signed link's signature, `<kid>.<base64url MAC>`.
    sig: Option<String>,
}

impl LinkQuery {
    /// The signed link, if the query carries one; else the bearer token's user, who must
    /// be allowed to see what is asked for.
    pub async fn credential(self, parts: &mut Parts, state: &AppState) -> ApiResult<Credential> {
        match (self.exp, self.sig) {
            (Some(exp), Some(sig)) => Ok(Credential::Link { exp, sig }),
            (None, None) => Ok(Credential::User(
                AuthUser::from_request_parts(parts, state).await?,
            )),
            _ => Err(ApiError::forbidden(
                "invalid_link",
                "The link is incomplete.",
            )),
        }
    }
}

/// Whether `If-None-Match` names `current` (or `*`).
pub fn unchanged(headers: &HeaderMap, current: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == current || candidate.trim() == "*")
}
