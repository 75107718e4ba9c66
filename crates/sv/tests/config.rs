//! Configuration through the real `sv` binary.

mod common;

use common::Workdir;

#[test]
fn config_reports_values_and_their_sources() {
    let w = Workdir::new();
    std::fs::write(
        w.path().join(".env"),
        "PLUGIN_DATABASE_URL=file:store/p.db\n",
    )
    .unwrap();
    std::fs::write(w.path().join("sovereign.toml"), "port = 9100\n").unwrap();
    let out = w
        .command(&["config", "--json"])
        .env("DATABASE_URL", "file:/tmp/x/core.db")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["DATABASE_URL"]["source"], "environment");
    assert_eq!(v["DATABASE_URL"]["resolved"], "/tmp/x/core.db");
    assert_eq!(v["PLUGIN_DATABASE_URL"]["value"], "file:store/p.db");
    assert!(
        v["PLUGIN_DATABASE_URL"]["source"]
            .as_str()
            .unwrap()
            .ends_with(".env")
    );
    assert_eq!(
        v["PLUGIN_DATABASE_URL"]["resolved"],
        w.path().join("store/p.db").display().to_string()
    );
    assert_eq!(v["SV_PORT"]["value"], "9100");
    assert!(
        v["SV_PORT"]["source"]
            .as_str()
            .unwrap()
            .ends_with("sovereign.toml")
    );
    let out = w.sv_ok(&["config", "--database-url", "file:flag.db"]);
    assert!(
        out.contains("file:flag.db") && out.contains("command-line flag"),
        "{out}"
    );
}

#[test]
fn malformed_urls_are_refused_naming_the_variable() {
    let w = Workdir::new();
    let out = w
        .command(&["config"])
        .env("DATABASE_URL", "data/core.db")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(err.contains("expected `file:PATH`"), "{err}");
    let err = w.sv_err(&["migrate:deploy", "--plugin-database-url", "sqlite://x"]);
    assert!(err.contains("PLUGIN_DATABASE_URL"), "{err}");
    assert!(
        !w.core_db().exists(),
        "nothing is created on a configuration error"
    );
}

#[test]
fn urls_naming_the_same_file_are_refused() {
    let w = Workdir::new();
    let out = w
        .command(&["dev", "--port", "0"])
        .env("DATABASE_URL", "file:data/one.db")
        .env("PLUGIN_DATABASE_URL", "file:./data/../data/one.db")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("name the same file"), "{err}");
    assert!(err.contains("undoes the segregation"), "{err}");
    assert!(!w.path().join("data/one.db").exists());
}

#[test]
fn data_dir_moves_both_files() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy", "--data-dir", "elsewhere"]);
    assert!(w.path().join("elsewhere/core.db").exists());
    assert!(w.path().join("elsewhere/plugins.db").exists());
    assert!(!w.core_db().exists());
}
