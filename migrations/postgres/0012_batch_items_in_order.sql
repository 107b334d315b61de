-- The archive walks a batch's items in order, a page at a time (`batch_id = ? AND id > ?
-- ORDER BY id`): without this index each page read and sorted every item of the batch
-- (on SQLite: 10,000 rows and a sort for each page of 500, and the sorter's memory kept).
CREATE INDEX ix_generated_documents_batch_items ON generated_documents (batch_id, id);
