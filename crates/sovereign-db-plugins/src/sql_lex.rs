//! Lexing helpers the server backends' checks of plugin SQL share
//! (`sovereign_postgres::sql_text`, `sovereign_mysql::sql_text`).

/// The index after the quoted run starting at `at` (a `quote`; doubled quotes are
/// literal; with `escapes`, a backslash escapes the next byte), or `None` if unclosed.
pub fn skip_quoted(bytes: &[u8], at: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}
