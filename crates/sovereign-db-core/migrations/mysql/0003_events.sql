-- Events from plugins, ingested exactly once (keyed by the id the plugin's outbox
-- assigned), and the activity feed handlers write to. MySQL/MariaDB dialect of the
-- SQLite 0003_events.sql; `seq` stands in for SQLite's rowid (the order events arrived in).

CREATE TABLE event_inbox (
    seq           BIGINT AUTO_INCREMENT UNIQUE,
    event_id      VARCHAR(191) PRIMARY KEY,
    plugin        VARCHAR(64) NOT NULL,
    topic         TEXT NOT NULL,
    payload       LONGTEXT NOT NULL CHECK (JSON_VALID(payload)),
    emitted_at_ms BIGINT NOT NULL,
    received_at   VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    handled_at    VARCHAR(30),
    error         TEXT,
    KEY event_inbox_received (received_at)
) ENGINE = InnoDB;

CREATE TABLE activity_feed (
    id            BIGINT AUTO_INCREMENT PRIMARY KEY,
    user_id       BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    summary       TEXT NOT NULL,
    source_plugin VARCHAR(64),
    source_event  VARCHAR(191),
    created_at    VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')),
    KEY activity_feed_user (user_id, id),
    CONSTRAINT activity_feed_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
) ENGINE = InnoDB;
