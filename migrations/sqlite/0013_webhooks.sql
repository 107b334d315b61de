-- Webhooks (/api/v1/webhooks): endpoints an integrator registers, and one delivery row per
-- event and endpoint. A delivery is written in the transaction that changes the document
-- or batch it tells of, so no committed change can lose its event; workers claim due
-- deliveries (`next_attempt_at` doubles as the lease of an attempt in flight), send them
-- signed as Standard Webhooks says, and record each attempt's outcome.
CREATE TABLE webhook_endpoints (
    id                     BLOB PRIMARY KEY,
    owner_id               BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url                    TEXT NOT NULL,
    description            TEXT,
    -- A JSON array of event names, or ["*"].
    events                 TEXT NOT NULL,
    -- 'own': the owner's documents and batches; 'all': everyone's (admins only).
    scope                  TEXT NOT NULL DEFAULT 'own' CHECK (scope IN ('own', 'all')),
    is_active              BOOLEAN NOT NULL DEFAULT TRUE,
    -- Why the endpoint was turned off by the platform (it answered 410 Gone).
    disabled_reason        TEXT,
    secret                 TEXT NOT NULL,
    -- After a rotation, the former secret signs beside the new one until this time.
    previous_secret        TEXT,
    previous_secret_until  TEXT,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);
CREATE INDEX ix_webhook_endpoints_owner ON webhook_endpoints (owner_id, created_at);
CREATE INDEX ix_webhook_endpoints_all ON webhook_endpoints (created_at) WHERE scope = 'all';

CREATE TABLE webhook_deliveries (
    id               BLOB PRIMARY KEY,
    endpoint_id      BLOB NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_type       TEXT NOT NULL,
    -- The document or batch the event is about.
    object_id        BLOB,
    -- The event as first written: {"type", "timestamp", "data"}.
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Attempts in the current schedule (a redelivery starts it again).
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Claims ever made, never reset: only the attempt of the latest claim records its
    -- outcome, even across a redelivery.
    claims           INTEGER NOT NULL DEFAULT 0,
    -- When a pending delivery is next due; while an attempt runs, when it is due again
    -- should its worker die.
    next_attempt_at  TEXT,
    last_status_code INTEGER,
    last_error       TEXT,
    -- The start of the last answer's body.
    last_response    TEXT,
    created_at       TEXT NOT NULL,
    delivered_at     TEXT,
    updated_at       TEXT NOT NULL
);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX ix_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
-- The operators' view: deliveries whose last attempt failed.
CREATE INDEX ix_webhook_deliveries_failing ON webhook_deliveries (updated_at) WHERE last_error IS NOT NULL;
