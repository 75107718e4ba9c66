-- Core schema, version 1. Lives in core.db only; the extension host never opens this file.

CREATE TABLE tenants (
    id         INTEGER PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

INSERT INTO tenants (id, slug, name) VALUES (1, 'default', 'Default');

-- Profile columns that a mirror may expose (tenant, display name, avatar) sit beside
-- `email`, which is secret and never mirrored unless an operator marks it explicitly.
-- The password hash is not in this table at all: see `credentials`.
CREATE TABLE users (
    id           INTEGER PRIMARY KEY,
    tenant_id    INTEGER NOT NULL DEFAULT 1 REFERENCES tenants (id),
    display_name TEXT NOT NULL,
    avatar_url   TEXT,
    role         TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    email        TEXT NOT NULL COLLATE NOCASE UNIQUE,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX users_tenant ON users (tenant_id);

-- Secrets live apart from the profile, so no projection of `users` can reach them.
CREATE TABLE credentials (
    user_id       INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL, -- argon2id, PHC string format
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Only a SHA-256 of each bearer token is stored; a leaked core.db yields no usable session.
CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL, -- unix seconds
    expires_at   INTEGER NOT NULL  -- unix seconds
) STRICT;

CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL CHECK (json_valid(value)),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_by INTEGER REFERENCES users (id) ON DELETE SET NULL
) STRICT;

-- The plugin registry: what is installed, in which database mode, and whether it runs.
CREATE TABLE plugins (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    database_mode TEXT NOT NULL CHECK (database_mode IN ('shared', 'isolated')),
    enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    manifest      TEXT NOT NULL CHECK (json_valid(manifest)),
    installed_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

-- Mirror columns an operator granted to a plugin: (slice, column) pairs.
CREATE TABLE plugin_grants (
    plugin_id   TEXT NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
    slice       TEXT NOT NULL,
    column_name TEXT NOT NULL,
    granted_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (plugin_id, slice, column_name)
) STRICT;

-- Who did what. No foreign key on the actor: the trail outlives deleted users.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor_user_id INTEGER,
    action        TEXT NOT NULL,
    target        TEXT,
    detail        TEXT CHECK (detail IS NULL OR json_valid(detail))
) STRICT;

CREATE INDEX audit_log_at ON audit_log (at);
