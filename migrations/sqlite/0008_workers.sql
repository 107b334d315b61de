-- Workers register themselves and heartbeat, so operators see which are live, which went
-- stale (stopped heartbeating without saying goodbye) and which were drained.
CREATE TABLE workers (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    concurrency  INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    stopped_at   TEXT,
    in_flight    INTEGER NOT NULL DEFAULT 0,
    processed    INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX ix_workers_last_seen ON workers (last_seen_at);

-- The operators' view counts documents finished per minute over the last quarter hour.
CREATE INDEX ix_generated_documents_finished ON generated_documents (finished_at);
