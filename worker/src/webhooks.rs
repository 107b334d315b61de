//! Sending webhook deliveries: every worker sends the deliveries of the documents it
//! finishes (written already claimed by it, [`Handed`] over), claims due deliveries from
//! the database (retries, other events, deliveries whose worker stopped), sends each signed
//! as Standard Webhooks says, and records the outcomes together (see
//! [`common::db::webhooks`] for the rows and their lease).
//!
//! Destinations are checked on the address actually connected to: the client resolves
//! names through [`GuardedResolver`], which drops every address [`refused_address`] names
//! (and fails when none is left), a URL whose host is an address is checked before
//! sending, no proxy is used, and redirects are not followed. So a name that resolves to
//! 127.0.0.1, or re-resolves there after the check (DNS rebinding), is never reached.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::db::webhooks::{Attempt, AttemptOutcome, Delivery, Endpoint, Handed};
use common::webhooks::{self, DestinationError, EventType, refused_address, signature_header};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};
use uuid::Uuid;
use webhook_client as reqwest;

use crate::Deps;

/// How much of an answer's body is read and kept in the delivery log.
const RESPONSE_SNIPPET: usize = 1024;

/// How long past its timeout an attempt's lease runs: a worker that dies mid-attempt
/// leaves the delivery due again this long after the attempt would have timed out.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Outcomes are recorded together, in one statement: once this many attempts have
/// ended...
const RECORD_BATCH: usize = 64;

/// ...or this long after the first of them ended. (Recorded one by one, as attempts end,
/// the statements cost Postgres more than the deliveries' rows: measured 2.5 outcomes per
/// statement, each statement planned again.)
const RECORD_WINDOW: Duration = Duration::from_millis(100);

/// Handed-over deliveries waiting for a free slot, past which finishing documents leave
/// their deliveries to be claimed (by any worker) instead: a slow endpoint cannot make a
/// worker hold an unbounded queue in memory.
const HANDOFF_LIMIT: usize = 1024;

/// The `user-agent` of every delivery.
const USER_AGENT: &str = concat!("MONASSURANCE-Webhooks/", env!("CARGO_PKG_VERSION"));

/// Resolves names for the webhook client, keeping only the addresses webhooks may reach.
struct GuardedResolver;

/// A destination refused after resolution, carried through reqwest's error chain so the
/// delivery log can say why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(DestinationError);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| Refused(DestinationError::Unresolved { host: host.clone() }))?
                .collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| refused_address(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let addresses = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let error = match resolved.is_empty() {
                    true => DestinationError::Unresolved { host },
                    false => DestinationError::Resolved { host, addresses },
                };
                return Err(Box::new(Refused(error)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The way from this worker's pipeline to its dispatcher: a finished document's
/// deliveries are written claimed by this worker when its dispatcher runs
/// ([`Handoff::lease`]), and handed over as they commit, so no claim is needed to send
/// them. Should the worker stop before sending one, it is due again when its lease ends.
pub struct Handoff {
    sender: mpsc::UnboundedSender<Handed>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Handed>>>,
    /// Whether the dispatcher takes deliveries.
    open: AtomicBool,
    /// How many handed-over deliveries wait for a free slot.
    waiting: AtomicUsize,
    /// How long a handed delivery's lease runs.
    lease: Duration,
}

impl Handoff {
    pub fn new(settings: &common::settings::WebhookSettings) -> Handoff {
        let (sender, receiver) = mpsc::unbounded_channel();
        Handoff {
            sender,
            receiver: Mutex::new(Some(receiver)),
            open: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            lease: settings.timeout + LEASE_MARGIN,
        }
    }

    /// Starts handing over: from now on, finished documents' deliveries are written claimed
    /// by this worker and come out of the receiver returned, which its dispatcher reads
    /// ([`run`]). `None` when a dispatcher has taken it already.
    pub fn open(&self) -> Option<mpsc::UnboundedReceiver<Handed>> {
        let receiver = self
            .receiver
            .lock()
            .expect("the handoff lock is never poisoned")
            .take();
        if receiver.is_some() {
            self.open.store(true, Ordering::Release);
        }
        receiver
    }

    /// Until when the deliveries of a document finishing now are leased to this worker;
    /// `None` (the dispatcher is not running, or [`HANDOFF_LIMIT`] deliveries wait for it
    /// already) leaves them to be claimed.
    pub fn lease(&self) -> Option<DateTime<Utc>> {
        let taking = self.open.load(Ordering::Acquire)
            && self.waiting.load(Ordering::Relaxed) < HANDOFF_LIMIT;
        taking.then(|| common::now() + self.lease)
    }

    /// Gives the dispatcher deliveries written with [`Handoff::lease`].
    pub fn hand(&self, handed: Vec<Handed>) {
        for delivery in handed {
            // A dispatcher that has stopped leaves the delivery to its lease.
            let _ = self.sender.send(delivery);
        }
    }
}

/// The HTTP client deliveries go out with.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub fn new(settings: &common::settings::WebhookSettings) -> anyhow::Result<Sender> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(30));
        if !settings.allow_private_networks {
            builder = builder.https_only(true).dns_resolver(GuardedResolver);
        }
        Ok(Sender {
            client: builder.build()?,
            allow_private: settings.allow_private_networks,
        })
    }

    /// Posts `body` to `url`, signed; the answer's status and the start of its body, or
    /// why there was no answer.
    async fn post(
        &self,
        url: &str,
        id: &str,
        timestamp: i64,
        signature: String,
        body: String,
    ) -> Result<(u16, String), String> {
        // Parsed as the client parses it: an address in any spelling is checked as one (the
        // client connects to an address host without asking the resolver).
        let destination =
            webhooks::check_url(url, self.allow_private).map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(destination.url)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status().as_u16();
        Ok((status, snippet(response).await))
    }
}

/// Up to [`RESPONSE_SNIPPET`] bytes of the answer's body, as text.
async fn snippet(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < RESPONSE_SNIPPET {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(RESPONSE_SNIPPET);
    String::from_utf8_lossy(&body).into_owned()
}

/// Why a request got no answer, in words: a refused destination as such, a timeout, or
/// the innermost cause.
fn describe(err: reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return refused.to_string();
        }
        source = e.source();
    }
    if err.is_timeout() {
        return "the endpoint did not answer in time".to_owned();
    }
    let mut innermost: &(dyn std::error::Error + 'static) = &err;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    match err.is_connect() {
        true => format!("cannot connect to the endpoint: {innermost}"),
        false => format!("the request failed: {innermost}"),
    }
}

/// The base signed links are built on, for `document.ready`'s `download_url`:
/// `PUBLIC_BASE_URL`, else the API's own address (`BIND_ADDR`, with an unspecified host
/// read as localhost).
pub fn link_base(settings: &common::Settings) -> String {
    if let Some(url) = &settings.http.public_base_url {
        return url.trim_end_matches('/').to_owned();
    }
    let mut addr = settings.http.bind_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// The body of this attempt: the event as written, with a fresh signed `download_url` in a
/// `document.ready` event's `data` (valid `WEBHOOK_LINK_TTL` from now, so a retry hours
/// later still carries a working link).
fn body_for(deps: &Deps, delivery: &Delivery, now: DateTime<Utc>) -> String {
    let (true, Some(id)) = (
        delivery.event_type == EventType::DocumentReady.as_str(),
        delivery.object_id,
    ) else {
        return delivery.payload.clone();
    };
    let exp = (now + deps.settings.webhooks.link_ttl).timestamp();
    let sig = deps.settings.auth.signature_keys.sign(id, exp);
    let url = format!(
        "{}/api/v1/documents/{id}/download?exp={exp}&sig={sig}",
        link_base(&deps.settings)
    );
    with_in_data(&delivery.payload, "download_url", &url)
}

/// `event` (a JSON event) with `key: value` added to its `data` object. Events are written
/// `{"type", "timestamp", "data"}` in that order ([`common::db::webhooks::payload`]), so
/// the last two characters close `data` and the event, and the pair goes in before them
/// without parsing the event; any other shape is parsed.
fn with_in_data(event: &str, key: &str, value: &str) -> String {
    let pair = format!(
        "{}:{}",
        serde_json::Value::from(key),
        serde_json::Value::from(value)
    );
    if let Some(head) = event.strip_suffix("}}")
        && event.starts_with(r#"{"type":"#)
        && !head.ends_with('{')
    {
        return format!("{head},{pair}}}}}");
    }
    let Ok(mut parsed) = serde_json::from_str::<serde_json::Value>(event) else {
        return event.to_owned();
    };
    if let Some(data) = parsed.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.insert(key.into(), value.into());
    }
    parsed.to_string()
}

/// A claimed delivery, sent: what the dispatcher records.
struct Done {
    delivery: Delivery,
    sent: Sent,
    took: Duration,
}

/// Sends one claimed delivery to its endpoint.
async fn deliver(
    deps: Arc<Deps>,
    sender: Sender,
    delivery: Delivery,
    endpoint: Arc<Endpoint>,
) -> Done {
    let started = Instant::now();
    let sent = send(&deps, &sender, &delivery, &endpoint).await;
    Done {
        delivery,
        sent,
        took: started.elapsed(),
    }
}

/// Records the outcomes of finished attempts, all in one statement, and counts them.
async fn record(deps: &Deps, done: Vec<Done>) {
    let now = common::now();
    let schedule = &deps.settings.webhooks.retry_schedule;
    let mut attempts = Vec::with_capacity(done.len());
    for d in &done {
        let (outcome, metric) = match &d.sent {
            Sent::Succeeded { status, response } => (
                AttemptOutcome::Succeeded {
                    status_code: i32::from(*status),
                    response,
                },
                "succeeded",
            ),
            Sent::Failed {
                status,
                error,
                response,
                retry,
            } => {
                let delay = schedule.get(d.delivery.attempts.max(1) as usize - 1);
                let retry_at = match (retry, delay) {
                    (true, Some(delay)) => Some(now + *delay),
                    _ => None,
                };
                if retry_at.is_none() {
                    info!(delivery = %d.delivery.id, endpoint = %d.delivery.endpoint_id,
                        attempts = d.delivery.attempts, error, "webhook delivery failed for good");
                }
                let outcome = AttemptOutcome::Failed {
                    status_code: status.map(i32::from),
                    error,
                    response: response.as_deref(),
                    retry_at,
                };
                (
                    outcome,
                    if retry_at.is_some() {
                        "retried"
                    } else {
                        "failed"
                    },
                )
            }
        };
        deps.metrics
            .webhook_attempt(&d.delivery.event_type, metric, d.took.as_secs_f64());
        attempts.push(Attempt {
            id: d.delivery.id,
            claim: d.delivery.claims,
            outcome,
        });
    }
    if let Err(err) = deps.db.webhook_deliveries().record_many(&attempts).await {
        warn!(count = attempts.len(), error = %err,
            "cannot record webhook attempts; they are sent again when their lease ends");
    }
}

/// How an attempt went.
enum Sent {
    Succeeded {
        status: u16,
        response: String,
    },
    Failed {
        status: Option<u16>,
        error: String,
        response: Option<String>,
        /// Whether a later attempt may succeed (not after 410, nor to a disabled endpoint).
        retry: bool,
    },
}

async fn send(deps: &Deps, sender: &Sender, delivery: &Delivery, endpoint: &Endpoint) -> Sent {
    if !endpoint.is_active {
        return Sent::Failed {
            status: None,
            error: "the endpoint is disabled".to_owned(),
            response: None,
            retry: false,
        };
    }
    let now = common::now();
    let body = body_for(deps, delivery, now);
    let secrets = endpoint.signing_secrets(now);
    let secrets: Vec<&webhooks::Secret> = secrets.iter().collect();
    let id = delivery.id.to_string();
    let signature = signature_header(&secrets, &id, now.timestamp(), body.as_bytes());
    match sender
        .post(&endpoint.url, &id, now.timestamp(), signature, body)
        .await
    {
        Ok((status, response)) if (200..300).contains(&status) => {
            Sent::Succeeded { status, response }
        }
        Ok((410, response)) => {
            let reason = "the endpoint answered 410 Gone";
            if let Err(err) = deps
                .db
                .webhook_endpoints()
                .disable(endpoint.id, reason)
                .await
            {
                warn!(endpoint = %endpoint.id, error = %err, "cannot disable a webhook endpoint that answered 410");
            }
            warn!(endpoint = %endpoint.id, "webhook endpoint answered 410 Gone; disabled");
            Sent::Failed {
                status: Some(410),
                error: format!("{reason}; it is now disabled"),
                response: Some(response),
                retry: false,
            }
        }
        Ok((status, response)) => Sent::Failed {
            status: Some(status),
            error: match status {
                300..400 => format!("the endpoint answered {status} (redirects are not followed)"),
                _ => format!("the endpoint answered {status}"),
            },
            response: Some(response),
            retry: true,
        },
        Err(error) => Sent::Failed {
            status: None,
            error,
            response: None,
            retry: true,
        },
    }
}

/// Sends the deliveries handed over by this worker's pipeline and claims and sends due
/// ones until `stop`, up to `WEBHOOK_CONCURRENCY` at a time; then gives back what was
/// handed over and not started, and lets the attempts in flight end (each is bounded by
/// `WEBHOOK_TIMEOUT_SECONDS`). Outcomes are recorded together ([`RECORD_BATCH`],
/// [`RECORD_WINDOW`]), and each claim reads every endpoint it needs once: a delivery costs
/// the database little more than its own row.
///
/// `handed` is what [`Handoff::open`] gave, before this worker's pipeline started.
pub async fn run(
    deps: Arc<Deps>,
    mut handed: Option<mpsc::UnboundedReceiver<Handed>>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = deps.settings.webhooks.clone();
    let sender = match Sender::new(&settings) {
        Ok(sender) => sender,
        Err(err) => {
            warn!(error = %err, "cannot build the webhook client; this worker sends no webhooks");
            give_back(&deps, handed.as_mut(), VecDeque::new()).await;
            return;
        }
    };
    let mut poll = tokio::time::interval(settings.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending: JoinSet<Done> = JoinSet::new();
    let mut waiting: VecDeque<Handed> = VecDeque::new();
    let mut ended: Vec<Done> = Vec::new();
    let mut record_by: Option<tokio::time::Instant> = None;
    let mut last_claim_full = false;
    loop {
        let (mut polled, mut some_ended) = (false, false);
        tokio::select! {
            _ = stop.changed() => break,
            Some(first) = receive(&mut handed) => {
                waiting.push_back(first);
                while let Some(next) = handed.as_mut().and_then(|h| h.try_recv().ok()) {
                    waiting.push_back(next);
                }
            }
            Some(first) = sending.join_next(), if !sending.is_empty() => {
                ended.extend(first.ok());
                while let Some(next) = sending.try_join_next() {
                    ended.extend(next.ok());
                }
                some_ended = true;
            }
            _ = sleep_until(record_by), if record_by.is_some() => {}
            _ = poll.tick() => polled = true,
        }
        while sending.len() < settings.concurrency {
            let Some(next) = waiting.pop_front() else {
                break;
            };
            // One that waited so long here that its lease would end mid-attempt is left to
            // be claimed when it does.
            let latest = common::now() + settings.timeout;
            if next
                .delivery
                .next_attempt_at
                .is_some_and(|lease| lease < latest)
            {
                continue;
            }
            let endpoint = Arc::new(next.endpoint);
            sending.spawn(deliver(
                deps.clone(),
                sender.clone(),
                next.delivery,
                endpoint,
            ));
        }
        deps.hooks.waiting.store(waiting.len(), Ordering::Relaxed);
        if !ended.is_empty() {
            let now = tokio::time::Instant::now();
            if ended.len() >= RECORD_BATCH || record_by.is_some_and(|at| at <= now) {
                record(&deps, std::mem::take(&mut ended)).await;
                record_by = None;
            } else if record_by.is_none() {
                record_by = Some(now + RECORD_WINDOW);
            }
        }
        // Claims on the poll, and straight after attempts end while the last claim took
        // all it could (a backlog).
        if !(polled || some_ended && last_claim_full) {
            continue;
        }
        let free = settings
            .concurrency
            .saturating_sub(sending.len() + waiting.len());
        if free == 0 {
            continue;
        }
        let lease = common::now() + settings.timeout + LEASE_MARGIN;
        let claimed = match deps.db.webhook_deliveries().claim(free as i64, lease).await {
            Ok(claimed) => claimed,
            Err(err) => {
                last_claim_full = false;
                warn!(error = %err, "cannot claim webhook deliveries");
                continue;
            }
        };
        last_claim_full = claimed.len() == free;
        let mut endpoints: HashMap<Uuid, Option<Arc<Endpoint>>> = HashMap::new();
        for delivery in claimed {
            let endpoint = match endpoints.get(&delivery.endpoint_id) {
                Some(endpoint) => endpoint.clone(),
                None => {
                    let found = deps
                        .db
                        .webhook_endpoints()
                        .find(delivery.endpoint_id, None)
                        .await;
                    let endpoint = match found {
                        Ok(endpoint) => endpoint.map(Arc::new),
                        Err(err) => {
                            warn!(delivery = %delivery.id, error = %err,
                                "cannot read a webhook endpoint; the delivery is tried again when its lease ends");
                            continue;
                        }
                    };
                    endpoints.insert(delivery.endpoint_id, endpoint.clone());
                    endpoint
                }
            };
            // An endpoint deleted since took its deliveries with it.
            if let Some(endpoint) = endpoint {
                sending.spawn(deliver(deps.clone(), sender.clone(), delivery, endpoint));
            }
        }
    }
    give_back(&deps, handed.as_mut(), waiting).await;
    // Attempts in flight end within their timeout; what ended is recorded, what did not is
    // sent again when its lease ends.
    let deadline = tokio::time::Instant::now() + settings.timeout + Duration::from_secs(1);
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, sending.join_next()).await {
        ended.extend(next.ok());
    }
    record(&deps, ended).await;
}

/// Stops the handoff and gives back the deliveries handed over and not started (`waiting`,
/// and what is still in `handed`): due now, for any worker.
async fn give_back(
    deps: &Deps,
    handed: Option<&mut mpsc::UnboundedReceiver<Handed>>,
    mut waiting: VecDeque<Handed>,
) {
    deps.hooks.open.store(false, Ordering::Release);
    if let Some(handed) = handed {
        handed.close();
        while let Ok(next) = handed.try_recv() {
            waiting.push_back(next);
        }
    }
    let unsent: Vec<(Uuid, i32)> = waiting
        .iter()
        .map(|h| (h.delivery.id, h.delivery.claims))
        .collect();
    if let Err(err) = deps.db.webhook_deliveries().release(&unsent).await {
        warn!(count = unsent.len(), error = %err,
            "cannot give back unsent webhook deliveries; they are sent when their lease ends");
    }
}

/// The next delivery handed over, when there is a handoff to read.
async fn receive(handed: &mut Option<mpsc::UnboundedReceiver<Handed>>) -> Option<Handed> {
    match handed {
        Some(handed) => handed.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits until `at` (a `select!` branch guarded by `at` being set).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> common::settings::WebhookSettings {
        common::settings::WebhookSettings {
            timeout: Duration::from_secs(10),
            retry_schedule: vec![Duration::from_secs(1)],
            allow_private_networks: true,
            link_ttl: Duration::from_secs(3600),
            secret_overlap: Duration::from_secs(86400),
            concurrency: 4,
            poll_interval: Duration::from_millis(200),
            log_retention_days: 30,
        }
    }

    #[test]
    fn the_handoff_leases_only_while_its_dispatcher_runs_and_keeps_up() {
        let handoff = Handoff::new(&settings());
        assert_eq!(
            handoff.lease(),
            None,
            "no dispatcher yet: deliveries are left to claims"
        );
        assert!(handoff.open().is_some());
        assert!(handoff.open().is_none(), "one dispatcher reads the handoff");
        let before = common::now();
        let lease = handoff
            .lease()
            .expect("a running dispatcher takes deliveries");
        let term = chrono::TimeDelta::from_std(Duration::from_secs(10) + LEASE_MARGIN).unwrap();
        assert!(lease >= before + term && lease <= common::now() + term);

        handoff.waiting.store(HANDOFF_LIMIT - 1, Ordering::Relaxed);
        assert!(handoff.lease().is_some());
        handoff.waiting.store(HANDOFF_LIMIT, Ordering::Relaxed);
        assert_eq!(
            handoff.lease(),
            None,
            "a full handoff leaves deliveries to claims"
        );
        handoff.waiting.store(0, Ordering::Relaxed);
        handoff.open.store(false, Ordering::Release);
        assert_eq!(handoff.lease(), None, "a stopped dispatcher takes no more");
    }

    #[test]
    fn a_pair_goes_into_the_data_of_an_event_as_written() {
        let timings = serde_json::json!({"render_ms": 3, "nested": {"deep": "}}"}});
        let data = serde_json::json!({"id": "d1", "note": "a \"quoted\" }}", "timings": timings});
        let event = common::db::webhooks::payload(EventType::DocumentReady, common::now(), &data);
        let url = "https://example.com/download?exp=1&sig=a\"b";
        let with: serde_json::Value =
            serde_json::from_str(&with_in_data(&event, "download_url", url)).unwrap();
        let mut expected: serde_json::Value = serde_json::from_str(&event).unwrap();
        expected["data"]["download_url"] = url.into();
        assert_eq!(with, expected);

        // Another shape is parsed: `data` not last, or empty.
        let other = r#"{"data":{"id":"d1"},"type":"document.ready"}"#;
        let with: serde_json::Value = serde_json::from_str(&with_in_data(other, "k", "v")).unwrap();
        assert_eq!(
            with,
            serde_json::json!({"data": {"id": "d1", "k": "v"}, "type": "document.ready"})
        );
        let empty = r#"{"type":"document.ready","data":{}}"#;
        let with: serde_json::Value = serde_json::from_str(&with_in_data(empty, "k", "v")).unwrap();
        assert_eq!(
            with,
            serde_json::json!({"type": "document.ready", "data": {"k": "v"}})
        );
    }
}
