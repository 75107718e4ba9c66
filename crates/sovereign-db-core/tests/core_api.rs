//! The core store's API, one test body per behaviour run on every backend: `core.db`
//! (SQLite), a core database on a real PostgreSQL server (`scripts/postgres`) and one on
//! a real MariaDB server (`scripts/mariadb`), each owned by `svc_core` as `sv
//! postgres:roles` / `sv mysql:roles` create it.

use std::path::PathBuf;

use sovereign_db::StoreTarget;
use sovereign_db::{MysqlUrl, PostgresUrl};
use sovereign_db_core::events::{EventFilter, IncomingEvent, Ingested};
use sovereign_db_core::plugins::{LoadState, PluginRecord};
use sovereign_db_core::users::{NewUser, Role, UserPatch};
use sovereign_db_core::{
    CoreAccess, CoreConn, CoreError, MyCore, PgCore, audit, events, plugins, sessions, settings,
    users,
};
use sovereign_postgres::{Cluster, RolePlan};

/// One core store of each backend, migrated and empty.
struct Stores {
    _dir: tempfile::TempDir,
    _cluster: Cluster,
    _mariadb: sovereign_mysql::Server,
    sqlite: CoreConn,
    postgres: CoreConn,
    postgres_url: PostgresUrl,
    mysql: CoreConn,
    mysql_url: MysqlUrl,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sovereign_db_core::open(&dir.path().join("core.db")).unwrap();
    sovereign_db_core::migrations().deploy(&sqlite).unwrap();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let cluster = Cluster::start(&script).unwrap();
    let core_url = cluster.url("svc_core", "core-secret", "sv_core");
    let plugins_url = cluster.url("svc_plugins", "plugins-secret", "sv_plugins");
    RolePlan::new(Some(&core_url), &plugins_url, vec![])
        .unwrap()
        .apply(cluster.admin_url())
        .unwrap();
    let StoreTarget::Postgres(postgres_url) =
        StoreTarget::parse("DATABASE_URL", &core_url).unwrap()
    else {
        panic!("{core_url} is a PostgreSQL URL");
    };
    // Before its migrations the database is not a core store.
    assert!(matches!(
        PgCore::connect(&postgres_url),
        Err(CoreError::NotCoreDatabase { .. })
    ));
    let mut owner = PgCore::connect_unchecked(&postgres_url).unwrap();
    let applied = sovereign_postgres::migrate::deploy(
        owner.client_mut(),
        &sovereign_db_core::postgres_migrations(),
    )
    .unwrap();
    assert_eq!(
        applied.len(),
        sovereign_db_core::migrations().migrations().len()
    );
    let postgres = CoreConn::Postgres(Box::new(PgCore::connect(&postgres_url).unwrap()));
    let (mariadb, mysql_url) = mysql_core();
    let mysql = CoreConn::Mysql(Box::new(MyCore::connect(&mysql_url).unwrap()));
    Stores {
        _dir: dir,
        _cluster: cluster,
        _mariadb: mariadb,
        sqlite: CoreConn::Sqlite(sqlite),
        postgres,
        postgres_url,
        mysql,
        mysql_url,
    }
}

/// A MariaDB with the role plan applied and the core's MySQL migrations deployed.
fn mysql_core() -> (sovereign_mysql::Server, MysqlUrl) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb");
    let server = sovereign_mysql::Server::start(&script).unwrap();
    let core_url = server.url("svc_core", "core-secret-1234", "sv_core");
    let plugins_url = server.url("svc_plugins", "plugins-secret-12", "sv_plugins");
    sovereign_mysql::RolePlan::new(Some(&core_url), &plugins_url)
        .unwrap()
        .apply(server.admin_url())
        .unwrap();
    let StoreTarget::Mysql(url) = StoreTarget::parse("DATABASE_URL", &core_url).unwrap() else {
        panic!("{core_url} is a MySQL URL");
    };
    assert!(matches!(
        MyCore::connect(&url),
        Err(CoreError::NotCoreDatabase { .. })
    ));
    let mut owner = MyCore::connect_unchecked(&url).unwrap();
    let set = sovereign_db_core::mysql_migrations();
    // Every core migration in MySQL's dialect, then the kernels' registry (MySQL only).
    let names = |set: &sovereign_db::migrate::MigrationSet| -> Vec<String> {
        set.migrations().iter().map(|m| m.name.clone()).collect()
    };
    let mut expected = names(&sovereign_db_core::migrations());
    expected.push("kernels".into());
    assert_eq!(names(&set), expected);
    assert_eq!(
        sovereign_mysql::migrate::plan(owner.conn_mut(), &set)
            .unwrap()
            .len(),
        expected.len()
    );
    let applied = sovereign_mysql::migrate::deploy(owner.conn_mut(), &set).unwrap();
    assert_eq!(applied.len(), expected.len());
    assert!(
        sovereign_mysql::migrate::deploy(owner.conn_mut(), &set)
            .unwrap()
            .is_empty(),
        "a second deploy has nothing to do"
    );
    (server, url)
}

/// Runs `body` on each backend, naming the backend in a failure.
fn on_every_backend(body: impl Fn(&str, &CoreConn)) {
    let stores = stores();
    body("sqlite", &stores.sqlite);
    body("postgres", &stores.postgres);
    body("mysql", &stores.mysql);
    // The servers' stores are what a fresh connection sees too (nothing left uncommitted).
    let fresh = CoreConn::Postgres(Box::new(PgCore::connect(&stores.postgres_url).unwrap()));
    assert_eq!(
        users::count(&fresh).unwrap(),
        users::count(&stores.postgres).unwrap()
    );
    let fresh = CoreConn::Mysql(Box::new(MyCore::connect(&stores.mysql_url).unwrap()));
    assert_eq!(
        users::count(&fresh).unwrap(),
        users::count(&stores.mysql).unwrap()
    );
}

fn new_user(email: &str, role: Role) -> NewUser {
    NewUser {
        email: email.into(),
        password: "a long password".into(),
        display_name: "Ada".into(),
        avatar_url: None,
        role,
        tenant_id: 1,
    }
}

#[test]
fn users_sessions_and_the_last_admin_behave_the_same_on_every_backend() {
    on_every_backend(|backend, core| {
        let admin = users::create(core, &new_user("ada@example.com", Role::Admin)).unwrap();
        assert_eq!(admin.role, Role::Admin, "{backend}");
        assert!(
            admin.active && admin.created_at.ends_with('Z'),
            "{backend}: {admin:?}"
        );
        let err = users::create(core, &new_user("ADA@example.com", Role::Member)).unwrap_err();
        assert!(matches!(err, CoreError::EmailTaken(_)), "{backend}: {err}");
        assert!(
            users::authenticate(core, "Ada@Example.com", "a long password")
                .unwrap()
                .is_some(),
            "{backend}: e-mail addresses match without regard to case"
        );
        assert!(
            users::authenticate(core, "ada@example.com", "wrong")
                .unwrap()
                .is_none(),
            "{backend}"
        );
        assert!(
            users::authenticate(core, "nobody@example.com", "x")
                .unwrap()
                .is_none(),
            "{backend}"
        );

        let token = sessions::create(core, admin.id, 3600).unwrap();
        assert_eq!(
            sessions::user_for_token(core, &token)
                .unwrap()
                .map(|u| u.id),
            Some(admin.id),
            "{backend}"
        );
        let expired = sessions::create(core, admin.id, -1).unwrap();
        assert!(
            sessions::user_for_token(core, &expired).unwrap().is_none(),
            "{backend}"
        );

        // The last admin can be neither demoted nor deleted, and the refusal changes nothing.
        let demote = UserPatch {
            role: Some(Role::Member),
            display_name: Some("Changed".into()),
            ..UserPatch::default()
        };
        assert!(
            matches!(
                users::update(core, admin.id, &demote),
                Err(CoreError::LastAdmin)
            ),
            "{backend}"
        );
        assert!(
            matches!(users::delete(core, admin.id), Err(CoreError::LastAdmin)),
            "{backend}"
        );
        let kept = users::get(core, admin.id).unwrap().unwrap();
        assert_eq!(
            (kept.role, kept.display_name.as_str()),
            (Role::Admin, "Ada"),
            "{backend}"
        );

        // A new password ends the user's sessions.
        let member = users::create(core, &new_user("bob@example.com", Role::Member)).unwrap();
        let bob = sessions::create(core, member.id, 3600).unwrap();
        let patch = UserPatch {
            password: Some("another long password".into()),
            avatar_url: Some(Some("https://example.com/b.png".into())),
            ..UserPatch::default()
        };
        let updated = users::update(core, member.id, &patch).unwrap().unwrap();
        assert_eq!(
            updated.avatar_url.as_deref(),
            Some("https://example.com/b.png"),
            "{backend}"
        );
        assert!(
            sessions::user_for_token(core, &bob).unwrap().is_none(),
            "{backend}"
        );
        let taken = UserPatch {
            email: Some("ADA@example.com".into()),
            ..UserPatch::default()
        };
        assert!(
            matches!(
                users::update(core, member.id, &taken),
                Err(CoreError::EmailTaken(_))
            ),
            "{backend}"
        );
        let deactivate = UserPatch {
            active: Some(false),
            ..UserPatch::default()
        };
        assert!(
            !users::update(core, member.id, &deactivate)
                .unwrap()
                .unwrap()
                .active
        );
        assert!(
            users::authenticate(core, "bob@example.com", "another long password")
                .unwrap()
                .is_none(),
            "{backend}: an inactive user cannot log in"
        );
        assert_eq!(users::list(core).unwrap().len(), 2, "{backend}");
        assert!(users::delete(core, member.id).unwrap(), "{backend}");
        assert!(!users::delete(core, member.id).unwrap(), "{backend}");
        assert!(sessions::delete(core, &token).unwrap(), "{backend}");
        assert!(!sessions::delete(core, &token).unwrap(), "{backend}");
    });
}

#[test]
fn settings_audit_and_the_registry_behave_the_same_on_every_backend() {
    on_every_backend(|backend, core| {
        let value = serde_json::json!({"b": [1, 2.5, "x"], "a": null});
        let stored = settings::put(core, "site.name", &value, None).unwrap();
        assert_eq!(stored.value, value, "{backend}");
        settings::put(core, "site.name", &serde_json::json!("Acme"), None).unwrap();
        settings::put(core, "a.first", &serde_json::json!(true), None).unwrap();
        let keys: Vec<String> = settings::list(core)
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(keys, ["a.first", "site.name"], "{backend}");
        assert_eq!(
            settings::get(core, "site.name").unwrap().unwrap().value,
            serde_json::json!("Acme"),
            "{backend}"
        );
        assert!(settings::delete(core, "a.first").unwrap(), "{backend}");
        assert!(
            settings::get(core, "a.first").unwrap().is_none(),
            "{backend}"
        );

        for i in 0..5 {
            audit::record(
                core,
                None,
                "setting.put",
                Some(if i % 2 == 0 { "setting:x" } else { "setting:y" }),
                Some(&serde_json::json!({ "i": i })),
            )
            .unwrap();
        }
        let page = audit::page(core, Some("setting:x"), None, 2).unwrap();
        assert_eq!(page.len(), 2, "{backend}");
        assert_eq!(
            page[0].detail,
            Some(serde_json::json!({"i": 4})),
            "{backend}"
        );
        let older = audit::page(core, None, Some(page[1].id), 10).unwrap();
        assert_eq!(
            older.len(),
            2,
            "{backend}: entries older than the page's last"
        );

        let manifest: sovereign_db_plugins::Manifest = serde_json::from_value(serde_json::json!({
            "id": "tasks", "name": "Tasks", "version": "1.2.0", "emits": ["task.completed"]
        }))
        .unwrap();
        let record = PluginRecord {
            id: "tasks".into(),
            enabled: true,
            manifest,
            grants: vec![
                ("users".into(), "display_name".into()),
                ("users".into(), "id".into()),
            ],
            load: LoadState::NotReported,
        };
        plugins::register(core, &record).unwrap();
        plugins::set_store_login(core, "tasks", "pw").unwrap();
        let got = plugins::get(core, "tasks").unwrap().unwrap();
        assert_eq!(got.grants, record.grants, "{backend}");
        assert_eq!(got.manifest.version, "1.2.0", "{backend}");
        assert_eq!(got.load, LoadState::NotReported, "{backend}");
        plugins::record_load(core, "tasks", Some("no component")).unwrap();
        assert!(
            matches!(
                plugins::get(core, "tasks").unwrap().unwrap().load,
                LoadState::Failed { .. }
            ),
            "{backend}"
        );
        assert!(
            plugins::set_enabled(core, "tasks", false).unwrap(),
            "{backend}"
        );
        assert_eq!(
            plugins::routing_info(core, "tasks")
                .unwrap()
                .map(|(on, m)| (on, m.id)),
            Some((false, "tasks".to_owned())),
            "{backend}"
        );
        assert_eq!(
            plugins::store_login(core, "tasks").unwrap().as_deref(),
            Some("pw")
        );
        assert_eq!(plugins::list(core).unwrap().len(), 1, "{backend}");
        assert!(plugins::unregister(core, "tasks").unwrap(), "{backend}");
        assert!(
            plugins::store_login(core, "tasks").unwrap().is_none(),
            "{backend}: the login goes with it"
        );
        assert!(plugins::get(core, "tasks").unwrap().is_none(), "{backend}");
    });
}

#[test]
fn events_are_stored_once_and_a_failing_handler_is_recorded_on_every_backend() {
    on_every_backend(|backend, core| {
        let user = users::create(core, &new_user("ada@example.com", Role::Admin)).unwrap();
        let declared = vec!["task.completed".to_owned()];
        let event = |id: &str| IncomingEvent {
            event_id: id.into(),
            plugin: "tasks".into(),
            topic: "task.completed".into(),
            payload_json: r#"{"task_id": 1}"#.into(),
            emitted_at_ms: 1,
        };
        let to_feed = |conn: &dyn CoreAccess, e: &IncomingEvent| {
            events::add_activity(conn, user.id, "task", "done", e).map_err(|e| e.to_string())
        };
        assert_eq!(
            events::ingest(core, &event("e1"), &declared, &to_feed).unwrap(),
            Ingested::Stored
        );
        assert_eq!(
            events::ingest(core, &event("e1"), &declared, &to_feed).unwrap(),
            Ingested::Duplicate,
            "{backend}"
        );
        // A handler that wrote and then failed: its writes are undone, the event is kept
        // with the error.
        let failing = |conn: &dyn CoreAccess, e: &IncomingEvent| {
            events::add_activity(conn, user.id, "task", "half", e).map_err(|e| e.to_string())?;
            Err("the handler failed".to_owned())
        };
        assert_eq!(
            events::ingest(core, &event("e2"), &declared, &failing).unwrap(),
            Ingested::Stored
        );
        let undeclared = IncomingEvent {
            topic: "user.deleted".into(),
            ..event("e3")
        };
        assert!(matches!(
            events::ingest(core, &undeclared, &declared, &to_feed).unwrap(),
            Ingested::Rejected(_)
        ));
        let feed = events::activity(core, user.id, 10).unwrap();
        let summaries: Vec<&str> = feed.iter().map(|a| a.summary.as_str()).collect();
        assert_eq!(
            summaries,
            ["done"],
            "{backend}: the failed handler's write is undone"
        );
        let stored = events::page(core, &EventFilter::default(), 10).unwrap();
        assert_eq!(stored.len(), 2, "{backend}");
        assert_eq!(stored[0].event_id, "e2", "{backend}: newest first");
        assert_eq!(
            stored[0].error.as_deref(),
            Some("the handler failed"),
            "{backend}"
        );
        assert_eq!(
            stored[1].payload,
            serde_json::json!({"task_id": 1}),
            "{backend}"
        );
        let older = events::page(
            core,
            &EventFilter {
                before: Some(stored[0].seq),
                ..EventFilter::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(older.len(), 1, "{backend}");
        assert_eq!(
            events::prune(core, 1).unwrap(),
            0,
            "{backend}: handled today, kept"
        );
        let backlog = sovereign_db_core::health::backlog(core).unwrap();
        assert_eq!(backlog.unhandled_events, 0, "{backend}");
        sovereign_db_core::health::ping(core).unwrap();
    });
}

#[test]
fn a_panic_inside_a_postgres_transaction_leaves_nothing_behind() {
    let stores = stores();
    let CoreConn::Postgres(pg) = &stores.postgres else {
        unreachable!("the PostgreSQL store")
    };
    let changes = pg.total_changes();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = pg.transaction(|| -> Result<(), CoreError> {
            users::create(&**pg, &new_user("ada@example.com", Role::Admin))?;
            panic!("a bug in the middle of a transaction");
        });
    }));
    assert!(unwound.is_err());
    // Rolled back, and the connection takes new work (no transaction left open).
    assert_eq!(users::count(&**pg).unwrap(), 0);
    assert_eq!(
        pg.total_changes(),
        changes,
        "rolled-back rows are not counted as changes (no commit hook runs for them)"
    );
    // A savepoint rolled back inside a committed transaction takes off its rows only.
    let bob = pg
        .transaction(|| -> Result<i64, CoreError> {
            let bob = users::create(&**pg, &new_user("bob@example.com", Role::Member))?;
            let inner = pg.transaction(|| -> Result<(), CoreError> {
                users::create(&**pg, &new_user("eve@example.com", Role::Member))?;
                Err(CoreError::NotOnSqlite {
                    operation: "a deliberate failure",
                })
            });
            assert!(inner.is_err());
            Ok(bob.id)
        })
        .unwrap();
    assert!(pg.total_changes() > changes, "the committed row counts");
    assert_eq!(users::count(&**pg).unwrap(), 1);
    assert!(users::get(&**pg, bob).unwrap().is_some());
    users::create(&**pg, &new_user("ada@example.com", Role::Admin)).unwrap();
    let fresh = PgCore::connect(&stores.postgres_url).unwrap();
    assert_eq!(
        users::count(&fresh).unwrap(),
        2,
        "committed, not left in a transaction"
    );
}

#[test]
fn a_panic_inside_a_mysql_transaction_leaves_nothing_behind() {
    let (_server, url) = mysql_core();
    let my = MyCore::connect(&url).unwrap();
    let changes = my.total_changes();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = my.transaction(|| -> Result<(), CoreError> {
            users::create(&my, &new_user("ada@example.com", Role::Admin))?;
            panic!("a bug in the middle of a transaction");
        });
    }));
    assert!(unwound.is_err());
    assert_eq!(users::count(&my).unwrap(), 0);
    assert_eq!(my.total_changes(), changes);
    // A savepoint rolled back inside a committed transaction takes off its rows only.
    my.transaction(|| -> Result<(), CoreError> {
        users::create(&my, &new_user("bob@example.com", Role::Member))?;
        let inner = my.transaction(|| -> Result<(), CoreError> {
            users::create(&my, &new_user("eve@example.com", Role::Member))?;
            Err(CoreError::NotOnSqlite {
                operation: "a deliberate failure",
            })
        });
        assert!(inner.is_err());
        Ok(())
    })
    .unwrap();
    assert!(my.total_changes() > changes, "the committed row counts");
    let fresh = MyCore::connect(&url).unwrap();
    assert_eq!(
        users::count(&fresh).unwrap(),
        1,
        "committed, not left in a transaction"
    );
}
