//! Isolated mode on PostgreSQL: a plugin that asks for `"database": "isolated"` keeps its
//! data in a database of its own, `<plugin database>_<id>`, made and owned by the plugin
//! store's role (`svc_plugins`, which the role plan gives `CREATEDB` for this alone).
//!
//! Inside it, as in the plugin database: the plugin's schema owned by its role, the
//! store's bookkeeping in `public` (the event outbox with row-level security,
//! `sv_lastval`), `CONNECT` for the plugin's role only, no `TEMP`, nothing for `PUBLIC`.
//! The plugin's role loses `CONNECT` on the shared plugin database. A database cannot
//! read another's tables, so an isolated plugin reads no mirrored core data there.

use postgres::{Client, NoTls};

use crate::{PgError, StoreUrl, plugin_role_name};

fn statement(sql: &str) -> impl FnOnce(postgres::Error) -> PgError + '_ {
    move |source| PgError::Statement {
        statement: sql.to_owned(),
        source,
    }
}

/// The database isolated plugin `id` keeps its data in, on `store`'s server.
pub fn database_name(store: &StoreUrl, id: &str) -> Result<String, PgError> {
    let name = format!("{}_{id}", store.database);
    if name.len() > 63 {
        return Err(PgError::BadUrl {
            what: format!("plugin {id}"),
            message: format!(
                "its own database would be named {name:?}, longer than PostgreSQL's 63 \
                 bytes: give PLUGIN_DATABASE_URL a shorter database name"
            ),
        });
    }
    Ok(name)
}

/// Connects as the store's owner to `database` of its server.
pub fn connect_owner_to(store: &StoreUrl, database: &str) -> Result<Client, PgError> {
    let mut config = store.clone();
    config.database = database.to_owned();
    Client::connect(&config.login_as(&store.role, &store.password), NoTls).map_err(|source| {
        PgError::Connect {
            target: format!("database {database} on {} as {}", store.server, store.role),
            source,
        }
    })
}

/// Whether `database` exists (asked on `client`'s server).
fn exists(client: &mut Client, database: &str) -> Result<bool, PgError> {
    let query = "SELECT count(*) > 0 FROM pg_database WHERE datname = $1";
    Ok(client
        .query_one(query, &[&database])
        .map_err(statement(query))?
        .get(0))
}

/// Makes (or completes) plugin `id`'s own database, after its role was created in the
/// plugin database (`owner` is connected there as the store's owner). Returns whether
/// the database was made now. Idempotent.
pub fn provision(owner: &mut Client, store: &StoreUrl, id: &str) -> Result<bool, PgError> {
    let database = database_name(store, id)?;
    let role = plugin_role_name(id);
    let made = !exists(owner, &database)?;
    if made {
        let create = format!("CREATE DATABASE \"{database}\"");
        owner.batch_execute(&create).map_err(statement(&create))?;
    }
    let grants = format!(
        "REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC;
         GRANT CONNECT ON DATABASE \"{database}\" TO {role};
         REVOKE CONNECT ON DATABASE \"{shared}\" FROM {role};",
        shared = store.database
    );
    owner.batch_execute(&grants).map_err(statement(&grants))?;
    let mut own = connect_owner_to(store, &database)?;
    // A new database's `public` belongs to `pg_database_owner`, whose rights the store's
    // role (NOINHERIT) does not use: it becomes the store role's own, empty and closed.
    let public_owner =
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'public'";
    let owner_of_public: Option<String> = own
        .query_opt(public_owner, &[])
        .map_err(statement(public_owner))?
        .map(|row| row.get(0));
    if owner_of_public.as_deref() != Some(store.role.as_str()) {
        let replace = "SET ROLE pg_database_owner;
                       DROP SCHEMA IF EXISTS public;
                       RESET ROLE;
                       CREATE SCHEMA public;";
        own.batch_execute(replace).map_err(statement(replace))?;
    }
    own.batch_execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        .map_err(statement("REVOKE ALL ON SCHEMA public FROM PUBLIC"))?;
    crate::migrate::deploy(&mut own, &crate::migrate::plugin_store_system())?;
    let schema = format!(
        "CREATE SCHEMA IF NOT EXISTS {id} AUTHORIZATION {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT, INSERT, DELETE, UPDATE (delivered_at_ms) ON public._sv_event_outbox TO {role};
         GRANT EXECUTE ON FUNCTION public.sv_lastval() TO {role};
         SET ROLE {role};
         REVOKE ALL ON SCHEMA {id} FROM PUBLIC;
         ALTER ROLE {role} IN DATABASE \"{database}\" SET search_path = {id};
         RESET ROLE;"
    );
    own.batch_execute(&schema).map_err(statement(&schema))?;
    Ok(made)
}

/// Drops plugin `id`'s own database (closing its sessions first); whether there was one.
pub fn drop_database(owner: &mut Client, store: &StoreUrl, id: &str) -> Result<bool, PgError> {
    let database = database_name(store, id)?;
    if !exists(owner, &database)? {
        return Ok(false);
    }
    let drop = format!("DROP DATABASE \"{database}\" WITH (FORCE)");
    owner.batch_execute(&drop).map_err(statement(&drop))?;
    Ok(true)
}

/// The isolated plugin databases on the store's server, as `(plugin id, database)`: the
/// databases `<plugin database>_<id>` with a schema `<id>` owned by `svp_<id>` (read
/// from each, as the store's owner).
pub fn databases(owner: &mut Client, store: &StoreUrl) -> Result<Vec<(String, String)>, PgError> {
    let query = "SELECT datname::text FROM pg_database
                 WHERE starts_with(datname, $1) AND pg_get_userbyid(datdba) = $2
                 ORDER BY 1";
    let prefix = format!("{}_", store.database);
    let names: Vec<String> = owner
        .query(query, &[&prefix, &store.role])
        .map_err(statement(query))?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    let mut out = Vec::new();
    for database in names {
        let id = database[prefix.len()..].to_owned();
        // Only names a plugin id could have made (the id goes into SQL as a name).
        if sovereign_db_plugins::check_plugin_id(&id).is_err() {
            continue;
        }
        let mut client = connect_owner_to(store, &database)?;
        let check = "SELECT count(*) > 0 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
                     WHERE n.nspname = $1 AND r.rolname = $2";
        let owned: bool = client
            .query_one(check, &[&id, &plugin_role_name(&id)])
            .map_err(statement(check))?
            .get(0);
        if owned {
            out.push((id, database));
        }
    }
    Ok(out)
}

/// Replaces schema `id` by an empty one owned by the plugin's role, in a database the
/// store's owner owns (it drops the schema as the plugin's role, which owns it).
pub fn reset_schema_sql(id: &str) -> String {
    let role = plugin_role_name(id);
    format!(
        "SET ROLE {role};
         DROP SCHEMA IF EXISTS {id} CASCADE;
         RESET ROLE;
         CREATE SCHEMA {id} AUTHORIZATION {role};
         SET ROLE {role};
         REVOKE ALL ON SCHEMA {id} FROM PUBLIC;
         RESET ROLE;"
    )
}
