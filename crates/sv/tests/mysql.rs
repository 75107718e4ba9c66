//! `sv mysql:roles` on a real MariaDB from `scripts/mariadb`: the printed script, run by a
//! DBA with the `mariadb` client, and `--apply` make the same databases, accounts and
//! provisioning procedures (applying again changes nothing); a bad URL is refused with
//! what to fix. The fence these make is tested in `sovereign-mysql/tests/fence.rs`.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use common::Workdir;
use mysql::prelude::Queryable;
use sovereign_mysql::Server;

#[test]
fn sv_prints_and_applies_the_mysql_accounts_and_procedures() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    let w = Workdir::new();
    let urls = [
        "--database-url",
        core_url.as_str(),
        "--plugin-database-url",
        plugins_url.as_str(),
    ];

    let mut print = urls.to_vec();
    print.extend(["mysql:roles", "--print"]);
    let printed = w.sv_ok(&print);
    assert!(
        printed.contains("CREATE DATABASE IF NOT EXISTS `sv_core`"),
        "{printed}"
    );
    assert!(
        printed.contains("sv_admin.create_plugin_account"),
        "{printed}"
    );
    // The DBA's way: the printed script through the `mariadb` client.
    let admin = sovereign_mysql::StoreUrl::parse("admin", server.admin_url()).unwrap();
    let (host, port) = admin.server.split_once(':').unwrap();
    let mut client = std::process::Command::new("mariadb")
        .args([
            "--protocol=tcp",
            "-h",
            host,
            "-P",
            port,
            "-u",
            &admin.account,
            &format!("-p{}", admin.password),
        ])
        .stdin(Stdio::piped())
        .output_with(printed.as_bytes());
    assert!(
        client.status.success(),
        "{}",
        String::from_utf8_lossy(&client.stderr)
    );
    client.stdout.clear();

    let mut apply = urls.to_vec();
    apply.extend(["mysql:roles", "--apply", "--admin-url", server.admin_url()]);
    let applied = w.sv_ok(&apply);
    assert!(
        applied.contains("the core and plugin databases"),
        "{applied}"
    );

    let mut store = sovereign_mysql::roles::connect(&plugins_url).unwrap();
    store
        .exec_drop(
            "CALL sv_admin.create_plugin_account(?, ?, ?)",
            ("tasks", "taskstaskstasks12", 10),
        )
        .unwrap();
    let mut tasks = sovereign_mysql::roles::connect(&server.url(
        "svp_tasks",
        "taskstaskstasks12",
        "sv_plugins_tasks",
    ))
    .unwrap();
    tasks
        .query_drop("CREATE TABLE tasks__lists (id BIGINT PRIMARY KEY)")
        .unwrap();

    let refused = w.sv_err(&[
        "--plugin-database-url",
        "mysql://svc_plugins@127.0.0.1/sv_plugins",
        "mysql:roles",
        "--print",
    ]);
    assert!(refused.contains("it has no password"), "{refused}");
}

/// Runs a command with `input` on its standard input.
trait OutputWith {
    fn output_with(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWith for std::process::Command {
    fn output_with(&mut self, input: &[u8]) -> std::process::Output {
        let mut child = self
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
