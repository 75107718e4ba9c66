//! The mirror's trusted writer, whichever store holds it: a SQLite file (the plugin
//! store or the mirror file), the PostgreSQL plugin database or the MySQL one.

use std::cell::RefCell;

use sovereign_db_plugins::TrustedPluginStore;
use sovereign_db_plugins::mirror::{MirrorBatch, MirrorCatalog, MirrorSlice};
use sovereign_mysql::mirror::MyMirror;
use sovereign_postgres::mirror::PgMirror;

use crate::SyncError;

/// The mirror store, opened by its one writer.
pub enum Mirror {
    /// A SQLite store.
    Sqlite(TrustedPluginStore),
    /// The PostgreSQL plugin database, as its owner (one thread uses it at a time).
    Postgres(RefCell<PgMirror>),
    /// The MySQL plugin database, as its account (one thread uses it at a time).
    Mysql(RefCell<MyMirror>),
}

impl Mirror {
    /// The last core outbox sequence number applied (0 if none).
    pub fn watermark(&self) -> Result<i64, SyncError> {
        Ok(match self {
            Mirror::Sqlite(store) => store.mirror_watermark()?,
            Mirror::Postgres(pg) => pg.borrow_mut().watermark()?,
            Mirror::Mysql(my) => my.borrow_mut().watermark()?,
        })
    }

    /// When a batch was last applied (unix ms, 0 if never).
    pub fn applied_at_ms(&self) -> Result<i64, SyncError> {
        Ok(match self {
            Mirror::Sqlite(store) => store.mirror_applied_at_ms()?,
            Mirror::Postgres(pg) => pg.borrow_mut().applied_at_ms()?,
            Mirror::Mysql(my) => my.borrow_mut().applied_at_ms()?,
        })
    }

    /// Every slice the mirror holds, with the projection it was built with.
    pub fn specs(&self) -> Result<Vec<MirrorSlice>, SyncError> {
        Ok(match self {
            Mirror::Sqlite(store) => store.mirror_specs()?,
            Mirror::Postgres(pg) => pg.borrow_mut().specs()?,
            Mirror::Mysql(my) => my.borrow_mut().specs()?,
        })
    }

    /// Applies a batch with its watermark in one transaction; `false` if it was
    /// already applied.
    pub fn apply_batch(
        &self,
        catalog: &MirrorCatalog,
        batch: &MirrorBatch,
        now_ms: i64,
    ) -> Result<bool, SyncError> {
        Ok(match self {
            Mirror::Sqlite(store) => store.apply_batch(catalog, batch, now_ms)?,
            Mirror::Postgres(pg) => pg.borrow_mut().apply_batch(catalog, batch, now_ms)?,
            Mirror::Mysql(my) => my.borrow_mut().apply_batch(catalog, batch, now_ms)?,
        })
    }

    /// The SQLite store, for what only SQLite does (`operation` names it in the error).
    pub fn sqlite(&self, operation: &'static str) -> Result<&TrustedPluginStore, SyncError> {
        match self {
            Mirror::Sqlite(store) => Ok(store),
            Mirror::Postgres(_) => Err(SyncError::NotOnPostgres { operation }),
            Mirror::Mysql(_) => Err(SyncError::NotOnMysqlMirror { operation }),
        }
    }
}
