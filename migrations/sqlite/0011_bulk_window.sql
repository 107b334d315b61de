-- The feeder counts the bulk documents in the window (on the queue or rendering) at every
-- top-up: a partial index over those few rows, so the count does not scan the thousands
-- still waiting.
CREATE INDEX ix_generated_documents_bulk_window ON generated_documents (owner_id)
    WHERE priority = 'bulk' AND status IN ('queued', 'processing') AND lease_until IS NOT NULL;
