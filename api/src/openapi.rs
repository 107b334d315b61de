//! The OpenAPI 3.1 description and the Swagger UI that shows it.
//!
//! The description is not written by hand: every handler carries a `#[utoipa::path]`
//! annotation and is mounted with `utoipa_axum::routes!`, which registers the route and
//! its description together (see [`crate::routes::router`]), so a route cannot exist
//! without being described. [`conventions`] then adds what every route shares: the bearer
//! scheme and the error answers that the extractors and middleware give everywhere (401
//! and 403 on authenticated routes; 400, 413, 415 and 422 where there is a body; 422 on
//! path and query parameters; 404 on paths with an id; 429 where the rate limiter runs).
//!
//! `GET /docs` serves Swagger UI from files compiled into the binary
//! (`api/assets/swagger-ui`): it works with no network access.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, ResponseBuilder, Type};

use crate::AppState;

/// The description's fixed parts; the paths come from the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "MONASSURANCE API",
        description = "Clients, policies and insurers of an insurance broker, and the documents \
                       (HTML, PDF, XLSX) rendered from them by an asynchronous pipeline. \
                       Authenticate with `POST /api/v1/auth/login` and send the access token \
                       as `Authorization: Bearer <token>`. Errors are JSON \
                       `{\"detail\", \"code\", \"errors\"?}`.",
        license(name = "MIT"),
    ),
    components(schemas(crate::error::ErrorBody, crate::error::FieldError)),
    tags(
        (name = "auth", description = "Accounts, tokens and devices"),
        (name = "users", description = "User administration (admins)"),
        (name = "companies", description = "Insurers"),
        (name = "clients", description = "A broker's clients (agents see their own)"),
        (name = "policies", description = "Insurance policies (agents see their clients')"),
        (name = "templates", description = "Versioned document templates (managers and admins)"),
        (name = "documents", description = "Generation, status, signed links and downloads"),
        (name = "batches", description = "Many documents in one request: progress, cancel, retry and a streamed ZIP archive. \
            Items wait in the bulk lane: interactive documents go first, and bulk work is shared fairly between owners"),
        (name = "webhooks", description = "Signed events (Standard Webhooks) posted to your endpoints: `document.ready`, \
            `document.failed`, `batch.completed`; retried from the database with backoff, logged, and redeliverable"),
        (name = "audit", description = "The audit log (managers and admins)"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// The shared error answers, by component name: (status, name, description).
const ERRORS: &[(&str, &str, &str)] = &[
    (
        "400",
        "BadRequest",
        "The body is not valid JSON (or multipart).",
    ),
    (
        "401",
        "Unauthorized",
        "No valid access token (`WWW-Authenticate: Bearer`).",
    ),
    (
        "403",
        "Forbidden",
        "The account is disabled, or its role may not do this.",
    ),
    (
        "404",
        "NotFound",
        "No such object, or not one the caller may see.",
    ),
    (
        "413",
        "PayloadTooLarge",
        "The body is over `MAX_BODY_BYTES`.",
    ),
    (
        "415",
        "UnsupportedMediaType",
        "The body is not sent with the content type the route reads.",
    ),
    (
        "422",
        "ValidationError",
        "A field, parameter or rule is invalid; `errors` names the fields.",
    ),
    (
        "429",
        "TooManyRequests",
        "A rate limit refused the request; `Retry-After` says when to try again.",
    ),
];

/// Adds the bearer scheme and the error answers every route shares.
pub fn conventions(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("The `access_token` from login or refresh."))
                .build(),
        ),
    );
    for (status, name, description) in ERRORS {
        let mut response = ResponseBuilder::new().description(*description).content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        );
        if *status == "429" {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("Seconds to wait."))
                    .build(),
            );
        }
        components
            .responses
            .insert((*name).to_owned(), RefOr::T(response.build()));
    }

    for (path, item) in api.paths.paths.iter_mut() {
        let rate_limited = !(path.starts_with("/health") || path == "/metrics");
        let has_id = path.contains('{');
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let mut shared = Vec::new();
            if operation.security.is_some() {
                shared.extend(["401", "403"]);
            }
            if operation.request_body.is_some() {
                shared.extend(["400", "413", "415", "422"]);
            }
            if operation.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                shared.push("422");
            }
            if has_id {
                shared.push("404");
            }
            if rate_limited {
                shared.push("429");
            }
            add_shared(operation, &shared);
        }
    }
}

fn add_shared(operation: &mut Operation, statuses: &[&str]) {
    for status in statuses {
        let (_, name, _) = ERRORS
            .iter()
            .find(|(s, _, _)| s == status)
            .expect("every shared status has a component");
        operation
            .responses
            .responses
            .entry((*status).to_owned())
            .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
    }
}

/// `GET /api/v1/openapi.json` and the Swagger UI under `/docs`.
pub fn router(api: &OpenApi) -> Router<AppState> {
    let json = bytes::Bytes::from(api.to_json().expect("the OpenAPI description serialises"));
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], json) }),
        )
        .route(
            "/docs",
            get(asset("text/html; charset=utf-8", SWAGGER_INDEX)),
        )
        .route(
            "/docs/swagger-initializer.js",
            get(asset("text/javascript; charset=utf-8", SWAGGER_INIT)),
        )
        .route(
            "/docs/swagger-ui-bundle.js",
            get(asset("text/javascript; charset=utf-8", SWAGGER_BUNDLE)),
        )
        .route(
            "/docs/swagger-ui.css",
            get(asset("text/css; charset=utf-8", SWAGGER_CSS)),
        )
        .route(
            "/docs/favicon-32x32.png",
            get(asset("image/png", SWAGGER_FAVICON)),
        )
}

const SWAGGER_INDEX: &[u8] = include_bytes!("../assets/swagger-ui/index.html");
const SWAGGER_INIT: &[u8] = include_bytes!("../assets/swagger-ui/swagger-initializer.js");
const SWAGGER_BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const SWAGGER_FAVICON: &[u8] = include_bytes!("../assets/swagger-ui/favicon-32x32.png");

/// A handler answering a file compiled into the binary, cached for an hour.
fn asset(
    content_type: &'static str,
    bytes: &'static [u8],
) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone + Send + 'static {
    asset_cached(content_type, bytes, "public, max-age=3600")
}

/// A handler answering a file compiled into the binary with this `Cache-Control`.
pub(crate) fn asset_cached(
    content_type: &'static str,
    bytes: &'static [u8],
    cache_control: &'static str,
) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone + Send + 'static {
    move || {
        std::future::ready(
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, cache_control),
                ],
                bytes,
            )
                .into_response(),
        )
    }
}
