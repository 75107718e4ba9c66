//! The crate graph is the trust boundary: nothing on the plugin side may depend on the
//! core store's crate, directly or transitively.

use std::collections::{HashMap, HashSet};

/// Crates on the untrusted side (those that do not exist yet are skipped).
const PLUGIN_SIDE: &[&str] = &[
    "sovereign-db-plugins",
    "sovereign-host",
    "sovereign-plugin-sdk",
];
const CORE_STORE: &str = "sovereign-db-core";

/// Checks one workspace (the main one, and the guest workspace under `plugins/`, which
/// holds the plugin SDK).
fn check(manifest: &std::path::Path) -> usize {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let deps: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                n["deps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["pkg"].as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    let mut checked = 0;
    for (id, name) in &names {
        if !PLUGIN_SIDE.contains(name) {
            continue;
        }
        checked += 1;
        let mut seen = HashSet::new();
        let mut stack = vec![*id];
        while let Some(next) = stack.pop() {
            if !seen.insert(next) {
                continue;
            }
            assert_ne!(
                names[next], CORE_STORE,
                "{name} depends (transitively) on {CORE_STORE}: that crosses the trust boundary"
            );
            stack.extend(deps.get(next).into_iter().flatten());
        }
    }
    checked
}

#[test]
fn plugin_side_crates_never_depend_on_the_core_store() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let main = check(&root.join("Cargo.toml"));
    assert!(
        main >= 2,
        "sovereign-db-plugins and sovereign-host must be in the workspace"
    );
    let guests = check(&root.join("plugins/Cargo.toml"));
    assert!(
        guests >= 1,
        "the plugin SDK must be in the guest workspace's graph"
    );
}
