//! The authorizer policy that fences a plugin's SQL to its own namespace.
//!
//! It is an allow-list: every action code SQLite may report is listed, and anything it
//! does not know (including codes a newer SQLite might add) is denied.

use std::collections::{HashMap, HashSet};

use sovereign_db::rusqlite::hooks::{AuthAction, AuthContext};

use crate::mirror::MIRROR_PREFIX;

/// The schema name under which an isolated plugin sees the (read-only) mirror.
pub const MIRROR_SCHEMA: &str = "mirror";

/// Read-only pragmas a plugin may run, each only with one of its own tables as argument.
const TABLE_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
];

/// Table-valued functions that only look at their arguments.
const PURE_TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree"];

/// Functions a plugin may never call.
const FORBIDDEN_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "sqlite_dbpage"];

/// What the authorizer decided, with the action and object for the denial message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse; the statement fails with SQLITE_AUTH.
    Deny {
        /// What was attempted, e.g. `read`, `attach`, `pragma`.
        action: String,
        /// What it was attempted on, in terms the plugin itself used.
        object: String,
    },
}

fn deny(action: &str, object: impl Into<String>) -> Decision {
    Decision::Deny {
        action: action.to_owned(),
        object: object.into(),
    }
}

/// One plugin's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    prefix: String,
    /// Granted columns by lower-case mirror table name.
    grants: HashMap<String, HashSet<String>>,
    /// Where mirror tables are: `main` (shared store) or `mirror` (isolated file).
    mirror_schema: &'static str,
}

impl Policy {
    /// The policy of plugin `id` with `grants` as `(slice, column)` pairs.
    pub fn new(id: &str, grants: &[(String, String)], isolated: bool) -> Policy {
        let mut map: HashMap<String, HashSet<String>> = HashMap::new();
        for (slice, column) in grants {
            map.entry(format!("{MIRROR_PREFIX}{slice}").to_ascii_lowercase())
                .or_default()
                .insert(column.to_ascii_lowercase());
        }
        Policy {
            prefix: format!("{id}__"),
            grants: map,
            mirror_schema: if isolated { MIRROR_SCHEMA } else { "main" },
        }
    }

    /// Whether `name` is in the plugin's namespace (case-insensitive, like SQLite names).
    pub fn in_namespace(&self, name: &str) -> bool {
        name.len() > self.prefix.len()
            && name.is_char_boundary(self.prefix.len())
            && name[..self.prefix.len()].eq_ignore_ascii_case(&self.prefix)
    }

    fn owns(&self, db: Option<&str>, name: &str) -> bool {
        matches!(db, None | Some("main")) && self.in_namespace(name)
    }

    fn granted_table(&self, db: Option<&str>, table: &str) -> Option<&HashSet<String>> {
        if db.unwrap_or("main") != self.mirror_schema {
            return None;
        }
        self.grants.get(&table.to_ascii_lowercase())
    }

    /// Whether the name is a mirror table the plugin has some grant on (for error mapping).
    pub fn is_granted_mirror(&self, name: &str) -> bool {
        self.grants.contains_key(&name.to_ascii_lowercase())
    }

    fn is_schema_table(db: Option<&str>, table: &str) -> bool {
        matches!(db, None | Some("main"))
            && (table.eq_ignore_ascii_case("sqlite_master")
                || table.eq_ignore_ascii_case("sqlite_schema"))
    }

    /// SQLite's own bookkeeping that DDL on a plugin's tables maintains (renaming an
    /// AUTOINCREMENT table renames its `sqlite_sequence` row).
    fn is_ddl_bookkeeping(ddl: bool, db: Option<&str>, table: &str) -> bool {
        ddl && (Self::is_schema_table(db, table)
            || (matches!(db, None | Some("main")) && table.eq_ignore_ascii_case("sqlite_sequence")))
    }

    /// Decides one authorizer callback. `ddl` is set while SQLite compiles a plugin's
    /// CREATE/DROP/ALTER, whose internal bookkeeping reads `sqlite_schema`; such a
    /// statement's own text was checked to name nothing outside the plugin's reach.
    pub fn decide(&self, ctx: &AuthContext<'_>, ddl: bool) -> Decision {
        // For ALTER TABLE the schema is the action's own argument; the context's fourth
        // argument is the column of `DROP COLUMN`, not a schema.
        let db = match ctx.action {
            AuthAction::AlterTable { database_name, .. } => Some(database_name),
            _ => ctx.database_name,
        };
        if db == Some("temp") {
            // ALTER TABLE ... RENAME also fixes up the (always empty) temp schema.
            let temp_bookkeeping = matches!(ctx.action,
                AuthAction::Read { table_name, .. } | AuthAction::Update { table_name, .. }
                    if table_name.eq_ignore_ascii_case("sqlite_temp_master"));
            if ddl && temp_bookkeeping {
                return Decision::Allow;
            }
            return deny("use temporary schema", action_object(&ctx.action));
        }
        match ctx.action {
            AuthAction::Select | AuthAction::Recursive => Decision::Allow,
            AuthAction::Read {
                table_name,
                column_name,
            } => {
                // No schema: a CTE or subquery result, not a stored table.
                if db.is_none()
                    || self.owns(db, table_name)
                    || Self::is_ddl_bookkeeping(ddl, db, table_name)
                {
                    return Decision::Allow;
                }
                if PURE_TABLE_FUNCTIONS
                    .iter()
                    .any(|f| table_name.eq_ignore_ascii_case(f))
                {
                    return Decision::Allow;
                }
                match self.granted_table(db, table_name) {
                    Some(columns)
                        if column_name.is_empty()
                            || columns.contains(&column_name.to_ascii_lowercase()) =>
                    {
                        Decision::Allow
                    }
                    Some(_) => deny(
                        "read ungranted column",
                        format!("{table_name}.{column_name}"),
                    ),
                    // Never name another table's columns: that would reveal its shape.
                    None => deny("read", table_name),
                }
            }
            AuthAction::Insert { table_name } | AuthAction::Delete { table_name } => {
                // Writes to sqlite_schema are how SQLite records DDL the policy already
                // allowed; direct writes are impossible under SQLITE_DBCONFIG_DEFENSIVE.
                if self.owns(db, table_name) || Self::is_schema_table(db, table_name) {
                    Decision::Allow
                } else if self.granted_table(db, table_name).is_some()
                    || table_name.starts_with(MIRROR_PREFIX)
                {
                    deny("write mirror table", table_name)
                } else {
                    deny("write", table_name)
                }
            }
            AuthAction::Update { table_name, .. } => {
                if self.owns(db, table_name)
                    || Self::is_schema_table(db, table_name)
                    || Self::is_ddl_bookkeeping(ddl, db, table_name)
                {
                    Decision::Allow
                } else if table_name.to_ascii_lowercase().starts_with(MIRROR_PREFIX) {
                    deny("write mirror table", table_name)
                } else {
                    deny("write", table_name)
                }
            }
            // AUTOINCREMENT in a plugin's own table makes SQLite create sqlite_sequence.
            AuthAction::CreateTable { table_name }
                if ddl && table_name == "sqlite_sequence" && matches!(db, None | Some("main")) =>
            {
                Decision::Allow
            }
            AuthAction::CreateTable { table_name } => {
                self.own_object(db, "create table", table_name)
            }
            AuthAction::CreateView { view_name } => self.own_object(db, "create view", view_name),
            AuthAction::DropTable { table_name } => self.own_object(db, "drop table", table_name),
            AuthAction::DropView { view_name } => self.own_object(db, "drop view", view_name),
            AuthAction::AlterTable { table_name, .. } => {
                self.own_object(db, "alter table", table_name)
            }
            // UNIQUE and PRIMARY KEY constraints of the plugin's own tables.
            AuthAction::CreateIndex {
                index_name,
                table_name,
            } if index_name.starts_with("sqlite_autoindex_") && self.owns(db, table_name) => {
                Decision::Allow
            }
            AuthAction::CreateIndex {
                index_name,
                table_name,
            }
            | AuthAction::DropIndex {
                index_name,
                table_name,
            } => self.own_pair(db, "index", index_name, table_name),
            AuthAction::CreateTrigger {
                trigger_name,
                table_name,
            }
            | AuthAction::DropTrigger {
                trigger_name,
                table_name,
            } => self.own_pair(db, "trigger", trigger_name, table_name),
            AuthAction::Pragma {
                pragma_name,
                pragma_value,
            } => {
                let name = pragma_name.to_ascii_lowercase();
                match pragma_value {
                    Some(arg)
                        if TABLE_PRAGMAS.contains(&name.as_str()) && self.in_namespace(arg) =>
                    {
                        Decision::Allow
                    }
                    _ => deny("pragma", pragma_name),
                }
            }
            AuthAction::Function { function_name } => {
                if FORBIDDEN_FUNCTIONS
                    .iter()
                    .any(|f| function_name.eq_ignore_ascii_case(f))
                {
                    deny("call function", function_name)
                } else {
                    Decision::Allow
                }
            }
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                deny("control transactions", "the host owns transactions")
            }
            AuthAction::Attach { .. } => deny("attach", "a database"),
            AuthAction::Detach { database_name } => deny("detach", database_name),
            AuthAction::Analyze { table_name } => deny("analyze", table_name),
            // CREATE INDEX reindexes the index it creates.
            AuthAction::Reindex { index_name } if self.owns(db, index_name) => Decision::Allow,
            AuthAction::Reindex { index_name } => deny("reindex", index_name),
            AuthAction::CreateVtable { table_name, .. } => deny("create virtual table", table_name),
            AuthAction::DropVtable { table_name, .. } => deny("drop virtual table", table_name),
            AuthAction::CreateTempTable { table_name }
            | AuthAction::DropTempTable { table_name } => deny("use temporary schema", table_name),
            AuthAction::CreateTempView { view_name } | AuthAction::DropTempView { view_name } => {
                deny("use temporary schema", view_name)
            }
            AuthAction::CreateTempIndex { index_name, .. }
            | AuthAction::DropTempIndex { index_name, .. } => {
                deny("use temporary schema", index_name)
            }
            AuthAction::CreateTempTrigger { trigger_name, .. }
            | AuthAction::DropTempTrigger { trigger_name, .. } => {
                deny("use temporary schema", trigger_name)
            }
            // ATTACH/DETACH whose argument is an expression arrive without a name.
            AuthAction::Unknown { code: 24, .. } => deny("attach", "a database"),
            AuthAction::Unknown { code: 25, .. } => deny("detach", "a database"),
            AuthAction::Unknown { code, .. } => {
                deny("perform unknown action", format!("code {code}"))
            }
            _ => deny("perform unknown action", "unlisted action"),
        }
    }
}

/// The first name an action carries, for messages.
fn action_object(action: &AuthAction<'_>) -> String {
    let name = match *action {
        AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Read { table_name, .. } => table_name,
        AuthAction::CreateTempView { view_name } | AuthAction::DropTempView { view_name } => {
            view_name
        }
        AuthAction::CreateTempIndex { index_name, .. }
        | AuthAction::DropTempIndex { index_name, .. } => index_name,
        AuthAction::CreateTempTrigger { trigger_name, .. }
        | AuthAction::DropTempTrigger { trigger_name, .. } => trigger_name,
        _ => "an object",
    };
    name.to_owned()
}

impl Policy {
    fn own_object(&self, db: Option<&str>, action: &str, name: &str) -> Decision {
        if self.owns(db, name) {
            Decision::Allow
        } else {
            deny(action, name)
        }
    }

    fn own_pair(&self, db: Option<&str>, kind: &str, name: &str, table: &str) -> Decision {
        if !self.owns(db, name) {
            deny(&format!("create or drop {kind}"), name)
        } else if !self.owns(db, table) {
            deny(&format!("create or drop {kind} on"), table)
        } else {
            Decision::Allow
        }
    }

    /// The first identifier in `sql` that names something outside the plugin's reach:
    /// SQLite's own tables, bookkeeping, pragma functions, `dbstat`, or another
    /// namespace's object. The authorizer does not see every table a statement touches
    /// (`EXISTS (SELECT 1 FROM t)` reads no column), so every statement's text is checked
    /// too. `exists` tells whether a `x__y` name is a real object: a plugin may have a
    /// column called `created__at`. With `strict` (used on "no such table/column"
    /// errors), any such name counts, so an error never says whether it exists.
    pub fn foreign_reference(
        &self,
        sql: &str,
        strict: bool,
        exists: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        lex(sql).identifiers.into_iter().find(|ident| {
            let lower = ident.to_ascii_lowercase();
            if SQLITE_FUNCTIONS.contains(&lower.as_str()) {
                return false;
            }
            if lower.starts_with("sqlite_")
                || lower.starts_with("_sv_")
                || lower.starts_with("pragma_")
                || lower == "dbstat"
            {
                return true;
            }
            lower.contains("__")
                && !self.in_namespace(&lower)
                && !self.is_granted_mirror(&lower)
                && (strict || exists(&lower))
        })
    }
}

/// Built-in functions whose names start like SQLite's internal tables.
const SQLITE_FUNCTIONS: &[&str] = &[
    "sqlite_version",
    "sqlite_source_id",
    "sqlite_compileoption_used",
    "sqlite_compileoption_get",
    "sqlite_offset",
];

/// Whether SQLite's tokenizer treats byte `b` as part of an identifier (`IdChar` in
/// tokenize.c): ASCII letters and digits, `_`, `$`, and every byte of a non-ASCII
/// UTF-8 character.
fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// The end of a quoted token starting at `start` (the opening quote), where a doubled
/// closing quote stands for itself; returns the unescaped content and the index after it.
fn quoted(bytes: &[u8], start: usize, close: u8, doubled_escapes: bool) -> (Vec<u8>, usize) {
    let mut content = Vec::new();
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == close {
            if doubled_escapes && bytes.get(i + 1) == Some(&close) {
                content.push(close);
                i += 2;
                continue;
            }
            return (content, i + 1);
        }
        content.push(bytes[i]);
        i += 1;
    }
    (content, i)
}

/// What the fence's text check sees of a statement: its identifiers (bare words and
/// the contents of `"..."`, `` `...` `` and `[...]`, unescaped) and how deeply its
/// parentheses nest. It lexes as SQLite does: `$` continues an identifier, non-ASCII
/// bytes are identifier characters, string literals, blob literals, numbers, bound
/// parameters (`?1`, `:x`, `@x`, `$x`) and comments are no identifiers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lexed {
    /// Identifier tokens, in order.
    pub identifiers: Vec<String>,
    /// The deepest parenthesis nesting.
    pub max_depth: usize,
}

/// Lexes `sql` (see [`Lexed`]).
pub fn lex(sql: &str) -> Lexed {
    let mut out = Lexed::default();
    let bytes = sql.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' => i = quoted(bytes, i, b'\'', true).1,
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' | b'`' | b'[' => {
                let (close, doubled) = if c == b'[' { (b']', false) } else { (c, true) };
                let (content, next) = quoted(bytes, i, close, doubled);
                out.identifiers
                    .push(String::from_utf8_lossy(&content).into_owned());
                i = next;
            }
            b'(' => {
                depth += 1;
                out.max_depth = out.max_depth.max(depth);
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            // Bound parameters: `?NNN`, `:name`, `@name`, `$name`.
            b'?' | b':' | b'@' | b'$' => {
                i += 1;
                while i < bytes.len() && is_id_char(bytes[i]) {
                    i += 1;
                }
            }
            // Numbers (and whatever SQLite would reject as glued to them).
            b'0'..=b'9' => {
                while i < bytes.len() && (is_id_char(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
            }
            // `x'...'` is a blob literal, not the identifier `x`.
            b'x' | b'X' if bytes.get(i + 1) == Some(&b'\'') => {
                i = quoted(bytes, i + 1, b'\'', true).1;
            }
            c if is_id_char(c) => {
                let start = i;
                while i < bytes.len() && is_id_char(bytes[i]) {
                    i += 1;
                }
                out.identifiers
                    .push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_comparison_is_case_insensitive_and_needs_a_name() {
        let p = Policy::new("tasks", &[], false);
        assert!(p.in_namespace("tasks__items"));
        assert!(p.in_namespace("TASKS__Items"));
        assert!(!p.in_namespace("tasks__"));
        assert!(!p.in_namespace("tasks_items"));
        assert!(!p.in_namespace("tasks2__items"));
        assert!(!p.in_namespace("notes__items"));
    }

    #[test]
    fn the_lexer_reads_identifiers_as_sqlite_does() {
        let ids = |sql: &str| lex(sql).identifiers;
        assert_eq!(ids("SELECT a$b FROM t"), ["SELECT", "a$b", "FROM", "t"]);
        assert_eq!(
            ids("SELECT \"a\"\"b\" FROM `c``d` JOIN [e\"f]"),
            ["SELECT", "a\"b", "FROM", "c`d", "JOIN", "e\"f"]
        );
        assert_eq!(
            ids("SELECT 'it''s', x'00ff', 1e5, ?1, :name, @v, $w FROM t"),
            ["SELECT", "FROM", "t"]
        );
        assert_eq!(
            ids("SELECT ünï__cödé FROM t"),
            ["SELECT", "ünï__cödé", "FROM", "t"]
        );
        assert_eq!(
            ids("SELECT 1 -- x__y\n/* y__z */ FROM t"),
            ["SELECT", "FROM", "t"]
        );
        assert_eq!(lex("SELECT ((1)) + (2)").max_depth, 2);
        assert_eq!(lex("SELECT '((((('").max_depth, 0);
    }

    #[test]
    fn foreign_references_are_found_outside_strings_and_comments() {
        let p = Policy::new("tasks", &[("users".into(), "id".into())], false);
        let exists = |name: &str| name == "notes__secret";
        let check = |sql: &str| p.foreign_reference(sql, false, &exists);
        assert_eq!(
            check("SELECT x FROM \"Notes__Secret\""),
            Some("Notes__Secret".into())
        );
        assert_eq!(
            check("SELECT * FROM sqlite_schema"),
            Some("sqlite_schema".into())
        );
        assert_eq!(
            check("SELECT 'notes__secret' FROM tasks__a -- notes__secret"),
            None
        );
        assert_eq!(check("SELECT id FROM core__users JOIN tasks__a"), None);
        assert_eq!(
            check("SELECT * FROM [_sv_migrations]"),
            Some("_sv_migrations".into())
        );
        assert_eq!(
            check("SELECT created__at, sqlite_version() FROM tasks__a"),
            None
        );
        assert_eq!(
            p.foreign_reference("SELECT * FROM notes__gone", true, &exists),
            Some("notes__gone".into())
        );
        let exists = |name: &str| name == "notes__a$b";
        assert_eq!(
            p.foreign_reference("SELECT count(*) FROM notes__a$b", false, &exists),
            Some("notes__a$b".into())
        );
    }
}
