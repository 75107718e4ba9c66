-- The installed manifest is the one source of truth for a plugin's name, version and
-- database mode: the columns become read-only projections of it. One statement, so that
-- it is applied whole or not at all.
ALTER TABLE plugins
    DROP COLUMN name,
    DROP COLUMN version,
    DROP COLUMN database_mode,
    ADD COLUMN name TEXT
        AS (JSON_UNQUOTE(JSON_EXTRACT(manifest, '$.name'))) STORED,
    ADD COLUMN version TEXT
        AS (JSON_UNQUOTE(JSON_EXTRACT(manifest, '$.version'))) STORED,
    ADD COLUMN database_mode VARCHAR(16)
        AS (COALESCE(JSON_UNQUOTE(JSON_EXTRACT(manifest, '$.database')), 'shared')) STORED;
