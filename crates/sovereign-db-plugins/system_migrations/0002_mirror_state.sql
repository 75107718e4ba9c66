-- Bookkeeping of a mirror store: the watermark (last applied core outbox sequence
-- number) and the projection each mirror table was built with.
CREATE TABLE IF NOT EXISTS _sv_mirror_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS _sv_mirror_slices (slice TEXT PRIMARY KEY, spec TEXT NOT NULL) STRICT;
