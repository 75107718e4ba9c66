-- The password of each plugin's server login when the plugin store is on PostgreSQL or
-- MySQL: generated at install, handed only to the extension host. A secret, like
-- credentials.
CREATE TABLE plugin_store_logins (
    plugin_id  VARCHAR(64) PRIMARY KEY,
    password   TEXT NOT NULL,
    created_at VARCHAR(30) NOT NULL
               DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    CONSTRAINT plugin_store_logins_plugin_fk FOREIGN KEY (plugin_id) REFERENCES plugins (id) ON DELETE CASCADE
) ENGINE = InnoDB;
