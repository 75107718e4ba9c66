//! The mirror on PostgreSQL: `core.core__<slice>` tables in the plugin database, written
//! only by the plugin store's owner (`svc_plugins`) on its own connection, with the
//! watermark and the slices' specs in `public._sv_mirror_state` / `_sv_mirror_slices`.
//! A batch and its watermark commit together; a rebuild replaces every slice and sets
//! the watermark in one transaction (rows by binary `COPY`). Plugins read the columns
//! `sv_admin.grant_mirrors` granted them.

use postgres::binary_copy::BinaryCopyInWriter;
use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, Statement, Transaction};
use sovereign_db_plugins::SqlValue;
use sovereign_db_plugins::mirror::{MirrorBatch, MirrorCatalog, MirrorSlice};

use crate::PgError;
use crate::plugin_db::values;

pub use sovereign_db_plugins::mirror::ColumnKind;

/// A mirror column's kind in PostgreSQL's terms.
pub trait PgColumnKind: Sized {
    /// The kind of a column of PostgreSQL type `ty` (a core column on PostgreSQL).
    fn from_pg(ty: &Type) -> Self;
    /// `expr`, a value of PostgreSQL type `source`, cast to this kind's mirror column
    /// type, for a binary `COPY` from a PostgreSQL core straight into the mirror; `None`
    /// for a type whose cast could differ from the value-by-value conversion (which then
    /// copies it).
    fn cast(self, source: &Type, expr: &str) -> Option<String>;
    /// The mirror column's type.
    fn sql(self) -> &'static str;
    /// The mirror column's type, for the binary protocol.
    fn pg_type(self) -> Type;
}

impl PgColumnKind for ColumnKind {
    fn from_pg(ty: &Type) -> ColumnKind {
        match *ty {
            Type::INT2 | Type::INT4 | Type::INT8 | Type::BOOL | Type::OID => ColumnKind::Integer,
            Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => ColumnKind::Real,
            Type::BYTEA => ColumnKind::Blob,
            _ => ColumnKind::Text,
        }
    }

    fn cast(self, source: &Type, expr: &str) -> Option<String> {
        let plain = [
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::VARCHAR,
            Type::JSON,
            Type::BYTEA,
        ];
        if *source == Type::BOOL && self == ColumnKind::Integer {
            return Some(format!("({expr})::int::{}", self.sql()));
        }
        (ColumnKind::from_pg(source) == self && plain.contains(source))
            .then(|| format!("({expr})::{}", self.sql()))
    }

    fn sql(self) -> &'static str {
        match self {
            ColumnKind::Integer => "bigint",
            ColumnKind::Real => "double precision",
            ColumnKind::Text => "text",
            ColumnKind::Blob => "bytea",
        }
    }

    fn pg_type(self) -> Type {
        match self {
            ColumnKind::Integer => Type::INT8,
            ColumnKind::Real => Type::FLOAT8,
            ColumnKind::Text => Type::TEXT,
            ColumnKind::Blob => Type::BYTEA,
        }
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn statement_error(statement: &str) -> impl FnOnce(postgres::Error) -> PgError + '_ {
    move |source| PgError::Statement {
        statement: statement.to_owned(),
        source,
    }
}

/// The mirror's writer: the plugin store owner's connection.
pub struct PgMirror {
    client: Client,
    /// Statements prepared on this connection, by their text.
    statements: HashMap<String, Statement>,
    /// The column kinds of each slice's mirror table, read once (a rebuild forgets them).
    table_kinds: HashMap<String, Vec<ColumnKind>>,
}

/// `sql` prepared once per connection.
fn cached(
    client: &mut impl GenericClient,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, PgError> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql).map_err(statement_error(sql))?;
    statements.insert(sql.to_owned(), statement.clone());
    Ok(statement)
}

/// One column of a batch's rows, as an array parameter of the mirror column's type.
fn column_array(
    kind: ColumnKind,
    values: impl Iterator<Item = SqlValue>,
) -> Result<Box<dyn ToSql + Sync>, String> {
    fn collect<T>(
        values: impl Iterator<Item = SqlValue>,
        ty: &Type,
        take: impl Fn(values::Encoded) -> Option<T>,
    ) -> Result<Vec<Option<T>>, String> {
        values
            .map(|value| match values::encode(&value, ty)? {
                values::Encoded::Null => Ok(None),
                encoded => take(encoded)
                    .map(Some)
                    .ok_or_else(|| format!("{value:?} does not fit a {ty} column")),
            })
            .collect()
    }
    Ok(match kind {
        ColumnKind::Integer => Box::new(collect(values, &Type::INT8, |e| match e {
            values::Encoded::Int8(i) => Some(i),
            _ => None,
        })?),
        ColumnKind::Real => Box::new(collect(values, &Type::FLOAT8, |e| match e {
            values::Encoded::Float8(f) => Some(f),
            _ => None,
        })?),
        ColumnKind::Text => Box::new(collect(values, &Type::TEXT, |e| match e {
            values::Encoded::Text(t) => Some(t),
            _ => None,
        })?),
        ColumnKind::Blob => Box::new(collect(values, &Type::BYTEA, |e| match e {
            values::Encoded::Bytes(b) => Some(b),
            _ => None,
        })?),
    })
}

impl PgMirror {
    /// Connects as the plugin store's owner (`PLUGIN_DATABASE_URL`).
    pub fn connect(owner_url: &str) -> Result<PgMirror, PgError> {
        let mut client =
            Client::connect(owner_url, postgres::NoTls).map_err(|source| PgError::Connect {
                target: "the plugin database as its owner (the mirror writer)".into(),
                source,
            })?;
        // A first build's `DROP TABLE IF EXISTS` notices; nobody needs to read that.
        let quiet = "SET client_min_messages = warning";
        client
            .batch_execute(quiet)
            .map_err(statement_error(quiet))?;
        Ok(PgMirror {
            client,
            statements: HashMap::new(),
            table_kinds: HashMap::new(),
        })
    }

    /// The column kinds of `slice`'s mirror table (in slice column order), read once.
    fn kinds_of(&mut self, slice: &MirrorSlice) -> Result<Vec<ColumnKind>, PgError> {
        if let Some(kinds) = self.table_kinds.get(&slice.name) {
            return Ok(kinds.clone());
        }
        let query = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                     FROM pg_attribute a
                     WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped";
        let table = format!("core.{}", ident(&slice.table_name()));
        let types: HashMap<String, String> = self
            .client
            .query(query, &[&table])
            .map_err(statement_error(query))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let kinds = slice
            .columns
            .iter()
            .map(|column| {
                match types.get(column).map(String::as_str) {
                    Some("bigint") => Some(ColumnKind::Integer),
                    Some("double precision") => Some(ColumnKind::Real),
                    Some("text") => Some(ColumnKind::Text),
                    Some("bytea") => Some(ColumnKind::Blob),
                    _ => None,
                }
                .ok_or_else(|| PgError::MirrorState {
                    message: format!(
                        "{table} has no column {column} of a mirror type ({:?})",
                        types.get(column)
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.table_kinds.insert(slice.name.clone(), kinds.clone());
        Ok(kinds)
    }

    /// A transaction of the mirror's one writer: writers (the worker, a rebuild, a
    /// repair) take turns.
    fn writer_transaction(&mut self) -> Result<Transaction<'_>, PgError> {
        let mut tx = self
            .client
            .transaction()
            .map_err(statement_error("BEGIN"))?;
        tx.execute(WRITER_LOCK, &[])
            .map_err(statement_error(WRITER_LOCK))?;
        Ok(tx)
    }

    fn state(&mut self, key: &str) -> Result<i64, PgError> {
        let query =
            "SELECT coalesce((SELECT value FROM public._sv_mirror_state WHERE key = $1), 0)";
        Ok(self
            .client
            .query_one(query, &[&key])
            .map_err(statement_error(query))?
            .get(0))
    }

    /// The last core outbox sequence number applied (0 if none).
    pub fn watermark(&mut self) -> Result<i64, PgError> {
        self.state("watermark")
    }

    /// When a batch was last applied (unix ms, 0 if never).
    pub fn applied_at_ms(&mut self) -> Result<i64, PgError> {
        self.state("applied_at_ms")
    }

    /// Every slice the mirror holds, with the projection it was built with.
    pub fn specs(&mut self) -> Result<Vec<MirrorSlice>, PgError> {
        let query = "SELECT slice, spec FROM public._sv_mirror_slices ORDER BY slice";
        self.client
            .query(query, &[])
            .map_err(statement_error(query))?
            .iter()
            .map(|row| {
                let (slice, spec): (String, String) = (row.get(0), row.get(1));
                serde_json::from_str(&spec).map_err(|e| PgError::MirrorState {
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
    ) -> Result<bool, PgError> {
        // The last state of each key in the batch (its rows are the projection as the
        // batch was read, so every change of one key carries the same row).
        let last = batch.last_rows(catalog);
        let mut kinds = HashMap::new();
        for (slice, rows) in last.values() {
            if rows.values().any(Option::is_some) {
                kinds.insert(slice.name.as_str(), self.kinds_of(slice)?);
            }
        }
        let PgMirror {
            client, statements, ..
        } = self;
        let mut tx = client.transaction().map_err(statement_error("BEGIN"))?;
        let lock = cached(&mut tx, statements, WRITER_LOCK)?;
        tx.execute(&lock, &[])
            .map_err(statement_error(WRITER_LOCK))?;
        let query = "SELECT coalesce((SELECT value FROM public._sv_mirror_state WHERE key = 'watermark'), 0)";
        let read = cached(&mut tx, statements, query)?;
        let watermark: i64 = tx
            .query_one(&read, &[])
            .map_err(statement_error(query))?
            .get(0);
        if batch.upto_seq <= watermark {
            return Ok(false);
        }
        for (slice, rows) in last.values() {
            let table = format!("core.{}", ident(&slice.table_name()));
            let key_column = ident(slice.key_column());
            let deleted: Vec<i64> = rows
                .iter()
                .filter(|(_, row)| row.is_none())
                .map(|(key, _)| *key)
                .collect();
            if !deleted.is_empty() {
                let delete = format!("DELETE FROM {table} WHERE {key_column} = ANY($1)");
                let statement = cached(&mut tx, statements, &delete)?;
                tx.execute(&statement, &[&deleted])
                    .map_err(statement_error(&delete))?;
            }
            let written: Vec<&[SqlValue]> = rows.values().filter_map(|row| *row).collect();
            if written.is_empty() {
                continue;
            }
            let kinds = &kinds[slice.name.as_str()];
            let arrays: Vec<String> = kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| format!("${}::{}[]", i + 1, kind.sql()))
                .collect();
            let upsert = upsert_sql(
                slice,
                &format!("SELECT * FROM unnest({})", arrays.join(", ")),
            );
            if let Some(row) = written.iter().find(|row| row.len() != kinds.len()) {
                return Err(PgError::MirrorState {
                    message: format!(
                        "slice {}: a row of {} values for {} columns",
                        slice.name,
                        row.len(),
                        kinds.len()
                    ),
                });
            }
            let parameters = kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| column_array(*kind, written.iter().map(|row| row[i].clone())))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| PgError::MirrorState {
                    message: format!("slice {}: {message}", slice.name),
                })?;
            let refs: Vec<&(dyn ToSql + Sync)> = parameters.iter().map(|p| p.as_ref()).collect();
            let statement = cached(&mut tx, statements, &upsert)?;
            tx.execute(&statement, &refs)
                .map_err(statement_error(&upsert))?;
        }
        let set = cached(&mut tx, statements, SET_STATE)?;
        tx.execute(&set, &[&batch.upto_seq, &now_ms])
            .map_err(statement_error(SET_STATE))?;
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
    ) -> Result<Vec<(i64, Vec<SqlValue>)>, PgError> {
        let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
        let key = ident(slice.key_column());
        let query = format!(
            "SELECT {} FROM core.{} WHERE {key} > $1 AND {key} <= $2 ORDER BY {key}",
            columns.join(", "),
            ident(&slice.table_name())
        );
        self.client
            .query(query.as_str(), &[&after, &upto])
            .map_err(statement_error(&query))?
            .iter()
            .map(|row| {
                let values = (0..row.len())
                    .map(|i| row.try_get::<_, values::Decoded>(i).map(|d| d.0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(statement_error(&query))?;
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
    ) -> Result<u64, PgError> {
        let mut tx = self.writer_transaction()?;
        for (slice, key, row) in fixes {
            write_row(&mut tx, slice, *key, row.as_deref())?;
        }
        tx.commit().map_err(statement_error("COMMIT"))?;
        Ok(fixes.len() as u64)
    }

    /// Starts a rebuild: one transaction that replaces slices and sets the watermark.
    pub fn rebuild(&mut self) -> Result<Rebuild<'_>, PgError> {
        // The tables are made anew: statements and column kinds are read again.
        self.statements.clear();
        self.table_kinds.clear();
        let tx = self.writer_transaction()?;
        Ok(Rebuild { tx })
    }
}

/// A rebuild in progress; nothing of it is visible until [`Rebuild::finish`].
pub struct Rebuild<'a> {
    tx: Transaction<'a>,
}

impl Rebuild<'_> {
    /// Drops a slice that is no longer configured.
    pub fn drop_slice(&mut self, name: &str) -> Result<(), PgError> {
        let drop = format!(
            "DROP TABLE IF EXISTS core.{}",
            ident(&format!("core__{name}"))
        );
        self.tx
            .batch_execute(&drop)
            .map_err(statement_error(&drop))?;
        let forget = "DELETE FROM public._sv_mirror_slices WHERE slice = $1";
        self.tx
            .execute(forget, &[&name])
            .map_err(statement_error(forget))?;
        Ok(())
    }

    /// Creates `slice`'s table afresh (columns typed by `kinds`, the first the key) and
    /// records its spec; rows follow with [`copy_rows`](Self::copy_rows).
    pub fn create_slice(
        &mut self,
        slice: &MirrorSlice,
        kinds: &[ColumnKind],
    ) -> Result<(), PgError> {
        let table = format!("core.{}", ident(&slice.table_name()));
        let columns: Vec<String> = slice
            .columns
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (name, kind))| {
                let key = if i == 0 { " PRIMARY KEY" } else { "" };
                format!("{} {}{key}", ident(name), kind.sql())
            })
            .collect();
        // The plugins' column grants on the old table survive it, for the columns the
        // new one still has.
        let granted =
            "SELECT grantee::text, column_name::text FROM information_schema.column_privileges
                       WHERE table_schema = 'core' AND table_name = $1 AND privilege_type = 'SELECT'
                         AND grantee::text LIKE 'svp\\_%'";
        let kept: Vec<(String, String)> = self
            .tx
            .query(granted, &[&slice.table_name()])
            .map_err(statement_error(granted))?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .filter(|(_, column): &(String, String)| slice.columns.contains(column))
            .collect();
        let create = format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({})",
            columns.join(", ")
        );
        self.tx
            .batch_execute(&create)
            .map_err(statement_error(&create))?;
        for (grantee, column) in kept {
            let grant = format!(
                "GRANT SELECT ({}) ON {table} TO {}",
                ident(&column),
                ident(&grantee)
            );
            self.tx
                .batch_execute(&grant)
                .map_err(statement_error(&grant))?;
        }
        let spec = serde_json::to_string(slice).expect("a mirror slice serializes");
        let record = "INSERT INTO public._sv_mirror_slices (slice, spec) VALUES ($1, $2)
                      ON CONFLICT (slice) DO UPDATE SET spec = excluded.spec";
        self.tx
            .execute(record, &[&slice.name, &spec])
            .map_err(statement_error(record))?;
        Ok(())
    }

    /// Appends rows (in slice column order) to `slice`'s new table by binary `COPY`.
    pub fn copy_rows(
        &mut self,
        slice: &MirrorSlice,
        kinds: &[ColumnKind],
        rows: &[Vec<SqlValue>],
    ) -> Result<u64, PgError> {
        let copy = copy_in_sql(slice);
        let types: Vec<Type> = kinds.iter().map(|k| k.pg_type()).collect();
        let sink = self.tx.copy_in(&copy).map_err(statement_error(&copy))?;
        let mut writer = BinaryCopyInWriter::new(sink, &types);
        for row in rows {
            let encoded = row
                .iter()
                .zip(&types)
                .map(|(value, ty)| values::encode(value, ty))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| PgError::MirrorState {
                    message: format!("slice {}: {message}", slice.name),
                })?;
            let refs: Vec<&(dyn ToSql + Sync)> = encoded.iter().map(|e| e as _).collect();
            writer.write(&refs).map_err(statement_error(&copy))?;
        }
        writer.finish().map_err(statement_error(&copy))
    }

    /// Appends a binary `COPY` stream (columns in slice order, typed as the mirror's
    /// columns: see [`ColumnKind::cast`]) to `slice`'s new table; returns the rows.
    pub fn copy_binary(
        &mut self,
        slice: &MirrorSlice,
        stream: &mut dyn std::io::Read,
    ) -> Result<u64, PgError> {
        let copy = copy_in_sql(slice);
        let mut sink = self.tx.copy_in(&copy).map_err(statement_error(&copy))?;
        std::io::copy(stream, &mut sink).map_err(|e| PgError::MirrorState {
            message: format!("copying slice {}: {e}", slice.name),
        })?;
        sink.finish().map_err(statement_error(&copy))
    }

    /// Sets the watermark and commits the rebuild.
    pub fn finish(mut self, watermark: i64, now_ms: i64) -> Result<(), PgError> {
        set_state(&mut self.tx, watermark, now_ms)?;
        self.tx.commit().map_err(statement_error("COMMIT"))
    }
}

/// `COPY` of binary rows into `slice`'s mirror table, columns in slice order.
fn copy_in_sql(slice: &MirrorSlice) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    format!(
        "COPY core.{} ({}) FROM STDIN BINARY",
        ident(&slice.table_name()),
        columns.join(", ")
    )
}

/// Taken by each transaction of the mirror's writers (the worker, a rebuild, a repair).
const WRITER_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended('sv-mirror', 0))";

/// Sets the watermark and when it was applied.
const SET_STATE: &str = "INSERT INTO public._sv_mirror_state (key, value)
                         VALUES ('watermark', $1), ('applied_at_ms', $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value";

fn set_state(tx: &mut Transaction<'_>, watermark: i64, now_ms: i64) -> Result<(), PgError> {
    tx.execute(SET_STATE, &[&watermark, &now_ms])
        .map_err(statement_error(SET_STATE))?;
    Ok(())
}

/// Inserts the rows of `source` (`VALUES ...` or a `SELECT`, columns in slice order)
/// into `slice`'s mirror table, replacing rows with the same key.
fn upsert_sql(slice: &MirrorSlice, source: &str) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let updates: Vec<String> = columns[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO core.{} ({}) {source} ON CONFLICT ({}) {}",
        ident(&slice.table_name()),
        columns.join(", "),
        ident(slice.key_column()),
        if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        }
    )
}

/// Replaces one mirror row with `row`, or deletes the key when `row` is `None`.
fn write_row(
    tx: &mut Transaction<'_>,
    slice: &MirrorSlice,
    key: i64,
    row: Option<&[SqlValue]>,
) -> Result<(), PgError> {
    let table = format!("core.{}", ident(&slice.table_name()));
    let key_column = ident(slice.key_column());
    match row {
        Some(row) => {
            let placeholders: Vec<String> = (1..=row.len()).map(|i| format!("${i}")).collect();
            let upsert = upsert_sql(slice, &format!("VALUES ({})", placeholders.join(", ")));
            let statement = tx.prepare(&upsert).map_err(statement_error(&upsert))?;
            let encoded = row
                .iter()
                .zip(statement.params())
                .map(|(value, ty)| values::encode(value, ty))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| PgError::MirrorState {
                    message: format!("slice {}: {message}", slice.name),
                })?;
            let refs: Vec<&(dyn ToSql + Sync)> = encoded.iter().map(|e| e as _).collect();
            tx.execute(&statement, &refs)
                .map_err(statement_error(&upsert))?;
        }
        None => {
            let delete = format!("DELETE FROM {table} WHERE {key_column} = $1");
            tx.execute(delete.as_str(), &[&key])
                .map_err(statement_error(&delete))?;
        }
    }
    Ok(())
}
