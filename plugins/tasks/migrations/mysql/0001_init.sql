-- tasks on MySQL/MariaDB: the SQLite migration's tables in MySQL's types, in the
-- plugin's own database (its account's default). InnoDB, utf8mb4 with binary collation
-- (text compares as on SQLite). Timestamps are the same ISO-8601 UTC text.
CREATE TABLE tasks__lists (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    name       TEXT NOT NULL,
    owner      BIGINT NOT NULL,
    created_at VARCHAR(30) NOT NULL DEFAULT (CONCAT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND(UTC_TIMESTAMP(3)) / 1000), 3, '0'), 'Z'))
) ENGINE = InnoDB;

CREATE TABLE tasks__tasks (
    id         BIGINT AUTO_INCREMENT PRIMARY KEY,
    list_id    BIGINT,
    title      TEXT NOT NULL CHECK (CHAR_LENGTH(title) BETWEEN 1 AND 500),
    assignee   BIGINT,
    created_by BIGINT NOT NULL,
    done       BIGINT NOT NULL DEFAULT 0 CHECK (done IN (0, 1)),
    created_at VARCHAR(30) NOT NULL DEFAULT (CONCAT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.'), LPAD(FLOOR(MICROSECOND(UTC_TIMESTAMP(3)) / 1000), 3, '0'), 'Z')),
    CONSTRAINT tasks__tasks_list_fk FOREIGN KEY (list_id) REFERENCES tasks__lists (id) ON DELETE CASCADE
) ENGINE = InnoDB;

CREATE INDEX tasks__tasks_assignee ON tasks__tasks (assignee);
