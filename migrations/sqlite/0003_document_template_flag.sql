-- Whether a document was asked for with a template. Deleting a template sets the
-- documents' template_version_id to NULL; without this flag a queued document would then
-- silently render with the built-in layout instead of failing.
ALTER TABLE generated_documents ADD COLUMN uses_template BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE generated_documents SET uses_template = TRUE WHERE template_version_id IS NOT NULL;
