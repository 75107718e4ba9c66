-- Change capture for the mirror (core -> plugins sync), MySQL/MariaDB dialect: the same
-- outbox and bookkeeping as the SQLite 0002_change_capture.sql.

CREATE TABLE _sv_change_outbox (
    seq     BIGINT AUTO_INCREMENT PRIMARY KEY, -- increasing, never reused
    slice   VARCHAR(64) NOT NULL,
    row_key BIGINT NOT NULL,
    at_ms   BIGINT NOT NULL, -- commit-side time of the change, unix milliseconds
    KEY _sv_change_outbox_slice (slice, seq)
) ENGINE = InnoDB;

CREATE TABLE _sv_sync_state (
    `key`      VARCHAR(191) PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at VARCHAR(30) NOT NULL
               DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;
