//! Webhook endpoints: registration with its checks, changes, secret rotation, test events,
//! the delivery log and redelivery. Sending is the workers' (`worker/src/webhooks.rs`);
//! the events themselves are written where documents and batches change
//! ([`common::db::webhooks`]).
//!
//! An endpoint belongs to its creator and hears of the documents and batches the creator
//! owns; an admin may give one `scope: "all"`. Managers and admins see every endpoint and
//! its log, send test events and redeliver (the operators' side); only the owner or an
//! admin changes, rotates or deletes one. Agents reach their own; another's answers 404.

use std::time::Duration;

use common::db::Page;
use common::db::audit::AuditEvent;
use common::db::webhooks::{Delivery, Endpoint, EndpointPatch, EventList, NewEndpoint};
use common::model::Role;
use common::webhooks::{self, ALL_EVENTS, DestinationError, EventType, Host, Secret};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, FieldError};
use crate::extract::{AuthUser, RequestMeta};
use crate::service::access::Scope;

/// The longest URL accepted.
const MAX_URL_CHARS: usize = 2000;
/// The longest description.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// How long the check of a new URL waits for its name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// `POST /webhooks`, as sent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EndpointRequest {
    /// Where deliveries are posted: `https`, never a private, loopback or link-local
    /// address (unless `WEBHOOK_ALLOW_PRIVATE_NETWORKS`).
    pub url: String,
    /// `document.ready`, `document.failed`, `batch.completed`, or `["*"]` for all.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `own` (default): the creator's documents and batches; `all` (admins): everyone's.
    pub scope: Option<String>,
}

/// `PATCH /webhooks/{id}`: absent fields stay as they are.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "crate::routes::present")]
    pub description: Option<Option<String>>,
    /// Turning an endpoint back on clears `disabled_reason`.
    pub is_active: Option<bool>,
}

/// An endpoint with its signing secret: the answer of creation and of rotation, the only
/// two that show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_` + base64 of 32 random bytes: the key receivers verify signatures with.
    pub secret: String,
}

/// Whether `url` may receive webhooks, checked as far as can be before sending: scheme,
/// credentials, and every address its name resolves to now (a name that resolves only to
/// refused addresses is refused; one that does not resolve yet is accepted, and its
/// deliveries say why they fail). Deliveries check again on the address they connect to.
async fn check_destination(state: &AppState, field: &str, url: &str) -> ApiResult<()> {
    if url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_URL_CHARS} characters long"),
        ));
    }
    let allow_private = state.settings.webhooks.allow_private_networks;
    let host = webhooks::check_url(url, allow_private)
        .map_err(|e| ApiError::invalid(field, e.to_string()))?
        .host;
    let Host::Name(name) = host else {
        return Ok(());
    };
    if allow_private {
        return Ok(());
    }
    let lookup = tokio::net::lookup_host((name.as_str(), 0));
    let Ok(Ok(addresses)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await else {
        return Ok(());
    };
    let addresses: Vec<_> = addresses.map(|a| a.ip()).collect();
    if !addresses.is_empty()
        && addresses
            .iter()
            .all(|ip| webhooks::refused_address(*ip).is_some())
    {
        let error = DestinationError::Resolved {
            host: name,
            addresses: addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        return Err(ApiError::invalid(field, error.to_string()));
    }
    Ok(())
}

/// The subscription as stored: known names, or `*` alone.
fn check_events(events: &[String]) -> ApiResult<EventList> {
    if events.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "must name at least one event, or \"*\" for all",
        ));
    }
    let errors: Vec<FieldError> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.as_str() != ALL_EVENTS && EventType::parse(e).is_none())
        .map(|(i, e)| FieldError {
            field: format!("events[{i}]"),
            message: format!(
                "unknown event {e:?}: use {}, or \"*\" for all",
                EventType::SUBSCRIBABLE
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let mut names: Vec<String> = Vec::new();
    for event in events {
        if !names.contains(event) {
            names.push(event.clone());
        }
    }
    if names.iter().any(|e| e == ALL_EVENTS) {
        names = vec![ALL_EVENTS.to_owned()];
    }
    Ok(EventList(names))
}

fn check_description(description: Option<&str>) -> ApiResult<()> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => Err(ApiError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters long"),
        )),
        _ => Ok(()),
    }
}

pub async fn create(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    body: EndpointRequest,
) -> ApiResult<EndpointWithSecret> {
    let scope = body.scope.as_deref().unwrap_or("own");
    match scope {
        "own" => {}
        "all" => caller.require(Role::Admin)?,
        _ => return Err(ApiError::invalid("scope", "must be \"own\" or \"all\"")),
    }
    let events = check_events(&body.events)?;
    check_description(body.description.as_deref())?;
    check_destination(state, "url", &body.url).await?;
    let secret = Secret::generate();
    let endpoint = state
        .db
        .webhook_endpoints()
        .create(NewEndpoint {
            owner_id: caller.id(),
            url: &body.url,
            description: body.description.as_deref(),
            events: &events,
            scope,
            secret: &secret,
        })
        .await?;
    audit(state, meta, caller, "webhook_created", &endpoint).await;
    Ok(EndpointWithSecret {
        endpoint,
        secret: secret.expose().to_owned(),
    })
}

/// The endpoint, if the caller may change it: its owner, or an admin. A manager sees every
/// endpoint but changes only their own: changing another's URL or secret would hand them
/// its events.
async fn find_to_change(state: &AppState, caller: &AuthUser, id: Uuid) -> ApiResult<Endpoint> {
    let owner = caller.require(Role::Admin).err().map(|_| caller.id());
    find_owned(state, id, owner).await
}

/// The endpoint, if the caller may see it.
pub async fn find(state: &AppState, caller: &AuthUser, id: Uuid) -> ApiResult<Endpoint> {
    find_owned(state, id, Scope::of(caller).owner()).await
}

/// The endpoint `id`, if `owner` is `None` or owns it; 404 otherwise.
async fn find_owned(state: &AppState, id: Uuid, owner: Option<Uuid>) -> ApiResult<Endpoint> {
    state
        .db
        .webhook_endpoints()
        .find(id, owner)
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook endpoint not found."))
}

pub async fn list(
    state: &AppState,
    caller: &AuthUser,
    limit: i64,
    offset: i64,
) -> ApiResult<Page<Endpoint>> {
    let owner = Scope::of(caller).owner();
    Ok(state
        .db
        .webhook_endpoints()
        .list(owner, limit, offset)
        .await?)
}

pub async fn update(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
    changes: EndpointChanges,
) -> ApiResult<Endpoint> {
    let endpoint = find_to_change(state, caller, id).await?;
    let events = changes.events.as_deref().map(check_events).transpose()?;
    let description = changes.description.as_ref().map(|d| d.as_deref());
    check_description(description.flatten())?;
    if let Some(url) = &changes.url {
        check_destination(state, "url", url).await?;
    }
    let patch = EndpointPatch {
        url: changes.url.as_deref(),
        description,
        events: events.as_ref(),
        is_active: changes.is_active,
    };
    let endpoint = state
        .db
        .webhook_endpoints()
        .update(endpoint.id, patch)
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook endpoint not found."))?;
    audit(state, meta, caller, "webhook_updated", &endpoint).await;
    Ok(endpoint)
}

pub async fn delete(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<()> {
    let endpoint = find_to_change(state, caller, id).await?;
    if !state.db.webhook_endpoints().delete(endpoint.id).await? {
        return Err(ApiError::not_found("Webhook endpoint not found."));
    }
    audit(state, meta, caller, "webhook_deleted", &endpoint).await;
    Ok(())
}

/// A new secret; the old one keeps signing beside it for `WEBHOOK_SECRET_OVERLAP_SECONDS`
/// (24 h by default), so receivers can switch without missing a delivery.
pub async fn rotate(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<EndpointWithSecret> {
    let endpoint = find_to_change(state, caller, id).await?;
    let secret = Secret::generate();
    let until = common::now() + state.settings.webhooks.secret_overlap;
    let endpoint = state
        .db
        .webhook_endpoints()
        .rotate(endpoint.id, &secret, until)
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook endpoint not found."))?;
    audit(state, meta, caller, "webhook_secret_rotated", &endpoint).await;
    Ok(EndpointWithSecret {
        endpoint,
        secret: secret.expose().to_owned(),
    })
}

/// A `webhook.test` delivery, sent by a worker within moments.
pub async fn test(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
) -> ApiResult<Delivery> {
    let endpoint = find(state, caller, id).await?;
    let delivery = state
        .db
        .webhook_deliveries()
        .create_test(&endpoint)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "endpoint_disabled",
                "The endpoint is turned off; turn it on (is_active) to send to it.",
            )
        })?;
    audit(state, meta, caller, "webhook_tested", &endpoint).await;
    Ok(delivery)
}

pub async fn deliveries(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    limit: i64,
    offset: i64,
) -> ApiResult<Page<Delivery>> {
    let endpoint = find(state, caller, id).await?;
    Ok(state
        .db
        .webhook_deliveries()
        .list(endpoint.id, limit, offset)
        .await?)
}

/// Sends a delivery again, now, under the same `webhook-id`, with the whole retry
/// schedule ahead of it.
pub async fn redeliver(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    id: Uuid,
    delivery_id: Uuid,
) -> ApiResult<Delivery> {
    let endpoint = find(state, caller, id).await?;
    let delivery = state
        .db
        .webhook_deliveries()
        .redeliver(endpoint.id, delivery_id)
        .await?
        .ok_or_else(|| ApiError::not_found("Webhook delivery not found."))?;
    let event = AuditEvent {
        user_id: Some(caller.id()),
        action: "webhook_redelivered",
        object_type: Some("webhook_delivery"),
        object_id: Some(delivery.id.to_string()),
        metadata: Some(serde_json::json!({"endpoint_id": endpoint.id})),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
    Ok(delivery)
}

async fn audit(
    state: &AppState,
    meta: &RequestMeta,
    caller: &AuthUser,
    action: &'static str,
    endpoint: &Endpoint,
) {
    let event = AuditEvent {
        user_id: Some(caller.id()),
        action,
        object_type: Some("webhook"),
        object_id: Some(endpoint.id.to_string()),
        metadata: Some(serde_json::json!({
            "url": endpoint.url,
            "events": endpoint.events,
            "is_active": endpoint.is_active,
        })),
        ..Default::default()
    };
    crate::service::record(state, meta, event).await;
}
