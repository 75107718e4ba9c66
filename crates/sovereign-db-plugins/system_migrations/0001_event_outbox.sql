-- The event outbox: events a plugin emitted in a request's transaction, relayed to the
-- core after commit. Bookkeeping: plugins cannot read or write it. (IF NOT EXISTS: stores
-- created before the system scope already have it.)
CREATE TABLE IF NOT EXISTS _sv_event_outbox (
    event_id        TEXT PRIMARY KEY,
    plugin          TEXT NOT NULL,
    topic           TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    delivered_at_ms INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS _sv_event_outbox_pending
    ON _sv_event_outbox (plugin, delivered_at_ms, created_at_ms);
