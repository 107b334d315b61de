-- Users, sessions and refresh tokens, templates, generated documents and the audit log.
-- The Postgres twin of this file (migrations/postgres/0001_initial.sql) has the same tables,
-- columns and names; only the column types differ.

CREATE TABLE users (
    id              BLOB PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    full_name       TEXT,
    hashed_password TEXT NOT NULL,
    role            TEXT NOT NULL DEFAULT 'agent' CHECK (role IN ('admin', 'manager', 'agent')),
    is_active       BOOLEAN NOT NULL DEFAULT TRUE,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

-- A session is one login on one device: the family of refresh tokens that rotate from it.
CREATE TABLE auth_sessions (
    id           BLOB PRIMARY KEY,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_label TEXT,
    ip_address   TEXT,
    user_agent   TEXT,
    created_at   TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX ix_auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE refresh_tokens (
    id           BLOB PRIMARY KEY,
    user_id      BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id   BLOB NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    parent_id    BLOB REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    device_label TEXT,
    ip_address   TEXT,
    user_agent   TEXT,
    issued_at    TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT
);
CREATE INDEX ix_refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE templates (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL,
    template_type TEXT NOT NULL,
    format        TEXT NOT NULL CHECK (format IN ('html', 'pdf', 'xlsx')),
    scope         TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    options       TEXT NOT NULL,
    created_by    BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    CONSTRAINT uq_template_name_type_scope UNIQUE (name, template_type, scope)
);

CREATE TABLE template_versions (
    id              BLOB PRIMARY KEY,
    template_id     BLOB NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    storage_backend TEXT NOT NULL,
    content         TEXT NOT NULL,
    checksum        TEXT NOT NULL,
    created_by      BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    CONSTRAINT uq_template_version UNIQUE (template_id, version)
);

CREATE TABLE generated_documents (
    id                  BLOB PRIMARY KEY,
    owner_id            BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    document_type       TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    output_format       TEXT NOT NULL,
    mime_type           TEXT NOT NULL,
    template_version_id BLOB REFERENCES template_versions (id) ON DELETE SET NULL,
    policy_id           BLOB,
    inline_context      TEXT NOT NULL,
    compress            BOOLEAN NOT NULL,
    encrypt             BOOLEAN NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    storage_key         TEXT,
    size_bytes          INTEGER,
    stored_bytes        INTEGER,
    checksum            TEXT,
    timings             TEXT,
    request_id          TEXT,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    updated_at          TEXT NOT NULL
);
CREATE INDEX ix_generated_documents_owner ON generated_documents (owner_id, created_at);
CREATE INDEX ix_generated_documents_status ON generated_documents (status, updated_at);
CREATE INDEX ix_generated_documents_policy ON generated_documents (policy_id);

CREATE TABLE audit_logs (
    id             BLOB PRIMARY KEY,
    user_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    action         TEXT NOT NULL,
    object_type    TEXT,
    object_id      TEXT,
    ip_address     TEXT,
    user_agent     TEXT,
    request_id     TEXT,
    audit_metadata TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX ix_audit_logs_action_object_created ON audit_logs (action, object_type, created_at);
CREATE INDEX ix_audit_logs_user ON audit_logs (user_id);
