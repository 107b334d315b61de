//! `GET /console`: the operators' console, a single page for managers and admins, served
//! from files compiled into the binary (`api/assets/console`: HTML, CSS and JavaScript, no
//! external asset, no build step). It signs in through `/api/v1/auth/login`, keeps its
//! tokens in the tab's `sessionStorage`, reads `/api/v1/ops/*`, documents and batches every
//! few seconds, and acts (retry, cancel, redeliver) through the public API, so every action
//! is checked and audited like any other call.

use axum::Router;
use axum::routing::get;

use crate::AppState;
use crate::openapi::asset_cached;

const INDEX: &[u8] = include_bytes!("../assets/console/index.html");
const SCRIPT: &[u8] = include_bytes!("../assets/console/console.js");
const STYLE: &[u8] = include_bytes!("../assets/console/console.css");

/// Revalidated on every load: after an upgrade the page and its script change together.
const CACHE: &str = "no-cache";

fn asset(
    content_type: &'static str,
    bytes: &'static [u8],
) -> impl Fn() -> std::future::Ready<axum::response::Response> + Clone + Send + 'static {
    asset_cached(content_type, bytes, CACHE)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/console/console.js",
            get(asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/console/console.css",
            get(asset("text/css; charset=utf-8", STYLE)),
        )
}
