//! For plugin authors: a new plugin package that builds on its own (`new_package`), and
//! building and validating a package into its `plugin.wasm` (`build_package`).
//!
//! A new package carries a copy of the SDK and the WIT contract this `sv` was built with
//! (`sdk/`), the dependency versions the example plugins are built with (`Cargo.lock`)
//! and the toolchain they need (`rust-toolchain.toml`), so it builds offline once those
//! dependencies are in the cargo cache, wherever it is.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use sovereign_db_plugins::Manifest;

use crate::{App, PlatformError};

const SDK_LIB: &str = include_str!("../../../sovereign-plugin-sdk/src/lib.rs");
const SDK_MANIFEST: &str = include_str!("../../../sovereign-plugin-sdk/Cargo.toml");
const WIT: &str = include_str!("../../../../wit/0.2/plugin.wit");
const LOCK: &str = include_str!("../../../../plugins/Cargo.lock");
const TOOLCHAIN: &str = include_str!("../../../../rust-toolchain.toml");
const TESTKIT_LIB: &str = include_str!("../../../sovereign-plugin-testkit/src/lib.rs");
const TESTKIT_MANIFEST: &str = include_str!("../../../sovereign-plugin-testkit/Cargo.toml");
const PLUGIN_LIB: &str = include_str!("plugin_lib.rs.tmpl");
const ROUTES_TEST: &str = include_str!("routes_test.rs.tmpl");
const PLUGIN_MANIFEST: &str = include_str!("Cargo.toml.tmpl");
const MIGRATION: &str = include_str!("migration.sql.tmpl");

/// The Rust target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Writes a new plugin package `id` into `dir` (which must not exist or be empty): its
/// `Cargo.toml`, `plugin.json`, `migrations/0001_init.sql`, `src/lib.rs` with a
/// `GET /hello` route reading its own table, `tests/routes.rs` for `sv plugins test`,
/// `sdk/` and `testkit/`. Returns the files written.
pub fn new_package(id: &str, dir: &Path) -> Result<Vec<PathBuf>, PlatformError> {
    sovereign_db_plugins::check_plugin_id(id)?;
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(PlatformError::DirectoryNotEmpty {
            dir: dir.to_owned(),
        });
    }
    let fill = |template: &str| {
        template
            .replace("{{id}}", id)
            .replace("{{crate}}", &format!("{}-plugin", id.replace('_', "-")))
    };
    let newest_api = sovereign_host::component::SUPPORTED_API_VERSIONS
        .last()
        .expect("the host serves a plugin API");
    let manifest = serde_json::to_string_pretty(&serde_json::json!({
        "id": id,
        "name": id,
        "version": "0.1.0",
        "plugin_api": newest_api,
    }))
    .expect("a JSON value serializes");
    let files: [(&str, String); 13] = [
        ("Cargo.toml", fill(PLUGIN_MANIFEST)),
        ("Cargo.lock", LOCK.to_owned()),
        ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
        (".gitignore", "/target\n/plugin.wasm\n".to_owned()),
        ("plugin.json", format!("{manifest}\n")),
        ("migrations/0001_init.sql", fill(MIGRATION)),
        ("src/lib.rs", fill(PLUGIN_LIB)),
        ("sdk/Cargo.toml", SDK_MANIFEST.to_owned()),
        // The SDK finds the contract next to it instead of in this repository.
        (
            "sdk/src/lib.rs",
            SDK_LIB.replace("path: \"../../wit/0.2\"", "path: \"wit\""),
        ),
        ("sdk/wit/plugin.wit", WIT.to_owned()),
        ("tests/routes.rs", fill(ROUTES_TEST)),
        ("testkit/Cargo.toml", TESTKIT_MANIFEST.to_owned()),
        ("testkit/src/lib.rs", TESTKIT_LIB.to_owned()),
    ];
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        let parent = path.parent().expect("a file in the package has a parent");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&path, content))
            .map_err(|source| PlatformError::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        written.push(path);
    }
    Ok(written)
}

/// A package built and validated.
#[derive(Debug, Clone)]
pub struct Built {
    /// Its manifest.
    pub manifest: Manifest,
    /// The plugin API version its component uses.
    pub api_version: String,
    /// `<dir>/plugin.wasm`.
    pub component: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its migration files.
    pub migrations: Vec<String>,
}

/// Builds the package in `dir` for [`TARGET`] in release mode (cargo's diagnostics go to
/// this process's stderr), copies the component to `dir/plugin.wasm` and validates the
/// package as an install would: the manifest, the migrations, and the component (it
/// compiles, uses a plugin API version this host serves, exports the handler).
pub fn build_package(app: &App, dir: &Path) -> Result<Built, PlatformError> {
    let manifest_path = dir.join("Cargo.toml");
    if !manifest_path.is_file() {
        return Err(PlatformError::NoSuchFile {
            path: manifest_path,
        });
    }
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| PlatformError::Io { what, source }
    };
    let package_root = dir
        .canonicalize()
        .map_err(io(&format!("reading {}", dir.display())))?;
    check_toolchain(&package_root)?;
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&package_root)
        .args(["build", "--release", "--target", TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(package_root.join("Cargo.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // What an outer cargo set for its own build must not leak into this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
    ] {
        cargo.env_remove(var);
    }
    let mut child = cargo.spawn().map_err(io("running cargo"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut wasm: Option<PathBuf> = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(io("reading cargo's output"))?;
        // One JSON message per line; other lines (none expected) are ignored.
        if let Ok(CargoMessage::CompilerArtifact { target, filenames }) =
            serde_json::from_str::<CargoMessage>(&line)
            && target.kind.iter().any(|k| k == "cdylib")
            && target.src_path.starts_with(&package_root)
        {
            wasm = filenames
                .into_iter()
                .find(|f| f.extension().is_some_and(|e| e == "wasm"));
        }
    }
    let status = child.wait().map_err(io("waiting for cargo"))?;
    if !status.success() {
        return Err(PlatformError::BuildFailed {
            dir: dir.to_owned(),
        });
    }
    let built = wasm.ok_or_else(|| PlatformError::NoComponent {
        dir: dir.to_owned(),
    })?;
    let component = dir.join("plugin.wasm");
    std::fs::copy(&built, &component).map_err(io(&format!(
        "copying {} to {}",
        built.display(),
        component.display()
    )))?;
    let manifest = Manifest::load(dir, app.mirror_catalog())?;
    let migrations = sovereign_db::MigrationSet::from_dir(
        &sovereign_db_plugins::migration_scope(&manifest.id),
        &dir.join("migrations"),
    )?
    .migrations()
    .iter()
    .map(|m| m.file_name())
    .collect();
    let checked = crate::plugins::check_package(dir, &manifest)?;
    let bytes = std::fs::metadata(&component)
        .map_err(io("reading the component's size"))?
        .len();
    Ok(Built {
        manifest,
        api_version: checked.api_version,
        component,
        bytes,
        migrations,
    })
}

/// What one round of the development loop did.
#[derive(Debug, Clone)]
pub enum Deployed {
    /// The package was not installed: it is now.
    Installed(crate::plugins::Installed),
    /// It was: upgraded in place (the same version allowed) and the host reloaded.
    Reloaded(crate::plugins::Upgraded),
}

/// One round of `sv plugins dev`: builds the package, installs it (approving what it
/// asks for: development only) or upgrades it in place, and asks a running platform to
/// reload its extension host (the manifest may be unchanged while the component is new).
pub fn deploy_for_development(app: &App, dir: &Path) -> Result<Deployed, PlatformError> {
    let built = build_package(app, dir)?;
    if app.registered(&built.manifest.id)?.is_none() {
        let installed = crate::plugins::install(app, dir, crate::plugins::Approval::Given)?;
        return Ok(Deployed::Installed(installed));
    }
    let upgraded = crate::plugins::upgrade(app, dir, true, &mut |_| true)?;
    match crate::plugins::restart_host(app) {
        Ok(_) | Err(PlatformError::NotRunning { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(Deployed::Reloaded(upgraded))
}

/// How `sv plugins test` runs a package's tests.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The `sv` executable (the throwaway platform is `<sv> serve`).
    pub sv_executable: PathBuf,
}

/// Builds the package in `dir`, installs it into a throwaway platform (fresh stores in a
/// temporary directory, a real `sv serve` with its sandboxed extension host, an
/// administrator) and runs the package's own tests (`cargo test`) against it, with
/// `SV_TEST_URL`, `SV_TEST_TOKEN` and `SV_TEST_PLUGIN` set for
/// `sovereign_plugin_testkit::TestPlatform`. Returns whether the tests passed; the
/// platform and its files are gone afterwards.
pub fn test_package(app: &App, dir: &Path, run: &TestRun) -> Result<bool, PlatformError> {
    let built = build_package(app, dir)?;
    let id = built.manifest.id.clone();
    let scratch = Scratch::new()?;
    let config = sovereign_config::Config::load(
        &scratch.0,
        &sovereign_config::Overrides {
            data_dir: Some(scratch.0.join("data")),
            plugins_dir: Some(scratch.0.join("plugins")),
            ..Default::default()
        },
        &|_| None,
    )?;
    let throwaway = App::new(config)?;
    crate::migrations::deploy_all(&throwaway)?;
    crate::plugins::install(&throwaway, dir, crate::plugins::Approval::Given)?;
    let password = sovereign_db_core::password::generate();
    let admin = "tests@sovereign.local";
    crate::users::create(
        &throwaway,
        &crate::users::UserRequest {
            email: admin.into(),
            display_name: Some("Tests".into()),
            password: Some(password.clone()),
            admin: true,
        },
        "sv plugins test",
    )?;
    let server = Server::start(run, &scratch.0)?;
    let token = server.login(admin, &password)?;
    server.wait_for_host()?;
    let package_root = dir.canonicalize().map_err(|source| PlatformError::Io {
        what: format!("reading {}", dir.display()),
        source,
    })?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&package_root)
        .args(["test", "--manifest-path"])
        .arg(package_root.join("Cargo.toml"))
        .env("SV_TEST_URL", format!("http://{}", server.address))
        .env("SV_TEST_TOKEN", token)
        .env("SV_TEST_PLUGIN", &id)
        .status()
        .map_err(|source| PlatformError::Io {
            what: "running cargo test".into(),
            source,
        })?;
    drop(server);
    Ok(status.success())
}

/// A temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, PlatformError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("sv-plugin-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| PlatformError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway `sv serve`, stopped (SIGTERM, then waited for) when dropped.
struct Server {
    child: std::process::Child,
    address: String,
}

impl Server {
    fn start(run: &TestRun, dir: &Path) -> Result<Server, PlatformError> {
        let mut command = Command::new(&run.sv_executable);
        command
            .current_dir(dir)
            .args([
                "--data-dir",
                "data",
                "--plugins-dir",
                "plugins",
                "serve",
                "--port",
                "0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // The platform's own log stays quiet unless asked for; plugin errors show.
            .env(
                "SV_LOG",
                std::env::var("SV_LOG")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "warn".into()),
            );
        for var in sovereign_config::VARIABLES {
            command.env_remove(var);
        }
        let mut child = command.spawn().map_err(|source| PlatformError::Io {
            what: format!("starting {} serve", run.sv_executable.display()),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let address = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                line.strip_prefix("Sovereign is running at http://")
                    .map(str::to_owned)
            });
        let mut server = Server {
            child,
            address: String::new(),
        };
        server.address = address.ok_or(PlatformError::TestPlatformDidNotStart)?;
        Ok(server)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    fn login(&self, email: &str, password: &str) -> Result<String, PlatformError> {
        #[derive(Deserialize)]
        struct Session {
            token: String,
        }
        Self::agent()
            .post(format!("http://{}/api/auth/login", self.address))
            .send_json(serde_json::json!({ "email": email, "password": password }))
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Session>().ok())
            .map(|s| s.token)
            .ok_or(PlatformError::TestPlatformDidNotStart)
    }

    /// Waits (up to 60 s) until the extension host runs.
    fn wait_for_host(&self) -> Result<(), PlatformError> {
        use sovereign_kernel::health::{ExtensionHost, Health};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let health = Self::agent()
                .get(format!("http://{}/health", self.address))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Health>().ok());
            if let Some(Health {
                extension_host:
                    ExtensionHost::Watched(sovereign_kernel::host::HostState::Running { .. }),
                ..
            }) = health
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Err(PlatformError::TestPlatformDidNotStart)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

/// A fingerprint of a package's sources (`src/`, `migrations/`, `sdk/`, `plugin.json`,
/// `Cargo.toml`): their paths, sizes and modification times. It changes when any of them
/// does; `target/` and `plugin.wasm` are not part of it.
pub fn source_stamp(
    dir: &Path,
) -> Result<Vec<(PathBuf, u64, std::time::SystemTime)>, PlatformError> {
    let mut stamp = Vec::new();
    let mut pending: Vec<PathBuf> = ["src", "migrations", "sdk", "plugin.json", "Cargo.toml"]
        .iter()
        .map(|name| dir.join(name))
        .collect();
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|source| PlatformError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            pending.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        } else {
            let modified = meta.modified().map_err(|source| PlatformError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            stamp.push((path, meta.len(), modified));
        }
    }
    stamp.sort();
    Ok(stamp)
}

/// Checks that `cargo` runs and the [`TARGET`] standard library is installed for the
/// toolchain `dir` builds with, naming the command that fixes it.
fn check_toolchain(dir: &Path) -> Result<(), PlatformError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .current_dir(dir)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|_| PlatformError::NoToolchain)?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !libdir.is_dir() {
        return Err(PlatformError::NoWasmTarget);
    }
    Ok(())
}

/// The cargo JSON messages this reads (`--message-format json`).
#[derive(Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
enum CargoMessage {
    CompilerArtifact {
        target: CargoTarget,
        filenames: Vec<PathBuf>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct CargoTarget {
    kind: Vec<String>,
    src_path: PathBuf,
}
