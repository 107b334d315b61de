-- Template previews are rendered by a worker like any document: a preview is a short-lived
-- row the API waits for, answers and deletes. Lists never show one, and a preview whose
-- requester went away is swept by the workers' maintenance.
ALTER TABLE generated_documents ADD COLUMN preview BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX ix_generated_documents_preview ON generated_documents (created_at) WHERE preview;
