//! Builds the example plugins and test fixtures under `plugins/` into WebAssembly
//! components (`wasm32-wasip2`) and puts each into its package as `plugin.wasm`, so that
//! building the workspace is all a fresh checkout needs. The nested build has its own
//! target directory (`target/wasm-plugins`), so it never waits on the outer build's lock.
//! Set `SV_SKIP_PLUGIN_BUILD=1` to skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SV_SKIP_PLUGIN_BUILD");
    if std::env::var_os("SV_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../..");
    let plugins = root.join("plugins");
    let workspace = plugins.join("Cargo.toml");
    if !workspace.exists() {
        return;
    }
    let members = members(&workspace);
    for watched in [
        root.join("wit"),
        root.join("crates/sovereign-plugin-sdk/src"),
        root.join("crates/sovereign-plugin-sdk/Cargo.toml"),
        workspace.clone(),
        plugins.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    for member in &members {
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(member).join("src").display()
        );
        println!(
            "cargo:rerun-if-changed={}",
            plugins.join(member).join("Cargo.toml").display()
        );
    }

    let target_dir = root.join("target/wasm-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&workspace)
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer build set for its own compilation must not leak into this one.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CLIPPY_ARGS",
        "__CARGO_FIX_PLZ",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("running cargo for the plugins");
    if !status.success() {
        panic!(
            "building the plugins under {} for wasm32-wasip2 failed; is the target installed \
             (`rustup target add wasm32-wasip2`)? Set SV_SKIP_PLUGIN_BUILD=1 to build without them",
            plugins.display()
        );
    }
    for member in &members {
        let name = package_name(&plugins.join(member).join("Cargo.toml"));
        let built = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = plugins.join(member).join("plugin.wasm");
        copy_if_changed(&built, &dest);
    }
}

fn members(workspace: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(workspace).expect("reading plugins/Cargo.toml");
    let value: toml::Table = toml::from_str(&text).expect("plugins/Cargo.toml is TOML");
    value["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect()
}

fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).expect("reading a plugin's Cargo.toml");
    let value: toml::Table = toml::from_str(&text).expect("a plugin's Cargo.toml is TOML");
    value["package"]["name"]
        .as_str()
        .expect("package.name")
        .to_owned()
}

fn copy_if_changed(from: &Path, to: &Path) {
    let new = std::fs::read(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
    if std::fs::read(to).ok().as_deref() != Some(&new[..]) {
        std::fs::write(to, new).unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
    }
}
