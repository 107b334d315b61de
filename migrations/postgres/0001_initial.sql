-- Users, sessions and refresh tokens, templates, generated documents and the audit log.
-- The SQLite twin of this file (migrations/sqlite/0001_initial.sql) has the same tables,
-- columns and names; only the column types differ.

CREATE TABLE users (
    id              UUID PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    full_name       TEXT,
    hashed_password TEXT NOT NULL,
    role            TEXT NOT NULL DEFAULT 'agent' CHECK (role IN ('admin', 'manager', 'agent')),
    is_active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

-- A session is one login on one device: the family of refresh tokens that rotate from it.
CREATE TABLE auth_sessions (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_label TEXT,
    ip_address   TEXT,
    user_agent   TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX ix_auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE refresh_tokens (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id   UUID NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    parent_id    UUID REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    device_label TEXT,
    ip_address   TEXT,
    user_agent   TEXT,
    issued_at    TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX ix_refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE templates (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    template_type TEXT NOT NULL,
    format        TEXT NOT NULL CHECK (format IN ('html', 'pdf', 'xlsx')),
    scope         TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    options       JSONB NOT NULL,
    created_by    UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_template_name_type_scope UNIQUE (name, template_type, scope)
);

CREATE TABLE template_versions (
    id              UUID PRIMARY KEY,
    template_id     UUID NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    storage_backend TEXT NOT NULL,
    content         TEXT NOT NULL,
    checksum        TEXT NOT NULL,
    created_by      UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_template_version UNIQUE (template_id, version)
);

CREATE TABLE generated_documents (
    id                  UUID PRIMARY KEY,
    owner_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document_type       TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    output_format       TEXT NOT NULL,
    mime_type           TEXT NOT NULL,
    template_version_id UUID REFERENCES template_versions (id) ON DELETE SET NULL,
    policy_id           UUID,
    inline_context      JSONB NOT NULL,
    compress            BOOLEAN NOT NULL,
    encrypt             BOOLEAN NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    storage_key         TEXT,
    size_bytes          BIGINT,
    stored_bytes        BIGINT,
    checksum            TEXT,
    timings             JSONB,
    request_id          TEXT,
    created_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_generated_documents_owner ON generated_documents (owner_id, created_at);
CREATE INDEX ix_generated_documents_status ON generated_documents (status, updated_at);
CREATE INDEX ix_generated_documents_policy ON generated_documents (policy_id);

CREATE TABLE audit_logs (
    id             UUID PRIMARY KEY,
    user_id        UUID REFERENCES users (id) ON DELETE SET NULL,
    action         TEXT NOT NULL,
    object_type    TEXT,
    object_id      TEXT,
    ip_address     TEXT,
    user_agent     TEXT,
    request_id     TEXT,
    audit_metadata JSONB,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX ix_audit_logs_action_object_created ON audit_logs (action, object_type, created_at);
CREATE INDEX ix_audit_logs_user ON audit_logs (user_id);
CREATE INDEX ix_audit_logs_metadata ON audit_logs USING GIN (audit_metadata);
