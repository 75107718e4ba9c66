//! Restoring a verified backup. Files are staged next to their targets first; a journal
//! then records every rename; current files (with their `-wal`/`-shm`) are moved aside
//! into a timestamped directory, never deleted, and the staged files take their places.
//! If the process dies half-way, [`finish_interrupted`] (run by every `sv` command that
//! opens the data directory) completes the journal, so either the old set (before the
//! journal exists) or the new set (after) is in place.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup::{Manifest, verify};
use crate::{Layout, OpsError, io};

/// The journal's file name in the data directory.
pub const JOURNAL: &str = "restore-journal.json";

/// One file of the swap.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Move {
    /// The live path.
    target: PathBuf,
    /// The restored file, staged next to the target; `None` when the live file is only
    /// moved aside (an isolated plugin file the backup does not have).
    staged: Option<PathBuf>,
    /// Where the current file goes.
    aside: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    aside_dir: PathBuf,
    moves: Vec<Move>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The restored backup's manifest.
    pub manifest: Manifest,
    /// Where the replaced files now are.
    pub aside_dir: PathBuf,
    /// What was restored (files, or PostgreSQL databases).
    pub restored: Vec<String>,
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), OpsError> {
    if from.exists() {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::rename(from, to).map_err(io(format!(
            "moving {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Performs the journal's renames; every step is idempotent, so running it again after
/// an interruption completes it.
fn apply(journal: &Journal) -> Result<(), OpsError> {
    for m in &journal.moves {
        if let Some(staged) = &m.staged
            && !staged.exists()
        {
            continue; // already swapped in
        }
        // The live file's WAL and shared memory go first: a stale WAL next to the new
        // file would be replayed into it.
        for suffix in ["-wal", "-shm", "-journal", ""] {
            let live = with_suffix(&m.target, suffix);
            let aside = with_suffix(&m.aside, suffix);
            if live.exists() && !aside.exists() {
                rename_if_exists(&live, &aside)?;
            }
        }
        if let Some(staged) = &m.staged {
            rename_if_exists(staged, &m.target)?;
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Completes a restore that was interrupted after its journal was written. Returns
/// whether there was one.
pub fn finish_interrupted(data_dir: &Path) -> Result<bool, OpsError> {
    let path = data_dir.join(JOURNAL);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let journal: Journal = serde_json::from_str(&text).map_err(|e| {
        OpsError::Refused(format!(
            "{} is damaged ({e}); inspect it by hand",
            path.display()
        ))
    })?;
    apply(&journal)?;
    std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    tracing::warn!(aside = %journal.aside_dir.display(), "completed an interrupted restore");
    Ok(true)
}

/// Restores the backup in `backup_dir` into `layout`. The caller must hold the runtime
/// lock (the platform is not running). Verifies first and changes nothing on any problem.
/// `before_swap` runs after staging, right before the journal is written (tests use it
/// to simulate a crash).
pub fn restore(
    backup_dir: &Path,
    layout: &Layout,
    before_swap: &mut dyn FnMut(usize),
) -> Result<RestoreReport, OpsError> {
    finish_interrupted(&layout.data_dir)?;
    let manifest = verify(backup_dir)?;
    let stamp = crate::stamp();
    let aside_dir = layout.data_dir.join(format!("pre-restore-{stamp}"));
    let mut moves = Vec::new();
    let mut staged_files = Vec::new();
    let result = (|| -> Result<(), OpsError> {
        for file in &manifest.files {
            let target = match file.role.as_str() {
                "core" => layout.core.clone(),
                "plugins" => layout.plugins.clone(),
                "mirror" => match &layout.mirror_file {
                    Some(m) => m.clone(),
                    None => layout.data_dir.join("mirror.db"),
                },
                role => match role.strip_prefix("plugin:") {
                    Some(id) => layout.isolated_dir.join(format!("{id}.db")),
                    None => {
                        return Err(OpsError::Refused(format!(
                            "unknown file role {role:?} in the manifest"
                        )));
                    }
                },
            };
            let parent = target.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
            let staged = parent.join(format!(
                ".sv-restore-{stamp}-{}",
                target.file_name().and_then(|n| n.to_str()).unwrap_or("db")
            ));
            std::fs::copy(backup_dir.join(&file.name), &staged)
                .map_err(io(format!("staging {}", file.name)))?;
            std::fs::File::open(&staged)
                .and_then(|f| f.sync_all())
                .map_err(io(format!("syncing {}", staged.display())))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                    .map_err(io(format!("setting permissions of {}", staged.display())))?;
            }
            staged_files.push(staged.clone());
            let aside = aside_dir.join(
                target
                    .strip_prefix(&layout.data_dir)
                    .unwrap_or(Path::new(target.file_name().unwrap_or_default())),
            );
            moves.push(Move {
                target,
                staged: Some(staged),
                aside,
            });
        }
        // With plugin data restored, live isolated files the backup lacks are moved aside
        // too, so the restored set is exactly the backup's.
        if manifest.includes_plugin_data {
            for (id, path) in layout.isolated_files()? {
                if !manifest
                    .files
                    .iter()
                    .any(|f| f.role == format!("plugin:{id}"))
                    && !manifest.excluded_plugins.contains(&id)
                {
                    moves.push(Move {
                        aside: aside_dir.join("plugins").join(format!("{id}.db")),
                        target: path,
                        staged: None,
                    });
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for staged in &staged_files {
            let _ = std::fs::remove_file(staged);
        }
        return Err(e);
    }
    before_swap(moves.len());
    std::fs::create_dir_all(&aside_dir).map_err(io(format!("creating {}", aside_dir.display())))?;
    let journal = Journal {
        aside_dir: aside_dir.clone(),
        moves,
    };
    let journal_path = layout.data_dir.join(JOURNAL);
    let tmp = layout.data_dir.join(format!("{JOURNAL}.tmp"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&journal).expect("journal serializes"),
    )
    .map_err(io("writing the restore journal"))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing the restore journal"))?;
    std::fs::rename(&tmp, &journal_path).map_err(io("committing the restore journal"))?;
    fsync_dir(&layout.data_dir);
    apply(&journal)?;
    for m in &journal.moves {
        if let Some(parent) = m.target.parent() {
            fsync_dir(parent);
        }
    }
    std::fs::remove_file(&journal_path).map_err(io("removing the restore journal"))?;
    Ok(RestoreReport {
        manifest,
        aside_dir,
        restored: journal
            .moves
            .iter()
            .filter(|m| m.staged.is_some())
            .map(|m| m.target.display().to_string())
            .collect(),
    })
}

/// The backup a restore of server stores takes first: everything there now, in
/// `<data_dir>/pre-restore-<time>`.
pub(crate) fn pre_restore(data_dir: &Path) -> Result<crate::backup::BackupOptions, OpsError> {
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    Ok(crate::backup::BackupOptions {
        out: data_dir.join(format!("pre-restore-{}", crate::stamp())),
        include_plugin_data: true,
        exclude_plugins: vec![],
    })
}

/// The error of a restore of server stores that failed (`failed`) after changing them,
/// with how putting back the pre-restore backup in `aside_dir` went.
pub(crate) fn failed_after_changes(
    failed: &OpsError,
    put_back: Result<(), OpsError>,
    aside_dir: &Path,
) -> OpsError {
    OpsError::Refused(match put_back {
        Ok(()) => format!(
            "the restore failed ({failed}); both stores were put back as they were before \
             the restore"
        ),
        Err(again) => format!(
            "the restore failed ({failed}), and putting things back from {} failed too \
             ({again}): restore that backup once the cause is fixed",
            aside_dir.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_swap_is_completed_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let write = |name: &str, text: &str| std::fs::write(data.join(name), text).unwrap();
        let read = |path: &Path| std::fs::read_to_string(path).unwrap();
        write("core.db", "old core");
        write("core.db-wal", "old wal");
        write("plugins.db", "old plugins");
        write(".staged-core", "new core");
        write(".staged-plugins", "new plugins");
        let aside = data.join("pre-restore-x");
        let journal = Journal {
            aside_dir: aside.clone(),
            moves: vec![
                Move {
                    target: data.join("core.db"),
                    staged: Some(data.join(".staged-core")),
                    aside: aside.join("core.db"),
                },
                Move {
                    target: data.join("plugins.db"),
                    staged: Some(data.join(".staged-plugins")),
                    aside: aside.join("plugins.db"),
                },
            ],
        };
        std::fs::write(data.join(JOURNAL), serde_json::to_vec(&journal).unwrap()).unwrap();
        // The process died after moving the core's WAL aside and nothing else.
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::rename(data.join("core.db-wal"), aside.join("core.db-wal")).unwrap();

        assert!(finish_interrupted(data).unwrap());
        assert_eq!(read(&data.join("core.db")), "new core");
        assert_eq!(read(&data.join("plugins.db")), "new plugins");
        assert!(
            !data.join("core.db-wal").exists(),
            "no stale WAL next to the new file"
        );
        assert_eq!(read(&aside.join("core.db")), "old core");
        assert_eq!(read(&aside.join("core.db-wal")), "old wal");
        assert_eq!(read(&aside.join("plugins.db")), "old plugins");
        assert!(!data.join(JOURNAL).exists());
        assert!(
            !finish_interrupted(data).unwrap(),
            "running it again does nothing"
        );
    }
}
