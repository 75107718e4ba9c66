//! Full resync: rebuilds mirror tables from the core in one transaction, at a watermark
//! taken from the same snapshot, so incremental sync continues exactly from there.

use std::cell::{Cell, RefCell};
use std::path::Path;

use mysql::prelude::Queryable;
use sovereign_db::rusqlite::{self, Connection};
use sovereign_db_core::{CoreAccess, CoreHandle};
use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorCatalog, MirrorSlice};
use sovereign_db_plugins::value::SqlValue;
use sovereign_mysql::mirror::MyMirror;
use sovereign_postgres::mirror::{ColumnKind, PgColumnKind, PgMirror};

use crate::{Mirror, Progress, SyncError, ident, now_ms, publish};

/// The highest core outbox sequence number ever given, read in `schema` (`main` or the
/// attached `sv_core`): the watermark of a rebuild from the same snapshot.
fn outbox_high_water(conn: &Connection, schema: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "SELECT max(coalesce((SELECT max(seq) FROM {schema}._sv_change_outbox), 0),
                        coalesce((SELECT seq FROM {schema}.sqlite_sequence WHERE name = '_sv_change_outbox'), 0))"
        ),
        [],
        |r| r.get(0),
    )
}

/// Rows copied per statement, so long builds can report progress.
const CHUNK: i64 = 100_000;

/// What a full resync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullReport {
    /// The watermark the mirror now stands at.
    pub watermark: i64,
    /// Rows per slice.
    pub rows: Vec<(String, u64)>,
    /// Slices whose tables were dropped because they are no longer configured.
    pub dropped: Vec<String>,
}

/// One line per change a full resync makes, for operators to read first.
pub fn plan(mirror: &Mirror, catalog: &MirrorCatalog) -> Result<Vec<String>, SyncError> {
    let built = mirror.specs()?;
    let mut steps = Vec::new();
    for slice in catalog.slices() {
        match built.iter().find(|b| b.name == slice.name) {
            None => steps.push(format!(
                "create {} from {} ({}){}",
                slice.table_name(),
                slice.source_table,
                slice.columns.join(", "),
                slice
                    .filter
                    .as_deref()
                    .map(|f| format!(" where {f}"))
                    .unwrap_or_default()
            )),
            Some(b) if b == slice => steps.push(format!(
                "rebuild {} (unchanged projection)",
                slice.table_name()
            )),
            Some(b) => {
                let added: Vec<&String> = slice
                    .columns
                    .iter()
                    .filter(|c| !b.columns.contains(c))
                    .collect();
                let removed: Vec<&String> = b
                    .columns
                    .iter()
                    .filter(|c| !slice.columns.contains(c))
                    .collect();
                let mut what = Vec::new();
                if !added.is_empty() {
                    what.push(format!("add columns {added:?}"));
                }
                if !removed.is_empty() {
                    what.push(format!(
                        "remove columns {removed:?} (plugins granted them lose them)"
                    ));
                }
                if b.filter != slice.filter {
                    what.push(format!("filter {:?} -> {:?}", b.filter, slice.filter));
                }
                if b.source_table != slice.source_table {
                    what.push(format!(
                        "source {} -> {}",
                        b.source_table, slice.source_table
                    ));
                }
                if b.allow_secret != slice.allow_secret {
                    what.push(format!(
                        "allowed secret columns {:?} -> {:?}",
                        b.allow_secret, slice.allow_secret
                    ));
                }
                steps.push(format!(
                    "rebuild {}: {}",
                    slice.table_name(),
                    what.join("; ")
                ));
            }
        }
    }
    for b in &built {
        if catalog.slice(&b.name).is_none() {
            steps.push(format!(
                "drop {} (slice no longer configured)",
                b.table_name()
            ));
        }
    }
    Ok(steps)
}

/// Rebuilds every configured slice from the core and drops slices no longer
/// configured, at the watermark of the same snapshot; then acknowledges the watermark
/// to the core, which prunes its outbox. A SQLite mirror of a SQLite core copies from
/// `core.db` attached read-only; otherwise the rows are read in one read transaction
/// (one snapshot) of the core and written to the mirror in chunks (binary `COPY` into a
/// PostgreSQL mirror).
pub fn full_resync(
    core: &dyn CoreAccess,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    progress: Progress<'_>,
) -> Result<FullReport, SyncError> {
    crate::capture::validate(core, catalog)?;
    let dropped: Vec<String> = mirror
        .specs()?
        .into_iter()
        .filter(|b| catalog.slice(&b.name).is_none())
        .map(|b| b.name)
        .collect();
    let mut total = 0u64;
    for slice in catalog.slices() {
        total += count_source(core, slice)?;
    }
    let (watermark, rows) = match (core.core_handle(), mirror) {
        // The fast path: the mirror's connection copies from core.db attached.
        (CoreHandle::Sqlite(conn), Mirror::Sqlite(store))
            if conn.path().is_some_and(|p| !p.is_empty()) =>
        {
            let path = Path::new(conn.path().unwrap_or_default());
            rebuild_sqlite(path, store, catalog, &dropped, total, progress)?
        }
        (CoreHandle::Sqlite(conn), _) => {
            let source = SqliteSource::begin(conn)?;
            let rebuilt = rebuild_from(&source, mirror, catalog, &dropped, total, progress);
            source.end(rebuilt)?
        }
        (CoreHandle::Postgres(core), _) => core.with_client(|client| {
            let source = PostgresSource::begin(client)?;
            let rebuilt = rebuild_from(&source, mirror, catalog, &dropped, total, progress);
            source.end(rebuilt)
        })?,
        (CoreHandle::Mysql(core), _) => core.with_conn(|conn| {
            let source = MysqlSource(RefCell::new(crate::mysql_snapshot(conn)?));
            let rebuilt = rebuild_from(&source, mirror, catalog, &dropped, total, progress);
            let value = rebuilt?;
            source.0.into_inner().commit()?;
            Ok::<_, SyncError>(value)
        })?,
    };
    publish::acknowledge(core, watermark)?;
    Ok(FullReport {
        watermark,
        rows,
        dropped,
    })
}

type Rebuilt = (i64, Vec<(String, u64)>);

/// Rebuilds `mirror` from `source`'s snapshot, whichever store the mirror is in.
fn rebuild_from(
    source: &dyn Source,
    mirror: &Mirror,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    match mirror {
        Mirror::Sqlite(store) => {
            rebuild_sqlite_from(source, store, catalog, dropped, total, progress)
        }
        Mirror::Postgres(pg) => rebuild_postgres(
            source,
            &mut pg.borrow_mut(),
            catalog,
            dropped,
            total,
            progress,
        ),
        Mirror::Mysql(my) => rebuild_mysql(
            source,
            &mut my.borrow_mut(),
            catalog,
            dropped,
            total,
            progress,
        ),
    }
}

/// Takes a binary `COPY` stream; returns the rows it held.
type CopySink<'a> = &'a mut dyn FnMut(&mut dyn std::io::Read) -> Result<u64, SyncError>;

/// Takes one chunk of projected rows.
type TakeChunk<'a> = &'a mut dyn FnMut(&[Vec<SqlValue>]) -> Result<(), SyncError>;

/// The core as a rebuild reads it: one snapshot, from the first read to the end.
trait Source {
    /// The watermark of this snapshot: every change up to it is in the rows read.
    fn high_water(&self) -> Result<i64, SyncError>;
    /// The PostgreSQL type of each of `slice`'s columns.
    fn kinds(&self, slice: &MirrorSlice) -> Result<Vec<ColumnKind>, SyncError>;
    /// `slice`'s projected rows in key order, handed to `take` [`CHUNK`] at a time.
    fn chunks(&self, slice: &MirrorSlice, take: TakeChunk<'_>) -> Result<(), SyncError>;

    /// Hands `sink` `slice`'s rows as one binary `COPY` stream typed as a PostgreSQL
    /// mirror's columns of `kinds`, when this source can make one; `None`: it cannot
    /// (read [`Source::chunks`] instead).
    fn copy_binary(
        &self,
        _slice: &MirrorSlice,
        _kinds: &[ColumnKind],
        _sink: CopySink<'_>,
    ) -> Result<Option<u64>, SyncError> {
        Ok(None)
    }
}

/// The projection query of `slice` in key order (`$`-free: no parameters).
fn projection_sql(slice: &MirrorSlice) -> String {
    let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" WHERE ({f})"))
        .unwrap_or_default();
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {}",
        columns.join(", "),
        ident(&slice.source_table),
        ident(slice.key_column())
    )
}

/// Hands `rows` to `take` in chunks of [`CHUNK`].
fn in_chunks<E>(
    rows: impl Iterator<Item = Result<Vec<SqlValue>, E>>,
    take: TakeChunk<'_>,
) -> Result<(), SyncError>
where
    SyncError: From<E>,
{
    let mut chunk = Vec::with_capacity(CHUNK as usize);
    for row in rows {
        chunk.push(row?);
        if chunk.len() == CHUNK as usize {
            take(&chunk)?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        take(&chunk)?;
    }
    Ok(())
}

/// A SQLite core in a read transaction.
struct SqliteSource<'a>(&'a Connection);

impl<'a> SqliteSource<'a> {
    fn begin(core: &'a Connection) -> Result<Self, SyncError> {
        core.execute_batch("BEGIN DEFERRED")?;
        Ok(SqliteSource(core))
    }

    fn end<T>(self, result: Result<T, SyncError>) -> Result<T, SyncError> {
        let ended = self.0.execute_batch("COMMIT");
        let value = result?;
        ended?;
        Ok(value)
    }
}

impl Source for SqliteSource<'_> {
    fn high_water(&self) -> Result<i64, SyncError> {
        Ok(outbox_high_water(self.0, "main")?)
    }

    fn kinds(&self, slice: &MirrorSlice) -> Result<Vec<ColumnKind>, SyncError> {
        Ok(column_kinds(self.0, slice)?)
    }

    fn chunks(&self, slice: &MirrorSlice, take: TakeChunk<'_>) -> Result<(), SyncError> {
        let n = slice.columns.len();
        let mut statement = self.0.prepare(&projection_sql(slice))?;
        let rows = statement.query_map([], |row| {
            (0..n)
                .map(|i| row.get_ref(i).map(SqlValue::from_ref))
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        in_chunks(rows, take)
    }
}

/// A PostgreSQL core in a read-only repeatable-read transaction (one snapshot).
struct PostgresSource<'a>(RefCell<postgres::Transaction<'a>>);

impl<'a> PostgresSource<'a> {
    fn begin(core: &'a mut postgres::Client) -> Result<Self, SyncError> {
        Ok(PostgresSource(RefCell::new(crate::snapshot(core)?)))
    }

    fn end<T>(self, result: Result<T, SyncError>) -> Result<T, SyncError> {
        let value = result?;
        self.0.into_inner().commit()?;
        Ok(value)
    }
}

impl Source for PostgresSource<'_> {
    fn high_water(&self) -> Result<i64, SyncError> {
        // Capture serialises writers (sequence order is commit order), so the highest
        // sequence number this snapshot sees, or what was acknowledged and pruned, is
        // the watermark; a change still in flight gets a higher one.
        Ok(self
            .0
            .borrow_mut()
            .query_one(
                "SELECT greatest(
                     coalesce((SELECT max(seq) FROM _sv_change_outbox), 0),
                     coalesce((SELECT value::bigint FROM _sv_sync_state WHERE key = 'acked_seq'), 0))",
                &[],
            )?
            .get(0))
    }

    fn kinds(&self, slice: &MirrorSlice) -> Result<Vec<ColumnKind>, SyncError> {
        let statement = self.0.borrow_mut().prepare(&projection_sql(slice))?;
        Ok(statement
            .columns()
            .iter()
            .map(|c| ColumnKind::from_pg(c.type_()))
            .collect())
    }

    /// Between two PostgreSQL databases the rows go as the server writes them: `COPY
    /// (projection) TO STDOUT BINARY`, cast to the mirror's column types, into `COPY ...
    /// FROM STDIN BINARY`, never decoded here.
    fn copy_binary(
        &self,
        slice: &MirrorSlice,
        kinds: &[ColumnKind],
        sink: CopySink<'_>,
    ) -> Result<Option<u64>, SyncError> {
        let mut tx = self.0.borrow_mut();
        let projection = projection_sql(slice);
        let statement = tx.prepare(&projection)?;
        let casts: Option<Vec<String>> = statement
            .columns()
            .iter()
            .zip(kinds)
            .map(|(column, kind)| kind.cast(column.type_(), &format!("p.{}", ident(column.name()))))
            .collect();
        let Some(casts) = casts else {
            return Ok(None);
        };
        let copy = format!(
            "COPY (SELECT {} FROM ({projection}) AS p) TO STDOUT (FORMAT binary)",
            casts.join(", ")
        );
        let mut stream = tx.copy_out(&copy)?;
        Ok(Some(sink(&mut stream)?))
    }

    fn chunks(&self, slice: &MirrorSlice, take: TakeChunk<'_>) -> Result<(), SyncError> {
        let mut tx = self.0.borrow_mut();
        let rows = tx.query_raw(&projection_sql(slice), std::iter::empty::<i64>())?;
        in_chunks(
            postgres::fallible_iterator::FallibleIterator::iterator(rows)
                .map(|row| row.and_then(|row| sovereign_postgres::row_values(&row))),
            take,
        )
    }
}

/// A MySQL core in a read-only consistent-snapshot transaction.
struct MysqlSource<'a>(RefCell<mysql::Transaction<'a>>);

impl Source for MysqlSource<'_> {
    fn high_water(&self) -> Result<i64, SyncError> {
        Ok(self
            .0
            .borrow_mut()
            .query_first(crate::MYSQL_HIGH_WATER)?
            .unwrap_or(0))
    }

    fn kinds(&self, slice: &MirrorSlice) -> Result<Vec<ColumnKind>, SyncError> {
        let declared: Vec<(String, String)> = self.0.borrow_mut().exec(
            "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (&slice.source_table,),
        )?;
        Ok(slice
            .columns
            .iter()
            .map(|column| {
                declared
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(column))
                    .map_or(ColumnKind::Blob, |(_, ty)| ColumnKind::from_declared(ty))
            })
            .collect())
    }

    fn chunks(&self, slice: &MirrorSlice, take: TakeChunk<'_>) -> Result<(), SyncError> {
        let mut tx = self.0.borrow_mut();
        let rows = tx.query_iter(projection_sql(slice))?;
        in_chunks(
            rows.map(|row| -> Result<Vec<SqlValue>, SyncError> {
                Ok(sovereign_mysql::values::row_values(row?)?)
            }),
            take,
        )
    }
}

fn rebuild_sqlite(
    core_path: &Path,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    let conn = mirror.connection();
    conn.execute(
        "ATTACH DATABASE ?1 AS sv_core",
        [format!("file:{}?mode=ro", core_path.display())],
    )?;
    let slices: Vec<&MirrorSlice> = catalog.slices().iter().collect();
    let mut done = 0u64;
    let result = mirror.rebuild_slices(
        &slices,
        dropped,
        now_ms(),
        // The first read of the core in this transaction fixes its snapshot.
        &mut |tx| outbox_high_water(tx, "sv_core"),
        &mut |tx, slice| {
            let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
            let key = ident(slice.key_column());
            let filter = slice.filter.as_deref().map(|f| format!(" AND ({f})")).unwrap_or_default();
            let sql = format!(
                "INSERT INTO main.{} SELECT {} FROM sv_core.{} WHERE {key} > ?1{filter} ORDER BY {key} LIMIT {CHUNK}",
                ident(&slice.table_name()),
                columns.join(", "),
                ident(&slice.source_table),
            );
            let last_key = format!("SELECT max({key}) FROM main.{}", ident(&slice.table_name()));
            let mut copied = 0u64;
            let mut after = i64::MIN;
            loop {
                let n = tx.prepare_cached(&sql)?.execute([after])? as u64;
                copied += n;
                done += n;
                progress(done, total);
                if n < CHUNK as u64 {
                    break;
                }
                after = tx.query_row(&last_key, [], |r| r.get(0))?;
            }
            Ok(copied)
        },
    );
    let detached = conn.execute_batch("DETACH DATABASE sv_core");
    let rebuilt = result?;
    detached?;
    Ok(rebuilt)
}

/// A SQLite mirror filled from a core it cannot attach (a PostgreSQL core), in chunks.
fn rebuild_sqlite_from(
    source: &dyn Source,
    mirror: &TrustedPluginStore,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    let slices: Vec<&MirrorSlice> = catalog.slices().iter().collect();
    let done = Cell::new(0u64);
    // The mirror's closures speak rusqlite; the source's error travels inside one.
    let carry = |e: SyncError| rusqlite::Error::UserFunctionError(Box::new(e));
    Ok(mirror.rebuild_slices(
        &slices,
        dropped,
        now_ms(),
        &mut |_| source.high_water().map_err(carry),
        &mut |tx, slice| {
            let marks = vec!["?"; slice.columns.len()].join(", ");
            let columns: Vec<String> = slice.columns.iter().map(|c| ident(c)).collect();
            let insert = format!(
                "INSERT INTO main.{} ({}) VALUES ({marks})",
                ident(&slice.table_name()),
                columns.join(", ")
            );
            let mut copied = 0u64;
            source
                .chunks(slice, &mut |rows| {
                    let mut statement = tx.prepare_cached(&insert)?;
                    for row in rows {
                        statement.execute(rusqlite::params_from_iter(row.iter()))?;
                    }
                    copied += rows.len() as u64;
                    done.set(done.get() + rows.len() as u64);
                    progress(done.get(), total);
                    Ok(())
                })
                .map_err(carry)?;
            Ok(copied)
        },
    )?)
}

/// The PostgreSQL type of each of `slice`'s columns, from the core's declared types.
fn column_kinds(core: &Connection, slice: &MirrorSlice) -> rusqlite::Result<Vec<ColumnKind>> {
    let declared: Vec<(String, String)> = core
        .prepare(&format!(
            "SELECT name, type FROM pragma_table_info('{}')",
            slice.source_table.replace('\'', "''")
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(slice
        .columns
        .iter()
        .map(|column| {
            declared
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(column))
                .map_or(ColumnKind::Blob, |(_, ty)| ColumnKind::from_declared(ty))
        })
        .collect())
}

fn rebuild_postgres(
    source: &dyn Source,
    mirror: &mut PgMirror,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    let watermark = source.high_water()?;
    let mut rebuild = mirror.rebuild()?;
    for name in dropped {
        rebuild.drop_slice(name)?;
    }
    let mut done = 0u64;
    let mut counts = Vec::new();
    for slice in catalog.slices() {
        let kinds = source.kinds(slice)?;
        rebuild.create_slice(slice, &kinds)?;
        let streamed = source.copy_binary(slice, &kinds, &mut |stream| {
            Ok(rebuild.copy_binary(slice, stream)?)
        })?;
        let copied = match streamed {
            Some(copied) => {
                done += copied;
                progress(done, total);
                copied
            }
            None => {
                let mut copied = 0u64;
                source.chunks(slice, &mut |rows| {
                    copied += rebuild.copy_rows(slice, &kinds, rows)?;
                    done += rows.len() as u64;
                    progress(done, total);
                    Ok(())
                })?;
                copied
            }
        };
        counts.push((slice.name.clone(), copied));
    }
    rebuild.finish(watermark, now_ms())?;
    Ok((watermark, counts))
}

/// Rebuilds a MySQL mirror: each slice into a new table, swapped in at the end
/// (`sovereign_mysql::mirror`).
fn rebuild_mysql(
    source: &dyn Source,
    mirror: &mut MyMirror,
    catalog: &MirrorCatalog,
    dropped: &[String],
    total: u64,
    progress: Progress<'_>,
) -> Result<Rebuilt, SyncError> {
    let watermark = source.high_water()?;
    let mut rebuild = mirror.rebuild();
    for name in dropped {
        rebuild.drop_slice(name)?;
    }
    let mut done = 0u64;
    let mut counts = Vec::new();
    for slice in catalog.slices() {
        rebuild.create_slice(slice, &source.kinds(slice)?)?;
        let mut copied = 0u64;
        source.chunks(slice, &mut |rows| {
            copied += rebuild.insert_rows(slice, rows)?;
            done += rows.len() as u64;
            progress(done, total);
            Ok(())
        })?;
        counts.push((slice.name.clone(), copied));
    }
    rebuild.finish(watermark, now_ms())?;
    Ok((watermark, counts))
}

fn count_source(core: &dyn CoreAccess, slice: &MirrorSlice) -> Result<u64, SyncError> {
    let filter = slice
        .filter
        .as_deref()
        .map(|f| format!(" WHERE ({f})"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT count(*) FROM {}{filter}",
        ident(&slice.source_table)
    );
    let count: i64 = match core.core_handle() {
        CoreHandle::Sqlite(conn) => conn.query_row(&sql, [], |r| r.get(0))?,
        CoreHandle::Postgres(pg) => pg.with_client(|client| client.query_one(&sql, &[]))?.get(0),
        CoreHandle::Mysql(my) => my.with_conn(|conn| conn.query_first(&sql))?.unwrap_or(0),
    };
    Ok(count as u64)
}
