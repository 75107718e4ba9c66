//! Checking a plugin component before it is installed: it compiles, targets a plugin
//! API version this host serves, and exports the handler with the right shape.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::api::PluginPre;
use crate::runtime::{RequestState, Runtime};

pub use crate::api::SUPPORTED_API_VERSIONS;

/// The WIT package plugins are built against.
pub const API_PACKAGE: &str = "sovereign:plugin";

/// Why a component cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// There is no `plugin.wasm`.
    #[error(
        "{} does not exist: build the plugin first (`cargo build --release --target wasm32-wasip2` \
         and copy the component to plugin.wasm)",
        path.display()
    )]
    Missing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// The file is not a WebAssembly component wasmtime can compile.
    #[error("{} is not a WebAssembly component this host can compile: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// wasmtime's message.
        message: String,
    },
    /// The component targets a plugin API version this host does not serve.
    #[error(
        "{} targets plugin API {found}; this host serves {}: rebuild it against a supported SDK",
        path.display(),
        SUPPORTED_API_VERSIONS.join(", ")
    )]
    UnsupportedApi {
        /// The file.
        path: PathBuf,
        /// The version it imports or exports.
        found: String,
    },
    /// The component does not fit the plugin world (no handler export, unknown imports).
    #[error("{} is not a Sovereign plugin: {message}", path.display())]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
}

/// What a valid component declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    /// The plugin API version (`0.1.0`).
    pub api_version: String,
}

/// Compiles `wasm` and checks it against the plugin world this host serves.
pub fn check_component(wasm: &Path) -> Result<ComponentInfo, ComponentError> {
    let engine = Runtime::engine().map_err(|e| ComponentError::Invalid {
        path: wasm.to_owned(),
        message: format!("{e:#}"),
    })?;
    compile_checked(&engine, wasm).map(|(_, info)| info)
}

/// Compiles `wasm` and checks it; the component comes back ready to instantiate.
pub(crate) fn compile_checked(
    engine: &Engine,
    wasm: &Path,
) -> Result<(PluginPre, ComponentInfo), ComponentError> {
    if !wasm.is_file() {
        return Err(ComponentError::Missing {
            path: wasm.to_owned(),
        });
    }
    let component = Component::from_file(engine, wasm).map_err(|e| ComponentError::Invalid {
        path: wasm.to_owned(),
        message: format!("{e:#}"),
    })?;
    let ty = component.component_type();
    let names: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .chain(ty.exports(engine).map(|(name, _)| name.to_owned()))
        .collect();
    let versions: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix(API_PACKAGE)?.split_once('@'))
        .map(|(_, version)| version)
        .collect();
    let Some(version) = versions.first() else {
        return Err(ComponentError::NotAPlugin {
            path: wasm.to_owned(),
            message: format!("it neither imports nor exports anything of {API_PACKAGE}"),
        });
    };
    if let Some(other) = versions.iter().find(|v| *v != version) {
        return Err(ComponentError::NotAPlugin {
            path: wasm.to_owned(),
            message: format!("it mixes plugin API versions {version} and {other}"),
        });
    }
    if !SUPPORTED_API_VERSIONS.contains(version) {
        return Err(ComponentError::UnsupportedApi {
            path: wasm.to_owned(),
            found: (*version).to_owned(),
        });
    }
    let not_a_plugin = |e: wasmtime::Error| ComponentError::NotAPlugin {
        path: wasm.to_owned(),
        message: format!("{e:#}"),
    };
    let linker: Linker<RequestState> = Runtime::linker(engine).map_err(not_a_plugin)?;
    let pre = linker.instantiate_pre(&component).map_err(not_a_plugin)?;
    let pre = PluginPre::new(version, pre).map_err(not_a_plugin)?;
    Ok((
        pre,
        ComponentInfo {
            api_version: (*version).to_owned(),
        },
    ))
}
