//! Sovereign's configuration.
//!
//! Every value comes from the first of: a command-line flag, the process environment, a
//! `.env` file in the working directory, `sovereign.toml` (or `--config FILE`), or the
//! built-in default; [`Config`] remembers which, so `sv config` can say so.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sovereign_db::{DatabaseUrl, MysqlUrl, PostgresUrl, StoreTarget};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The process environment.
    Env,
    /// A `.env` file.
    DotEnv(PathBuf),
    /// A TOML configuration file.
    Toml(PathBuf),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("command-line flag"),
            Source::Env => f.write_str("environment"),
            Source::DotEnv(p) => write!(f, "{}", p.display()),
            Source::Toml(p) => write!(f, "{}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Its origin.
    pub source: Source,
}

/// The environment variables the configuration reads (`SV_LOG`, the log filter, is not
/// one of them). A child `sv` that must not inherit this process's configuration has
/// them removed.
pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "PLUGIN_DATABASE_URL",
    "SV_DATA_DIR",
    "SV_PLUGINS_DIR",
    "SV_PORT",
    "SV_BIND",
    "SV_CONFIG",
];

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--plugin-database-url`.
    pub plugin_database_url: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--plugins-dir`.
    pub plugins_dir: Option<PathBuf>,
    /// `--port`.
    pub port: Option<u16>,
    /// `--bind`.
    pub bind: Option<IpAddr>,
    /// `--config`: a TOML file other than `./sovereign.toml`.
    pub config_file: Option<PathBuf>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory relative paths are resolved against (the working directory).
    pub base_dir: PathBuf,
    /// `DATABASE_URL`: the core store.
    pub database_url: Sourced<StoreTarget>,
    /// `PLUGIN_DATABASE_URL`: the shared plugin store's file, or a PostgreSQL database.
    pub plugin_database_url: Sourced<StoreTarget>,
    /// `SV_DATA_DIR`: where default database files, isolated plugin files and runtime
    /// files (lock, host socket) live.
    pub data_dir: Sourced<PathBuf>,
    /// `SV_PLUGINS_DIR`: where plugin packages (`<id>/plugin.json`, migrations) are found.
    pub plugins_dir: Sourced<PathBuf>,
    /// `SV_PORT`: the HTTP port.
    pub port: Sourced<u16>,
    /// `SV_BIND`: the address `sv serve` listens on (`sv dev` always uses 127.0.0.1).
    pub bind: Sourced<IpAddr>,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
    /// Every section of that file, for the parts that read their own (`[mirror.*]`,
    /// `[sync]`).
    pub sections: toml::Table,
}

/// A configuration problem, naming the variable and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A database URL is malformed.
    #[error(transparent)]
    Url(#[from] sovereign_db::UrlError),
    /// A value is not of the expected form.
    #[error("{variable} = {value:?} (from {origin}) is invalid: {expected}")]
    Invalid {
        /// Variable name.
        variable: &'static str,
        /// Offending value.
        value: String,
        /// Where it came from.
        origin: Source,
        /// What is expected.
        expected: &'static str,
    },
    /// Both stores would be the same file.
    #[error(
        "DATABASE_URL ({core}) and PLUGIN_DATABASE_URL ({plugins}) name the same file {path}: \
         plugins would share a file with core data, which undoes the segregation; point \
         PLUGIN_DATABASE_URL at another file (default: file:data/plugins.db)"
    )]
    SameFile {
        /// Core URL.
        core: String,
        /// Plugin URL.
        plugins: String,
        /// The shared file.
        path: String,
    },
    /// `DATABASE_URL` and `PLUGIN_DATABASE_URL` name one PostgreSQL database.
    #[error(
        "DATABASE_URL ({core}) and PLUGIN_DATABASE_URL ({plugins}) name the same PostgreSQL \
         database {database}; the core and the plugins need a database each (for example \
         sovereign_core and sovereign_plugins)"
    )]
    SameDatabase {
        /// Core URL (password elided).
        core: String,
        /// Plugin URL (password elided).
        plugins: String,
        /// The shared database.
        database: String,
    },
    /// A config file could not be read or parsed.
    #[error("cannot read configuration file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The `sovereign.toml` keys this crate reads. Other sections belong to other parts and
/// are ignored here.
#[derive(Debug, Default, Deserialize)]
struct TomlFile {
    database_url: Option<String>,
    plugin_database_url: Option<String>,
    data_dir: Option<PathBuf>,
    plugins_dir: Option<PathBuf>,
    port: Option<u16>,
    bind: Option<String>,
}

/// A layered lookup of one string variable.
struct Layers<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    dotenv: HashMap<String, String>,
    dotenv_path: PathBuf,
    toml: TomlFile,
    toml_path: PathBuf,
}

impl Layers<'_> {
    fn lookup(
        &self,
        flag: Option<String>,
        var: &str,
        toml: Option<String>,
    ) -> Option<Sourced<String>> {
        let sourced = |value, source| Some(Sourced { value, source });
        if let Some(v) = flag {
            return sourced(v, Source::Flag);
        }
        if let Some(v) = (self.env)(var).filter(|v| !v.is_empty()) {
            return sourced(v, Source::Env);
        }
        if let Some(v) = self.dotenv.get(var).filter(|v| !v.is_empty()) {
            return sourced(v.clone(), Source::DotEnv(self.dotenv_path.clone()));
        }
        toml.and_then(|v| sourced(v, Source::Toml(self.toml_path.clone())))
    }
}

impl Config {
    /// Loads the configuration for a process whose working directory is `cwd`, reading
    /// the environment through `env`.
    pub fn load(
        cwd: &Path,
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let dotenv_path = cwd.join(".env");
        let dotenv = read_dotenv(&dotenv_path)?;
        let toml_path = match overrides
            .config_file
            .clone()
            .or_else(|| env("SV_CONFIG").map(PathBuf::from))
        {
            Some(p) if p.is_absolute() => p,
            Some(p) => cwd.join(p),
            None => cwd.join("sovereign.toml"),
        };
        let explicit_toml = overrides.config_file.is_some() || env("SV_CONFIG").is_some();
        let (toml, sections) = read_toml(&toml_path, explicit_toml)?;
        let layers = Layers {
            env,
            dotenv,
            dotenv_path,
            toml,
            toml_path: toml_path.clone(),
        };
        let path_of = |s: Sourced<String>| Sourced {
            value: PathBuf::from(s.value),
            source: s.source,
        };

        let data_dir = layers
            .lookup(
                overrides.data_dir.as_ref().map(|p| p.display().to_string()),
                "SV_DATA_DIR",
                layers
                    .toml
                    .data_dir
                    .as_ref()
                    .map(|p| p.display().to_string()),
            )
            .map(path_of)
            .unwrap_or(Sourced {
                value: PathBuf::from("data"),
                source: Source::Default,
            });
        let plugins_dir = layers
            .lookup(
                overrides
                    .plugins_dir
                    .as_ref()
                    .map(|p| p.display().to_string()),
                "SV_PLUGINS_DIR",
                layers
                    .toml
                    .plugins_dir
                    .as_ref()
                    .map(|p| p.display().to_string()),
            )
            .map(path_of)
            .unwrap_or(Sourced {
                value: PathBuf::from("plugins"),
                source: Source::Default,
            });

        let database_url = match layers.lookup(
            overrides.database_url.clone(),
            "DATABASE_URL",
            layers.toml.database_url.clone(),
        ) {
            Some(s) => {
                let value =
                    StoreTarget::parse(&format!("DATABASE_URL (from {})", s.source), &s.value)?;
                Sourced {
                    value,
                    source: s.source,
                }
            }
            None => Sourced {
                value: StoreTarget::File(DatabaseUrl::from_path(data_dir.value.join("core.db"))),
                source: Source::Default,
            },
        };
        let plugin_database_url = match layers.lookup(
            overrides.plugin_database_url.clone(),
            "PLUGIN_DATABASE_URL",
            layers.toml.plugin_database_url.clone(),
        ) {
            Some(s) => Sourced {
                value: StoreTarget::parse(
                    &format!("PLUGIN_DATABASE_URL (from {})", s.source),
                    &s.value,
                )?,
                source: s.source,
            },
            None => Sourced {
                value: StoreTarget::File(DatabaseUrl::from_path(data_dir.value.join("plugins.db"))),
                source: Source::Default,
            },
        };

        let port = match layers.lookup(
            overrides.port.map(|p| p.to_string()),
            "SV_PORT",
            layers.toml.port.map(|p| p.to_string()),
        ) {
            Some(s) => Sourced {
                value: s.value.parse().map_err(|_| ConfigError::Invalid {
                    variable: "SV_PORT",
                    value: s.value.clone(),
                    origin: s.source.clone(),
                    expected: "a TCP port number from 0 to 65535 (0 picks a free port)",
                })?,
                source: s.source,
            },
            None => Sourced {
                value: 8080,
                source: Source::Default,
            },
        };
        let bind = match layers.lookup(
            overrides.bind.map(|b| b.to_string()),
            "SV_BIND",
            layers.toml.bind.clone(),
        ) {
            Some(s) => Sourced {
                value: s.value.parse().map_err(|_| ConfigError::Invalid {
                    variable: "SV_BIND",
                    value: s.value.clone(),
                    origin: s.source.clone(),
                    expected: "an IP address such as 127.0.0.1, 0.0.0.0 or ::1",
                })?,
                source: s.source,
            },
            None => Sourced {
                value: IpAddr::from([127, 0, 0, 1]),
                source: Source::Default,
            },
        };

        let config = Config {
            base_dir: cwd.to_owned(),
            database_url,
            plugin_database_url,
            data_dir,
            plugins_dir,
            port,
            bind,
            file: toml_path.exists().then(|| toml_path.clone()),
            sections,
        };
        config.check_distinct_files()?;
        Ok(config)
    }

    /// Loads with the real process environment and working directory.
    pub fn from_process(overrides: &Overrides) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().map_err(|e| ConfigError::File {
            path: PathBuf::from("."),
            message: format!("cannot determine the working directory: {e}"),
        })?;
        Config::load(&cwd, overrides, &|name| std::env::var(name).ok())
    }

    /// Absolute path of `core.db` (`None`: the core store is on PostgreSQL).
    pub fn core_db_path(&self) -> Option<PathBuf> {
        self.database_url
            .value
            .file()
            .map(|url| url.resolve(&self.base_dir))
    }

    /// The PostgreSQL database of the core store, if it is on PostgreSQL.
    pub fn core_postgres_url(&self) -> Option<&PostgresUrl> {
        match &self.database_url.value {
            StoreTarget::Postgres(url) => Some(url),
            StoreTarget::File(_) | StoreTarget::Mysql(_) => None,
        }
    }

    /// The MySQL/MariaDB database of the core store, if it is on MySQL.
    pub fn core_mysql_url(&self) -> Option<&MysqlUrl> {
        match &self.database_url.value {
            StoreTarget::Mysql(url) => Some(url),
            StoreTarget::File(_) | StoreTarget::Postgres(_) => None,
        }
    }

    /// Absolute path of the shared plugin store file (`None`: the plugin store is on
    /// PostgreSQL).
    pub fn plugins_db_path(&self) -> Option<PathBuf> {
        self.plugin_database_url
            .value
            .file()
            .map(|url| url.resolve(&self.base_dir))
    }

    /// The PostgreSQL database of the plugin store, if it is on PostgreSQL.
    pub fn plugins_postgres_url(&self) -> Option<&PostgresUrl> {
        match &self.plugin_database_url.value {
            StoreTarget::Postgres(url) => Some(url),
            StoreTarget::File(_) | StoreTarget::Mysql(_) => None,
        }
    }

    /// The MySQL/MariaDB database of the plugin store, if it is on MySQL.
    pub fn plugins_mysql_url(&self) -> Option<&MysqlUrl> {
        match &self.plugin_database_url.value {
            StoreTarget::Mysql(url) => Some(url),
            StoreTarget::File(_) | StoreTarget::Postgres(_) => None,
        }
    }

    /// Absolute data directory.
    pub fn data_dir_path(&self) -> PathBuf {
        absolute(&self.base_dir, &self.data_dir.value)
    }

    /// Absolute plugin packages directory.
    pub fn plugins_dir_path(&self) -> PathBuf {
        absolute(&self.base_dir, &self.plugins_dir.value)
    }

    /// The lock file held by a running platform (`sv dev` / `sv serve`).
    pub fn lock_file_path(&self) -> PathBuf {
        self.data_dir_path().join("sv.lock")
    }

    fn check_distinct_files(&self) -> Result<(), ConfigError> {
        if let (Some(core), Some(plugins)) = (self.core_postgres_url(), self.plugins_postgres_url())
            && core.database_identity() == plugins.database_identity()
        {
            return Err(ConfigError::SameDatabase {
                core: core.to_string(),
                plugins: plugins.to_string(),
                database: core.database_identity(),
            });
        }
        let (Some(core), Some(plugins)) = (self.core_db_path(), self.plugins_db_path()) else {
            return Ok(());
        };
        if same_file(&core, &plugins) {
            return Err(ConfigError::SameFile {
                core: self.database_url.value.to_string(),
                plugins: self.plugin_database_url.value.to_string(),
                path: core.display().to_string(),
            });
        }
        Ok(())
    }
}

fn absolute(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        DatabaseUrl::from_path(path).resolve(base)
    }
}

/// Whether two paths name one file: equal after normalisation, after resolving symlinks
/// of existing parent directories, or (for existing files) the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if a == b {
        return true;
    }
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b))
        && ma.dev() == mb.dev()
        && ma.ino() == mb.ino()
    {
        return true;
    }
    let canonical = |p: &Path| -> Option<PathBuf> {
        let parent = p.parent()?.canonicalize().ok()?;
        Some(parent.join(p.file_name()?))
    };
    matches!((canonical(a), canonical(b)), (Some(x), Some(y)) if x == y)
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    match dotenvy::from_path_iter(path) {
        Ok(iter) => iter
            .map(|item| {
                item.map_err(|e| ConfigError::File {
                    path: path.to_owned(),
                    message: e.to_string(),
                })
            })
            .collect(),
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(HashMap::new())
        }
        Err(e) => Err(ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        }),
    }
}

fn read_toml(path: &Path, required: bool) -> Result<(TomlFile, toml::Table), ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok((TomlFile::default(), toml::Table::new()));
        }
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
    };
    let file_err = |e: toml::de::Error| ConfigError::File {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let table: toml::Table = toml::from_str(&text).map_err(file_err)?;
    if let Some(unknown) = table
        .keys()
        .find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()) && !SECTIONS.contains(&k.as_str()))
    {
        let suggestion = TOP_LEVEL_KEYS
            .iter()
            .chain(SECTIONS)
            .min_by_key(|known| edit_distance(unknown, known))
            .filter(|known| edit_distance(unknown, known) <= 2)
            .map(|known| format!(" (did you mean `{known}`?)"))
            .unwrap_or_default();
        return Err(ConfigError::File {
            path: path.to_owned(),
            message: format!(
                "unknown key `{unknown}`{suggestion}; known keys: {}, and the sections [{}]",
                TOP_LEVEL_KEYS.join(", "),
                SECTIONS.join("], [")
            ),
        });
    }
    let known: TomlFile = toml::from_str(&text).map_err(file_err)?;
    Ok((known, table))
}

/// The top-level keys of `sovereign.toml` ([`TomlFile`]).
const TOP_LEVEL_KEYS: &[&str] = &[
    "database_url",
    "plugin_database_url",
    "data_dir",
    "plugins_dir",
    "port",
    "bind",
];

/// The sections of `sovereign.toml` that other parts read (`sovereign-sync`).
const SECTIONS: &[&str] = &["sync", "mirror"];

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(current + 1);
            previous = current;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_key_is_refused_with_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sovereign.toml"),
            "databse_url = \"file:x.db\"\n",
        )
        .unwrap();
        let err = load(dir.path(), &Overrides::default(), &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown key `databse_url`"), "{text}");
        assert!(text.contains("did you mean `database_url`"), "{text}");
    }

    fn load(
        dir: &Path,
        overrides: &Overrides,
        env: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(dir, overrides, &move |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_rfc() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path(), &Overrides::default(), &[]).unwrap();
        assert_eq!(c.database_url.value.to_string(), "file:data/core.db");
        assert_eq!(
            c.plugin_database_url.value.to_string(),
            "file:data/plugins.db"
        );
        assert_eq!(c.core_db_path(), Some(dir.path().join("data/core.db")));
        assert_eq!(c.port.value, 8080);
        assert_eq!(c.port.source, Source::Default);
    }

    #[test]
    fn precedence_is_flag_env_dotenv_toml_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sovereign.toml"),
            "port = 1001\ndatabase_url = \"file:t.db\"\nplugin_database_url = \"file:tp.db\"\n",
        )
        .unwrap();
        let c = load(dir.path(), &Overrides::default(), &[]).unwrap();
        assert_eq!(c.port.value, 1001);
        assert!(matches!(c.port.source, Source::Toml(_)));
        std::fs::write(
            dir.path().join(".env"),
            "SV_PORT=1002\nDATABASE_URL=file:d.db\n",
        )
        .unwrap();
        let c = load(dir.path(), &Overrides::default(), &[]).unwrap();
        assert_eq!(c.port.value, 1002);
        assert!(matches!(c.port.source, Source::DotEnv(_)));
        assert_eq!(c.core_db_path(), Some(dir.path().join("d.db")));
        assert!(matches!(c.plugin_database_url.source, Source::Toml(_)));
        let c = load(dir.path(), &Overrides::default(), &[("SV_PORT", "1003")]).unwrap();
        assert_eq!((c.port.value, c.port.source), (1003, Source::Env));
        let flags = Overrides {
            port: Some(1004),
            ..Default::default()
        };
        let c = load(dir.path(), &flags, &[("SV_PORT", "1003")]).unwrap();
        assert_eq!((c.port.value, c.port.source), (1004, Source::Flag));
    }

    #[test]
    fn data_dir_moves_the_default_files() {
        let dir = tempfile::tempdir().unwrap();
        let flags = Overrides {
            data_dir: Some(PathBuf::from("/srv/sv")),
            ..Default::default()
        };
        let c = load(dir.path(), &flags, &[]).unwrap();
        assert_eq!(c.core_db_path(), Some(PathBuf::from("/srv/sv/core.db")));
        assert_eq!(
            c.plugins_db_path(),
            Some(PathBuf::from("/srv/sv/plugins.db"))
        );
    }

    #[test]
    fn malformed_urls_and_same_file_urls_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            dir.path(),
            &Overrides::default(),
            &[("DATABASE_URL", "core.db")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("DATABASE_URL (from environment)"),
            "{err}"
        );
        let err = load(
            dir.path(),
            &Overrides::default(),
            &[
                ("DATABASE_URL", "file:data/x.db"),
                ("PLUGIN_DATABASE_URL", "file:./data/../data/x.db"),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SameFile { .. }), "{err}");
        // A hard link is the same file too.
        std::fs::write(dir.path().join("a.db"), "").unwrap();
        std::fs::hard_link(dir.path().join("a.db"), dir.path().join("b.db")).unwrap();
        let err = load(
            dir.path(),
            &Overrides::default(),
            &[
                ("DATABASE_URL", "file:a.db"),
                ("PLUGIN_DATABASE_URL", "file:b.db"),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SameFile { .. }), "{err}");
        // Two roles on one PostgreSQL database are one store.
        let err = load(
            dir.path(),
            &Overrides::default(),
            &[
                ("DATABASE_URL", "postgres://svc_core:a@db.local/sovereign"),
                (
                    "PLUGIN_DATABASE_URL",
                    "postgres://svc_plugins:b@DB.local:5432/sovereign",
                ),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::SameDatabase { .. }), "{err}");
        assert!(!err.to_string().contains(":a@"), "a password leaked: {err}");
        let both = load(
            dir.path(),
            &Overrides::default(),
            &[
                ("DATABASE_URL", "postgres://svc_core:a@db.local/sv_core"),
                (
                    "PLUGIN_DATABASE_URL",
                    "postgres://svc_plugins:b@db.local/sv_plugins",
                ),
            ],
        )
        .unwrap();
        assert_eq!(both.core_db_path(), None);
        assert!(both.core_postgres_url().is_some());
        let err = load(dir.path(), &Overrides::default(), &[("SV_PORT", "http")]).unwrap_err();
        assert!(err.to_string().contains("SV_PORT"), "{err}");
    }

    #[test]
    fn the_plugin_store_may_be_on_postgres_and_its_password_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let url = "postgres://svc_plugins:s3cret@127.0.0.1:5432/sv_plugins";
        let c = load(
            dir.path(),
            &Overrides::default(),
            &[("PLUGIN_DATABASE_URL", url)],
        )
        .unwrap();
        assert_eq!(c.plugins_db_path(), None);
        assert_eq!(c.plugins_postgres_url().map(|u| u.expose()), Some(url));
        let shown = c.plugin_database_url.value.to_string();
        assert_eq!(
            shown,
            "postgres://svc_plugins:***@127.0.0.1:5432/sv_plugins"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        // The core store may be on PostgreSQL too, its password as hidden.
        let c = load(
            dir.path(),
            &Overrides::default(),
            &[(
                "DATABASE_URL",
                "postgres://svc_core:s3cret@127.0.0.1/sv_core",
            )],
        )
        .unwrap();
        assert_eq!(c.core_db_path(), None);
        assert_eq!(
            c.database_url.value.to_string(),
            "postgres://svc_core:***@127.0.0.1/sv_core"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
