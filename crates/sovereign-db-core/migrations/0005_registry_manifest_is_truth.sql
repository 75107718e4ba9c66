-- The installed manifest is the one source of truth for a plugin's name, version and
-- database mode: the columns become read-only projections of it (for SQL reports), so
-- they can never disagree with it.
ALTER TABLE plugins DROP COLUMN name;
ALTER TABLE plugins DROP COLUMN version;
ALTER TABLE plugins DROP COLUMN database_mode;
ALTER TABLE plugins ADD COLUMN name TEXT
    GENERATED ALWAYS AS (json_extract(manifest, '$.name')) VIRTUAL;
ALTER TABLE plugins ADD COLUMN version TEXT
    GENERATED ALWAYS AS (json_extract(manifest, '$.version')) VIRTUAL;
ALTER TABLE plugins ADD COLUMN database_mode TEXT
    GENERATED ALWAYS AS (coalesce(json_extract(manifest, '$.database'), 'shared')) VIRTUAL;
