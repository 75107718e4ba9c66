CREATE TABLE notes__notes (
    id         INTEGER PRIMARY KEY,
    owner      INTEGER NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX notes__notes_owner ON notes__notes (owner);
