-- Events from plugins, ingested exactly once: the inbox is keyed by the event id the
-- plugin's outbox assigned, so a relayed-again event changes nothing.

CREATE TABLE event_inbox (
    event_id      TEXT PRIMARY KEY,
    plugin        TEXT NOT NULL,
    topic         TEXT NOT NULL,
    payload       TEXT NOT NULL CHECK (json_valid(payload)),
    emitted_at_ms INTEGER NOT NULL,
    received_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    handled_at    TEXT,
    error         TEXT
) STRICT;

CREATE INDEX event_inbox_received ON event_inbox (received_at);

-- What core handlers make visible: a per-user activity feed.
CREATE TABLE activity_feed (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    summary       TEXT NOT NULL,
    source_plugin TEXT,
    source_event  TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE INDEX activity_feed_user ON activity_feed (user_id, id);
