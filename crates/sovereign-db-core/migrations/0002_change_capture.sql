-- Change capture for the mirror (core -> plugins sync). Triggers generated from the
-- configured projections append one row per changed source row, in the same transaction
-- as the change; the sync publisher reads them in order and prunes what was applied.

CREATE TABLE _sv_change_outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT, -- monotonically increasing, never reused
    slice   TEXT    NOT NULL,
    row_key INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL -- commit-side time of the change, unix milliseconds
) STRICT;

CREATE INDEX _sv_change_outbox_slice ON _sv_change_outbox (slice, seq);

-- Sync bookkeeping on the core side: what was acknowledged, the last error.
CREATE TABLE _sv_sync_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;
