-- Provisioning a plugin's account, database and mirror grants without handing the
-- platform an administrator: these procedures run as the administrator who applied the
-- plan (SQL SECURITY DEFINER) and only the plugin store's account ({plugins_account})
-- may call them. They touch accounts named svp_<id> and databases named
-- {plugins_db}_<id> only, for ids that pass the same check as plugin.json's; every name
-- is checked against a pattern before it is put into a statement, and passwords are
-- letters and digits only.
CREATE DATABASE IF NOT EXISTS sv_admin;

CREATE OR REPLACE DEFINER = CURRENT_USER PROCEDURE sv_admin.check_plugin_id(
    IN id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)
SQL SECURITY DEFINER
BEGIN
    IF id IS NULL OR NOT id REGEXP '^[a-z][a-z0-9_]{0,31}$' OR id REGEXP '__' OR id REGEXP '_$' THEN
        SIGNAL SQLSTATE '22023'
            SET MESSAGE_TEXT = 'invalid plugin id: use 1 to 32 lowercase letters, digits and single underscores, starting with a letter';
    END IF;
    IF id IN ('core', 'public', 'sv_admin', 'information_schema', 'mysql', 'performance_schema', 'sys') THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'the plugin id is reserved';
    END IF;
END;

-- Makes (or updates) plugin `id`'s account and its own database, with exactly the
-- privileges a plugin's migrations and requests need there and nothing anywhere else.
CREATE OR REPLACE DEFINER = CURRENT_USER PROCEDURE sv_admin.create_plugin_account(
    IN id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    IN password VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    IN connection_limit INT)
SQL SECURITY DEFINER
BEGIN
    CALL sv_admin.check_plugin_id(id);
    IF password IS NULL OR CHAR_LENGTH(password) < 16 OR password REGEXP '[^0-9A-Za-z]' THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'a plugin password has at least 16 letters or digits';
    END IF;
    IF connection_limit IS NULL OR connection_limit NOT BETWEEN 1 AND 1000 THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'a connection limit is between 1 and 1000';
    END IF;
    SET @sv_admin_sql = CONCAT('CREATE DATABASE IF NOT EXISTS `{plugins_db}_', id,
        '` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = CONCAT('CREATE USER IF NOT EXISTS ''svp_', id, '''@''%'' IDENTIFIED BY ''',
        password, ''' WITH MAX_USER_CONNECTIONS ', connection_limit);
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = CONCAT('ALTER USER ''svp_', id, '''@''%'' IDENTIFIED BY ''', password,
        ''' WITH MAX_USER_CONNECTIONS ', connection_limit);
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    -- Its event outbox, in its own database: its connection writes events in the
    -- request's transaction; the platform relays and marks them.
    SET @sv_admin_sql = CONCAT('CREATE TABLE IF NOT EXISTS `{plugins_db}_', id, '`.`_sv_event_outbox` (',
        'seq BIGINT AUTO_INCREMENT PRIMARY KEY, event_id CHAR(32) NOT NULL UNIQUE, ',
        'plugin VARCHAR(64) NOT NULL, topic VARCHAR(255) NOT NULL, payload LONGTEXT NOT NULL, ',
        'created_at_ms BIGINT NOT NULL, delivered_at_ms BIGINT NULL, ',
        'KEY pending (delivered_at_ms, seq)) ENGINE=InnoDB');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    -- Routines of its own (the SQLite functions its statements use, such as strftime)
    -- run as itself; it cannot CALL procedures (the plugin connection refuses CALL).
    SET @sv_admin_sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, ',
        'REFERENCES, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EXECUTE ',
        'ON `{plugins_db}_', id, '`.* TO ''svp_', id, '''@''%''');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = NULL;
    DEALLOCATE PREPARE sv_admin_statement;
END;

-- Grants plugin `id` SELECT on exactly `columns` (comma-separated names) of the mirror
-- table core__<slice> in the plugin database (columns granted before and not listed now
-- are revoked: an upgrade may narrow them), and makes in the plugin's own database a
-- view core__<slice> of those columns (SQL SECURITY INVOKER: it reads with the plugin's
-- own column grants), so that plugin SQL names the mirror as on SQLite.
CREATE OR REPLACE DEFINER = CURRENT_USER PROCEDURE sv_admin.grant_mirror(
    IN id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    IN slice VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    IN columns VARCHAR(2000) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)
SQL SECURITY DEFINER
BEGIN
    DECLARE granted VARCHAR(4000) DEFAULT NULL;
    CALL sv_admin.check_plugin_id(id);
    IF slice IS NULL OR NOT slice REGEXP '^[a-z][a-z0-9_]{0,40}$' THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'invalid mirror slice';
    END IF;
    IF columns IS NULL OR NOT columns REGEXP '^[a-z_][a-z0-9_]{0,63}(,[a-z_][a-z0-9_]{0,63})*$' THEN
        SIGNAL SQLSTATE '22023' SET MESSAGE_TEXT = 'mirror columns are comma-separated lowercase names';
    END IF;
    -- What it holds now (column names this procedure granted, so plain names).
    SELECT GROUP_CONCAT(Column_name SEPARATOR ',') INTO granted FROM mysql.columns_priv
        WHERE Host = '%' AND User = CONCAT('svp_', id) AND Db = '{plugins_db}'
          AND Table_name = CONCAT('core__', slice);
    IF granted IS NOT NULL THEN
        SET @sv_admin_sql = CONCAT('REVOKE SELECT (', granted, ') ON `{plugins_db}`.`core__',
            slice, '` FROM ''svp_', id, '''@''%''');
        PREPARE sv_admin_statement FROM @sv_admin_sql;
        EXECUTE sv_admin_statement;
    END IF;
    SET @sv_admin_sql = CONCAT('GRANT SELECT (', columns, ') ON `{plugins_db}`.`core__', slice,
        '` TO ''svp_', id, '''@''%''');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = CONCAT('CREATE OR REPLACE SQL SECURITY INVOKER VIEW `{plugins_db}_', id,
        '`.`core__', slice, '` AS SELECT ', columns, ' FROM `{plugins_db}`.`core__', slice, '`');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = NULL;
    DEALLOCATE PREPARE sv_admin_statement;
END;

-- Drops plugin `id`'s account and its database.
CREATE OR REPLACE DEFINER = CURRENT_USER PROCEDURE sv_admin.drop_plugin_account(
    IN id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin)
SQL SECURITY DEFINER
BEGIN
    CALL sv_admin.check_plugin_id(id);
    SET @sv_admin_sql = CONCAT('DROP USER IF EXISTS ''svp_', id, '''@''%''');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = CONCAT('DROP DATABASE IF EXISTS `{plugins_db}_', id, '`');
    PREPARE sv_admin_statement FROM @sv_admin_sql;
    EXECUTE sv_admin_statement;
    SET @sv_admin_sql = NULL;
    DEALLOCATE PREPARE sv_admin_statement;
END;

GRANT EXECUTE ON PROCEDURE sv_admin.create_plugin_account TO '{plugins_account}'@'%';
GRANT EXECUTE ON PROCEDURE sv_admin.grant_mirror TO '{plugins_account}'@'%';
GRANT EXECUTE ON PROCEDURE sv_admin.drop_plugin_account TO '{plugins_account}'@'%';
