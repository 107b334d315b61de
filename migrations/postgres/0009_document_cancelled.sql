-- A queued document can be cancelled (POST /documents/{id}/cancel): `cancelled` is a
-- terminal status like `ready` and `failed`, and a retry puts it back to `queued`.
ALTER TABLE generated_documents DROP CONSTRAINT generated_documents_status_check;
ALTER TABLE generated_documents ADD CONSTRAINT generated_documents_status_check
    CHECK (status IN ('queued', 'processing', 'ready', 'failed', 'cancelled'));
