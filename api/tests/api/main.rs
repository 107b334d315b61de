//! Integration tests: the real application, on the embedded default and on Postgres +
//! Redis with a separate worker process. One binary, one module per area.

mod helpers;

mod audit;
mod auth;
mod batches;
mod business;
mod cancel_retry;
mod cli;
mod console;
mod documents;
mod formats;
mod lifecycle;
mod limits;
mod monitoring;
mod ops;
mod outages;
mod processes;
mod sessions;
mod templates;
mod updates;
mod users;
mod webhooks;
mod workers;
