//! Plugin SQL as PostgreSQL reads it: portable parameters (`?1`, `?`) become `$1`, and
//! the statement's first keyword and count are found, lexing strings, quoted names,
//! dollar quotes and comments as PostgreSQL does (a `?` or `;` inside them is text).

use sovereign_db_plugins::sql_lex::skip_quoted;

/// Why plugin SQL cannot be sent.
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
    /// `?0` or a number PostgreSQL cannot take.
    #[error("parameter ?{0} is out of range: parameters are numbered ?1 to ?65535")]
    BadParameter(String),
}

/// One statement, ready for PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgStatement {
    /// The text with `$N` parameters (and no trailing `;`).
    pub text: String,
    /// The first keyword, upper-cased (`SELECT`, `WITH`, `BEGIN`, ...).
    pub keyword: String,
}

/// Rewrites one portable statement: `?N` becomes `$N`, a bare `?` becomes one more than
/// the largest number so far (SQLite's rule), everything else is kept byte for byte.
pub fn to_postgres(sql: &str) -> Result<PgStatement, TextError> {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 8);
    let mut keyword = String::new();
    let mut largest: u32 = 0;
    let mut ended = false; // a top-level `;` was seen
    let mut saw_code = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let mut token_is_code = true;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                token_is_code = false;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                token_is_code = false;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    if i + 1 >= bytes.len() {
                        return Err(TextError::Unterminated("a /* comment */"));
                    }
                    if bytes[i] == b'/' && bytes[i + 1] == b'*' {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                token_is_code = false;
            }
            b'\'' => {
                let escapes = start > 0
                    && matches!(bytes[start - 1], b'e' | b'E')
                    && (start < 2 || !is_name_byte(bytes[start - 2]));
                i = skip_quoted(bytes, i, b'\'', escapes)
                    .ok_or(TextError::Unterminated("a 'string'"))?;
            }
            b'"' => {
                i = skip_quoted(bytes, i, b'"', false)
                    .ok_or(TextError::Unterminated("a \"quoted name\""))?;
            }
            b'$' => {
                // `$tag$ ... $tag$` (tag empty or a name not starting with a digit); `$1`
                // is a PostgreSQL parameter, kept as it is.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|b| !is_name_byte(*b))
                    .map_or(bytes.len(), |n| i + 1 + n);
                let starts_name = bytes.get(i + 1).is_some_and(|b| !b.is_ascii_digit());
                if bytes.get(tag_end) == Some(&b'$')
                    && (tag_end == i + 1 || starts_name)
                    && (start == 0 || !is_name_byte(bytes[start - 1]))
                {
                    let tag = &sql[i..=tag_end];
                    let body = tag_end + 1;
                    let close = sql[body..]
                        .find(tag)
                        .ok_or(TextError::Unterminated("a $$dollar-quoted$$ string"))?;
                    i = body + close + tag.len();
                } else {
                    i = tag_end.max(i + 1);
                }
            }
            b'?' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let number = if digits == 0 {
                    largest + 1
                } else {
                    let text = &sql[i + 1..i + 1 + digits];
                    match text.parse::<u32>() {
                        Ok(n) if (1..=65535).contains(&n) => n,
                        _ => return Err(TextError::BadParameter(text.to_owned())),
                    }
                };
                largest = largest.max(number);
                if ended {
                    return Err(TextError::Multiple);
                }
                saw_code = true;
                out.push('$');
                out.push_str(&number.to_string());
                i += 1 + digits;
                continue;
            }
            b';' => {
                ended = true;
                i += 1;
                continue;
            }
            c if is_name_byte(c) => {
                i += bytes[i..].iter().take_while(|b| is_name_byte(**b)).count();
                if keyword.is_empty() && !c.is_ascii_digit() {
                    keyword = sql[start..i].to_ascii_uppercase();
                }
            }
            _ => {
                // One character (UTF-8 continuation bytes are never ASCII syntax).
                i += sql[i..].chars().next().map_or(1, char::len_utf8);
            }
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
    Ok(PgStatement {
        text: out.trim_end().to_owned(),
        keyword,
    })
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> String {
        to_postgres(sql).unwrap().text
    }

    #[test]
    fn parameters_become_dollar_numbers_outside_quotes_and_comments() {
        assert_eq!(
            pg("SELECT * FROM t WHERE a = ?1 AND b = ?2"),
            "SELECT * FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(pg("VALUES (?, ?, ?5, ?)"), "VALUES ($1, $2, $5, $6)");
        assert_eq!(
            pg("SELECT '?1', \"a?\", $$ ? $$, $x$?;$x$, E'\\'?' -- ?\n, ?"),
            "SELECT '?1', \"a?\", $$ ? $$, $x$?;$x$, E'\\'?' -- ?\n, $1"
        );
        assert_eq!(
            pg("SELECT /* ? /* ; */ ? */ ?3;"),
            "SELECT /* ? /* ; */ ? */ $3"
        );
        assert_eq!(pg("SELECT $1, a$b FROM t"), "SELECT $1, a$b FROM t");
        assert_eq!(
            to_postgres("  with x AS (SELECT 1) SELECT * FROM x")
                .unwrap()
                .keyword,
            "WITH"
        );
        assert_eq!(to_postgres("(SELECT 1)").unwrap().keyword, "SELECT");
    }

    #[test]
    fn one_statement_only_and_clear_errors() {
        assert_eq!(to_postgres("SELECT 1; COMMIT"), Err(TextError::Multiple));
        assert_eq!(
            to_postgres("SELECT 1; -- fine\n ;"),
            Ok(PgStatement {
                text: "SELECT 1".into(),
                keyword: "SELECT".into()
            })
        );
        assert_eq!(to_postgres(" -- nothing\n/* */"), Err(TextError::Empty));
        assert_eq!(to_postgres(""), Err(TextError::Empty));
        assert_eq!(
            to_postgres("SELECT 'x"),
            Err(TextError::Unterminated("a 'string'"))
        );
        assert_eq!(
            to_postgres("SELECT $a$ x"),
            Err(TextError::Unterminated("a $$dollar-quoted$$ string"))
        );
        assert_eq!(
            to_postgres("SELECT ?0"),
            Err(TextError::BadParameter("0".into()))
        );
        assert_eq!(
            to_postgres("SELECT ?70000"),
            Err(TextError::BadParameter("70000".into()))
        );
    }
}
