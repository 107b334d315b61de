-- Insurers, the brokers' clients and their policies.
-- The Postgres twin of this file (migrations/postgres/0004_business.sql) has the same tables,
-- columns and names; only the column types differ.

CREATE TABLE companies (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    code         TEXT NOT NULL UNIQUE,
    api_mode     BOOLEAN NOT NULL DEFAULT FALSE,
    api_endpoint TEXT,
    api_key      TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- A client belongs to the user who created it; agents see only their own.
CREATE TABLE clients (
    id         BLOB PRIMARY KEY,
    owner_id   BLOB NOT NULL REFERENCES users (id),
    first_name TEXT NOT NULL,
    last_name  TEXT NOT NULL,
    email      TEXT,
    phone      TEXT,
    address    TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX ix_clients_owner ON clients (owner_id, created_at);

-- RESTRICT: a client with policies cannot be deleted (the API answers 409), instead of
-- the original's cascade that silently took the policies with it.
CREATE TABLE policies (
    id             BLOB PRIMARY KEY,
    policy_number  TEXT NOT NULL UNIQUE,
    client_id      BLOB NOT NULL REFERENCES clients (id) ON DELETE RESTRICT,
    company_id     BLOB REFERENCES companies (id) ON DELETE SET NULL,
    product_name   TEXT NOT NULL,
    premium_amount INTEGER NOT NULL,
    effective_date TEXT NOT NULL,
    expiry_date    TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'expired', 'cancelled')),
    currency       TEXT NOT NULL DEFAULT 'XAF',
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    CHECK (expiry_date > effective_date)
);
CREATE INDEX ix_policies_client ON policies (client_id);
CREATE INDEX ix_policies_company ON policies (company_id);

-- A document keeps pointing at a real policy: deleting the policy clears the reference
-- (the document itself stays). SQLite cannot add a foreign key to an existing table
-- without rebuilding it, so this trigger gives generated_documents.policy_id the same
-- ON DELETE SET NULL behaviour as the Postgres constraint; the API only ever writes
-- policy ids it has just checked, and ix_generated_documents_policy keeps the lookup cheap.
UPDATE generated_documents SET policy_id = NULL WHERE policy_id IS NOT NULL;
CREATE TRIGGER tr_policies_delete_documents AFTER DELETE ON policies
BEGIN
    UPDATE generated_documents SET policy_id = NULL WHERE policy_id = OLD.id;
END;
