//! Webhook endpoints and their deliveries.
//!
//! A delivery is a row written in the same transaction as the change it tells of (see
//! [`insert_deliveries!`], used where documents finish and batches complete), so a crash
//! can lose neither. Workers [`Deliveries::claim`] due rows: a claim counts the attempt and
//! moves `next_attempt_at` past the attempt's timeout, which is the attempt's lease: a
//! worker that dies mid-attempt leaves the row due again when that time comes, and
//! [`Deliveries::record`] only takes the outcome of the attempt that claimed last. The
//! worker that finishes a document needs no claim for that document's deliveries: they are
//! written already claimed by it ([`Handed`]), under the same lease.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Db, DbResult, Page, SqlxResultExt, on_db};
use crate::webhooks::{EventType, Secret, subscribes};

macro_rules! endpoint_columns {
    () => {
        "id, owner_id, url, description, events, scope, is_active, disabled_reason, secret, \
         previous_secret, previous_secret_until, created_at, updated_at"
    };
}

macro_rules! delivery_columns {
    () => {
        "id, endpoint_id, event_type, object_id, payload, status, attempts, claims, next_attempt_at, \
         last_status_code, last_error, last_response, created_at, delivered_at, updated_at"
    };
}

/// Writes one pending delivery of `$event` (an [`EventType`]) about `$object_id` to each
/// endpoint id in `$endpoints` that still exists and is active, on the open transaction
/// `$tx`, with `$data` (anything `Serialize`) as the event's `data`. With `$lease` (an
/// `Option<DateTime<Utc>>`) set, the deliveries are written already claimed, leased until
/// then, for the caller to send ([`Handed`]); without, they are due now. Evaluates to a
/// `DbResult<`[`Inserted`]`>`. (An
/// endpoint deleted or turned off since it was chosen is skipped, never a reason for the
/// change itself to fail.)
macro_rules! insert_deliveries {
    ($tx:expr, $endpoints:expr, $event:expr, $object_id:expr, $data:expr, $lease:expr) => {
        async {
            let now = $crate::now();
            let payload = $crate::db::webhooks::payload($event, now, $data);
            let lease: Option<chrono::DateTime<chrono::Utc>> = $lease;
            let claims = if lease.is_some() { $crate::db::webhooks::HANDED_CLAIM } else { 0 };
            let mut written = Vec::new();
            for endpoint in $endpoints {
                let id = uuid::Uuid::now_v7();
                let inserted = sqlx::query(
                    "INSERT INTO webhook_deliveries (id, endpoint_id, event_type, object_id, payload, status, \
                     attempts, claims, next_attempt_at, created_at, updated_at) \
                     SELECT $1, id, $3, $4, $5, 'pending', $7, $7, $8, $6, $6 FROM webhook_endpoints \
                     WHERE id = $2 AND is_active",
                )
                .bind(id)
                .bind(endpoint)
                .bind($event.as_str())
                .bind($object_id)
                .bind(&payload)
                .bind(now)
                .bind(claims)
                .bind(lease.unwrap_or(now))
                .execute(&mut *$tx)
                .await
                .db()?
                .rows_affected();
                if inserted == 1 {
                    written.push((id, *endpoint));
                }
            }
            Ok::<_, $crate::db::DbError>($crate::db::webhooks::Inserted { deliveries: written, payload, at: now })
        }
    };
}
pub(crate) use insert_deliveries;

/// What [`insert_deliveries!`] wrote: each delivery's id with its endpoint's, and the event
/// they carry, made at `at`.
pub struct Inserted {
    pub deliveries: Vec<(Uuid, Uuid)>,
    pub payload: String,
    pub at: DateTime<Utc>,
}

/// The body every delivery of an event carries: `{"type", "timestamp", "data"}`.
pub fn payload(event: EventType, at: DateTime<Utc>, data: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Event<'a, T> {
        #[serde(rename = "type")]
        kind: &'a str,
        timestamp: DateTime<Utc>,
        data: &'a T,
    }
    serde_json::to_string(&Event {
        kind: event.as_str(),
        timestamp: at,
        data,
    })
    .expect("an event serializes")
}

/// The events an endpoint takes, stored as a JSON array of names (`["*"]` for all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct EventList(pub Vec<String>);

impl TryFrom<String> for EventList {
    type Error = serde_json::Error;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&text).map(EventList)
    }
}

impl EventList {
    fn to_text(&self) -> String {
        serde_json::to_string(&self.0).expect("a list of names serializes")
    }
}

/// A webhook endpoint. Its secrets are never serialized.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub url: String,
    pub description: Option<String>,
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub events: EventList,
    /// `own`: the owner's documents and batches; `all`: everyone's.
    pub scope: String,
    pub is_active: bool,
    /// Why the platform turned the endpoint off (it answered `410 Gone`).
    pub disabled_reason: Option<String>,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip)]
    pub previous_secret: Option<String>,
    /// Until when the secret before the last rotation signs beside the current one.
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The secrets deliveries are signed with at `now`: the current one, and the one before
    /// the last rotation while its overlap lasts.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<Secret> {
        let previous = match (&self.previous_secret, self.previous_secret_until) {
            (Some(secret), Some(until)) if until > now => Secret::parse(secret),
            _ => None,
        };
        Secret::parse(&self.secret)
            .into_iter()
            .chain(previous)
            .collect()
    }

    pub fn takes(&self, event: EventType) -> bool {
        subscribes(&self.events.0, event)
    }
}

/// A new endpoint.
pub struct NewEndpoint<'a> {
    pub owner_id: Uuid,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub events: &'a EventList,
    pub scope: &'a str,
    pub secret: &'a Secret,
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Default)]
pub struct EndpointPatch<'a> {
    pub url: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
    pub events: Option<&'a EventList>,
    pub is_active: Option<bool>,
}

/// One event for one endpoint, and how its sending went.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Also the `webhook-id` header, the same on every attempt.
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub event_type: String,
    /// The document or batch the event is about.
    pub object_id: Option<Uuid>,
    #[serde(skip)]
    pub payload: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// Claims ever made (not reset by a redelivery): the attempt of the latest one is the
    /// only one whose outcome counts.
    #[serde(skip)]
    pub claims: i32,
    /// When a pending delivery is next tried.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// The start of the last answer's body.
    pub last_response: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// How an attempt ended.
pub enum AttemptOutcome<'a> {
    /// A 2xx answer.
    Succeeded { status_code: i32, response: &'a str },
    /// Anything else: an answer of another status (`status_code`), or no answer.
    Failed {
        status_code: Option<i32>,
        error: &'a str,
        response: Option<&'a str>,
        /// When to try again; `None` gives up (the schedule is spent, or the endpoint said
        /// 410 Gone).
        retry_at: Option<DateTime<Utc>>,
    },
}

/// A delivery whose last attempt failed, as the operators' view lists it.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, utoipa::ToSchema)]
pub struct FailingDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub event_type: String,
    /// `pending` (a retry is scheduled) or `failed` (given up).
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// One attempt's outcome, to record.
pub struct Attempt<'a> {
    pub id: Uuid,
    /// The claim the attempt was made under ([`Delivery::claims`]).
    pub claim: i32,
    pub outcome: AttemptOutcome<'a>,
}

/// An attempt as the columns it sets.
struct RecordRow {
    id: Uuid,
    claim: i32,
    status: &'static str,
    code: Option<i32>,
    error: Option<String>,
    response: Option<String>,
    next_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
}

impl RecordRow {
    fn of(attempt: &Attempt<'_>, now: DateTime<Utc>) -> RecordRow {
        let (id, claim) = (attempt.id, attempt.claim);
        match &attempt.outcome {
            AttemptOutcome::Succeeded {
                status_code,
                response,
            } => RecordRow {
                id,
                claim,
                status: "succeeded",
                code: Some(*status_code),
                error: None,
                response: Some(storable(response)),
                next_at: None,
                delivered_at: Some(now),
            },
            AttemptOutcome::Failed {
                status_code,
                error,
                response,
                retry_at,
            } => RecordRow {
                id,
                claim,
                status: if retry_at.is_some() {
                    "pending"
                } else {
                    "failed"
                },
                code: *status_code,
                error: Some(storable(error)),
                response: response.map(storable),
                next_at: *retry_at,
                delivered_at: None,
            },
        }
    }
}

/// `text` without NUL characters, which Postgres cannot store in text (an endpoint's answer
/// may hold any byte).
fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// The smallest UUIDv7 of the millisecond `at`: every id made at or after `at` is greater.
fn uuid_at(at: DateTime<Utc>) -> Uuid {
    let millis = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

pub struct Endpoints<'a>(pub(super) &'a Db);

impl Endpoints<'_> {
    pub async fn create(&self, new: NewEndpoint<'_>) -> DbResult<Endpoint> {
        let now = crate::now();
        on_db!(self.0, pool => sqlx::query_as::<_, Endpoint>(concat!(
            "INSERT INTO webhook_endpoints (id, owner_id, url, description, events, scope, is_active, secret, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, TRUE, $7, $8, $8) RETURNING ",
            endpoint_columns!()
        ))
        .bind(Uuid::now_v7())
        .bind(new.owner_id)
        .bind(new.url)
        .bind(new.description)
        .bind(new.events.to_text())
        .bind(new.scope)
        .bind(new.secret.expose())
        .bind(now)
        .fetch_one(pool)
        .await)
        .db()
    }

    /// The endpoint `id`, if `owner` is `None` (an admin) or owns it.
    pub async fn find(&self, id: Uuid, owner: Option<Uuid>) -> DbResult<Option<Endpoint>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Endpoint>(concat!(
            "SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// `owner`'s endpoints (everyone's for `None`), newest first.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Endpoint>> {
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Endpoint>(concat!(
                "SELECT ", endpoint_columns!(), " FROM webhook_endpoints WHERE ($1 IS NULL OR owner_id = $1) \
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(owner)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE ($1 IS NULL OR owner_id = $1)")
                .bind(owner)
                .fetch_one(pool)
                .await
                .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// Applies `patch`; turning an endpoint back on clears why it was turned off.
    pub async fn update(&self, id: Uuid, patch: EndpointPatch<'_>) -> DbResult<Option<Endpoint>> {
        let events = patch.events.map(EventList::to_text);
        let (set_description, description) = match patch.description {
            Some(d) => (true, d),
            None => (false, None),
        };
        on_db!(self.0, pool => sqlx::query_as::<_, Endpoint>(concat!(
            "UPDATE webhook_endpoints SET url = COALESCE($2, url), \
             description = CASE WHEN $3 THEN $4 ELSE description END, \
             events = COALESCE($5, events), is_active = COALESCE($6, is_active), \
             disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, updated_at = $7 \
             WHERE id = $1 RETURNING ",
            endpoint_columns!()
        ))
        .bind(id)
        .bind(patch.url)
        .bind(set_description)
        .bind(description)
        .bind(events)
        .bind(patch.is_active)
        .bind(crate::now())
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Makes `secret` the endpoint's secret; the one it replaces keeps signing until
    /// `previous_until`.
    pub async fn rotate(
        &self,
        id: Uuid,
        secret: &Secret,
        previous_until: DateTime<Utc>,
    ) -> DbResult<Option<Endpoint>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Endpoint>(concat!(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $3, secret = $2, \
             updated_at = $4 WHERE id = $1 RETURNING ",
            endpoint_columns!()
        ))
        .bind(id)
        .bind(secret.expose())
        .bind(previous_until)
        .bind(crate::now())
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Turns the endpoint off, saying why.
    pub async fn disable(&self, id: Uuid, reason: &str) -> DbResult<()> {
        on_db!(self.0, pool => sqlx::query(
            "UPDATE webhook_endpoints SET is_active = FALSE, disabled_reason = $2, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .bind(crate::now())
        .execute(pool)
        .await
        .map(|_| ()))
        .db()
    }

    /// Deletes the endpoint and its deliveries; false when it did not exist.
    pub async fn delete(&self, id: Uuid) -> DbResult<bool> {
        on_db!(self.0, pool => sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1))
        .db()
    }

    /// The active endpoints that hear of `owner`'s documents and batches (theirs, and those
    /// scoped to everyone).
    pub async fn listeners(&self, owner: Uuid) -> DbResult<Vec<Endpoint>> {
        on_db!(self.0, pool => sqlx::query_as::<_, Endpoint>(LISTENERS)
        .bind(owner)
        .fetch_all(pool)
        .await)
        .db()
    }
}

/// The active endpoints that hear of owner `$1`'s documents and batches.
pub(crate) const LISTENERS: &str = concat!(
    "SELECT ",
    endpoint_columns!(),
    " FROM webhook_endpoints WHERE is_active AND (owner_id = $1 OR scope = 'all')"
);

/// The ids of the `listeners` that take `event`.
pub fn taking(listeners: &[Endpoint], event: EventType) -> Vec<Uuid> {
    listeners
        .iter()
        .filter(|l| l.takes(event))
        .map(|l| l.id)
        .collect()
}

/// The claim number of a delivery written already claimed ([`Handed`]).
pub const HANDED_CLAIM: i32 = 1;

/// A delivery written already claimed, in the transaction of its event, by the worker that
/// sends it (see [`Documents::finish`](super::documents::Documents::finish)), with its
/// endpoint as that transaction saw it. No claim is needed to send it; should that worker
/// stop first, the delivery is due again when its lease ends, like any claimed one.
#[derive(Debug, Clone)]
pub struct Handed {
    pub delivery: Delivery,
    pub endpoint: Endpoint,
}

impl Handed {
    pub(crate) fn new(
        id: Uuid,
        endpoint: &Endpoint,
        event: EventType,
        object_id: Uuid,
        payload: &str,
        now: DateTime<Utc>,
        lease: DateTime<Utc>,
    ) -> Handed {
        Handed {
            delivery: Delivery {
                id,
                endpoint_id: endpoint.id,
                event_type: event.as_str().to_owned(),
                object_id: Some(object_id),
                payload: payload.to_owned(),
                status: "pending".to_owned(),
                attempts: HANDED_CLAIM,
                claims: HANDED_CLAIM,
                next_attempt_at: Some(lease),
                last_status_code: None,
                last_error: None,
                last_response: None,
                created_at: now,
                delivered_at: None,
                updated_at: now,
            },
            endpoint: endpoint.clone(),
        }
    }
}

pub struct Deliveries<'a>(pub(super) &'a Db);

impl Deliveries<'_> {
    /// A `webhook.test` delivery to `endpoint`, due now; `None` when the endpoint is off
    /// (or gone).
    pub async fn create_test(&self, endpoint: &Endpoint) -> DbResult<Option<Delivery>> {
        #[derive(Serialize)]
        struct Test<'a> {
            endpoint_id: Uuid,
            message: &'a str,
        }
        let data = Test {
            endpoint_id: endpoint.id,
            message: "This is a test event from MONASSURANCE.",
        };
        on_db!(self.0, pool => {
            let mut tx = pool.begin().await.db()?;
            let inserted = insert_deliveries!(tx, &[endpoint.id], EventType::Test, Some(endpoint.id), &data, None).await?;
            let Some(&(id, _)) = inserted.deliveries.first() else {
                return Ok(None);
            };
            let delivery = sqlx::query_as::<_, Delivery>(concat!(
                "SELECT ", delivery_columns!(), " FROM webhook_deliveries WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .db()?;
            tx.commit().await.db()?;
            Ok(delivery)
        })
    }

    /// The endpoint's deliveries, newest first.
    pub async fn list(
        &self,
        endpoint_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> DbResult<Page<Delivery>> {
        on_db!(self.0, pool => {
            let items = sqlx::query_as::<_, Delivery>(concat!(
                "SELECT ", delivery_columns!(), " FROM webhook_deliveries WHERE endpoint_id = $1 \
                 ORDER BY id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(endpoint_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await
            .db()?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(endpoint_id)
                .fetch_one(pool)
                .await
                .db()?;
            Ok(Page { items, total, limit, offset })
        })
    }

    /// Sends the delivery again from the start of the schedule, now, under the same id.
    /// `None` when the endpoint has no such delivery.
    pub async fn redeliver(&self, endpoint_id: Uuid, id: Uuid) -> DbResult<Option<Delivery>> {
        let now = crate::now();
        on_db!(self.0, pool => sqlx::query_as::<_, Delivery>(concat!(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = $3, \
             delivered_at = NULL, updated_at = $3 WHERE id = $1 AND endpoint_id = $2 RETURNING ",
            delivery_columns!()
        ))
        .bind(id)
        .bind(endpoint_id)
        .bind(now)
        .fetch_optional(pool)
        .await)
        .db()
    }

    /// Takes up to `limit` due deliveries, oldest due first: each attempt is counted, and
    /// the row is not due again before `lease_until` (the attempt's lease). Concurrent
    /// claims never take the same row.
    pub async fn claim(&self, limit: i64, lease_until: DateTime<Utc>) -> DbResult<Vec<Delivery>> {
        let now = crate::now();
        match self.0.pool() {
            super::Pool::Postgres(pool) => sqlx::query_as::<_, Delivery>(concat!(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, claims = claims + 1, next_attempt_at = $2, updated_at = $1 \
                 WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING ",
                delivery_columns!()
            ))
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(pool)
            .await
            .db(),
            // One writer at a time: the subquery and the update see the same rows.
            super::Pool::Sqlite(pool) => sqlx::query_as::<_, Delivery>(concat!(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, claims = claims + 1, next_attempt_at = $2, updated_at = $1 \
                 WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT $3) RETURNING ",
                delivery_columns!()
            ))
            .bind(now)
            .bind(lease_until)
            .bind(limit)
            .fetch_all(pool)
            .await
            .db(),
        }
    }

    /// Records how the attempt of claim number `claim` went. False when the row was claimed
    /// again since (this attempt's lease ran out, or it was redelivered and sent again):
    /// the outcome is then dropped. Text the database cannot store (NUL) is replaced.
    pub async fn record(
        &self,
        id: Uuid,
        claim: i32,
        outcome: AttemptOutcome<'_>,
    ) -> DbResult<bool> {
        let attempts = [Attempt { id, claim, outcome }];
        Ok(self.record_many(&attempts).await? == 1)
    }

    /// [`Deliveries::record`] for many attempts in one statement (Postgres) or one
    /// transaction (SQLite); returns how many were recorded.
    pub async fn record_many(&self, attempts: &[Attempt<'_>]) -> DbResult<u64> {
        if attempts.is_empty() {
            return Ok(0);
        }
        let now = crate::now();
        let rows: Vec<RecordRow> = attempts.iter().map(|a| RecordRow::of(a, now)).collect();
        match self.0.pool() {
            super::Pool::Postgres(pool) => sqlx::query(
                "UPDATE webhook_deliveries d SET status = u.status, last_status_code = u.code, last_error = u.error, \
                 last_response = u.response, next_attempt_at = u.next_at, delivered_at = u.delivered_at, updated_at = $9 \
                 FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int4[], $5::text[], $6::text[], \
                 $7::timestamptz[], $8::timestamptz[]) AS u(id, claim, status, code, error, response, next_at, delivered_at) \
                 WHERE d.id = u.id AND d.claims = u.claim AND d.status = 'pending'",
            )
            .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.claim).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.code).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.response.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.next_at).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.delivered_at).collect::<Vec<_>>())
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .db(),
            // One statement, as on Postgres (each statement is a round trip to the
            // connection's thread): the rows as a JSON array, their times written as sqlx
            // writes every other.
            super::Pool::Sqlite(pool) => {
                let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        serde_json::json!([
                            r.id.simple().to_string(),
                            r.claim,
                            r.status,
                            r.code,
                            r.error,
                            r.response,
                            r.next_at.map(time),
                            r.delivered_at.map(time),
                        ])
                    })
                    .collect();
                sqlx::query(
                    "UPDATE webhook_deliveries AS d SET status = u.status, last_status_code = u.code, \
                     last_error = u.error, last_response = u.response, next_attempt_at = u.next_at, \
                     delivered_at = u.delivered_at, updated_at = $2 \
                     FROM (SELECT unhex(value ->> 0) AS id, value ->> 1 AS claim, value ->> 2 AS status, \
                     value ->> 3 AS code, value ->> 4 AS error, value ->> 5 AS response, value ->> 6 AS next_at, \
                     value ->> 7 AS delivered_at FROM json_each($1)) AS u \
                     WHERE d.id = u.id AND d.claims = u.claim AND d.status = 'pending'",
                )
                .bind(serde_json::Value::Array(rows).to_string())
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
                .db()
            }
        }
    }

    /// Gives back deliveries claimed (or [`Handed`]) under claim number `claim` and not sent:
    /// each is due now, that attempt uncounted, for any worker to claim. Returns how many
    /// were given back (not those given back already, nor claimed again since).
    pub async fn release(&self, claimed: &[(Uuid, i32)]) -> DbResult<u64> {
        if claimed.is_empty() {
            return Ok(0);
        }
        let now = crate::now();
        match self.0.pool() {
            super::Pool::Postgres(pool) => sqlx::query(
                "UPDATE webhook_deliveries d SET attempts = GREATEST(d.attempts - 1, 0), next_attempt_at = $3, \
                 updated_at = $3 FROM UNNEST($1::uuid[], $2::int4[]) AS u(id, claim) \
                 WHERE d.id = u.id AND d.claims = u.claim AND d.status = 'pending' AND d.next_attempt_at > $3",
            )
            .bind(claimed.iter().map(|c| c.0).collect::<Vec<_>>())
            .bind(claimed.iter().map(|c| c.1).collect::<Vec<_>>())
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .db(),
            super::Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await.db()?;
                let mut released = 0;
                for (id, claim) in claimed {
                    released += sqlx::query(
                        "UPDATE webhook_deliveries SET attempts = MAX(attempts - 1, 0), next_attempt_at = $3, \
                         updated_at = $3 WHERE id = $1 AND claims = $2 AND status = 'pending' AND next_attempt_at > $3",
                    )
                    .bind(id)
                    .bind(claim)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .db()?
                    .rows_affected();
                }
                tx.commit().await.db()?;
                Ok(released)
            }
        }
    }

    /// Up to `limit` deliveries whose last attempt failed (given up, or waiting for a
    /// retry), the latest first, with their endpoint's URL: what operators look into.
    pub async fn failing(&self, limit: i64) -> DbResult<Vec<FailingDelivery>> {
        on_db!(self.0, pool => sqlx::query_as::<_, FailingDelivery>(
            "SELECT d.id, d.endpoint_id, e.url, d.event_type, d.status, d.attempts, d.last_status_code, d.last_error, \
             d.next_attempt_at, d.updated_at FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.last_error IS NOT NULL ORDER BY d.updated_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool)
        .await)
        .db()
    }

    /// Deletes up to `limit` sent or given-up deliveries made before `before` (the log's
    /// retention); returns how many.
    pub async fn prune(&self, before: DateTime<Utc>, limit: i64) -> DbResult<u64> {
        // Ids are UUIDv7, ordered by creation time: the primary key finds the old rows.
        let bound = uuid_at(before);
        on_db!(self.0, pool => sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE id < $1 AND status <> 'pending' ORDER BY id LIMIT $2)",
        )
        .bind(bound)
        .bind(limit)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .db()
    }

    /// Deliveries still to be sent, all endpoints together.
    pub async fn pending(&self) -> DbResult<i64> {
        on_db!(self.0, pool => sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(pool)
            .await)
        .db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_of_a_millisecond_sorts_before_its_ids_and_after_earlier_ones() {
        let at = crate::now();
        let bound = uuid_at(at);
        assert_eq!(bound.get_version_num(), 7);
        let later = Uuid::now_v7();
        assert!(bound <= later);
        let earlier = uuid_at(at - chrono::TimeDelta::milliseconds(1));
        assert!(earlier < bound);
        let (secs, _) = bound.get_timestamp().unwrap().to_unix();
        assert_eq!(secs as i64, at.timestamp());
    }

    /// A new agent, and an endpoint of theirs taking `event`.
    async fn agent_with_endpoint(
        db: &Db,
        email: &str,
        event: &str,
    ) -> (crate::model::User, Endpoint) {
        let user = crate::db::fixtures::agent(db, email).await;
        let events = EventList(vec![event.into()]);
        let endpoint = db
            .webhook_endpoints()
            .create(NewEndpoint {
                owner_id: user.id,
                url: "https://hooks.example.com/",
                description: None,
                events: &events,
                scope: "own",
                secret: &Secret::generate(),
            })
            .await
            .unwrap();
        (user, endpoint)
    }

    /// Claims never hand a delivery to two senders, an outcome counts only for the attempt
    /// that claimed last, a failed attempt waits for its retry, and the log's retention
    /// keeps what is pending.
    async fn deliveries_are_claimed_once_and_recorded_by_their_attempt(db: &Db) {
        let (_, endpoint) = agent_with_endpoint(db, "hooks@example.com", "*").await;
        let mut made = Vec::new();
        for _ in 0..5 {
            made.push(
                db.webhook_deliveries()
                    .create_test(&endpoint)
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            );
        }
        let deliveries = db.webhook_deliveries();
        let lease = crate::now() + chrono::TimeDelta::seconds(60);
        let (a, b) = tokio::join!(deliveries.claim(3, lease), deliveries.claim(3, lease));
        let (a, b) = (a.unwrap(), b.unwrap());
        let mut claimed: Vec<Uuid> = a.iter().chain(&b).map(|d| d.id).collect();
        claimed.sort();
        assert_eq!(claimed, made, "each delivery claimed exactly once");
        assert!(a.iter().chain(&b).all(|d| d.attempts == 1));
        assert!(
            deliveries.claim(5, lease).await.unwrap().is_empty(),
            "leased"
        );

        let retry_at = crate::now() - chrono::TimeDelta::seconds(1);
        let failed = AttemptOutcome::Failed {
            status_code: Some(500),
            error: "the endpoint answered 500",
            response: Some("bo\0om"),
            retry_at: Some(retry_at),
        };
        assert!(deliveries.record(made[0], 1, failed).await.unwrap());
        let stale = AttemptOutcome::Succeeded {
            status_code: 200,
            response: "",
        };
        assert!(
            !deliveries.record(made[0], 2, stale).await.unwrap(),
            "not the attempt that claimed"
        );
        let again = deliveries.claim(5, lease).await.unwrap();
        assert_eq!(
            again.iter().map(|d| (d.id, d.attempts)).collect::<Vec<_>>(),
            [(made[0], 2)]
        );
        assert_eq!(
            again[0].last_response.as_deref(),
            Some("bo\u{fffd}om"),
            "a NUL is stored replaced"
        );
        let done = AttemptOutcome::Succeeded {
            status_code: 204,
            response: "",
        };
        assert!(deliveries.record(made[0], 2, done).await.unwrap());
        assert_eq!(deliveries.pending().await.unwrap(), 4);

        // Redelivered: the schedule starts again, and an attempt still running from before
        // can no longer record over the new one.
        let again = deliveries
            .redeliver(endpoint.id, made[0])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.status.as_str(), again.attempts), ("pending", 0));
        let claimed = deliveries.claim(5, lease).await.unwrap();
        let claims: Vec<_> = claimed.iter().map(|d| (d.attempts, d.claims)).collect();
        assert_eq!(claims, [(1, 3)]);
        let late = AttemptOutcome::Succeeded {
            status_code: 200,
            response: "",
        };
        assert!(!deliveries.record(made[0], 2, late).await.unwrap());
        let done = AttemptOutcome::Succeeded {
            status_code: 200,
            response: "",
        };
        assert!(deliveries.record(made[0], 3, done).await.unwrap());

        let pruned = deliveries
            .prune(crate::now() + chrono::TimeDelta::seconds(1), 100)
            .await
            .unwrap();
        assert_eq!(pruned, 1, "only the finished delivery leaves the log");
        assert_eq!(deliveries.list(endpoint.id, 50, 0).await.unwrap().total, 4);
    }

    /// A document of `owner`'s, claimed by a worker and finished `ready` by it, with `lease`.
    async fn finished_by_a_worker(
        db: &Db,
        owner: Uuid,
        lease: Option<DateTime<Utc>>,
    ) -> (Uuid, crate::db::documents::Finished) {
        let claimed = claimed_document(db, owner).await;
        let timings = crate::model::Timings::default();
        let ready = || ready(&timings);
        let finished = db
            .documents()
            .finish(&claimed, claimed.attempts, ready(), lease)
            .await
            .unwrap();
        let again = db
            .documents()
            .finish(&claimed, claimed.attempts, ready(), lease)
            .await
            .unwrap();
        assert!(
            !again.won && again.handed.is_empty(),
            "a second finish of the same attempt changes nothing and hands nothing"
        );
        (claimed.id, finished)
    }

    /// A new document of `owner`'s, claimed by a worker.
    async fn claimed_document(db: &Db, owner: Uuid) -> crate::model::Document {
        let doc = db
            .documents()
            .create(crate::db::fixtures::document(owner))
            .await
            .unwrap();
        db.documents()
            .claim(doc.id, crate::now() + chrono::TimeDelta::seconds(60))
            .await
            .unwrap()
            .unwrap()
    }

    /// A worker's outcome for a document rendered and stored.
    fn ready(timings: &crate::model::Timings) -> crate::db::documents::Outcome<'_> {
        crate::db::documents::Outcome::Ready {
            storage_key: "documents/x",
            size_bytes: 10,
            stored_bytes: 10,
            checksum: "c",
            timings,
        }
    }

    /// A document finished with a lease has its deliveries written claimed and handed to
    /// the worker that finished it, with their endpoint: no claim takes them while the lease
    /// runs, and the handed attempt records its outcome. One given back is due at once, its
    /// attempt uncounted. Finished without a lease, they wait for a claim.
    async fn finishing_workers_are_handed_their_deliveries(db: &Db) {
        let (user, endpoint) =
            agent_with_endpoint(db, "handed@example.com", "document.ready").await;
        let deliveries = db.webhook_deliveries();
        let lease = crate::now() + chrono::TimeDelta::seconds(60);

        let (doc, finished) = finished_by_a_worker(db, user.id, Some(lease)).await;
        assert!(finished.won);
        let [handed] = &finished.handed[..] else {
            panic!("one delivery handed over: {:?}", finished.handed);
        };
        assert_eq!(
            (handed.endpoint.id, handed.endpoint.secret.as_str()),
            (endpoint.id, endpoint.secret.as_str())
        );
        let event: serde_json::Value = serde_json::from_str(&handed.delivery.payload).unwrap();
        assert_eq!(event["type"], "document.ready");
        assert_eq!(event["data"]["id"], doc.to_string());
        assert_eq!(handed.delivery.object_id, Some(doc));
        assert!(
            deliveries.claim(10, lease).await.unwrap().is_empty(),
            "leased to the worker that finished the document"
        );
        let logged = deliveries.list(endpoint.id, 10, 0).await.unwrap();
        let row = &logged.items[0];
        assert_eq!(
            (row.id, row.status.as_str(), row.attempts, row.claims),
            (handed.delivery.id, "pending", 1, HANDED_CLAIM)
        );
        assert_eq!(row.payload, handed.delivery.payload);
        let sent = AttemptOutcome::Succeeded {
            status_code: 204,
            response: "",
        };
        assert!(
            deliveries
                .record(handed.delivery.id, handed.delivery.claims, sent)
                .await
                .unwrap()
        );

        // Given back unsent: due now, for any worker, as the first attempt.
        let (_, finished) = finished_by_a_worker(db, user.id, Some(lease)).await;
        let unsent: Vec<(Uuid, i32)> = finished
            .handed
            .iter()
            .map(|h| (h.delivery.id, h.delivery.claims))
            .collect();
        assert_eq!(unsent.len(), 1);
        assert_eq!(deliveries.release(&unsent).await.unwrap(), 1);
        assert_eq!(
            deliveries.release(&unsent).await.unwrap(),
            0,
            "given back once"
        );
        let claimed = deliveries.claim(10, lease).await.unwrap();
        let claims: Vec<_> = claimed
            .iter()
            .map(|d| (d.id, d.attempts, d.claims))
            .collect();
        assert_eq!(claims, [(unsent[0].0, 1, HANDED_CLAIM + 1)]);
        assert_eq!(
            deliveries.release(&unsent).await.unwrap(),
            0,
            "not under another claim"
        );

        // Without a lease: nothing handed over, the delivery due for a claim.
        let (doc, finished) = finished_by_a_worker(db, user.id, None).await;
        assert!(finished.won && finished.handed.is_empty());
        let claimed = deliveries.claim(10, lease).await.unwrap();
        let claims: Vec<_> = claimed.iter().map(|d| (d.object_id, d.attempts)).collect();
        assert_eq!(claims, [(Some(doc), 1)]);
    }

    #[tokio::test]
    async fn finishing_workers_are_handed_their_deliveries_on_sqlite() {
        finishing_workers_are_handed_their_deliveries(&crate::db::fixtures::sqlite().await).await;
    }

    #[tokio::test]
    async fn finishing_workers_are_handed_their_deliveries_on_postgres() {
        let Some(pg) = crate::db::fixtures::postgres().await else {
            return;
        };
        finishing_workers_are_handed_their_deliveries(&pg.db).await;
        pg.drop().await;
    }

    /// On SQLite the finish and its deliveries run as one query that opens and commits its
    /// own transaction: when a statement in it fails, the transaction is not left open on
    /// a pooled connection (where the next user would write into it, or everyone else wait
    /// on its lock), and the document is as it was.
    #[tokio::test]
    async fn a_finish_that_fails_midway_leaves_no_transaction_behind_on_sqlite() {
        crate::db::configure_sqlite_process();
        let dir = tempfile::tempdir().unwrap();
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("db.sqlite"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(2))
            .foreign_keys(true);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.clone())
            .await
            .unwrap();
        let db = Db::for_tests(super::super::Pool::Sqlite(pool.clone()));
        db.migrate().await.unwrap();
        let (user, _) = agent_with_endpoint(&db, "midway@example.com", "document.ready").await;
        let claimed = claimed_document(&db, user.id).await;
        let timings = crate::model::Timings::default();
        let ready = || ready(&timings);
        let lease = Some(crate::now() + chrono::TimeDelta::seconds(60));
        sqlx::query(
            "CREATE TRIGGER refuse BEFORE INSERT ON webhook_deliveries BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .execute(&pool)
        .await
        .unwrap();
        let failed = db
            .documents()
            .finish(&claimed, claimed.attempts, ready(), lease)
            .await;
        assert!(failed.is_err(), "the insert was refused: {failed:?}");

        sqlx::query("DROP TRIGGER refuse")
            .execute(&pool)
            .await
            .unwrap();
        let elsewhere = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        let status = "SELECT status FROM generated_documents WHERE id = $1";
        let seen: String = sqlx::query_scalar(status)
            .bind(claimed.id)
            .fetch_one(&elsewhere)
            .await
            .unwrap();
        assert_eq!(
            seen, "processing",
            "the update was rolled back with the insert"
        );
        let finished = db
            .documents()
            .finish(&claimed, claimed.attempts, ready(), lease)
            .await
            .unwrap();
        assert!(finished.won && finished.handed.len() == 1);
        let seen: String = sqlx::query_scalar(status)
            .bind(claimed.id)
            .fetch_one(&elsewhere)
            .await
            .unwrap();
        assert_eq!(seen, "ready", "committed, for every connection to see");
    }

    /// Outcomes recorded together land each on its own row, whatever their columns.
    async fn outcomes_recorded_together_land_on_their_rows(db: &Db) {
        let (_, endpoint) = agent_with_endpoint(db, "together@example.com", "*").await;
        let deliveries = db.webhook_deliveries();
        for _ in 0..4 {
            deliveries.create_test(&endpoint).await.unwrap().unwrap();
        }
        let lease = crate::now() + chrono::TimeDelta::seconds(60);
        let mut claimed = deliveries.claim(4, lease).await.unwrap();
        claimed.sort_by_key(|d| d.id);
        let retry_at = crate::now() + chrono::TimeDelta::seconds(30);
        let outcomes = [
            AttemptOutcome::Succeeded {
                status_code: 204,
                response: "ok",
            },
            AttemptOutcome::Failed {
                status_code: Some(503),
                error: "the endpoint answered 503",
                response: Some("busy \"now\""),
                retry_at: Some(retry_at),
            },
            AttemptOutcome::Failed {
                status_code: None,
                error: "the endpoint did not answer in time",
                response: None,
                retry_at: None,
            },
            // Claimed again since: dropped.
            AttemptOutcome::Succeeded {
                status_code: 200,
                response: "",
            },
        ];
        let attempts: Vec<Attempt<'_>> = claimed
            .iter()
            .zip(outcomes)
            .enumerate()
            .map(|(n, (d, outcome))| Attempt {
                id: d.id,
                claim: if n == 3 { d.claims + 1 } else { d.claims },
                outcome,
            })
            .collect();
        assert_eq!(deliveries.record_many(&attempts).await.unwrap(), 3);
        let page = deliveries.list(endpoint.id, 50, 0).await.unwrap();
        let row = |id: Uuid| page.items.iter().find(|d| d.id == id).unwrap();
        let seen: Vec<_> = claimed
            .iter()
            .map(|d| {
                let d = row(d.id);
                (
                    d.status.as_str(),
                    d.last_status_code,
                    d.last_error.as_deref(),
                    d.last_response.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("succeeded", Some(204), None, Some("ok")),
                (
                    "pending",
                    Some(503),
                    Some("the endpoint answered 503"),
                    Some("busy \"now\"")
                ),
                (
                    "failed",
                    None,
                    Some("the endpoint did not answer in time"),
                    None
                ),
                ("pending", None, None, None),
            ]
        );
        assert!(row(claimed[0].id).delivered_at.is_some());
        let next = row(claimed[1].id).next_attempt_at.unwrap();
        assert_eq!(
            next.timestamp_micros(),
            retry_at.timestamp_micros(),
            "the retry time as given"
        );
        assert_eq!(row(claimed[2].id).next_attempt_at, None);
    }

    #[tokio::test]
    async fn outcomes_recorded_together_on_sqlite() {
        outcomes_recorded_together_land_on_their_rows(&crate::db::fixtures::sqlite().await).await;
    }

    #[tokio::test]
    async fn outcomes_recorded_together_on_postgres() {
        let Some(pg) = crate::db::fixtures::postgres().await else {
            return;
        };
        outcomes_recorded_together_land_on_their_rows(&pg.db).await;
        pg.drop().await;
    }

    #[tokio::test]
    async fn deliveries_are_claimed_once_on_sqlite() {
        deliveries_are_claimed_once_and_recorded_by_their_attempt(
            &crate::db::fixtures::sqlite().await,
        )
        .await;
    }

    #[tokio::test]
    async fn deliveries_are_claimed_once_on_postgres() {
        let Some(pg) = crate::db::fixtures::postgres().await else {
            return;
        };
        deliveries_are_claimed_once_and_recorded_by_their_attempt(&pg.db).await;
        pg.drop().await;
    }
}
