-- Installed plugins' packages (the files a host runs: plugin.json, plugin.wasm,
-- migrations/), for kernels that share no disk: written at install and upgrade, read by
-- every kernel before it starts its extension host. MySQL/MariaDB dialect of the SQLite
-- 0007_plugin_packages.sql.
CREATE TABLE plugin_package_files (
    plugin_id VARCHAR(64)  NOT NULL,
    path      VARCHAR(500) NOT NULL,
    content   LONGBLOB     NOT NULL,
    PRIMARY KEY (plugin_id, path)
) ENGINE = InnoDB;

CREATE TABLE plugin_packages (
    plugin_id VARCHAR(64) PRIMARY KEY,
    sha256    CHAR(64) NOT NULL,
    stored_at VARCHAR(30) NOT NULL
              DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;
