CREATE TABLE tasks__lists (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      INTEGER NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE tasks__tasks (
    id         INTEGER PRIMARY KEY,
    list_id    INTEGER REFERENCES tasks__lists (id) ON DELETE CASCADE,
    title      TEXT NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    assignee   INTEGER,
    created_by INTEGER NOT NULL,
    done       INTEGER NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX tasks__tasks_list ON tasks__tasks (list_id);
CREATE INDEX tasks__tasks_assignee ON tasks__tasks (assignee);
