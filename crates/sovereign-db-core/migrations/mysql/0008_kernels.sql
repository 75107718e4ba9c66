-- The kernels serving this core (MySQL/MariaDB only: PostgreSQL shows them by their
-- sessions' names and advisory locks). A row is a kernel's registration, made on its own
-- connection, live while that connection holds the named lock
-- `sv <database hash> kernel <connection_id>`; rows of connections that are gone are
-- stale and removed by the next kernel that registers. `sync_connection` is the
-- connection of the kernel's sync worker when it took the sync leader lock.
CREATE TABLE _sv_kernels (
    connection_id   BIGINT UNSIGNED PRIMARY KEY,
    name            VARCHAR(255) NOT NULL,
    shares_stores   TINYINT NOT NULL,
    sync_connection BIGINT UNSIGNED NULL,
    since           VARCHAR(30) NOT NULL
                    DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;
