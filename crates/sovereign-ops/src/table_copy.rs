//! Copying a SQLite table into the PostgreSQL table of the same name and columns (what
//! `sv migrate:to-postgres` does for every core and plugin table), and checking the copy.
//!
//! The PostgreSQL table is the contract: its columns (generated ones aside) are copied
//! from the SQLite columns of the same names, in primary-key order, with one `COPY ...
//! FROM STDIN` in text format. A PostgreSQL identity column the SQLite table lacks is
//! the SQLite `rowid` (as `event_inbox.seq`). A SQLite column the PostgreSQL table lacks
//! would be lost, so it is refused before anything is copied.
//!
//! Both sides are then summarised the same way ([`TableDigest`]): the number of rows and
//! the sum of a SHA-256 of each row's values, each value read as the PostgreSQL column's
//! type takes it (SQLite's `1` in a `boolean` column is `true`). The sum does not depend
//! on the order rows are read in, so the two sides need not sort text alike.

use std::fmt;
use std::io::Write;

use postgres::fallible_iterator::FallibleIterator;
use sha2::{Digest, Sha256};
use sovereign_db::rusqlite::Connection;
use sovereign_db::rusqlite::types::ValueRef;

use crate::{OpsError, sqlite};

/// How a PostgreSQL column takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `smallint`, `integer`, `bigint`.
    Integer,
    /// `real`, `double precision`.
    Float,
    /// `boolean`.
    Boolean,
    /// `bytea`.
    Bytes,
    /// Everything else, read and written as text (`text`, `json`, `numeric`, ...).
    Text,
}

impl Kind {
    fn of(type_name: &str) -> Kind {
        match type_name {
            "int2" | "int4" | "int8" => Kind::Integer,
            "float4" | "float8" => Kind::Float,
            "bool" => Kind::Boolean,
            "bytea" => Kind::Bytes,
            _ => Kind::Text,
        }
    }
}

/// One column of a copy: the PostgreSQL name and how the SQLite side reads it.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// The SQLite expression (a quoted column name, or `rowid`).
    source: String,
    kind: Kind,
    /// Whether a sequence gives its values (identity or serial), to be set past the copy.
    sequenced: bool,
}

/// A SQLite table matched to its PostgreSQL table: what is copied and in what order.
#[derive(Debug, Clone)]
pub struct TableCopy {
    /// The SQLite table.
    pub source: String,
    /// The PostgreSQL table, schema-qualified and quoted.
    pub target: String,
    /// The PostgreSQL table's name as shown to operators (`schema.table`).
    pub shown: String,
    columns: Vec<Column>,
    order_by: Vec<String>,
}

/// Rows and their order-independent checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableDigest {
    /// How many rows.
    pub rows: u64,
    /// The wrapping sum of the first 16 bytes of each row's SHA-256.
    pub sum: u128,
}

impl fmt::Display for TableDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, checksum {:032x}", self.rows, self.sum)
    }
}

impl TableDigest {
    /// Adds a row of platform values (a copy into MySQL reads both sides as these).
    pub(crate) fn add_values(&mut self, values: &[sovereign_db_plugins::SqlValue]) {
        use sovereign_db_plugins::SqlValue;
        let mut row = RowHasher::default();
        for value in values {
            match value {
                SqlValue::Null => row.null(),
                SqlValue::Integer(v) => row.integer(*v),
                SqlValue::Real(v) => row.float(*v),
                SqlValue::Text(v) => row.text(v),
                SqlValue::Blob(v) => row.bytes(v),
            }
        }
        self.add(&row);
    }

    fn add(&mut self, row: &RowHasher) {
        let hash = row.hasher.clone().finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash[..16]);
        self.rows += 1;
        self.sum = self.sum.wrapping_add(u128::from_be_bytes(first));
    }
}

/// One row's hash, fed value by value.
#[derive(Default)]
struct RowHasher {
    hasher: Sha256,
}

impl RowHasher {
    fn value(&mut self, tag: u8, bytes: &[u8]) {
        self.hasher.update([tag]);
        self.hasher.update((bytes.len() as u64).to_be_bytes());
        self.hasher.update(bytes);
    }

    fn null(&mut self) {
        self.value(b'n', &[]);
    }

    fn integer(&mut self, v: i64) {
        self.value(b'i', &v.to_be_bytes());
    }

    fn float(&mut self, v: f64) {
        self.value(b'f', &v.to_bits().to_be_bytes());
    }

    fn boolean(&mut self, v: bool) {
        self.value(b'b', &[v as u8]);
    }

    fn bytes(&mut self, v: &[u8]) {
        self.value(b'x', v);
    }

    fn text(&mut self, v: &str) {
        self.value(b't', v.as_bytes());
    }
}

fn refused(message: String) -> OpsError {
    OpsError::Refused(message)
}

fn pg(context: impl Into<String>) -> impl FnOnce(postgres::Error) -> OpsError {
    let statement = context.into();
    move |source| sovereign_postgres::PgError::Statement { statement, source }.into()
}

/// Quotes a name for either SQL dialect.
pub(crate) fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The tables of `schema` on PostgreSQL, by name.
pub fn postgres_tables(
    client: &mut impl postgres::GenericClient,
    schema: &str,
) -> Result<Vec<String>, OpsError> {
    let query =
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1";
    Ok(client
        .query(query, &[&schema])
        .map_err(pg(query))?
        .into_iter()
        .map(|row| row.get(0))
        .collect())
}

/// `tables` of `schema` ordered so that each comes after the tables its foreign keys
/// reference (a cycle keeps the remaining tables' order; `COPY` then says which row).
pub fn foreign_key_order(
    client: &mut impl postgres::GenericClient,
    schema: &str,
    tables: Vec<String>,
) -> Result<Vec<String>, OpsError> {
    let query = "SELECT c.relname::text, r.relname::text FROM pg_constraint k
                 JOIN pg_class c ON c.oid = k.conrelid
                 JOIN pg_class r ON r.oid = k.confrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE k.contype = 'f' AND n.nspname = $1 AND k.conrelid <> k.confrelid";
    let edges: Vec<(String, String)> = client
        .query(query, &[&schema])
        .map_err(pg(query))?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let mut left = tables;
    let mut ordered: Vec<String> = Vec::new();
    while !left.is_empty() {
        let ready = left.iter().position(|t| {
            edges
                .iter()
                .filter(|(from, _)| from == t)
                .all(|(_, to)| ordered.contains(to) || !left.contains(to))
        });
        ordered.push(left.remove(ready.unwrap_or(0)));
    }
    Ok(ordered)
}

/// The SQLite database's tables (SQLite's own aside), by name.
pub fn sqlite_tables(conn: &Connection) -> Result<Vec<String>, OpsError> {
    let query = "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name";
    let mut stmt = conn.prepare(query).map_err(sqlite("listing tables"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sqlite("listing tables"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sqlite("listing tables"))?;
    Ok(names)
}

/// Rows of a SQLite table.
pub fn sqlite_rows(conn: &Connection, table: &str) -> Result<u64, OpsError> {
    let query = format!("SELECT count(*) FROM {}", quoted(table));
    conn.query_row(&query, [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(sqlite(format!("counting the rows of {table}")))
}

impl TableCopy {
    /// Matches SQLite table `source` (in `sqlite`) to PostgreSQL table `schema.table`
    /// (seen through `client`). Refuses a SQLite column the PostgreSQL table lacks (its
    /// values would be lost) and a PostgreSQL column nothing fills that needs a value.
    pub fn plan(
        client: &mut impl postgres::GenericClient,
        schema: &str,
        table: &str,
        sqlite_db: &Connection,
        source: &str,
    ) -> Result<TableCopy, OpsError> {
        let target = format!("{}.{}", quoted(schema), quoted(table));
        let shown = format!("{schema}.{table}");
        let query = "SELECT a.attname::text, t.typname::text,
                            pg_get_serial_sequence($1, a.attname) IS NOT NULL,
                            a.attnotnull AND NOT a.atthasdef AND a.attidentity = '',
                            coalesce(array_position(i.indkey::int2[], a.attnum), 0)
                     FROM pg_attribute a
                     JOIN pg_type t ON t.oid = a.atttypid
                     LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                     WHERE a.attrelid = $1::regclass AND a.attnum > 0
                       AND NOT a.attisdropped AND a.attgenerated = ''
                     ORDER BY a.attnum";
        let rows = client.query(query, &[&target]).map_err(pg(query))?;
        let sqlite_columns = sqlite_columns(sqlite_db, source)?;
        let has_rowid = sqlite_db
            .prepare(&format!("SELECT rowid FROM {} LIMIT 0", quoted(source)))
            .is_ok();
        let mut columns = Vec::new();
        let mut key: Vec<(i32, String)> = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let kind = Kind::of(row.get::<_, &str>(1));
            let sequenced: bool = row.get(2);
            let required: bool = row.get(3);
            let key_position: i32 = row.get(4);
            let source_expr = if sqlite_columns.iter().any(|c| c == &name) {
                quoted(&name)
            } else if sequenced && has_rowid {
                "rowid".to_owned()
            } else if required {
                return Err(refused(format!(
                    "{shown}.{name} needs a value but the SQLite table {source} has no column \
                     {name}: the two stores' migrations do not match (apply the pending SQLite \
                     migrations first: sv migrate:deploy)"
                )));
            } else {
                // Filled by its default on PostgreSQL.
                continue;
            };
            if key_position > 0 {
                key.push((key_position, source_expr.clone()));
            }
            columns.push(Column {
                name,
                source: source_expr,
                kind,
                sequenced,
            });
        }
        if columns.is_empty() {
            return Err(refused(format!("{shown} has no columns to copy")));
        }
        if let Some(lost) = sqlite_columns
            .iter()
            .find(|c| !columns.iter().any(|col| &&col.name == c))
        {
            return Err(refused(format!(
                "the SQLite table {source} has a column {lost} that {shown} lacks: its values \
                 would be lost (the PostgreSQL migrations must create every column the SQLite \
                 ones do)"
            )));
        }
        key.sort();
        let order_by = if !key.is_empty() {
            key.into_iter().map(|(_, expr)| expr).collect()
        } else if has_rowid {
            vec!["rowid".to_owned()]
        } else {
            columns.iter().map(|c| c.source.clone()).collect()
        };
        Ok(TableCopy {
            source: source.to_owned(),
            target,
            shown,
            columns,
            order_by,
        })
    }

    fn select_sql(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY {}",
            self.columns
                .iter()
                .map(|c| c.source.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            quoted(&self.source),
            self.order_by.join(", ")
        )
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quoted(&c.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Copies every row in primary-key order with one `COPY` in `tx`, telling `progress`
    /// how many rows went since it was last called; returns the SQLite side's digest.
    pub fn copy(
        &self,
        sqlite_db: &Connection,
        tx: &mut postgres::Transaction<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<TableDigest, OpsError> {
        let copy_sql = format!("COPY {} ({}) FROM STDIN", self.target, self.column_list());
        let mut writer = tx.copy_in(&copy_sql).map_err(pg(copy_sql.clone()))?;
        let digest = self.read_source(
            sqlite_db,
            &mut |line| {
                writer
                    .write_all(line)
                    .map_err(crate::io(format!("copying into {}", self.shown)))
            },
            progress,
        )?;
        writer.finish().map_err(pg(copy_sql))?;
        Ok(digest)
    }

    /// The SQLite side's digest, without copying.
    pub fn source_digest(&self, sqlite_db: &Connection) -> Result<TableDigest, OpsError> {
        self.read_source(sqlite_db, &mut |_| Ok(()), &mut |_| {})
    }

    /// Reads every row in primary-key order, hands each to `sink` as a line of `COPY`'s
    /// text format and returns the digest.
    fn read_source(
        &self,
        sqlite_db: &Connection,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), OpsError>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<TableDigest, OpsError> {
        let select = self.select_sql();
        let reading = || sqlite(format!("reading {}", self.source));
        let mut stmt = sqlite_db.prepare(&select).map_err(reading())?;
        let mut digest = TableDigest::default();
        let mut line = Vec::with_capacity(1024);
        let mut rows = stmt.query([]).map_err(reading())?;
        let mut unreported = 0u64;
        while let Some(row) = rows.next().map_err(reading())? {
            line.clear();
            let mut hasher = RowHasher::default();
            for (i, column) in self.columns.iter().enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                let value = row.get_ref(i).map_err(reading())?;
                self.write_value(column, value, &mut line, &mut hasher)?;
            }
            line.push(b'\n');
            digest.add(&hasher);
            sink(&line)?;
            unreported += 1;
            if unreported == 1000 {
                progress(unreported);
                unreported = 0;
            }
        }
        progress(unreported);
        Ok(digest)
    }

    /// Writes one value in `COPY`'s text format and feeds it, as the column's type reads
    /// it, to the row's hash.
    fn write_value(
        &self,
        column: &Column,
        value: ValueRef<'_>,
        line: &mut Vec<u8>,
        hasher: &mut RowHasher,
    ) -> Result<(), OpsError> {
        match (column.kind, value) {
            (_, ValueRef::Null) => {
                line.extend_from_slice(b"\\N");
                hasher.null();
            }
            (Kind::Integer, ValueRef::Integer(v)) => {
                write!(line, "{v}").expect("writing to a Vec");
                hasher.integer(v);
            }
            (Kind::Integer, ValueRef::Real(v)) if v.fract() == 0.0 && v.abs() < 9.2e18 => {
                write!(line, "{}", v as i64).expect("writing to a Vec");
                hasher.integer(v as i64);
            }
            (Kind::Float, ValueRef::Integer(v)) => {
                write!(line, "{v}").expect("writing to a Vec");
                hasher.float(v as f64);
            }
            (Kind::Float, ValueRef::Real(v)) => {
                write!(line, "{v:?}").expect("writing to a Vec");
                hasher.float(v);
            }
            (Kind::Boolean, ValueRef::Integer(v)) => {
                line.extend_from_slice(if v != 0 { b"t" } else { b"f" });
                hasher.boolean(v != 0);
            }
            (Kind::Bytes, ValueRef::Blob(v)) => {
                line.extend_from_slice(b"\\\\x");
                line.extend_from_slice(hex::encode(v).as_bytes());
                hasher.bytes(v);
            }
            (Kind::Text, ValueRef::Text(v)) => {
                let text = std::str::from_utf8(v).map_err(|_| {
                    refused(format!(
                        "{}.{} holds text that is not UTF-8, which PostgreSQL cannot store",
                        self.source, column.name
                    ))
                })?;
                escape_into(text, line);
                hasher.text(text);
            }
            (Kind::Text, ValueRef::Integer(v)) => {
                let text = v.to_string();
                line.extend_from_slice(text.as_bytes());
                hasher.text(&text);
            }
            (Kind::Text, ValueRef::Real(v)) => {
                let text = v.to_string();
                line.extend_from_slice(text.as_bytes());
                hasher.text(&text);
            }
            (kind, value) => {
                return Err(refused(format!(
                    "{}.{} holds a {} value where PostgreSQL's column {} takes {}: fix the \
                     row on SQLite (or the PostgreSQL migration's column type) and move again",
                    self.source,
                    column.name,
                    value.data_type(),
                    self.shown,
                    match kind {
                        Kind::Integer => "integers",
                        Kind::Float => "numbers",
                        Kind::Boolean => "0/1 booleans",
                        Kind::Bytes => "blobs",
                        Kind::Text => "text",
                    }
                )));
            }
        }
        Ok(())
    }

    /// The PostgreSQL side's digest, read in `client`'s view (inside the copy's
    /// transaction, it sees the copy).
    pub fn target_digest(
        &self,
        client: &mut impl postgres::GenericClient,
    ) -> Result<TableDigest, OpsError> {
        let query = format!(
            "SELECT {} FROM {}",
            self.columns
                .iter()
                .map(|c| format!("{}::text", quoted(&c.name)))
                .collect::<Vec<_>>()
                .join(", "),
            self.target
        );
        let no_params: [&str; 0] = [];
        let mut rows = client
            .query_raw(query.as_str(), no_params)
            .map_err(pg(query.clone()))?;
        let mut digest = TableDigest::default();
        while let Some(row) = rows.next().map_err(pg(query.clone()))? {
            let mut hasher = RowHasher::default();
            for (i, column) in self.columns.iter().enumerate() {
                let text: Option<&str> = row.get(i);
                let Some(text) = text else {
                    hasher.null();
                    continue;
                };
                let unreadable = || {
                    refused(format!(
                        "{}.{}: PostgreSQL gave {text:?}, which is not a {:?}",
                        self.shown, column.name, column.kind
                    ))
                };
                match column.kind {
                    Kind::Integer => hasher.integer(text.parse().map_err(|_| unreadable())?),
                    Kind::Float => hasher.float(text.parse().map_err(|_| unreadable())?),
                    Kind::Boolean => hasher.boolean(text == "true"),
                    Kind::Bytes => hasher.bytes(
                        &hex::decode(text.strip_prefix("\\x").ok_or_else(unreadable)?)
                            .map_err(|_| unreadable())?,
                    ),
                    Kind::Text => hasher.text(text),
                }
            }
            digest.add(&hasher);
        }
        Ok(digest)
    }

    /// Sets each sequence of the table past the largest value copied, so that the next
    /// row PostgreSQL numbers does not collide with a copied one.
    pub fn set_sequences(&self, client: &mut impl postgres::GenericClient) -> Result<(), OpsError> {
        for column in self.columns.iter().filter(|c| c.sequenced) {
            let name = quoted(&column.name);
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), coalesce(max({name}), 0) + 1, false) \
                 FROM {}",
                self.target
            );
            client
                .execute(sql.as_str(), &[&self.target, &column.name])
                .map_err(pg(sql.clone()))?;
        }
        Ok(())
    }
}

/// The SQLite table's stored columns (generated ones are computed again on PostgreSQL).
pub(crate) fn sqlite_columns(conn: &Connection, table: &str) -> Result<Vec<String>, OpsError> {
    let query = format!("PRAGMA table_xinfo({})", quoted(table));
    let reading = || sqlite(format!("reading the columns of {table}"));
    let mut stmt = conn.prepare(&query).map_err(reading())?;
    let columns = stmt
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(6)?)))
        .map_err(reading())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(reading())?;
    if columns.is_empty() {
        return Err(refused(format!("the SQLite store has no table {table}")));
    }
    Ok(columns
        .into_iter()
        .filter(|(_, hidden)| *hidden == 0)
        .map(|(name, _)| name)
        .collect())
}

/// Appends `text` escaped for `COPY`'s text format.
fn escape_into(text: &str, line: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\\' => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            other => line.push(other),
        }
    }
}
