-- What the extension host reported when it last loaded each plugin: NULL error = loaded.
ALTER TABLE plugins ADD COLUMN load_error TEXT, ADD COLUMN load_reported_at VARCHAR(30);
