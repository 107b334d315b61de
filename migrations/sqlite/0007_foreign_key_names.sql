-- Foreign keys the application names (common/src/db/constraints.rs) refuse a write under
-- their Postgres name. SQLite reports every foreign-key refusal as "FOREIGN KEY constraint
-- failed", so a missing company would read exactly like a missing client. Each trigger
-- below refuses, just before the foreign key would, a write that key refuses, raising the
-- constraint's name. The foreign keys stay, and refuse anonymously whatever the triggers do
-- not cover (key columns the application never changes).
-- (Numbered 0006: Postgres' 0005 has no SQLite twin.)

CREATE TRIGGER tr_policies_client_id_fkey_insert BEFORE INSERT ON policies
WHEN NOT EXISTS (SELECT 1 FROM clients WHERE id = NEW.client_id)
BEGIN
    SELECT RAISE(ABORT, 'policies_client_id_fkey');
END;

CREATE TRIGGER tr_policies_client_id_fkey_update BEFORE UPDATE OF client_id ON policies
WHEN NEW.client_id IS NOT OLD.client_id
    AND NOT EXISTS (SELECT 1 FROM clients WHERE id = NEW.client_id)
BEGIN
    SELECT RAISE(ABORT, 'policies_client_id_fkey');
END;

-- ON DELETE RESTRICT.
CREATE TRIGGER tr_policies_client_id_fkey_delete BEFORE DELETE ON clients
WHEN EXISTS (SELECT 1 FROM policies WHERE client_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'policies_client_id_fkey');
END;

CREATE TRIGGER tr_policies_company_id_fkey_insert BEFORE INSERT ON policies
WHEN NEW.company_id IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM companies WHERE id = NEW.company_id)
BEGIN
    SELECT RAISE(ABORT, 'policies_company_id_fkey');
END;

CREATE TRIGGER tr_policies_company_id_fkey_update BEFORE UPDATE OF company_id ON policies
WHEN NEW.company_id IS NOT NULL AND NEW.company_id IS NOT OLD.company_id
    AND NOT EXISTS (SELECT 1 FROM companies WHERE id = NEW.company_id)
BEGIN
    SELECT RAISE(ABORT, 'policies_company_id_fkey');
END;

CREATE TRIGGER tr_template_versions_template_id_fkey_insert BEFORE INSERT ON template_versions
WHEN NOT EXISTS (SELECT 1 FROM templates WHERE id = NEW.template_id)
BEGIN
    SELECT RAISE(ABORT, 'template_versions_template_id_fkey');
END;

CREATE TRIGGER tr_template_versions_template_id_fkey_update BEFORE UPDATE OF template_id ON template_versions
WHEN NEW.template_id IS NOT OLD.template_id
    AND NOT EXISTS (SELECT 1 FROM templates WHERE id = NEW.template_id)
BEGIN
    SELECT RAISE(ABORT, 'template_versions_template_id_fkey');
END;
