//! Plugin packages for kernels that share no disk. With the core on PostgreSQL or MySQL several
//! kernels, on several machines, serve one installation; each runs its own extension
//! host from its own plugins directory. Installing or upgrading a plugin therefore also
//! stores the files a host runs (`plugin.json`, `plugin.wasm`, `migrations/`) in the core
//! database, and every kernel brings its plugins directory in line with the stored
//! packages before it starts its host (which it does again whenever the registry
//! changes). With the core in `core.db` there is one platform per data directory and the
//! plugins directory is the package: nothing is stored.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sovereign_db_core::CoreLocation;
use sovereign_db_core::plugins::{self as registry, PackageFile};

use crate::{App, PlatformError};

/// The files of a package a host needs, read from `dir`: `plugin.json`, `plugin.wasm`
/// and everything under `migrations/`, by path.
fn runtime_files(dir: &Path) -> Result<Vec<PackageFile>, PlatformError> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |source| PlatformError::Io {
            what: format!("reading {what}"),
            source,
        }
    };
    let mut files = Vec::new();
    for name in ["plugin.json", "plugin.wasm"] {
        let path = dir.join(name);
        if path.exists() {
            files.push(PackageFile {
                path: name.to_owned(),
                content: std::fs::read(&path).map_err(io(&path))?,
            });
        }
    }
    let mut stack = vec![PathBuf::from("migrations")];
    while let Some(relative) = stack.pop() {
        let absolute = dir.join(&relative);
        let Ok(entries) = std::fs::read_dir(&absolute) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(io(&absolute))?;
            let path = relative.join(entry.file_name());
            if entry.file_type().map_err(io(&absolute))?.is_dir() {
                stack.push(path);
            } else {
                files.push(PackageFile {
                    path: path.to_string_lossy().replace('\\', "/"),
                    content: std::fs::read(entry.path()).map_err(io(&entry.path()))?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The digest of a package's files (paths and contents, each length-prefixed, by path).
fn digest(files: &[PackageFile]) -> String {
    let mut hasher = Sha256::new();
    for file in files {
        hasher.update((file.path.len() as u64).to_be_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update((file.content.len() as u64).to_be_bytes());
        hasher.update(&file.content);
    }
    hex::encode(hasher.finalize())
}

/// Stores installed plugin `id`'s package (from its directory) in a core on a server;
/// nothing with the core in `core.db`.
pub fn store(app: &App, id: &str) -> Result<(), PlatformError> {
    if matches!(app.core_location(), CoreLocation::File(_)) {
        return Ok(());
    }
    let files = runtime_files(&app.package_dir(id))?;
    let core = app.open_migrated_core()?;
    registry::store_package(&core, id, &digest(&files), &files)?;
    Ok(())
}

/// What [`sync_plugins_dir`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackagesSynced {
    /// Packages written into the plugins directory from the core.
    pub fetched: Vec<String>,
    /// Installed packages the core did not hold yet (installed before packages were
    /// stored), stored from this plugins directory.
    pub stored: Vec<String>,
}

/// Brings the plugins directory in line with the packages a core on a server stores:
/// each package whose files differ here is written anew (staged, then swapped in), and
/// an installed plugin whose package the core lacks is stored from here. Nothing with
/// the core in `core.db`.
pub fn sync_plugins_dir(app: &App) -> Result<PackagesSynced, PlatformError> {
    let mut synced = PackagesSynced::default();
    if matches!(app.core_location(), CoreLocation::File(_)) {
        return Ok(synced);
    }
    let core = app.open_migrated_core()?;
    let stored = registry::package_digests(&core)?;
    for record in registry::list(&core)? {
        let local = runtime_files(&app.package_dir(&record.id))?;
        match stored.iter().find(|(id, _)| *id == record.id) {
            Some((_, sha256)) if *sha256 == digest(&local) => {}
            Some((id, _)) => {
                let files = registry::package_files(&core, id)?;
                write_package(app, id, &files)?;
                tracing::info!(plugin = %id, "fetched the plugin's package from the core store");
                synced.fetched.push(id.clone());
            }
            None if !local.is_empty() => {
                registry::store_package(&core, &record.id, &digest(&local), &local)?;
                synced.stored.push(record.id.clone());
            }
            None => tracing::warn!(
                plugin = %record.id,
                "the plugin is installed but neither the core store nor this plugins directory has its package"
            ),
        }
    }
    Ok(synced)
}

/// Writes `files` as plugin `id`'s package: into a staging directory next to it, then
/// swapped in, so that a host never sees half a package.
fn write_package(app: &App, id: &str, files: &[PackageFile]) -> Result<(), PlatformError> {
    let target = app.package_dir(id);
    let staging = app
        .config()
        .plugins_dir_path()
        .join(format!(".{id}.fetching-{}", std::process::id()));
    let io = |what: String| move |source| PlatformError::Io { what, source };
    let _ = std::fs::remove_dir_all(&staging);
    for file in files {
        let relative = Path::new(&file.path);
        // Paths come from the core store, written by install: relative, no `..`.
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(PlatformError::Io {
                what: format!("the stored package of {id} names the path {:?}", file.path),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            });
        }
        let path = staging.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, &file.content).map_err(io(format!("writing {}", path.display())))?;
    }
    crate::plugins::swap_in(&staging, &target)
}
