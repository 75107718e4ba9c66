-- The password of each plugin's PostgreSQL role when the plugin store is on PostgreSQL
-- (PLUGIN_DATABASE_URL=postgres://...): generated at install, handed only to the
-- extension host. A secret, like credentials: never mirrored, never listed.
CREATE TABLE plugin_store_logins (
    plugin_id  TEXT PRIMARY KEY REFERENCES plugins (id) ON DELETE CASCADE,
    password   TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
