-- Core schema, version 1, MySQL/MariaDB dialect (the core database, owned by svc_core;
-- no plugin account may use it). Same tables, columns and meanings as the SQLite
-- 0001_init.sql; timestamps are the same ISO-8601 UTC text (2026-01-31T12:34:56.789Z),
-- flags the same 0/1 integers, JSON the text as written (LONGTEXT checked by
-- JSON_VALID: MySQL's JSON type would rewrite it). The database's collation is
-- utf8mb4_bin (`sv mysql:roles`), so text compares as on SQLite.
-- MySQL commits each DDL statement: each statement here can be rerun by hand.

-- Which store this database is: a misconfigured URL cannot make another database act as
-- the core (the SQLite stores keep the same marker).
CREATE TABLE _sv_store (
    kind VARCHAR(16) PRIMARY KEY CHECK (kind = 'core')
) ENGINE = InnoDB;
INSERT INTO _sv_store (kind) VALUES ('core');

CREATE TABLE tenants (
    id         BIGINT PRIMARY KEY,
    slug       VARCHAR(191) NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at VARCHAR(30) NOT NULL
               DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;

INSERT INTO tenants (id, slug, name) VALUES (1, 'default', 'Default');

-- E-mail addresses are unique without regard to case: the column's collation folds case
-- (and accents, which only refuses more look-alikes), and every comparison uses it.
CREATE TABLE users (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    tenant_id    BIGINT NOT NULL DEFAULT 1,
    display_name TEXT NOT NULL,
    avatar_url   TEXT,
    role         VARCHAR(16) NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    active       INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    email        VARCHAR(254) COLLATE utf8mb4_unicode_ci NOT NULL,
    created_at   VARCHAR(30) NOT NULL
                 DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    updated_at   VARCHAR(30) NOT NULL
                 DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    UNIQUE KEY users_email (email),
    KEY users_tenant (tenant_id),
    CONSTRAINT users_tenant_fk FOREIGN KEY (tenant_id) REFERENCES tenants (id)
) ENGINE = InnoDB;

CREATE TABLE credentials (
    user_id       BIGINT PRIMARY KEY,
    password_hash TEXT NOT NULL, -- argon2id, PHC string format
    updated_at    VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    CONSTRAINT credentials_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB;

CREATE TABLE sessions (
    token_hash VARCHAR(128) PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    created_at BIGINT NOT NULL, -- unix seconds
    expires_at BIGINT NOT NULL, -- unix seconds
    KEY sessions_user (user_id),
    KEY sessions_expiry (expires_at),
    CONSTRAINT sessions_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB;

CREATE TABLE settings (
    `key`      VARCHAR(191) PRIMARY KEY,
    value      LONGTEXT NOT NULL CHECK (JSON_VALID(value)),
    updated_at VARCHAR(30) NOT NULL
               DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    updated_by BIGINT,
    CONSTRAINT settings_user_fk FOREIGN KEY (updated_by) REFERENCES users (id) ON DELETE SET NULL
) ENGINE = InnoDB;

CREATE TABLE plugins (
    id            VARCHAR(64) PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    database_mode VARCHAR(16) NOT NULL CHECK (database_mode IN ('shared', 'isolated')),
    enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    manifest      LONGTEXT NOT NULL CHECK (JSON_VALID(manifest)),
    installed_at  VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    updated_at    VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;

CREATE TABLE plugin_grants (
    plugin_id   VARCHAR(64) NOT NULL,
    slice       VARCHAR(64) NOT NULL,
    column_name VARCHAR(64) NOT NULL,
    granted_at  VARCHAR(30) NOT NULL
                DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    PRIMARY KEY (plugin_id, slice, column_name),
    CONSTRAINT plugin_grants_plugin_fk FOREIGN KEY (plugin_id) REFERENCES plugins (id) ON DELETE CASCADE
) ENGINE = InnoDB;

CREATE TABLE audit_log (
    id            BIGINT AUTO_INCREMENT PRIMARY KEY,
    at            VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    actor_user_id BIGINT,
    action        TEXT NOT NULL,
    target        TEXT,
    detail        LONGTEXT CHECK (JSON_VALID(detail)),
    KEY audit_log_at (at)
) ENGINE = InnoDB;
