-- Installed plugins' packages (the files a host runs: plugin.json, plugin.wasm,
-- migrations/), for kernels that share no disk: written at install and upgrade, read by
-- every kernel before it starts its extension host. PostgreSQL dialect of the SQLite
-- 0007_plugin_packages.sql.
CREATE TABLE plugin_package_files (
    plugin_id text  NOT NULL,
    path      text  NOT NULL,
    content   bytea NOT NULL,
    PRIMARY KEY (plugin_id, path)
);

CREATE TABLE plugin_packages (
    plugin_id text PRIMARY KEY,
    sha256    text NOT NULL,
    stored_at text NOT NULL DEFAULT sv_now_text()
);
