-- Insurers, the brokers' clients and their policies.
-- The SQLite twin of this file (migrations/sqlite/0004_business.sql) has the same tables,
-- columns and names; only the column types differ.

CREATE TABLE companies (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    code         TEXT NOT NULL UNIQUE,
    api_mode     BOOLEAN NOT NULL DEFAULT FALSE,
    api_endpoint TEXT,
    api_key      TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- A client belongs to the user who created it; agents see only their own.
CREATE TABLE clients (
    id         UUID PRIMARY KEY,
    owner_id   UUID NOT NULL REFERENCES users (id),
    first_name TEXT NOT NULL,
    last_name  TEXT NOT NULL,
    email      TEXT,
    phone      TEXT,
    address    TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_clients_owner ON clients (owner_id, created_at);

-- RESTRICT: a client with policies cannot be deleted (the API answers 409), instead of
-- the original's cascade that silently took the policies with it.
CREATE TABLE policies (
    id             UUID PRIMARY KEY,
    policy_number  TEXT NOT NULL UNIQUE,
    client_id      UUID NOT NULL REFERENCES clients (id) ON DELETE RESTRICT,
    company_id     UUID REFERENCES companies (id) ON DELETE SET NULL,
    product_name   TEXT NOT NULL,
    premium_amount BIGINT NOT NULL,
    effective_date TIMESTAMPTZ NOT NULL,
    expiry_date    TIMESTAMPTZ NOT NULL,
    status         TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'expired', 'cancelled')),
    currency       TEXT NOT NULL DEFAULT 'XAF',
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    CHECK (expiry_date > effective_date)
);
CREATE INDEX ix_policies_client ON policies (client_id);
CREATE INDEX ix_policies_company ON policies (company_id);

-- A document keeps pointing at a real policy: deleting the policy clears the reference
-- (the document itself stays). No policy could be named before this migration, so any
-- leftover value is cleared first.
UPDATE generated_documents SET policy_id = NULL WHERE policy_id IS NOT NULL;
ALTER TABLE generated_documents
    ADD CONSTRAINT fk_generated_documents_policy
    FOREIGN KEY (policy_id) REFERENCES policies (id) ON DELETE SET NULL;
