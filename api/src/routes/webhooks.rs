//! `/api/v1/webhooks`: endpoints that receive signed events (`document.ready`,
//! `document.failed`, `batch.completed`), their secrets, test events, the delivery log and
//! redelivery. The rules are [`crate::service::webhooks`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use common::db::Page;
use common::db::webhooks::{Delivery, Endpoint};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{AuthUser, Json, Path, Query, RequestMeta};
use crate::routes::Pagination;
use crate::service::webhooks::{self, EndpointChanges, EndpointRequest, EndpointWithSecret};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, update, remove))
        .routes(routes!(rotate_secret))
        .routes(routes!(test))
        .routes(routes!(deliveries))
        .routes(routes!(redeliver))
}

#[utoipa::path(
    post, path = "/", tag = "webhooks", operation_id = "create_webhook",
    security(("bearer" = [])),
    request_body = EndpointRequest,
    responses(
        (status = 201, description = "The endpoint with its `secret`, shown only here and on rotation.", body = EndpointWithSecret),
        (status = 403, description = "`scope: \"all\"` is for admins.", body = ErrorBody),
        (status = 422, description = "A URL that is not https (or http with private networks allowed), points at a private, \
            loopback, link-local or metadata address, or an unknown event name.", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Json(body): Json<EndpointRequest>,
) -> ApiResult<(StatusCode, Json<EndpointWithSecret>)> {
    let created = webhooks::create(&state, &meta, &user, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get, path = "/", tag = "webhooks", operation_id = "list_webhooks",
    security(("bearer" = [])),
    params(Pagination),
    responses((status = 200, description = "A page of endpoints, newest first (an agent sees their own).", body = Page<Endpoint>))
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<Endpoint>>> {
    let (limit, offset) = page.checked()?;
    Ok(Json(webhooks::list(&state, &user, limit, offset).await?))
}

#[utoipa::path(
    get, path = "/{id}", tag = "webhooks", operation_id = "get_webhook",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses((status = 200, description = "The endpoint (never its secret).", body = Endpoint))
)]
async fn read(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Endpoint>> {
    Ok(Json(webhooks::find(&state, &user, id).await?))
}

#[utoipa::path(
    patch, path = "/{id}", tag = "webhooks", operation_id = "update_webhook",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    request_body = EndpointChanges,
    responses(
        (status = 200, description = "The changed endpoint.", body = Endpoint),
        (status = 422, description = "A refused URL or an unknown event name.", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(body): Json<EndpointChanges>,
) -> ApiResult<Json<Endpoint>> {
    Ok(Json(
        webhooks::update(&state, &meta, &user, id, body).await?,
    ))
}

#[utoipa::path(
    delete, path = "/{id}", tag = "webhooks", operation_id = "delete_webhook",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses((status = 204, description = "Deleted, with its delivery log; nothing more is sent to it."))
)]
async fn remove(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    webhooks::delete(&state, &meta, &user, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post, path = "/{id}/rotate-secret", tag = "webhooks", operation_id = "rotate_webhook_secret",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses((status = 200, description = "The endpoint with its new `secret`. The previous secret keeps signing beside it \
        (two signatures in `webhook-signature`) until `previous_secret_until`, 24 h by default.", body = EndpointWithSecret))
)]
async fn rotate_secret(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<EndpointWithSecret>> {
    Ok(Json(webhooks::rotate(&state, &meta, &user, id).await?))
}

#[utoipa::path(
    post, path = "/{id}/test", tag = "webhooks", operation_id = "test_webhook",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id.")),
    responses((status = 202, description = "A `webhook.test` delivery, sent within moments; follow it in the delivery log.", body = Delivery))
)]
async fn test(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    let delivery = webhooks::test(&state, &meta, &user, id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

#[utoipa::path(
    get, path = "/{id}/deliveries", tag = "webhooks", operation_id = "list_webhook_deliveries",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The endpoint id."), Pagination),
    responses((status = 200, description = "The delivery log, newest first: each event's status (`pending`, `succeeded`, \
        `failed`), attempts, and the last answer's status code, error and first bytes.", body = Page<Delivery>))
)]
async fn deliveries(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(page): Query<Pagination>,
) -> ApiResult<Json<Page<Delivery>>> {
    let (limit, offset) = page.checked()?;
    Ok(Json(
        webhooks::deliveries(&state, &user, id, limit, offset).await?,
    ))
}

#[utoipa::path(
    post, path = "/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks", operation_id = "redeliver_webhook",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "The endpoint id."),
        ("delivery_id" = Uuid, Path, description = "The delivery id (its `webhook-id`)."),
    ),
    responses((status = 202, description = "The delivery, pending again: sent now under the same `webhook-id`, with the whole \
        retry schedule ahead of it.", body = Delivery))
)]
async fn redeliver(
    State(state): State<AppState>,
    meta: RequestMeta,
    user: AuthUser,
    Path((id, delivery_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<(StatusCode, Json<Delivery>)> {
    let delivery = webhooks::redeliver(&state, &meta, &user, id, delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}
