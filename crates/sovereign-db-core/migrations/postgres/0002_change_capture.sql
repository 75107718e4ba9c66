-- Change capture for the mirror (core -> plugins sync), PostgreSQL dialect: the same
-- outbox and bookkeeping as the SQLite 0002_change_capture.sql.

CREATE TABLE _sv_change_outbox (
    seq     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- increasing, never reused
    slice   text   NOT NULL,
    row_key bigint NOT NULL,
    at_ms   bigint NOT NULL -- commit-side time of the change, unix milliseconds
);

CREATE INDEX _sv_change_outbox_slice ON _sv_change_outbox (slice, seq);

CREATE TABLE _sv_sync_state (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at text NOT NULL DEFAULT sv_now_text()
);
