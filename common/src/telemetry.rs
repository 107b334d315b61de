//! Logging and metrics.
//!
//! Logs go through `tracing`: human-readable by default, one JSON object per line with
//! `LOG_JSON=true`. Metrics live in one prometheus-client registry per process, shared by
//! the API and the in-process worker; routes are labelled by their template
//! (`/api/v1/documents/{id}`), never by the raw path, so cardinality stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

use crate::Settings;

/// Installs the global tracing subscriber. Safe to call more than once (tests do).
pub fn init_tracing(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if settings.log.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocumentLabels {
    pub format: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    /// `interactive` or `bulk`.
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    /// `created`, `cancelled`, `retried` or `deleted`.
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The event type (`document.ready`, …).
    pub event: String,
    /// `succeeded`, `retried` (an attempt failed, another follows) or `failed` (given up).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub format: String,
    pub stage: String,
}

/// Every metric the API and the worker record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: String,
}

/// The content type of [`Metrics::encode`]'s output, for `/metrics` answers.
pub const EXPOSITION: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub documents: Family<DocumentLabels, Counter>,
    pub document_stage: Family<StageLabels, Histogram>,
    pub queue_depth: Gauge,
    /// Documents waiting, by lane.
    pub lane_depth: Family<LaneLabels, Gauge>,
    /// Time from request to the start of the first attempt, by lane.
    pub queue_wait: Family<LaneLabels, Histogram>,
    /// Batches by what happened to them.
    pub batches: Family<BatchLabels, Counter>,
    /// Items of the batches accepted.
    pub batch_items: Counter,
    /// Lost jobs enqueued again by the reconciler.
    pub reconciled: Counter,
    /// Documents accepted while the queue refused their job: kept, and enqueued by the
    /// outbox relay once the queue answers.
    pub deferred: Counter,
    /// PDF engine processes killed and replaced (timeout, crash), and retired after their
    /// job quota: counters following the engine's own (see [`Metrics::engine_totals`]).
    pub engine_restarts: Counter,
    pub engine_recycled: Counter,
    /// The engine totals already counted: restarts, recycled.
    engine_counted: Arc<[AtomicU64; 2]>,
    /// Requests refused with 429, by limiter scope (`login_ip`, `login_account`, `auth`,
    /// `default`, `download_user`, `download_link`).
    pub rate_limited: Family<ScopeLabels, Counter>,
    /// Webhook delivery attempts, by event and outcome.
    pub webhook_deliveries: Family<WebhookLabels, Counter>,
    /// How long endpoints took to answer an attempt (or to fail it).
    pub webhook_duration: Histogram,
    /// Webhook deliveries not yet sent or given up.
    pub webhook_pending: Gauge,
    /// Workers that heartbeated recently (set when the API is scraped).
    pub workers_live: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        let documents = Family::<DocumentLabels, Counter>::default();
        let document_stage = Family::<StageLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 18))) as fn() -> Histogram,
        );
        let queue_depth = Gauge::default();
        let lane_depth = Family::<LaneLabels, Gauge>::default();
        let queue_wait = Family::<LaneLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.0, 18))) as fn() -> Histogram,
        );
        let batches = Family::<BatchLabels, Counter>::default();
        let batch_items = Counter::default();
        let reconciled = Counter::default();
        let deferred = Counter::default();
        let engine_restarts = Counter::default();
        let engine_recycled = Counter::default();
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by limiter scope",
            rate_limited.clone(),
        );
        registry.register(
            "pdf_engine_restarts",
            "wkhtmltopdf processes killed and replaced after a timeout or crash",
            engine_restarts.clone(),
        );
        registry.register(
            "pdf_engine_recycled",
            "wkhtmltopdf processes retired after their job quota",
            engine_recycled.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template",
            http_duration.clone(),
        );
        registry.register(
            "documents",
            "Document jobs finished, by output format and outcome",
            documents.clone(),
        );
        registry.register(
            "document_stage_seconds",
            "Time spent in each stage of a document job",
            document_stage.clone(),
        );
        registry.register(
            "queue_depth",
            "Documents waiting in the queue",
            queue_depth.clone(),
        );
        registry.register(
            "queue_lane_depth",
            "Documents waiting, by priority lane",
            lane_depth.clone(),
        );
        registry.register(
            "document_queue_wait_seconds",
            "Time from a document request to the start of its first attempt, by lane",
            queue_wait.clone(),
        );
        registry.register(
            "document_batches",
            "Document batches created, cancelled, retried and deleted",
            batches.clone(),
        );
        registry.register(
            "document_batch_items",
            "Items of the document batches accepted",
            batch_items.clone(),
        );
        registry.register(
            "documents_reconciled",
            "Lost jobs enqueued again by the reconciler",
            reconciled.clone(),
        );
        registry.register(
            "documents_deferred",
            "Documents accepted while the queue refused their job, enqueued once it answered",
            deferred.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        let webhook_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let webhook_pending = Gauge::default();
        let workers_live = Gauge::default();
        registry.register(
            "workers_live",
            "Workers that heartbeated within three heartbeat intervals",
            workers_live.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by event and outcome (succeeded, retried, failed)",
            webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_delivery_duration_seconds",
            "Time from sending a webhook delivery to its endpoint's answer (or the attempt's failure)",
            webhook_duration.clone(),
        );
        registry.register(
            "webhook_deliveries_pending",
            "Webhook deliveries waiting to be sent or retried",
            webhook_pending.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            webhook_deliveries,
            webhook_duration,
            webhook_pending,
            workers_live,
            queue_wait,
            lane_depth,
            batches,
            batch_items,
            reconciled,
            deferred,
            engine_restarts,
            engine_recycled,
            engine_counted: Arc::new([AtomicU64::new(0), AtomicU64::new(0)]),
            rate_limited,
            http_requests,
            http_duration,
            documents,
            document_stage,
            queue_depth,
        }
    }

    /// The OpenMetrics text exposition of every metric (what prometheus-client writes:
    /// counters named `…_total`, a closing `# EOF`), to be served with [`EXPOSITION`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts a finished document job.
    pub fn document_finished(&self, format: &str, outcome: &str) {
        self.documents_finished(format, outcome, 1);
    }

    /// Counts `count` document jobs finished the same way (a batch's items cancelled).
    pub fn documents_finished(&self, format: &str, outcome: &str, count: u64) {
        self.documents
            .get_or_create(&DocumentLabels {
                format: format.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc_by(count);
    }

    /// Records how long a document waited in its lane before its first attempt.
    pub fn waited(&self, lane: &str, seconds: f64) {
        self.queue_wait
            .get_or_create(&LaneLabels {
                lane: lane.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts something done to a batch.
    pub fn batch_event(&self, event: &str) {
        self.batches
            .get_or_create(&BatchLabels {
                event: event.to_owned(),
            })
            .inc();
    }

    /// Sets the number of documents waiting in each lane.
    pub fn set_lane_depths(&self, depths: &[(String, i64)]) {
        for lane in ["interactive", "bulk"] {
            let depth = depths
                .iter()
                .find(|(name, _)| name == lane)
                .map_or(0, |(_, n)| *n);
            self.lane_depth
                .get_or_create(&LaneLabels {
                    lane: lane.to_owned(),
                })
                .set(depth);
        }
    }

    /// Counts a request refused by a rate limiter.
    pub fn rate_limited(&self, scope: &str) {
        self.rate_limited
            .get_or_create(&ScopeLabels {
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// Brings the PDF engine counters up to the engine's own totals. Concurrent callers
    /// never count the same restart twice: each counts only past what was counted before.
    pub fn engine_totals(&self, restarts: u64, recycled: u64) {
        for (i, (total, counter)) in [
            (restarts, &self.engine_restarts),
            (recycled, &self.engine_recycled),
        ]
        .into_iter()
        .enumerate()
        {
            let before = self.engine_counted[i].fetch_max(total, Ordering::Relaxed);
            if total > before {
                counter.inc_by(total - before);
            }
        }
    }

    /// Counts a webhook delivery attempt and how long it took.
    pub fn webhook_attempt(&self, event: &str, outcome: &str, seconds: f64) {
        self.webhook_deliveries
            .get_or_create(&WebhookLabels {
                event: event.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.webhook_duration.observe(seconds);
    }

    /// Records the time one stage of a job took.
    pub fn stage(&self, format: &str, stage: &str, seconds: f64) {
        self.document_stage
            .get_or_create(&StageLabels {
                format: format.to_owned(),
                stage: stage.to_owned(),
            })
            .observe(seconds);
    }
}
