//! Start-up checks and operator input: corrupt or empty stores, configuration mistakes,
//! exit codes and messages, through the real binary.

mod common;

use common::Workdir;

#[test]
fn a_corrupt_core_store_is_refused_at_start_naming_doctor_and_restore() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    for n in 0..200 {
        w.create_user(
            &format!("user{n}@example.com"),
            "a long enough password",
            false,
        );
    }
    // Overwrite the middle of the file (b-tree pages, not the header).
    let core = w.core_db();
    common::raw(&core)
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let mut bytes = std::fs::read(&core).unwrap();
    let page = 4096;
    assert!(bytes.len() > 8 * page, "{} bytes", bytes.len());
    for b in &mut bytes[3 * page + 16..6 * page] {
        *b = 0xA5;
    }
    std::fs::write(&core, &bytes).unwrap();
    let err = w.sv_err(&["serve", "--port", "0"]);
    assert!(err.contains("refusing to serve"), "{err}");
    assert!(
        err.contains("sv doctor") && err.contains("sv restore"),
        "{err}"
    );
}

#[test]
fn an_empty_core_file_is_not_taken_for_a_new_install_without_init() {
    let w = Workdir::new();
    std::fs::create_dir_all(w.path().join("data")).unwrap();
    std::fs::write(w.core_db(), b"").unwrap();
    let err = w.sv_err(&["dev", "--port", "0"]);
    assert!(
        err.contains("is empty (0 bytes)") && err.contains("--init"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(w.core_db()).unwrap().len(),
        0,
        "untouched"
    );
    let server = w.start(&["dev", "--init"]);
    assert!(
        server
            .stdout
            .iter()
            .any(|l| l.contains("created the first administrator")),
        "{:?}",
        server.stdout
    );
}

#[test]
fn configuration_mistakes_are_refused_with_what_to_fix() {
    let w = Workdir::new();
    std::fs::write(w.path().join("sovereign.toml"), "prot = 9000\n").unwrap();
    let err = w.sv_err(&["config"]);
    assert!(
        err.contains("unknown key `prot`") && err.contains("did you mean `port`"),
        "{err}"
    );

    std::fs::write(
        w.path().join("sovereign.toml"),
        "[sync]\nmode = \"sometimes\"\n",
    )
    .unwrap();
    let err = w.sv_err(&["config"]);
    assert!(err.contains("[sync]") && err.contains("sometimes"), "{err}");
    std::fs::remove_file(w.path().join("sovereign.toml")).unwrap();

    // migrate:status --check fails while something is pending; plain status still exits 0.
    let out = w.sv(&["migrate:status", "--check"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    w.sv_ok(&["migrate:status"]);
    let deployed = w.sv_ok(&["migrate:deploy"]);
    assert_eq!(
        deployed.matches("0001_init.sql").count(),
        1,
        "each migration is printed once: {deployed}"
    );
    let out = w.sv(&["migrate:deploy"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("0001_init.sql"),
        "no log line repeats it"
    );
    w.sv_ok(&["migrate:status", "--check"]);
}

#[test]
fn a_file_that_is_not_a_database_is_named_once() {
    let w = Workdir::new();
    std::fs::create_dir_all(w.path().join("data")).unwrap();
    std::fs::write(w.core_db(), vec![b'#'; 10_000]).unwrap();
    let err = w.sv_err(&["migrate:status"]);
    assert_eq!(err.matches("file is not a database").count(), 1, "{err}");
    assert!(err.contains("core.db"), "{err}");
}

/// Runs `sv` as a user the file modes apply to: `nobody` when the tests run as root
/// (root ignores modes), else the current user.
fn sv_unprivileged(w: &Workdir, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = w.command(args);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.uid(65534).gid(65534);
    }
    cmd.output().unwrap()
}

fn give_to_unprivileged_user(dir: &std::path::Path) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    fn walk(p: &std::path::Path) {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        if p.is_dir() {
            for entry in std::fs::read_dir(p).unwrap() {
                walk(&entry.unwrap().path());
            }
        }
    }
    walk(dir);
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_commands_work_on_a_read_only_data_directory_and_writers_name_the_file() {
    let w = Workdir::new();
    w.sv_ok(&["migrate:deploy"]);
    w.sv_ok(&["sync:run"]);
    let out_dir = tempfile::tempdir().unwrap();
    set_mode(w.path(), 0o755);
    set_mode(out_dir.path(), 0o777);
    give_to_unprivileged_user(w.path());
    let data = w.path().join("data");
    set_mode(&data, 0o555);

    let backup = out_dir.path().join("b1");
    // The doctor reads everything and names what a start would trip over.
    let out = sv_unprivileged(&w, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("passes quick_check")
            && text.contains("ok   sync")
            && text.contains("/data is not writable by this user"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for args in [
        vec!["migrate:status"],
        vec!["sync:status"],
        vec!["backup", "--out", backup.to_str().unwrap()],
    ] {
        let out = sv_unprivileged(&w, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(backup.join("manifest.json").exists());
    let out = sv_unprivileged(&w, &["serve", "--port", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("data") && err.contains("fix the directory's owner or mode"),
        "{err}"
    );
    assert!(
        !err.contains("sv migrate:deploy"),
        "no misleading advice: {err}"
    );

    // A write-protected store, and the read-only -shm a start as another user leaves.
    set_mode(&data, 0o755);
    set_mode(&w.core_db(), 0o444);
    let out = sv_unprivileged(&w, &["serve", "--port", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core.db is not writable"), "{err}");
    set_mode(&w.core_db(), 0o600);
    let shm = w.path().join("data/core.db-shm");
    std::fs::write(&shm, vec![0u8; 32768]).unwrap();
    give_to_unprivileged_user(&shm);
    set_mode(&shm, 0o444);
    let out = sv_unprivileged(&w, &["serve", "--port", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core.db-shm is not writable"), "{err}");
    let out = sv_unprivileged(&w, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("core.db-shm is not writable"),
        "{text}"
    );
}
