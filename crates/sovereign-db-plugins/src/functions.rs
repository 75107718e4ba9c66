//! Linear-time replacements for the SQLite built-ins whose cost grows with the product
//! of their arguments' sizes (`instr`, `replace`, two-argument `trim`, `ltrim`,
//! `rtrim`). SQLite's progress handler is not called inside one function call, so a
//! single quadratic call on values of a few MB ran for a minute under a 500 ms limit;
//! these run in time proportional to their input, which `SQLITE_LIMIT_LENGTH` bounds.
//! Registered on every plugin connection, where they shadow the built-ins.

use std::collections::HashSet;

use sovereign_db::rusqlite::functions::{Context, FunctionFlags};
use sovereign_db::rusqlite::types::{Value, ValueRef};
use sovereign_db::rusqlite::{self, Connection, ffi};

/// Registers the replacements on `conn`; `max_len` is the connection's value limit.
pub(crate) fn register(conn: &Connection, max_len: usize) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("instr", 2, flags, instr)?;
    conn.create_scalar_function("replace", 3, flags, move |ctx| replace(ctx, max_len))?;
    for (name, side) in [
        ("trim", Side::Both),
        ("ltrim", Side::Left),
        ("rtrim", Side::Right),
    ] {
        conn.create_scalar_function(name, 2, flags, move |ctx| trim(ctx, side))?;
    }
    Ok(())
}

/// An argument as SQLite's text functions see it: `None` for NULL, else its bytes
/// (numbers in their text form).
fn text_bytes(value: ValueRef<'_>) -> Option<Vec<u8>> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string().into_bytes()),
        ValueRef::Real(f) => Some(real_text(f).into_bytes()),
        ValueRef::Text(t) => Some(t.to_vec()),
        ValueRef::Blob(b) => Some(b.to_vec()),
    }
}

/// A real in the text form SQLite gives it (`%!.15g`-like): `1.0`, `0.5`, `1.0e+20`.
/// Values whose shortest round-trip form has more than 15 significant digits may be
/// spelled differently; the replaced functions take text in practice.
fn real_text(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return format!("{f:?}");
    }
    let exponent = f.abs().log10().floor() as i32;
    if (-4..15).contains(&exponent) {
        let text = format!("{f}");
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    } else {
        let text = format!("{f:e}");
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let mantissa = if mantissa.contains('.') {
            mantissa.to_owned()
        } else {
            format!("{mantissa}.0")
        };
        format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

fn instr(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    let (haystack, needle) = (ctx.get_raw(0), ctx.get_raw(1));
    if let (ValueRef::Blob(h), ValueRef::Blob(n)) = (haystack, needle) {
        return Ok(Value::Integer(
            memchr::memmem::find(h, n).map_or(0, |at| at as i64 + 1),
        ));
    }
    let (Some(h), Some(n)) = (text_bytes(haystack), text_bytes(needle)) else {
        return Ok(Value::Null);
    };
    Ok(Value::Integer(match memchr::memmem::find(&h, &n) {
        // Characters, not bytes: count the UTF-8 lead bytes before the match.
        Some(at) => h[..at].iter().filter(|b| (**b & 0xC0) != 0x80).count() as i64 + 1,
        None => 0,
    }))
}

fn replace(ctx: &Context<'_>, max_len: usize) -> rusqlite::Result<Value> {
    let (Some(text), Some(pattern), Some(with)) = (
        text_bytes(ctx.get_raw(0)),
        text_bytes(ctx.get_raw(1)),
        text_bytes(ctx.get_raw(2)),
    ) else {
        return Ok(Value::Null);
    };
    if pattern.is_empty() {
        return Ok(Value::Text(String::from_utf8_lossy(&text).into_owned()));
    }
    let matches: Vec<usize> = memchr::memmem::find_iter(&text, &pattern).collect();
    let grown = matches.len().saturating_mul(with.len());
    let length = text.len() - matches.len() * pattern.len() + grown;
    if length > max_len {
        return Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_TOOBIG),
            Some("string or blob too big".into()),
        ));
    }
    let mut out = Vec::with_capacity(length);
    let mut last = 0;
    for at in matches {
        out.extend_from_slice(&text[last..at]);
        out.extend_from_slice(&with);
        last = at + pattern.len();
    }
    out.extend_from_slice(&text[last..]);
    Ok(Value::Text(String::from_utf8_lossy(&out).into_owned()))
}

#[derive(Clone, Copy)]
enum Side {
    Left,
    Right,
    Both,
}

fn trim(ctx: &Context<'_>, side: Side) -> rusqlite::Result<Value> {
    let (Some(text), Some(chars)) = (text_bytes(ctx.get_raw(0)), text_bytes(ctx.get_raw(1))) else {
        return Ok(Value::Null);
    };
    let text = String::from_utf8_lossy(&text);
    let set: HashSet<char> = String::from_utf8_lossy(&chars).chars().collect();
    let trimmed = match side {
        Side::Left => text.trim_start_matches(|c| set.contains(&c)),
        Side::Right => text.trim_end_matches(|c| set.contains(&c)),
        Side::Both => text.trim_matches(|c| set.contains(&c)),
    };
    Ok(Value::Text(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(conn: &Connection, sql: &str) -> Value {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_replacements_answer_as_the_built_ins_do() {
        let builtin = Connection::open_in_memory().unwrap();
        let ours = Connection::open_in_memory().unwrap();
        register(&ours, 1 << 20).unwrap();
        for sql in [
            "SELECT instr('hello world', 'o w')",
            "SELECT instr('héllo wörld', 'w')",
            "SELECT instr('abc', 'x')",
            "SELECT instr(x'00010203', x'0203')",
            "SELECT instr(12345, 34)",
            "SELECT instr(NULL, 'a')",
            "SELECT instr('abc', '')",
            "SELECT replace('a-b-c', '-', '+=')",
            "SELECT replace('aaaa', 'aa', 'b')",
            "SELECT replace('abc', '', 'x')",
            "SELECT replace('abc', NULL, 'x')",
            "SELECT replace(1234, 2, 9)",
            "SELECT replace('ünï', 'n', 'N')",
            "SELECT trim('xxhixx', 'x')",
            "SELECT ltrim('xyhixy', 'yx')",
            "SELECT rtrim('xyhixy', 'yx')",
            "SELECT trim('ééhé', 'é')",
            "SELECT trim(NULL, 'x')",
            "SELECT trim(1.5, '1')",
            "SELECT instr(1e20, '+')",
            "SELECT instr(0.00001, '-')",
            "SELECT instr(2.0, '.')",
        ] {
            assert_eq!(eval(&ours, sql), eval(&builtin, sql), "{sql}");
        }
    }
}
