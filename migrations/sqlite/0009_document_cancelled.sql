-- A queued document can be cancelled (POST /documents/{id}/cancel): `cancelled` is a
-- terminal status like `ready` and `failed`, and a retry puts it back to `queued`.
-- SQLite cannot change a CHECK constraint in place: the table is rebuilt (SQLite's
-- documented procedure), with every column and index the earlier migrations gave it.
-- The trigger on policies that writes to this table is dropped first and made again
-- last, so the rename never meets a trigger naming a table that is not there.
DROP TRIGGER tr_policies_delete_documents;

CREATE TABLE generated_documents_new (
    id                  BLOB PRIMARY KEY,
    owner_id            BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document_type       TEXT NOT NULL,
    status              TEXT NOT NULL
        CHECK (status IN ('queued', 'processing', 'ready', 'failed', 'cancelled')),
    output_format       TEXT NOT NULL,
    mime_type           TEXT NOT NULL,
    template_version_id BLOB REFERENCES template_versions (id) ON DELETE SET NULL,
    policy_id           BLOB,
    inline_context      TEXT NOT NULL,
    compress            BOOLEAN NOT NULL,
    encrypt             BOOLEAN NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    storage_key         TEXT,
    size_bytes          INTEGER,
    stored_bytes        INTEGER,
    checksum            TEXT,
    timings             TEXT,
    request_id          TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    updated_at          TEXT NOT NULL,
    lease_until         TEXT,
    idempotency_key     TEXT,
    request_hash        TEXT,
    uses_template       BOOLEAN NOT NULL DEFAULT FALSE,
    preview             BOOLEAN NOT NULL DEFAULT FALSE
);

INSERT INTO generated_documents_new (
    id, owner_id, document_type, status, output_format, mime_type, template_version_id,
    policy_id, inline_context, compress, encrypt, attempts, error, storage_key, size_bytes,
    stored_bytes, checksum, timings, request_id, created_at, started_at, finished_at,
    updated_at, lease_until, idempotency_key, request_hash, uses_template, preview)
SELECT
    id, owner_id, document_type, status, output_format, mime_type, template_version_id,
    policy_id, inline_context, compress, encrypt, attempts, error, storage_key, size_bytes,
    stored_bytes, checksum, timings, request_id, created_at, started_at, finished_at,
    updated_at, lease_until, idempotency_key, request_hash, uses_template, preview
FROM generated_documents;

DROP TABLE generated_documents;
ALTER TABLE generated_documents_new RENAME TO generated_documents;

CREATE INDEX ix_generated_documents_owner ON generated_documents (owner_id, created_at);
CREATE INDEX ix_generated_documents_status ON generated_documents (status, updated_at);
CREATE INDEX ix_generated_documents_policy ON generated_documents (policy_id);
CREATE INDEX ix_generated_documents_lease ON generated_documents (status, lease_until);
CREATE UNIQUE INDEX uq_generated_documents_idempotency ON generated_documents (owner_id, idempotency_key);
CREATE INDEX ix_generated_documents_preview ON generated_documents (created_at) WHERE preview;
CREATE INDEX ix_generated_documents_finished ON generated_documents (finished_at);

CREATE TRIGGER tr_policies_delete_documents AFTER DELETE ON policies
BEGIN
    UPDATE generated_documents SET policy_id = NULL WHERE policy_id = OLD.id;
END;
