//! Plugin SQL as MySQL/MariaDB reads it, checked before it is sent. Portable parameters
//! (`?1`, `?`) become MySQL's positional `?` with the order of the values to bind; the
//! statement's first keyword decides whether it may run at all. Lexed as MySQL lexes:
//! `'…'` and `"…"` strings with backslash escapes, `` `…` `` names, `#` and `-- ` comments,
//! `/* */` comments (a `?` or `;` inside them is text).
//!
//! What the grants of a plugin's account do not fence, this refuses by kind: `HANDLER`
//! (it reads every column of a table with any column privilege), executable comments
//! (`/*! … */`, `/*M! … */`: code the server runs that a reader of the text takes for a
//! comment), user and system variables (`@x`, `@@x`: state that outlives a request),
//! `SELECT … INTO`, and every statement that is not data or schema work (transaction
//! control, `SET`, `PREPARE`, `CALL`, `LOAD`, `KILL`, …): the platform runs the request's
//! transaction and its deadline itself.

use sovereign_db_plugins::sql_lex::skip_quoted;

/// Why plugin SQL is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Only whitespace and comments.
    #[error("the SQL text holds no statement")]
    Empty,
    /// More than one statement.
    #[error("pass exactly one SQL statement per call")]
    Multiple,
    /// A string, quoted name or comment that never ends.
    #[error("the SQL text ends inside {0}")]
    Unterminated(&'static str),
    /// `?0` or a number too large.
    #[error("parameter ?{0} is out of range: parameters are numbered ?1 to ?65535")]
    BadParameter(String),
    /// A statement of a kind plugins may not run.
    #[error("{0} statements are not available to plugins")]
    Kind(String),
    /// `/*! … */` or `/*M! … */`.
    #[error("executable comments (/*! … */) are not available to plugins")]
    ExecutableComment,
    /// `@name` or `@@name`.
    #[error("variables (@name, @@name) are not available to plugins: pass values as parameters")]
    Variable,
    /// `SELECT … INTO`.
    #[error("SELECT … INTO is not available to plugins: read the rows instead")]
    SelectInto,
    /// A storage engine other than InnoDB (others lose the request's all-or-nothing, or
    /// reach outside the database).
    #[error(
        "tables of plugins use the InnoDB engine (ENGINE = {0} is not available; a column \
         named engine is written `engine`)"
    )]
    Engine(String),
}

/// What a statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Reads (`SELECT`, `WITH`, `SHOW`, `EXPLAIN`, `VALUES`).
    Read,
    /// Changes rows (`INSERT`, `UPDATE`, `DELETE`, `REPLACE`).
    Write,
    /// Changes the schema (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `RENAME`): MySQL commits
    /// the open transaction before and after each, so these run in migrations only.
    Schema,
}

/// One statement, ready for MySQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyStatement {
    /// The text with positional `?` parameters (and no trailing `;`).
    pub text: String,
    /// For each `?` in `text`, the index (from 0) of the caller's value it binds.
    pub bind: Vec<usize>,
    /// The first keyword, upper-cased.
    pub keyword: String,
    /// What it does.
    pub kind: StatementKind,
}

const READ: &[&str] = &[
    "SELECT", "WITH", "SHOW", "EXPLAIN", "DESCRIBE", "DESC", "VALUES",
];
const WRITE: &[&str] = &["INSERT", "UPDATE", "DELETE", "REPLACE"];
const SCHEMA: &[&str] = &["CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME"];

/// Checks and rewrites one portable statement: `?N` becomes `?` binding value `N`, a bare
/// `?` binds one more than the largest number so far (SQLite's rule); everything else is
/// kept byte for byte.
pub fn to_mysql(sql: &str) -> Result<MyStatement, TextError> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut bind = Vec::new();
    let mut keyword = String::new();
    let mut largest: usize = 0;
    let mut ended = false;
    let mut saw_code = false;
    // After `ENGINE` in a schema change: the engine's name (InnoDB only) comes next.
    let mut engine_expected = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let (token, next) = next_token(sql, i)?;
        i = next;
        let token_is_code = !matches!(token, Token::Space | Token::Comment);
        match token {
            Token::Space | Token::Comment | Token::Quoted | Token::Other => {}
            Token::Variable => return Err(TextError::Variable),
            Token::Parameter => {
                let text = &sql[start + 1..i];
                let number = if text.is_empty() {
                    largest + 1
                } else {
                    match text.parse::<usize>() {
                        Ok(n) if (1..=65535).contains(&n) => n,
                        _ => return Err(TextError::BadParameter(text.to_owned())),
                    }
                };
                if ended {
                    return Err(TextError::Multiple);
                }
                largest = largest.max(number);
                bind.push(number - 1);
                saw_code = true;
                out.push('?');
                continue;
            }
            Token::Semicolon => {
                ended = true;
                continue;
            }
            Token::Name => {
                let word = sql[start..i].to_ascii_uppercase();
                if keyword.is_empty() && !c.is_ascii_digit() {
                    keyword = word.clone();
                }
                if word == "HANDLER" {
                    return Err(TextError::Kind(word));
                }
                if std::mem::take(&mut engine_expected) && word != "INNODB" {
                    return Err(TextError::Engine(sql[start..i].to_owned()));
                }
                if word == "ENGINE" && SCHEMA.contains(&keyword.as_str()) {
                    engine_expected = true;
                }
                // `INTO` in a read (`INSERT INTO` and `REPLACE INTO` are writes).
                if word == "INTO" && READ.contains(&keyword.as_str()) {
                    return Err(TextError::SelectInto);
                }
            }
        }
        // After ENGINE only `=` and a bare InnoDB may come (quoted names are refused).
        if engine_expected && token_is_code && !matches!(token, Token::Name) && c != b'=' {
            return Err(TextError::Engine(sql[start..].chars().take(20).collect()));
        }
        if token_is_code && ended {
            return Err(TextError::Multiple);
        }
        saw_code |= token_is_code;
        if !ended {
            out.push_str(&sql[start..i]);
        }
    }
    if !saw_code {
        return Err(TextError::Empty);
    }
    let kind = if READ.contains(&keyword.as_str()) {
        StatementKind::Read
    } else if WRITE.contains(&keyword.as_str()) {
        StatementKind::Write
    } else if SCHEMA.contains(&keyword.as_str()) {
        StatementKind::Schema
    } else {
        return Err(TextError::Kind(if keyword.is_empty() {
            "these".into()
        } else {
            keyword
        }));
    };
    Ok(MyStatement {
        text: out.trim_end().to_owned(),
        bind,
        keyword,
        kind,
    })
}

/// A lexical token of MySQL's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// Whitespace.
    Space,
    /// `-- `, `#` or `/* */` comment.
    Comment,
    /// A string or a quoted name.
    Quoted,
    /// `@name` or `@@name` (their first byte).
    Variable,
    /// `?` or `?N`.
    Parameter,
    /// `;`.
    Semicolon,
    /// A word or a number.
    Name,
    /// Anything else: one character.
    Other,
}

/// The token starting at byte `i` of `sql`, and where it ends.
fn next_token(sql: &str, i: usize) -> Result<(Token, usize), TextError> {
    let bytes = sql.as_bytes();
    let line_end = |from: usize| sql[from..].find('\n').map_or(bytes.len(), |n| from + n + 1);
    Ok(match bytes[i] {
        b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => (Token::Space, i + 1),
        // `--` starts a comment only before whitespace or the end (else: minus minus).
        b'-' if bytes.get(i + 1) == Some(&b'-')
            && bytes.get(i + 2).is_none_or(|b| b.is_ascii_whitespace()) =>
        {
            (Token::Comment, line_end(i))
        }
        b'#' => (Token::Comment, line_end(i)),
        b'/' if bytes.get(i + 1) == Some(&b'*') => {
            let body = &bytes[i + 2..];
            if body.starts_with(b"!") || body.starts_with(b"M!") {
                return Err(TextError::ExecutableComment);
            }
            let close = sql[i + 2..]
                .find("*/")
                .ok_or(TextError::Unterminated("a /* comment */"))?;
            (Token::Comment, i + 2 + close + 2)
        }
        quote @ (b'\'' | b'"') => (
            Token::Quoted,
            skip_quoted(bytes, i, quote, true).ok_or(TextError::Unterminated("a 'string'"))?,
        ),
        b'`' => (
            Token::Quoted,
            skip_quoted(bytes, i, b'`', false).ok_or(TextError::Unterminated("a `quoted name`"))?,
        ),
        b'@' => (Token::Variable, i + 1),
        b'?' => {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            (Token::Parameter, i + 1 + digits)
        }
        b';' => (Token::Semicolon, i + 1),
        c if is_name_byte(c) => (
            Token::Name,
            i + bytes[i..].iter().take_while(|b| is_name_byte(**b)).count(),
        ),
        _ => (
            Token::Other,
            i + sql[i..].chars().next().map_or(1, char::len_utf8),
        ),
    })
}

/// Splits a migration script into its statements at the `;`s outside strings, names and
/// comments (each statement is then checked like any plugin SQL).
pub fn split_script(sql: &str) -> Result<Vec<String>, TextError> {
    let mut statements = Vec::new();
    let mut current_start = 0;
    let mut has_code = false;
    let mut i = 0;
    while i < sql.len() {
        let (token, next) = next_token(sql, i)?;
        match token {
            Token::Semicolon => {
                if has_code {
                    statements.push(sql[current_start..next].trim().to_owned());
                }
                current_start = next;
                has_code = false;
            }
            Token::Space | Token::Comment => {}
            _ => has_code = true,
        }
        i = next;
    }
    if has_code {
        statements.push(sql[current_start..].trim().to_owned());
    }
    Ok(statements)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(sql: &str) -> MyStatement {
        to_mysql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn refused(sql: &str) -> TextError {
        to_mysql(sql).expect_err(sql)
    }

    #[test]
    fn portable_parameters_become_positional_with_their_values_order() {
        let s = ok("SELECT * FROM t WHERE b = ?2 AND a = ?1 OR c = ?2");
        assert_eq!(s.text, "SELECT * FROM t WHERE b = ? AND a = ? OR c = ?");
        assert_eq!(s.bind, [1, 0, 1]);
        let s = ok("INSERT INTO t (a, b) VALUES (?, ?);");
        assert_eq!(s.text, "INSERT INTO t (a, b) VALUES (?, ?)");
        assert_eq!(s.bind, [0, 1]);
        assert_eq!(s.kind, StatementKind::Write);
        let s = ok(
            "SELECT '?1', \"it''s ?\", `odd?name`, 'a\\'?' /* ? ; */ -- ? ;\n FROM t # ?;\n WHERE x = ?3",
        );
        assert_eq!(s.bind, [2]);
        assert_eq!(ok("SELECT 5--1").kind, StatementKind::Read);
        assert!(matches!(refused("SELECT ?0"), TextError::BadParameter(_)));
    }

    #[test]
    fn one_statement_of_the_kinds_plugins_use() {
        assert_eq!(
            ok("  with x as (select 1) select * from x").kind,
            StatementKind::Read
        );
        assert_eq!(ok("SHOW TABLES").kind, StatementKind::Read);
        assert_eq!(
            ok("CREATE TABLE t (id BIGINT PRIMARY KEY)").kind,
            StatementKind::Schema
        );
        assert_eq!(ok("REPLACE INTO t VALUES (1)").kind, StatementKind::Write);
        assert_eq!(refused("SELECT 1; SELECT 2"), TextError::Multiple);
        assert_eq!(ok("SELECT 1; -- done").text, "SELECT 1");
        assert_eq!(refused(" -- nothing\n /* here */ "), TextError::Empty);
        assert_eq!(
            refused("SELECT 'open"),
            TextError::Unterminated("a 'string'")
        );
    }

    #[test]
    fn a_script_splits_at_the_semicolons_outside_strings_names_and_comments() {
        let script = "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');\n\n\
                      /* ; */ CREATE TABLE `b;c` (y INT) ; # done; really\nINSERT INTO a VALUES ('it''s; fine')";
        assert_eq!(
            split_script(script).unwrap(),
            [
                "-- a comment; with a semicolon\nCREATE TABLE a (x TEXT DEFAULT ';');",
                "/* ; */ CREATE TABLE `b;c` (y INT) ;",
                "# done; really\nINSERT INTO a VALUES ('it''s; fine')",
            ]
        );
        assert!(split_script(" -- only\n ; ;").unwrap().is_empty());
        assert_eq!(
            split_script("SELECT 'open").unwrap_err(),
            TextError::Unterminated("a 'string'")
        );
    }

    #[test]
    fn what_the_grants_do_not_fence_is_refused_by_kind() {
        for (sql, expected) in [
            (
                "HANDLER core__users OPEN",
                TextError::Kind("HANDLER".into()),
            ),
            ("handler m READ FIRST", TextError::Kind("HANDLER".into())),
            (
                "SELECT 1 /*! , (SELECT email FROM core__users) */",
                TextError::ExecutableComment,
            ),
            (
                "SELECT 1 /*M!100000 UNION SELECT 2 */",
                TextError::ExecutableComment,
            ),
            ("SELECT @@version", TextError::Variable),
            ("SELECT @x := 1", TextError::Variable),
            ("SELECT 'x' INTO OUTFILE '/tmp/x'", TextError::SelectInto),
            ("SELECT id INTO @id FROM t", TextError::SelectInto),
            (
                "SELECT id FROM t INTO DUMPFILE '/tmp/x'",
                TextError::SelectInto,
            ),
            (
                "SET GLOBAL max_connections = 1",
                TextError::Kind("SET".into()),
            ),
            (
                "SET SESSION max_statement_time = 0",
                TextError::Kind("SET".into()),
            ),
            (
                "LOAD DATA INFILE '/etc/passwd' INTO TABLE t",
                TextError::Kind("LOAD".into()),
            ),
            (
                "PREPARE s FROM 'SELECT 1'",
                TextError::Kind("PREPARE".into()),
            ),
            ("EXECUTE s", TextError::Kind("EXECUTE".into())),
            (
                "CALL sv_admin.drop_plugin_account('beta')",
                TextError::Kind("CALL".into()),
            ),
            ("START TRANSACTION", TextError::Kind("START".into())),
            ("BEGIN", TextError::Kind("BEGIN".into())),
            ("COMMIT", TextError::Kind("COMMIT".into())),
            ("ROLLBACK", TextError::Kind("ROLLBACK".into())),
            ("SAVEPOINT a", TextError::Kind("SAVEPOINT".into())),
            ("LOCK TABLES t WRITE", TextError::Kind("LOCK".into())),
            ("KILL QUERY 7", TextError::Kind("KILL".into())),
            ("USE sv_core", TextError::Kind("USE".into())),
            ("GRANT ALL ON *.* TO x", TextError::Kind("GRANT".into())),
            ("FLUSH PRIVILEGES", TextError::Kind("FLUSH".into())),
            ("DO SLEEP(10)", TextError::Kind("DO".into())),
            ("XA START 'x'", TextError::Kind("XA".into())),
            ("INSTALL SONAME 'x'", TextError::Kind("INSTALL".into())),
        ] {
            assert_eq!(refused(sql), expected, "{sql}");
        }
        for (sql, engine) in [
            ("CREATE TABLE t (id INT) ENGINE=MyISAM", "MyISAM"),
            (
                "CREATE TABLE t (id INT) ENGINE = CONNECT TABLE_TYPE=CSV FILE_NAME='/etc/passwd'",
                "CONNECT",
            ),
            ("ALTER TABLE t ENGINE MEMORY", "MEMORY"),
            ("CREATE TABLE t (id INT) ENGINE='MyISAM'", "'MyISAM'"),
        ] {
            assert_eq!(refused(sql), TextError::Engine(engine.into()), "{sql}");
        }
        assert_eq!(
            ok("CREATE TABLE t (id INT) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4").kind,
            StatementKind::Schema
        );
        assert_eq!(
            ok("SELECT engine FROM information_schema.tables").kind,
            StatementKind::Read
        );
        assert_eq!(
            ok("CREATE TABLE t (`engine` TEXT)").kind,
            StatementKind::Schema
        );
        // INTO of a write is a write.
        assert_eq!(
            ok("INSERT INTO t SELECT * FROM u").kind,
            StatementKind::Write
        );
        // Words inside strings and names are text.
        assert_eq!(
            ok("SELECT 'HANDLER @x INTO' AS `handler`").kind,
            StatementKind::Read
        );
    }
}
