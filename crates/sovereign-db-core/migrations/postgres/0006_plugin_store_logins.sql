-- The password of each plugin's PostgreSQL role when the plugin store is on PostgreSQL:
-- generated at install, handed only to the extension host. A secret, like credentials.
CREATE TABLE plugin_store_logins (
    plugin_id  text PRIMARY KEY REFERENCES plugins (id) ON DELETE CASCADE,
    password   text NOT NULL,
    created_at text NOT NULL DEFAULT sv_now_text()
);
