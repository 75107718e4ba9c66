//! The application layer called directly, as the HTTP API would call it: real SQLite
//! files in a temporary directory, no `sv` process.

use std::path::Path;

use sovereign_config::{Config, Overrides};
use sovereign_db_core::CoreError;
use sovereign_db_plugins::{Outcome, SqlValue};
use sovereign_platform::doctor::{self, Level};
use sovereign_platform::migrations::{self, Scope};
use sovereign_platform::plugins::{self, Approval};
use sovereign_platform::users::{self, UserRequest};
use sovereign_platform::{App, PlatformError, ops, sync};

fn app(dir: &Path) -> App {
    let config = Config::load(dir, &Overrides::default(), &|_| None).unwrap();
    App::new(config).unwrap()
}

fn user(email: &str) -> UserRequest {
    UserRequest {
        email: email.into(),
        display_name: None,
        password: Some("a long password".into()),
        admin: false,
    }
}

#[test]
fn a_new_install_migrates_creates_users_and_the_doctor_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    // Before anything exists, operator commands say what to run.
    assert!(matches!(
        app.open_migrated_core(),
        Err(PlatformError::CoreMissing { .. })
    ));
    let applied = migrations::deploy_all(&app).unwrap();
    assert!(
        applied.iter().any(|a| a.starts_with("core: ")),
        "{applied:?}"
    );
    assert!(migrations::not_applied(&app).unwrap().is_empty());

    let created = users::create(&app, &user("ada@example.com"), "test").unwrap();
    assert_eq!(created.user.display_name, "ada");
    assert!(created.generated_password.is_none());
    let taken = users::create(&app, &user("ADA@example.com"), "test").unwrap_err();
    assert!(
        matches!(taken, PlatformError::Core(CoreError::EmailTaken(_))),
        "{taken:?}"
    );
    assert_eq!(users::list(&app).unwrap().len(), 1);

    let report = doctor::report(&app).unwrap();
    assert_ne!(report.worst(), Level::Fail, "{report:?}");
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.check == "migrations" && f.level == Level::Ok),
        "{report:?}"
    );
    // The mirror is not built yet: a warning that says what to run.
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.check == "sync" && f.detail.contains("sv sync:run")),
        "{report:?}"
    );

    let run = sync::run(&app, false, &|_, _| {}).unwrap();
    assert!(run.rebuild.is_some(), "a fresh mirror is built in full");
    let status = sync::status(&app).unwrap();
    assert!(status.slices.iter().all(|s| s.built && s.backlog_rows == 0));
}

#[test]
fn a_bare_package_runs_behind_its_fence_and_reserved_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    migrations::deploy_all(&app).unwrap();
    let package = app.package_dir("memo");
    std::fs::create_dir_all(package.join("migrations")).unwrap();
    std::fs::write(
        package.join("migrations/0001_items.sql"),
        "CREATE TABLE memo__items (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap();
    let targets = migrations::targets(&app, Scope::Plugins, Some("memo")).unwrap();
    let mut applied = Vec::new();
    migrations::deploy(&app, &targets, Scope::Plugins, &mut |a| {
        applied.extend(a.files.clone())
    })
    .unwrap();
    assert_eq!(applied, ["0001_items.sql"]);

    let mut db = plugins::open_fenced(&app, "memo").unwrap();
    db.execute_alone("INSERT INTO memo__items (body) VALUES ('hi')", &[])
        .unwrap();
    let Outcome::Rows { rows, .. } = db
        .execute_alone("SELECT body FROM memo__items", &[])
        .unwrap()
    else {
        panic!("a SELECT returns rows")
    };
    assert_eq!(rows, [[SqlValue::Text("hi".into())]]);
    assert!(db.execute_alone("SELECT * FROM users", &[]).is_err());

    let reserved = plugins::open_fenced(&app, "core").err().expect("refused");
    assert!(
        reserved.to_string().contains("cannot be a plugin id"),
        "{reserved}"
    );
}

#[test]
fn install_refusals_are_typed_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    migrations::deploy_all(&app).unwrap();
    let package = dir.path().join("incoming/demo");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(
        package.join("plugin.json"),
        r#"{"id": "demo", "name": "Demo", "version": "1.0.0"}"#,
    )
    .unwrap();
    let missing = plugins::install(&app, &package, Approval::Given).unwrap_err();
    assert!(
        matches!(missing, PlatformError::MissingMigrations { .. }),
        "{missing:?}"
    );
    std::fs::create_dir_all(package.join("migrations")).unwrap();
    let no_component = plugins::install(&app, &package, Approval::Given).unwrap_err();
    assert!(
        matches!(no_component, PlatformError::PackageRejected(_)),
        "{no_component:?}"
    );
    assert!(plugins::list(&app).unwrap().is_empty());
    assert!(!app.package_dir("demo").exists());
    assert!(matches!(
        plugins::remove(&app, "demo", true),
        Err(PlatformError::NotRegistered { .. })
    ));
    assert!(matches!(
        plugins::restart_host(&app),
        Err(PlatformError::NotRunning { .. })
    ));
}

#[test]
fn a_backup_verifies_and_restores_through_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    migrations::deploy_all(&app).unwrap();
    users::create(&app, &user("ada@example.com"), "test").unwrap();
    let backup = ops::backup(&app, &ops::BackupRequest::default(), &|_, _| {}).unwrap();
    ops::verify(&backup.dir).unwrap();
    users::create(&app, &user("bob@example.com"), "test").unwrap();
    let restored = ops::restore(&app, &backup.dir, false, &mut |_| {}).unwrap();
    assert!(restored.stopped_pid.is_none());
    assert!(!restored.report.restored.is_empty());
    let emails: Vec<String> = users::list(&app)
        .unwrap()
        .into_iter()
        .map(|u| u.email)
        .collect();
    assert_eq!(emails, ["ada@example.com"]);
}
