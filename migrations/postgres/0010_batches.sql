-- Batches (POST /document-batches): one request for many documents. Each item is an
-- ordinary document row carrying its batch and its name in the archive (`reference`); the
-- batch's counts and status are read from its items, so finishing an item writes only the
-- item's row and a busy batch never becomes a hot row.
CREATE TABLE document_batches (
    id                  UUID PRIMARY KEY,
    owner_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document_type       TEXT NOT NULL,
    output_format       TEXT NOT NULL,
    template_version_id UUID REFERENCES template_versions (id) ON DELETE SET NULL,
    compress            BOOLEAN NOT NULL,
    encrypt             BOOLEAN NOT NULL,
    total               INTEGER NOT NULL,
    request_id          TEXT,
    idempotency_key     TEXT,
    request_hash        TEXT,
    created_at          TIMESTAMPTZ NOT NULL,
    cancelled_at        TIMESTAMPTZ
);
CREATE INDEX ix_document_batches_owner ON document_batches (owner_id, created_at);
CREATE UNIQUE INDEX uq_document_batches_idempotency ON document_batches (owner_id, idempotency_key);

-- Priority lanes: an `interactive` document goes to the queue at once; a `bulk` one waits
-- with no lease (`lease_until IS NULL`) until the feeder gives it a place in the bulk
-- window, sharing that window fairly between owners.
ALTER TABLE generated_documents ADD COLUMN batch_id UUID REFERENCES document_batches (id) ON DELETE CASCADE;
ALTER TABLE generated_documents ADD COLUMN reference TEXT;
ALTER TABLE generated_documents ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive'
    CHECK (priority IN ('interactive', 'bulk'));
CREATE INDEX ix_generated_documents_batch ON generated_documents (batch_id, status);
CREATE INDEX ix_generated_documents_bulk_waiting ON generated_documents (owner_id, id)
    WHERE priority = 'bulk' AND status = 'queued' AND lease_until IS NULL;
