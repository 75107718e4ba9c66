//! The mirror on MySQL/MariaDB: `core__<slice>` tables in the plugin store's database,
//! written only by its account (`svc_plugins`) on its own connection, with the watermark
//! and the slices' specs in `_sv_mirror_state` / `_sv_mirror_slices` there. A batch and
//! its watermark commit together (InnoDB). Plugins read the columns
//! `sv_admin.grant_mirror` granted them through a view of the same name in their own
//! database.
//!
//! MySQL commits every DDL statement, so a rebuild cannot be one transaction as on
//! PostgreSQL: each slice is built into a new table, filled, and swapped in with one
//! atomic `RENAME TABLE`; the watermark is set after the last swap. A rebuild stopped
//! half-way leaves whole tables (old or new) and the old watermark, from which
//! incremental sync goes on: a batch carries rows as they are when it is read, so
//! applying changes again is harmless. Column grants are by name in MySQL, so they
//! carry over to the swapped-in table.

use mysql::prelude::Queryable;
use mysql::{Conn, TxOpts, Value};
use sovereign_db_plugins::SqlValue;
use sovereign_db_plugins::mirror::{ColumnKind, MirrorBatch, MirrorCatalog, MirrorSlice};

use crate::MyError;

/// The mirror's bookkeeping tables, made by its writer if missing.
const BOOKKEEPING: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS _sv_mirror_state (
         `key` VARCHAR(64) PRIMARY KEY, value BIGINT NOT NULL) ENGINE = InnoDB",
    "CREATE TABLE IF NOT EXISTS _sv_mirror_slices (
         slice VARCHAR(64) PRIMARY KEY, spec LONGTEXT NOT NULL) ENGINE = InnoDB",
    "INSERT IGNORE INTO _sv_mirror_state (`key`, value) VALUES ('watermark', 0), ('applied_at_ms', 0)",
];

/// Taken by each transaction of the mirror's writers (the worker, a rebuild's last
/// step, a repair): the watermark row, locked to commit.
const WRITER_LOCK: &str = "SELECT value FROM _sv_mirror_state WHERE `key` = 'watermark' FOR UPDATE";

/// Advances the watermark to a batch's sequence number if it is newer, and records when
/// (parameters: the sequence number, the time, the sequence number): two rows match
/// when the batch is new, one when it was applied already.
const ADVANCE: &str = "UPDATE _sv_mirror_state
    SET value = CASE `key` WHEN 'watermark' THEN ? ELSE ? END
    WHERE `key` = 'applied_at_ms' OR (`key` = 'watermark' AND value < ?)";

/// Sets the watermark and when it was applied.
const SET_STATE: &str = "UPDATE _sv_mirror_state SET value = CASE `key`
                             WHEN 'watermark' THEN ? WHEN 'applied_at_ms' THEN ? END
                         WHERE `key` IN ('watermark', 'applied_at_ms')";

/// Rows per `INSERT` while a rebuild fills a table.
const INSERT_CHUNK: usize = 500;

fn statement_error(statement: &str) -> impl FnOnce(mysql::Error) -> MyError + '_ {
    move |source| MyError::Statement {
        statement: statement.lines().next().unwrap_or_default().to_owned(),
        source,
    }
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The column type of a mirror column of `kind`.
fn column_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Integer => "BIGINT",
        ColumnKind::Real => "DOUBLE",
        ColumnKind::Text => "LONGTEXT",
        ColumnKind::Blob => "LONGBLOB",
    }
}

/// `INSERT` of `rows` rows into `table` (columns of `slice`, in order), replacing rows
/// with the same key.
fn upsert_sql(slice: &MirrorSlice, table: &str, rows: usize) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let row = format!("({})", vec!["?"; columns.len()].join(", "));
    let updates: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = VALUES({c})"))
        .collect();
    let key = ident(slice.key_column());
    format!(
        "INSERT INTO {table} ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        columns.join(", "),
        vec![row; rows].join(", "),
        if updates.is_empty() {
            format!("{key} = {key}")
        } else {
            updates.join(", ")
        }
    )
}

/// The parameters of `rows` for [`upsert_sql`], checked against the slice's width.
fn row_params(slice: &MirrorSlice, rows: &[&[SqlValue]]) -> Result<Vec<Value>, MyError> {
    let mut params = Vec::with_capacity(rows.len() * slice.columns.len());
    for row in rows {
        if row.len() != slice.columns.len() {
            return Err(MyError::MirrorState {
                message: format!(
                    "slice {}: a row of {} values for {} columns",
                    slice.name,
                    row.len(),
                    slice.columns.len()
                ),
            });
        }
        params.extend(row.iter().map(crate::values::param));
    }
    Ok(params)
}

/// The mirror's writer: the plugin store account's connection.
pub struct MyMirror {
    conn: Conn,
}

impl MyMirror {
    /// Connects as the plugin store's account (`PLUGIN_DATABASE_URL`) and makes the
    /// bookkeeping tables if missing.
    pub fn connect(owner_url: &str) -> Result<MyMirror, MyError> {
        let mut conn = crate::connect_trusted(owner_url)?;
        for statement in BOOKKEEPING {
            conn.query_drop(statement)
                .map_err(statement_error(statement))?;
        }
        Ok(MyMirror { conn })
    }

    fn state(&mut self, key: &str) -> Result<i64, MyError> {
        let query = "SELECT value FROM _sv_mirror_state WHERE `key` = ?";
        Ok(self
            .conn
            .exec_first(query, (key,))
            .map_err(statement_error(query))?
            .unwrap_or(0))
    }

    /// The last core outbox sequence number applied (0 if none).
    pub fn watermark(&mut self) -> Result<i64, MyError> {
        self.state("watermark")
    }

    /// When a batch was last applied (unix ms, 0 if never).
    pub fn applied_at_ms(&mut self) -> Result<i64, MyError> {
        self.state("applied_at_ms")
    }

    /// Every slice the mirror holds, with the projection it was built with.
    pub fn specs(&mut self) -> Result<Vec<MirrorSlice>, MyError> {
        let query = "SELECT slice, spec FROM _sv_mirror_slices ORDER BY slice";
        self.conn
            .query::<(String, String), _>(query)
            .map_err(statement_error(query))?
            .into_iter()
            .map(|(slice, spec)| {
                serde_json::from_str(&spec).map_err(|e| MyError::MirrorState {
                    message: format!("the spec of slice {slice} is unreadable ({e})"),
                })
            })
            .collect()
    }

    /// Applies a batch and advances the watermark in one transaction; a batch at or
    /// below the watermark changes nothing. Returns whether it was applied.
    pub fn apply_batch(
        &mut self,
        catalog: &MirrorCatalog,
        batch: &MirrorBatch,
        now_ms: i64,
    ) -> Result<bool, MyError> {
        let last = batch.last_rows(catalog);
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .map_err(statement_error("START TRANSACTION"))?;
        // The watermark first: its row lock serialises the mirror's writers, and a batch
        // at or below it changes nothing (only `applied_at_ms` matches then).
        tx.exec_drop(ADVANCE, (batch.upto_seq, now_ms, batch.upto_seq))
            .map_err(statement_error(ADVANCE))?;
        if tx.affected_rows() < 2 {
            return Ok(false);
        }
        for (slice, rows) in last.values() {
            let table = ident(&slice.table_name());
            let deleted: Vec<String> = rows
                .iter()
                .filter(|(_, row)| row.is_none())
                .map(|(key, _)| key.to_string())
                .collect();
            if !deleted.is_empty() {
                // Keys are integers, written into the text.
                let delete = format!(
                    "DELETE FROM {table} WHERE {} IN ({})",
                    ident(slice.key_column()),
                    deleted.join(", ")
                );
                tx.query_drop(&delete).map_err(statement_error(&delete))?;
            }
            let written: Vec<&[SqlValue]> = rows.values().filter_map(|row| *row).collect();
            for chunk in written.chunks(INSERT_CHUNK) {
                let upsert = upsert_sql(slice, &table, chunk.len());
                tx.exec_drop(&upsert, row_params(slice, chunk)?)
                    .map_err(statement_error(&upsert))?;
            }
        }
        tx.commit().map_err(statement_error("COMMIT"))?;
        Ok(true)
    }

    /// The mirror's rows of `slice` with keys in `(after, upto]`, in key order, as
    /// `(key, values)` (for reconcile).
    pub fn rows(
        &mut self,
        slice: &MirrorSlice,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(i64, Vec<SqlValue>)>, MyError> {
        let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
        let key = ident(slice.key_column());
        let query = format!(
            "SELECT {} FROM {} WHERE {key} > ? AND {key} <= ? ORDER BY {key}",
            columns.join(", "),
            ident(&slice.table_name())
        );
        self.conn
            .exec::<mysql::Row, _, _>(&query, (after, upto))
            .map_err(statement_error(&query))?
            .into_iter()
            .map(|row| {
                let values = crate::values::row_values(row).map_err(|e| MyError::MirrorState {
                    message: format!("slice {}: {e}", slice.name),
                })?;
                let key = match values.first() {
                    Some(SqlValue::Integer(k)) => *k,
                    _ => i64::MIN,
                };
                Ok((key, values))
            })
            .collect()
    }

    /// Rewrites rows in one transaction (reconcile's repair): each `(slice, key, row)`
    /// replaced with `row`, or deleted when `None`. Returns how many.
    pub fn repair(
        &mut self,
        fixes: &[(&MirrorSlice, i64, Option<Vec<SqlValue>>)],
    ) -> Result<u64, MyError> {
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .map_err(statement_error("START TRANSACTION"))?;
        tx.query_drop(WRITER_LOCK)
            .map_err(statement_error(WRITER_LOCK))?;
        for (slice, key, row) in fixes {
            let table = ident(&slice.table_name());
            match row {
                Some(row) => {
                    let upsert = upsert_sql(slice, &table, 1);
                    tx.exec_drop(&upsert, row_params(slice, &[row.as_slice()])?)
                        .map_err(statement_error(&upsert))?;
                }
                None => {
                    let delete = format!(
                        "DELETE FROM {table} WHERE {} = ?",
                        ident(slice.key_column())
                    );
                    tx.exec_drop(&delete, (key,))
                        .map_err(statement_error(&delete))?;
                }
            }
        }
        tx.commit().map_err(statement_error("COMMIT"))?;
        Ok(fixes.len() as u64)
    }

    /// Starts a rebuild (see the module documentation).
    pub fn rebuild(&mut self) -> Rebuild<'_> {
        Rebuild {
            conn: &mut self.conn,
            built: Vec::new(),
        }
    }
}

/// A rebuild in progress: new tables are filled beside the old ones and swapped in by
/// [`Rebuild::finish`].
pub struct Rebuild<'a> {
    conn: &'a mut Conn,
    /// The slices whose new tables are filled, with their specs.
    built: Vec<MirrorSlice>,
}

/// The name of a slice's table while it is rebuilt.
fn new_table(slice: &MirrorSlice) -> String {
    format!("{}__sv_new", slice.table_name())
}

impl Rebuild<'_> {
    /// Computes the statistics of the filled new tables. InnoDB samples a table's
    /// statistics while it fills and recalculates them in the background some seconds
    /// later, but a table renamed in the meantime keeps the early sample: a swapped-in
    /// table of 100,000 rows was estimated at 51, and every batch's `DELETE ... WHERE key
    /// IN (...)` then scanned the whole table (35 ms per batch on a loaded machine). The
    /// statistics move with the table in the `RENAME`.
    fn analyze_new_tables(&mut self) -> Result<(), MyError> {
        if self.built.is_empty() {
            return Ok(());
        }
        let tables: Vec<String> = self.built.iter().map(|s| ident(&new_table(s))).collect();
        let analyze = format!("ANALYZE TABLE {}", tables.join(", "));
        // One row per table: (Table, Op, Msg_type, Msg_text).
        let report: Vec<(String, String, String, String)> = self
            .conn
            .query(&analyze)
            .map_err(statement_error(&analyze))?;
        for (table, _, kind, text) in report {
            if kind.eq_ignore_ascii_case("error") {
                return Err(MyError::MirrorState {
                    message: format!("ANALYZE TABLE {table} failed: {text}"),
                });
            }
        }
        Ok(())
    }

    /// Drops a slice that is no longer configured.
    pub fn drop_slice(&mut self, name: &str) -> Result<(), MyError> {
        let drop = format!(
            "DROP TABLE IF EXISTS {}",
            ident(&format!(
                "{}{name}",
                sovereign_db_plugins::mirror::MIRROR_PREFIX
            ))
        );
        self.conn
            .query_drop(&drop)
            .map_err(statement_error(&drop))?;
        let forget = "DELETE FROM _sv_mirror_slices WHERE slice = ?";
        self.conn
            .exec_drop(forget, (name,))
            .map_err(statement_error(forget))?;
        Ok(())
    }

    /// Creates `slice`'s new table (columns typed by `kinds`, the first the key); rows
    /// follow with [`insert_rows`](Self::insert_rows).
    pub fn create_slice(
        &mut self,
        slice: &MirrorSlice,
        kinds: &[ColumnKind],
    ) -> Result<(), MyError> {
        let table = ident(&new_table(slice));
        let columns: Vec<String> = slice
            .columns
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (name, kind))| {
                let key = if i == 0 { " NOT NULL PRIMARY KEY" } else { "" };
                format!("{} {}{key}", ident(name), column_type(*kind))
            })
            .collect();
        for statement in [
            format!("DROP TABLE IF EXISTS {table}"),
            format!(
                "CREATE TABLE {table} ({}) ENGINE = InnoDB",
                columns.join(", ")
            ),
        ] {
            self.conn
                .query_drop(&statement)
                .map_err(statement_error(&statement))?;
        }
        self.built.push(slice.clone());
        Ok(())
    }

    /// Appends rows (in slice column order) to `slice`'s new table, in one transaction.
    pub fn insert_rows(
        &mut self,
        slice: &MirrorSlice,
        rows: &[Vec<SqlValue>],
    ) -> Result<u64, MyError> {
        let table = ident(&new_table(slice));
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .map_err(statement_error("START TRANSACTION"))?;
        let rows: Vec<&[SqlValue]> = rows.iter().map(Vec::as_slice).collect();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let insert = upsert_sql(slice, &table, chunk.len());
            tx.exec_drop(&insert, row_params(slice, chunk)?)
                .map_err(statement_error(&insert))?;
        }
        tx.commit().map_err(statement_error("COMMIT"))?;
        Ok(rows.len() as u64)
    }

    /// Swaps every new table in (one atomic `RENAME TABLE`), records the specs and sets
    /// the watermark.
    pub fn finish(mut self, watermark: i64, now_ms: i64) -> Result<(), MyError> {
        self.analyze_new_tables()?;
        let mut renames = Vec::new();
        let mut drops = Vec::new();
        for slice in &self.built {
            let table = slice.table_name();
            let exists: Option<i64> = self
                .conn
                .exec_first(
                    "SELECT 1 FROM information_schema.TABLES
                     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                    (&table,),
                )
                .map_err(statement_error("SELECT ... information_schema.TABLES"))?;
            if exists.is_some() {
                let old = format!("{table}__sv_old");
                renames.push(format!("{} TO {}", ident(&table), ident(&old)));
                drops.push(format!("DROP TABLE IF EXISTS {}", ident(&old)));
            }
            renames.push(format!("{} TO {}", ident(&new_table(slice)), ident(&table)));
        }
        if !renames.is_empty() {
            let rename = format!("RENAME TABLE {}", renames.join(", "));
            self.conn
                .query_drop(&rename)
                .map_err(statement_error(&rename))?;
        }
        for drop in &drops {
            self.conn.query_drop(drop).map_err(statement_error(drop))?;
        }
        let mut tx = self
            .conn
            .start_transaction(TxOpts::default())
            .map_err(statement_error("START TRANSACTION"))?;
        tx.query_drop(WRITER_LOCK)
            .map_err(statement_error(WRITER_LOCK))?;
        let record = "INSERT INTO _sv_mirror_slices (slice, spec) VALUES (?, ?)
                      ON DUPLICATE KEY UPDATE spec = VALUES(spec)";
        for slice in &self.built {
            let spec = serde_json::to_string(slice).expect("a mirror slice serializes");
            tx.exec_drop(record, (&slice.name, spec))
                .map_err(statement_error(record))?;
        }
        tx.exec_drop(SET_STATE, (watermark, now_ms))
            .map_err(statement_error(SET_STATE))?;
        tx.commit().map_err(statement_error("COMMIT"))
    }
}
