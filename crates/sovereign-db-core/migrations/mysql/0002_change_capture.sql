-- Change capture for the mirror (core -> plugins sync), MySQL/MariaDB dialect: the same
-- outbox and bookkeeping as the SQLite 0002_change_capture.sql.

CREATE TABLE _sv_change_outbox (
    seq     BIGINT AUTO_INCREMENT PRIMARY KEY, -- increasing, never reused
    slice   VARCHAR(64) NOT NULL,
    row_key BIGINT NOT NULL,
    at_ms   BIGINT NOT NULL, -- commit-side time of the change, unix milliseconds
    KEY _sv_change_outbox_slice (slice, seq)
) ENGINE = InnoDB;

-- One row whose lock every capturing transaction takes before its outbox row (the
-- capture triggers update it; InnoDB holds the row lock to commit): outbox sequence
-- order is then commit order, so a reader that has seen `seq` N never later finds a
-- smaller one committed (AUTO_INCREMENT values are handed out at insert, not commit).
CREATE TABLE _sv_capture_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL DEFAULT 0
) ENGINE = InnoDB;
INSERT INTO _sv_capture_lock (id) VALUES (1);

CREATE TABLE _sv_sync_state (
    `key`      VARCHAR(191) PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at VARCHAR(30) NOT NULL
               DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;
