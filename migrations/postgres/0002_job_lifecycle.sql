-- The job lifecycle: a lease after which the reconciler re-enqueues a row, and
-- idempotent generation (the same Idempotency-Key from the same owner within 24 h returns
-- the same document).
ALTER TABLE generated_documents ADD COLUMN lease_until TIMESTAMPTZ;
ALTER TABLE generated_documents ADD COLUMN idempotency_key TEXT;
ALTER TABLE generated_documents ADD COLUMN request_hash TEXT;
CREATE INDEX ix_generated_documents_lease ON generated_documents (status, lease_until);
CREATE UNIQUE INDEX uq_generated_documents_idempotency ON generated_documents (owner_id, idempotency_key);
