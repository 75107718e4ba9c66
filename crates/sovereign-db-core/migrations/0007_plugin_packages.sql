-- Installed plugins' packages (the files a host runs: plugin.json, plugin.wasm,
-- migrations/), for kernels that share no disk. Written at install and upgrade when the
-- core is on PostgreSQL, where several kernels on several machines serve one
-- installation; with the core in core.db there is one platform per data directory and
-- the plugins directory is the package, so the table stays empty.
CREATE TABLE plugin_package_files (
    plugin_id TEXT NOT NULL,
    path      TEXT NOT NULL,
    content   BLOB NOT NULL,
    PRIMARY KEY (plugin_id, path)
) STRICT;

CREATE TABLE plugin_packages (
    plugin_id TEXT PRIMARY KEY,
    sha256    TEXT NOT NULL, -- of the files, as sovereign-platform's packages module hashes them
    stored_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
