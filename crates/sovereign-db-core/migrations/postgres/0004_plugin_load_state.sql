-- What the extension host reported when it last loaded each plugin: NULL error = loaded.
ALTER TABLE plugins ADD COLUMN load_error text;
ALTER TABLE plugins ADD COLUMN load_reported_at text;
