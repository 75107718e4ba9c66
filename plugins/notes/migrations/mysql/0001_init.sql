-- notes on MySQL/MariaDB: the SQLite migration's table in MySQL's types, in the
-- plugin's own database. Timestamps are the same ISO-8601 UTC text.
CREATE TABLE notes__notes (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    owner      BIGINT NOT NULL,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL DEFAULT '',
    updated_at VARCHAR(30) NOT NULL DEFAULT (CONCAT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND(UTC_TIMESTAMP(3)) / 1000), 3, '0'), 'Z'))
) ENGINE = InnoDB;

CREATE INDEX notes__notes_owner ON notes__notes (owner);

-- The one SQLite function the plugin's statements use, strftime('%Y-%m-%dT%H:%M:%fZ',
-- 'now'), so that the same statements run on every backend.
CREATE FUNCTION strftime(format TEXT, at TEXT) RETURNS VARCHAR(30) NOT DETERMINISTIC
    RETURN CASE WHEN format = '%Y-%m-%dT%H:%M:%fZ' AND at = 'now'
        THEN CONCAT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND(UTC_TIMESTAMP(3)) / 1000), 3, '0'), 'Z')
    END;
