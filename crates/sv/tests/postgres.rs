//! `sv postgres:roles` against a real PostgreSQL server (scripts/postgres).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Workdir;
use sovereign_postgres::Cluster;

fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
        .output()
        .unwrap()
}

#[test]
fn sv_creates_the_stores_roles_and_databases_and_prints_them_for_a_dba() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    let w = Workdir::new();
    let urls = [
        "--database-url",
        core.as_str(),
        "--plugin-database-url",
        plugins.as_str(),
    ];

    let printed = w.sv_ok(&[&["postgres:roles", "--print"][..], &urls].concat());
    assert!(
        printed.contains("CREATE DATABASE \"sv_core\" OWNER \"svc_core\""),
        "{printed}"
    );
    let refused = w.sv_err(&[&["postgres:roles", "--apply"][..], &urls].concat());
    assert!(refused.contains("--admin-url"), "{refused}");
    for _ in 0..2 {
        let out = w.sv_ok(
            &[
                &[
                    "postgres:roles",
                    "--apply",
                    "--admin-url",
                    cluster.admin_url(),
                ][..],
                &urls,
            ]
            .concat(),
        );
        assert!(out.contains("applied"), "{out}");
    }
    let made = psql(&core, "CREATE TABLE t (a int); SELECT current_user");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The plugin store's role cannot even connect to the core database.
    let crossed = psql(
        &cluster.url("svc_plugins", "plugins-secret", "sv_core"),
        "SELECT 1",
    );
    assert!(!crossed.status.success());
    assert!(
        String::from_utf8_lossy(&crossed.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&crossed.stderr)
    );

    let same = w.sv_err(&[
        "postgres:roles",
        "--print",
        "--database-url",
        &core,
        "--plugin-database-url",
        &cluster.url("svc_plugins", "x", "sv_core"),
    ]);
    assert!(same.contains("same database"), "{same}");
}
