-- The installed manifest is the one source of truth for a plugin's name, version and
-- database mode: the columns become read-only projections of it.
ALTER TABLE plugins DROP COLUMN name;
ALTER TABLE plugins DROP COLUMN version;
ALTER TABLE plugins DROP COLUMN database_mode;
ALTER TABLE plugins ADD COLUMN name text GENERATED ALWAYS AS (manifest ->> 'name') STORED;
ALTER TABLE plugins ADD COLUMN version text GENERATED ALWAYS AS (manifest ->> 'version') STORED;
ALTER TABLE plugins ADD COLUMN database_mode text
    GENERATED ALWAYS AS (coalesce(manifest ->> 'database', 'shared')) STORED;
