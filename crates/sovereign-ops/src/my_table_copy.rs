//! Copying a SQLite table into the MySQL table of the same name and columns (what
//! `sv migrate:to-mysql` does for every core and plugin table), and checking the copy.
//!
//! The MySQL table is the contract: its columns (generated ones aside) are filled from
//! the SQLite columns of the same names, in primary-key order, by multi-row `INSERT`s in
//! the caller's transaction. An `AUTO_INCREMENT` column the SQLite table lacks is the
//! SQLite `rowid` (as `event_inbox.seq`); a SQLite column the MySQL table lacks would be
//! lost, so it is refused before anything is copied.
//!
//! Both sides are summarised the same way ([`TableDigest`]): each value read as the
//! MySQL column's kind takes it (an integer in a text column is its digits), the rows
//! counted and their SHA-256s summed, so the order rows are read in does not matter.

use mysql::prelude::Queryable;
use sovereign_db::rusqlite::Connection;
use sovereign_db_plugins::SqlValue;
use sovereign_db_plugins::mirror::ColumnKind;

use crate::table_copy::{TableDigest, quoted, sqlite_columns};
use crate::{OpsError, sqlite};

/// Rows per `INSERT`, and the bytes of values after which one is sent anyway.
const BATCH_ROWS: usize = 500;
const BATCH_BYTES: usize = 4 << 20;

/// One column of a copy: the MySQL name, the SQLite expression and the column's kind.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    source: String,
    kind: ColumnKind,
}

/// A SQLite table matched to its MySQL table.
#[derive(Debug, Clone)]
pub struct MyTableCopy {
    /// The SQLite table.
    pub source: String,
    /// The MySQL table as shown to operators (`database.table`).
    pub shown: String,
    target: String,
    columns: Vec<Column>,
    order_by: Vec<String>,
    filter: Option<String>,
}

fn my(context: impl Into<String>) -> impl FnOnce(mysql::Error) -> OpsError {
    let context = context.into();
    move |source| {
        OpsError::Mysql(sovereign_mysql::MyError::Statement {
            statement: context,
            source,
        })
    }
}

fn backquoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `value` as a column of `kind` takes it (what MySQL stores and reads back).
fn as_kind(value: SqlValue, kind: ColumnKind) -> SqlValue {
    match (kind, value) {
        (_, SqlValue::Null) => SqlValue::Null,
        (ColumnKind::Integer, SqlValue::Real(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            SqlValue::Integer(f as i64)
        }
        (ColumnKind::Real, SqlValue::Integer(i)) => SqlValue::Real(i as f64),
        (ColumnKind::Text, SqlValue::Integer(i)) => SqlValue::Text(i.to_string()),
        (ColumnKind::Text, SqlValue::Real(f)) => SqlValue::Text(f.to_string()),
        (ColumnKind::Text, SqlValue::Blob(b)) => match String::from_utf8(b) {
            Ok(text) => SqlValue::Text(text),
            Err(e) => SqlValue::Blob(e.into_bytes()),
        },
        (ColumnKind::Blob, SqlValue::Text(t)) => SqlValue::Blob(t.into_bytes()),
        (_, value) => value,
    }
}

fn size_of(value: &SqlValue) -> usize {
    match value {
        SqlValue::Text(t) => t.len(),
        SqlValue::Blob(b) => b.len(),
        _ => 8,
    }
}

impl MyTableCopy {
    /// Matches SQLite table `source` (in `sqlite_db`, rows matching `filter` if given) to
    /// MySQL table `database.table` (seen through `conn`). Refuses a SQLite column the
    /// MySQL table lacks and a MySQL column nothing fills that needs a value.
    pub fn plan(
        conn: &mut impl Queryable,
        database: &str,
        table: &str,
        sqlite_db: &Connection,
        source: &str,
        filter: Option<String>,
    ) -> Result<MyTableCopy, OpsError> {
        let shown = format!("{database}.{table}");
        let query =
            "SELECT COLUMN_NAME, DATA_TYPE, EXTRA, IS_NULLABLE = 'NO' AND COLUMN_DEFAULT IS NULL,
                            COLUMN_KEY = 'PRI'
                     FROM information_schema.COLUMNS
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION";
        let found: Vec<(String, String, String, bool, bool)> = conn
            .exec(query, (database, table))
            .map_err(my(format!("reading the columns of {shown}")))?;
        if found.is_empty() {
            return Err(OpsError::Refused(format!("MySQL has no table {shown}")));
        }
        let sqlite_columns = sqlite_columns(sqlite_db, source)?;
        let has_rowid = sqlite_db
            .prepare(&format!("SELECT rowid FROM {} LIMIT 0", quoted(source)))
            .is_ok();
        let (mut columns, mut key) = (Vec::new(), Vec::new());
        for (name, data_type, extra, required, primary) in found {
            let extra = extra.to_ascii_lowercase();
            if extra.contains("generated") {
                continue;
            }
            let auto_increment = extra.contains("auto_increment");
            let source_expr = if sqlite_columns.iter().any(|c| c == &name) {
                quoted(&name)
            } else if auto_increment && has_rowid {
                "rowid".to_owned()
            } else if required && !auto_increment {
                return Err(OpsError::Refused(format!(
                    "{shown}.{name} needs a value but the SQLite table {source} has no column \
                     {name}: the two stores' migrations do not match (apply the pending SQLite \
                     migrations first: sv migrate:deploy)"
                )));
            } else {
                continue;
            };
            if primary {
                key.push(source_expr.clone());
            }
            columns.push(Column {
                name,
                source: source_expr,
                kind: ColumnKind::from_declared(&data_type),
            });
        }
        if let Some(lost) = sqlite_columns
            .iter()
            .find(|c| !columns.iter().any(|col| &&col.name == c))
        {
            return Err(OpsError::Refused(format!(
                "the SQLite table {source} has a column {lost} that {shown} lacks: its values \
                 would be lost (the MySQL migrations must create every column the SQLite ones do)"
            )));
        }
        let order_by = if !key.is_empty() {
            key
        } else if has_rowid {
            vec!["rowid".to_owned()]
        } else {
            columns.iter().map(|c| c.source.clone()).collect()
        };
        Ok(MyTableCopy {
            source: source.to_owned(),
            target: format!("{}.{}", backquoted(database), backquoted(table)),
            shown,
            columns,
            order_by,
            filter,
        })
    }

    /// Copies the rows into the MySQL table through `conn` (in the caller's
    /// transaction); returns the source's digest, values read as the target's kinds.
    pub fn copy(
        &self,
        conn: &mut impl Queryable,
        sqlite_db: &Connection,
    ) -> Result<TableDigest, OpsError> {
        let select = format!(
            "SELECT {} FROM {}{} ORDER BY {}",
            self.columns
                .iter()
                .map(|c| c.source.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            quoted(&self.source),
            self.filter
                .as_deref()
                .map(|f| format!(" WHERE {f}"))
                .unwrap_or_default(),
            self.order_by.join(", ")
        );
        let context = format!("reading {}", self.source);
        let mut statement = sqlite_db.prepare(&select).map_err(sqlite(&context))?;
        let mut rows = statement.query([]).map_err(sqlite(&context))?;
        let mut digest = TableDigest::default();
        let mut batch: Vec<Vec<SqlValue>> = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(sqlite(&context))? {
            let mut values = Vec::with_capacity(self.columns.len());
            for (i, column) in self.columns.iter().enumerate() {
                let value = row.get_ref(i).map_err(sqlite(&context))?;
                values.push(as_kind(SqlValue::from_ref(value), column.kind));
            }
            digest.add_values(&values);
            bytes += values.iter().map(size_of).sum::<usize>();
            batch.push(values);
            if batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES {
                self.insert(conn, &batch)?;
                batch.clear();
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.insert(conn, &batch)?;
        }
        Ok(digest)
    }

    fn insert(&self, conn: &mut impl Queryable, rows: &[Vec<SqlValue>]) -> Result<(), OpsError> {
        let row = format!("({})", vec!["?"; self.columns.len()].join(", "));
        let insert = format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.target,
            self.columns
                .iter()
                .map(|c| backquoted(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
            vec![row; rows.len()].join(", ")
        );
        let params: Vec<mysql::Value> = rows
            .iter()
            .flatten()
            .map(sovereign_mysql::values::param)
            .collect();
        conn.exec_drop(&insert, params)
            .map_err(my(format!("copying rows into {}", self.shown)))
    }

    /// The MySQL table's digest (through `conn`, in the copy's transaction).
    pub fn target_digest(&self, conn: &mut impl Queryable) -> Result<TableDigest, OpsError> {
        let select = format!(
            "SELECT {} FROM {}",
            self.columns
                .iter()
                .map(|c| backquoted(&c.name))
                .collect::<Vec<_>>()
                .join(", "),
            self.target
        );
        let mut digest = TableDigest::default();
        let rows = conn
            .query_iter(&select)
            .map_err(my(format!("reading {}", self.shown)))?;
        for row in rows {
            let row = row.map_err(my(format!("reading {}", self.shown)))?;
            let values = sovereign_mysql::values::row_values(row)
                .map_err(|e| OpsError::Refused(format!("{}: {e}", self.shown)))?;
            digest.add_values(&values);
        }
        Ok(digest)
    }
}
