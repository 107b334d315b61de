//! What every answer goes through, outermost first:
//!
//! 1. [`request_id`]: takes the client's request id (header `REQUEST_ID_HEADER`) or makes
//!    one, stores it for handlers and the job, and echoes it on the answer.
//! 2. [`observe`]: one log line and the HTTP metrics per request, labelled by route
//!    template, plus `X-Response-Time`.
//! 3. [`security_headers`]: `nosniff`, frame options, referrer policy, CSP and HSTS.
//! 4. CORS (tower-http), then [`json_errors`], which gives the JSON error shape to the
//!    answers produced outside handlers (405, 413 from the body limit, …).
//! 5. [`rate_limit`]: the generic per-IP limiter, when enabled.
//!
//! Because the rate limits and every error are produced inside these layers, a 429 or a
//! 5xx carries the same headers as a 200.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use common::limits::Spend;
use common::telemetry::{HttpLabels, RouteLabels};
use tracing::{Instrument, Level};

use crate::AppState;
use crate::error::ApiError;

/// The id of the request being served, as given by the client or generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a client's request id when it is short printable ASCII, otherwise makes one.
pub async fn request_id(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header_name = &state.request_id_header;
    let id = req
        .headers()
        .get(header_name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = next.run(req).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(header_name.clone(), value);
    }
    response
}

/// Logs the request, records its metrics and adds `X-Response-Time`.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let mut response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();

    if let Ok(value) = HeaderValue::from_str(&format!("{:.1}ms", elapsed.as_secs_f64() * 1000.0)) {
        response.headers_mut().insert("x-response-time", value);
    }
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.to_string(),
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.to_string(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());

    let ms = elapsed.as_millis() as u64;
    if ms >= state.settings.http.warn_ms {
        tracing::warn!(%method, %route, status, ms, "slow request");
    } else if route.starts_with("/health") || route == "/metrics" {
        tracing::event!(Level::DEBUG, %method, %route, status, ms, "request");
    } else {
        tracing::event!(Level::INFO, %method, %route, status, ms, "request");
    }
    response
}

/// Adds the configured security headers to every answer.
pub async fn security_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in state.security_headers.iter() {
        headers.insert(name.clone(), value.clone());
    }
    response
}

/// The security headers the settings ask for, computed once at start-up.
pub fn security_header_list(
    settings: &common::Settings,
) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    let mut list = vec![(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    )];
    let optional = [
        (
            header::X_FRAME_OPTIONS,
            settings.http.security.frame_options.as_deref(),
        ),
        (
            header::REFERRER_POLICY,
            settings.http.security.referrer_policy.as_deref(),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            settings.http.security.csp.as_deref(),
        ),
        (
            header::STRICT_TRANSPORT_SECURITY,
            settings
                .http
                .security
                .hsts
                .then_some("max-age=63072000; includeSubDomains; preload"),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            let value = HeaderValue::from_str(value).map_err(|_| {
                anyhow::anyhow!("{name} setting {value:?} is not a valid header value")
            })?;
            list.push((name, value));
        }
    }
    Ok(list)
}

/// The generic limiter (`RATE_LIMIT_ENABLED`): requests per minute per client IP and route
/// group, `AUTH_RATE_LIMIT_PER_MINUTE` on `/api/v1/auth/*` and
/// `DEFAULT_RATE_LIMIT_PER_MINUTE` on everything else. Health checks and metrics are
/// exempt, so a busy client cannot make a replica look dead to its orchestrator.
///
/// It sits inside the request-id, logging and security-header layers, so its 429 carries
/// `X-Request-ID`, the security headers and CORS like any other answer. The IP is the
/// peer's address: behind a reverse proxy every client shares the proxy's, so limit there.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let settings = &state.settings;
    if !settings.limits.rate_limit_enabled {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path.starts_with("/health") || path == "/metrics" {
        return next.run(req).await;
    }
    let (scope, per_minute) = if path == "/api/v1/auth" || path.starts_with("/api/v1/auth/") {
        ("auth", settings.limits.auth_rate_limit_per_minute)
    } else {
        ("default", settings.limits.default_rate_limit_per_minute)
    };
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    if let Err(refused) = state
        .rate_limit(scope, &peer.ip().to_string(), per_minute, Spend::Take)
        .await
    {
        return refused.into_response();
    }
    next.run(req).await
}

/// Gives answers made outside the handlers (unknown method, body too large, …) the JSON
/// error shape.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() && !status.is_server_error() || is_json {
        return response;
    }
    let (parts, _body) = response.into_parts();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => crate::extract::payload_too_large(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "This method is not allowed on this resource.",
        ),
        StatusCode::NOT_FOUND => ApiError::not_found("Not found."),
        other => ApiError::new(
            other,
            "error",
            other.canonical_reason().unwrap_or("Request failed."),
        ),
    };
    let mut fixed = error.into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fixed
}
