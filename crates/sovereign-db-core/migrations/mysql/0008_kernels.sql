-- The kernels serving this core (MySQL/MariaDB only: PostgreSQL shows them by their
-- sessions' names and advisory locks). A row is a kernel's registration, made on its own
-- connection, live while that connection holds the named lock
-- `sv <database hash> kernel <connection_id>`; rows of connections that are gone are
-- stale and removed by the next kernel that registers.
CREATE TABLE _sv_kernels (
    connection_id BIGINT UNSIGNED PRIMARY KEY,
    name          VARCHAR(255) NOT NULL,
    shares_stores TINYINT NOT NULL,
    since         VARCHAR(30) NOT NULL
                  DEFAULT (CONCAT(LEFT(DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z'))
) ENGINE = InnoDB;

-- The kernel whose sync worker took the sync leader lock `sv <database hash> sync`, and
-- that worker's connection: the leader while that connection holds the lock.
CREATE TABLE _sv_sync_leader (
    id            TINYINT PRIMARY KEY CHECK (id = 1),
    connection_id BIGINT UNSIGNED NOT NULL,
    kernel        VARCHAR(255) NOT NULL
) ENGINE = InnoDB;
