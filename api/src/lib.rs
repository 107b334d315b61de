//! The MONASSURANCE HTTP API.
//!
//! # Layout
//! - [`Application`]: builds the state, binds the listener (port 0 allowed, for tests) and
//!   serves until a shutdown signal, optionally with the document worker in-process (the
//!   embedded mode).
//! - [`routes`]: one module per resource; a route's URL names its module. Handlers
//!   extract, call the service layer, and map its answer to HTTP.
//! - [`service`]: the business rules (access, accounts, documents, templates) between the
//!   handlers and the repositories.
//! - [`extract`]: JSON/query/path extractors with the API's error shape, and
//!   [`extract::AuthUser`].
//! - [`middleware`]: request id, logging and metrics, security headers, JSON errors, the
//!   generic rate limiter.
//! - [`error`]: [`error::ApiError`], the one error type handlers return.
//! - [`admin`]: creating the first admin (start-up bootstrap and the `create-admin`
//!   command).
//! - [`openapi`]: the OpenAPI description, `/docs` and its conventions.
//! - [`console`]: `/console`, the operators' page (static files; it uses the public API).

pub mod admin;
pub mod console;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use common::auth::TokenCodec;
use common::queue::JobQueue;
use common::signing::KeyRing;
use common::storage::Storage;
use common::telemetry::Metrics;
use common::{Db, Settings};
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

/// What every handler can reach.
pub struct AppInner {
    pub settings: Settings,
    pub db: Db,
    pub queue: JobQueue,
    pub storage: Storage,
    pub tokens: TokenCodec,
    pub keys: KeyRing,
    pub metrics: Metrics,
    /// `REQUEST_ID_HEADER`, parsed once.
    pub request_id_header: HeaderName,
    /// `PUBLIC_BASE_URL`, or `http://` and the bound address.
    pub public_base_url: String,
    /// The security headers every answer carries, computed once.
    pub security_headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether the document worker runs in this process (`monassurance-api all`).
    pub embedded_worker: bool,
    /// The rate limits' store: Redis when configured, else this process's memory.
    pub limiter: common::limits::Limiter,
    /// Documents accepted while the queue refused their job, for the outbox relay
    /// ([`common::maintenance::relay`]).
    pub outbox: Arc<common::maintenance::Outbox>,
    /// The number of queued documents, recounted at most every [`QUEUED_COUNT_TTL`] so
    /// backpressure costs one count per interval, not one per request.
    queued: tokio::sync::Mutex<Option<(std::time::Instant, i64)>>,
    /// Whether a top-up of the bulk window started by this process is running.
    feeding: std::sync::atomic::AtomicBool,
}

/// How stale the backpressure count may be.
const QUEUED_COUNT_TTL: std::time::Duration = std::time::Duration::from_millis(250);

impl AppInner {
    /// Asks the limiter about `key` in `scope`; a refusal is counted in
    /// `rate_limited_total{scope}` and answers 429 with `Retry-After`.
    pub async fn rate_limit(
        &self,
        scope: &'static str,
        key: &str,
        per_minute: u32,
        spend: common::limits::Spend,
    ) -> Result<(), error::ApiError> {
        self.limiter
            .check(&format!("{scope}:{key}"), per_minute, spend)
            .await
            .map_err(|common::limits::RetryAfter(seconds)| {
                self.metrics.rate_limited(scope);
                error::ApiError::too_many_requests(seconds)
            })
    }

    /// Tops up the bulk window now, in the background, so newly accepted bulk documents
    /// start without waiting for a worker's feeder to tick (see [`common::feeder`]). At
    /// most one top-up per process at a time; none while the queue is known to be down.
    pub fn feed_bulk_lane(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.outbox.in_outage() || self.feeding.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            let queue = &state.settings.queue;
            let result = common::feeder::top_up(
                &state.db,
                &state.queue,
                queue.bulk_window,
                queue.queued_lease,
            )
            .await;
            state.feeding.store(false, Ordering::Release);
            if let Err(err) = result {
                tracing::warn!(error = %format!("{err:#}"), "cannot top up the bulk window; the workers' feeders will");
            }
        });
    }

    /// The number of documents waiting in `queued` in the interactive lane, at most
    /// [`QUEUED_COUNT_TTL`] old. A batch running does not make single documents wait, so
    /// its items do not count against `MAX_QUEUED_DOCUMENTS`.
    pub async fn queued_count(&self) -> Result<i64, common::db::DbError> {
        let mut cached = self.queued.lock().await;
        match *cached {
            Some((counted_at, count)) if counted_at.elapsed() < QUEUED_COUNT_TTL => Ok(count),
            _ => {
                let count = self
                    .db
                    .documents()
                    .count_queued_in(common::model::Priority::Interactive)
                    .await?;
                *cached = Some((std::time::Instant::now(), count));
                Ok(count)
            }
        }
    }
}

/// The shared application state.
pub type AppState = Arc<AppInner>;

/// A built, bound, not yet running application.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    embedded_worker: bool,
}

impl Application {
    /// Connects to the database (migrating it; waiting while it does not answer), the queue
    /// and the object store, creates the bootstrap admin if configured, and binds
    /// `BIND_ADDR`. With `embedded_worker`, the document worker runs in this process too.
    pub async fn build(settings: Settings, embedded_worker: bool) -> anyhow::Result<Application> {
        let db = Db::open(&settings).await?;
        tokio::spawn(db.clone().watch_session_changes());
        admin::bootstrap(&db, &settings).await?;
        let redis = common::queue::connect_redis(&settings).await?;
        let queue = JobQueue::connect(&settings, redis.clone()).await?;
        let storage = Storage::open(&settings)?;
        let outbox = Arc::new(common::maintenance::Outbox::default());
        // A queue that lost what it held while no process watched (a Redis restarted
        // empty with this deployment down): its documents go to the outbox relay now.
        // On a fresh queue this only sets the marker the reconcilers watch.
        if queue.lost_its_jobs().await? && db.documents().expire_queued_leases().await? > 0 {
            outbox.defer();
        }
        let limiter = match redis {
            Some(conn) => common::limits::Limiter::with_redis(conn, &settings.queue.name),
            None => common::limits::Limiter::in_memory(),
        };
        let listener = TcpListener::bind(settings.http.bind_addr)
            .await
            .with_context(|| format!("cannot listen on BIND_ADDR {}", settings.http.bind_addr))?;
        let request_id_header = HeaderName::try_from(settings.http.request_id_header.as_str())
            .context("REQUEST_ID_HEADER is not a valid header name")?;
        let public_base_url = match &settings.http.public_base_url {
            Some(url) => url.clone(),
            None => format!("http://{}", listener.local_addr()?),
        };
        let state = Arc::new(AppInner {
            public_base_url,
            tokens: TokenCodec::new(&settings),
            keys: settings.auth.signature_keys.clone(),
            metrics: Metrics::new(),
            security_headers: middleware::security_header_list(&settings)?,
            request_id_header,
            queued: tokio::sync::Mutex::new(None),
            feeding: std::sync::atomic::AtomicBool::new(false),
            outbox,
            embedded_worker,
            limiter,
            settings,
            db,
            queue,
            storage,
        });
        Ok(Application {
            listener,
            state,
            embedded_worker,
        })
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The application state (tests use it to reach the database).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes in-flight requests
    /// and, in the embedded mode, drains the worker.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = self.embedded_worker.then(|| {
            // The in-process worker signs webhook download links on this API's address.
            let mut settings = state.settings.clone();
            settings.http.public_base_url = Some(state.public_base_url.clone());
            let deps = Arc::new(worker::Deps::new(
                settings,
                state.db.clone(),
                state.storage.clone(),
                state.metrics.clone(),
                state.queue.clone(),
            ));
            let mut rx = stop_rx.clone();
            tokio::spawn(worker::run(deps, async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }))
        });

        let relay = tokio::spawn(common::maintenance::relay(
            state.db.clone(),
            state.queue.clone(),
            state.settings.queue.queued_lease,
            state.outbox.clone(),
            stop_rx.clone(),
        ));

        let app = NormalizePathLayer::trim_trailing_slash().layer(routes::router(state.clone()));
        let service =
            axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
        tracing::info!(
            addr = %self.listener.local_addr()?,
            database = if state.settings.database.is_sqlite() { "sqlite" } else { "postgres" },
            queue = state.queue.backend_name(),
            limits = state.limiter.backend_name(),
            embedded_worker = self.embedded_worker,
            "MONASSURANCE API listening"
        );
        let mut rx = stop_rx;
        let server = axum::serve(self.listener, service).with_graceful_shutdown(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        });
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        server.await.context("the HTTP server failed")?;
        relay.await.context("the outbox relay panicked")?;
        if let Some(worker) = worker {
            worker.await.context("the worker task panicked")??;
        }
        state.db.close().await;
        Ok(())
    }
}
