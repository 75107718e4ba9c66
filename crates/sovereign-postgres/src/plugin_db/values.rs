//! Plugin values (SQLite's five kinds) to and from PostgreSQL's typed wire format.
//!
//! A parameter takes the type PostgreSQL inferred for it: an integer fits `int2/4/8`,
//! `float4/8`, `numeric`, `bool` (0 or 1) or text; text fits text-like types, `json`,
//! `jsonb` and `numeric`; a blob fits `bytea`; NULL fits anything. A column comes back as
//! the kind that carries it: integers (and `bool` as 0/1, `oid`), reals, `numeric` (an
//! integer when it has no fraction and fits, else a real), text (text-like, `json`,
//! `jsonb`, `uuid`), blobs (`bytea`). Any other type is refused with how to cast it.

use std::error::Error;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use sovereign_db_plugins::SqlValue;

type BoxError = Box<dyn Error + Sync + Send>;

/// A parameter encoded for the type PostgreSQL expects.
#[derive(Debug)]
pub(crate) enum Encoded {
    Null,
    Int2(i16),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Bool(bool),
    /// Text, varchar, name, ... (sent as UTF-8).
    Text(String),
    /// `json` (UTF-8) or `jsonb` (a version byte, then UTF-8).
    Json {
        text: String,
        binary: bool,
    },
    Numeric(Vec<u8>),
    Bytes(Vec<u8>),
}

fn kind(value: &SqlValue) -> &'static str {
    match value {
        SqlValue::Null => "NULL",
        SqlValue::Integer(_) => "an integer",
        SqlValue::Real(_) => "a real",
        SqlValue::Text(_) => "a text",
        SqlValue::Blob(_) => "a blob",
    }
}

fn text_like(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

/// Encodes `value` for a parameter PostgreSQL typed `ty`; the error says what to change.
pub(crate) fn encode(value: &SqlValue, ty: &Type) -> Result<Encoded, String> {
    let mismatch = || {
        format!(
            "a parameter of type {ty} cannot take {} value; cast it in the SQL (for example \
             CAST(?1 AS text)) or pass the matching kind",
            kind(value)
        )
    };
    let out_of_range = || format!("the value {value:?} does not fit a parameter of type {ty}");
    Ok(match value {
        SqlValue::Null => Encoded::Null,
        SqlValue::Integer(i) => match *ty {
            Type::INT2 => Encoded::Int2(i16::try_from(*i).map_err(|_| out_of_range())?),
            Type::INT4 => Encoded::Int4(i32::try_from(*i).map_err(|_| out_of_range())?),
            Type::INT8 => Encoded::Int8(*i),
            Type::FLOAT4 => Encoded::Float4(*i as f32),
            Type::FLOAT8 => Encoded::Float8(*i as f64),
            Type::NUMERIC => {
                Encoded::Numeric(numeric_from_decimal(&i.to_string()).ok_or_else(out_of_range)?)
            }
            Type::BOOL if *i == 0 || *i == 1 => Encoded::Bool(*i == 1),
            ref t if text_like(t) => Encoded::Text(i.to_string()),
            _ => return Err(mismatch()),
        },
        SqlValue::Real(f) => match *ty {
            Type::FLOAT4 => Encoded::Float4(*f as f32),
            Type::FLOAT8 => Encoded::Float8(*f),
            Type::NUMERIC if f.is_finite() => {
                Encoded::Numeric(numeric_from_decimal(&f.to_string()).ok_or_else(out_of_range)?)
            }
            Type::INT8 if f.fract() == 0.0 && f.abs() < 9.2e18 => Encoded::Int8(*f as i64),
            Type::INT4 if f.fract() == 0.0 && f.abs() < 2.1e9 => Encoded::Int4(*f as i32),
            ref t if text_like(t) => Encoded::Text(f.to_string()),
            _ => return Err(mismatch()),
        },
        SqlValue::Text(s) => match *ty {
            Type::JSON => Encoded::Json {
                text: s.clone(),
                binary: false,
            },
            Type::JSONB => Encoded::Json {
                text: s.clone(),
                binary: true,
            },
            Type::NUMERIC => Encoded::Numeric(numeric_from_decimal(s.trim()).ok_or_else(|| {
                format!("{s:?} is not a number, but the parameter has type numeric")
            })?),
            ref t if text_like(t) => Encoded::Text(s.clone()),
            _ => return Err(mismatch()),
        },
        SqlValue::Blob(b) => match *ty {
            Type::BYTEA => Encoded::Bytes(b.clone()),
            _ => return Err(mismatch()),
        },
    })
}

impl ToSql for Encoded {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Encoded::Null => return Ok(IsNull::Yes),
            Encoded::Int2(v) => v.to_sql(ty, out)?,
            Encoded::Int4(v) => v.to_sql(ty, out)?,
            Encoded::Int8(v) => v.to_sql(ty, out)?,
            Encoded::Float4(v) => v.to_sql(ty, out)?,
            Encoded::Float8(v) => v.to_sql(ty, out)?,
            Encoded::Bool(v) => v.to_sql(ty, out)?,
            Encoded::Text(v) => v.as_str().to_sql(ty, out)?,
            Encoded::Json { text, binary } => {
                if *binary {
                    out.extend_from_slice(&[1]);
                }
                out.extend_from_slice(text.as_bytes());
                IsNull::No
            }
            Encoded::Numeric(raw) => {
                out.extend_from_slice(raw);
                IsNull::No
            }
            Encoded::Bytes(v) => v.as_slice().to_sql(ty, out)?,
        };
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // `encode` chose the encoding for the type PostgreSQL asked for.
        true
    }

    to_sql_checked!();
}

/// A column value as a plugin value.
pub(crate) struct Decoded(pub SqlValue);

impl<'a> FromSql<'a> for Decoded {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Decoded(match *ty {
            Type::BOOL => SqlValue::Integer(i64::from(bool::from_sql(ty, raw)?)),
            Type::INT2 => SqlValue::Integer(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => SqlValue::Integer(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => SqlValue::Integer(i64::from_sql(ty, raw)?),
            Type::OID => SqlValue::Integer(u32::from_sql(ty, raw)?.into()),
            Type::FLOAT4 => SqlValue::Real(f32::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => SqlValue::Real(f64::from_sql(ty, raw)?),
            Type::NUMERIC => numeric_value(raw)?,
            Type::BYTEA => SqlValue::Blob(raw.to_vec()),
            Type::VOID => SqlValue::Null,
            Type::JSON => SqlValue::Text(std::str::from_utf8(raw)?.to_owned()),
            Type::JSONB => {
                SqlValue::Text(std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned())
            }
            Type::UUID => {
                let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                if hex.len() != 32 {
                    return Err("a uuid of the wrong length".into());
                }
                SqlValue::Text(format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                ))
            }
            ref t if text_like(t) => SqlValue::Text(std::str::from_utf8(raw)?.to_owned()),
            _ => return Err(unsupported(ty).into()),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Decoded(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Every column of `row` as a plugin value (integers, reals, text, blobs, NULL; `bool`
/// as 0/1, `json` as its text), or the error naming a type that has no such value.
pub fn row_values(row: &postgres::Row) -> Result<Vec<SqlValue>, postgres::Error> {
    (0..row.len())
        .map(|i| row.try_get::<_, Decoded>(i).map(|d| d.0))
        .collect()
}

/// Why a column of type `ty` cannot be returned, and the fix.
fn unsupported(ty: &Type) -> String {
    format!(
        "a column of type {ty} cannot be returned to a plugin (integers, reals, numeric, text, \
         json, uuid, bool and bytea can); cast it in the query, for example CAST(x AS text), \
         or store times as integer milliseconds"
    )
}

const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// `numeric`'s binary form (base-10000 digits, weight, sign, scale) from a decimal
/// `[-]digits[.digits]` (an exponent is refused).
fn numeric_from_decimal(text: &str) -> Option<Vec<u8>> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part
            .bytes()
            .chain(frac_part.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let scale = frac_part.len();
    // Pad so both parts split into groups of four digits around the point.
    let int_padded = format!("{}{int_part}", "0".repeat((4 - int_part.len() % 4) % 4));
    let frac_padded = format!("{frac_part}{}", "0".repeat((4 - scale % 4) % 4));
    let mut digits: Vec<i16> = int_padded
        .as_bytes()
        .chunks(4)
        .chain(frac_padded.as_bytes().chunks(4))
        .map(|chunk| std::str::from_utf8(chunk).ok()?.parse().ok())
        .collect::<Option<_>>()?;
    let mut weight = (int_padded.len() / 4) as i32 - 1;
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&i16::try_from(weight).ok()?.to_be_bytes());
    let sign = if negative && !digits.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        0
    };
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&u16::try_from(scale).ok()?.to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
    Some(out)
}

/// A `numeric` as an integer (no fraction, fits 64 bits) or a real.
fn numeric_value(raw: &[u8]) -> Result<SqlValue, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".into())
    };
    let count = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    if sign == NUMERIC_NAN {
        return Ok(SqlValue::Real(f64::NAN));
    }
    let digits: Vec<u16> = (0..count)
        .map(|k| word(8 + 2 * k))
        .collect::<Result<_, _>>()?;
    let negative = sign == NUMERIC_NEGATIVE;
    // Digits at or above the point make the integer part; any below it is a fraction.
    let has_fraction = (0..count).any(|k| (weight - k as i32) < 0 && digits[k] != 0);
    if !has_fraction {
        let mut value: i128 = 0;
        let mut fits = true;
        for position in 0..=weight.max(-1) {
            let digit = digits.get(position as usize).copied().unwrap_or(0);
            value = value * 10_000 + i128::from(digit);
            if value > i128::from(i64::MAX) + 1 {
                fits = false;
                break;
            }
        }
        let value = if negative { -value } else { value };
        if fits && let Ok(v) = i64::try_from(value) {
            return Ok(SqlValue::Integer(v));
        }
    }
    // Otherwise the decimal text, read as the nearest real.
    let digit_at = |k: i32| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut text = String::from(if negative { "-" } else { "" });
    if weight < 0 {
        text.push('0');
    }
    for k in 0..=weight {
        if k == 0 {
            text.push_str(&digit_at(k).to_string());
        } else {
            text.push_str(&format!("{:04}", digit_at(k)));
        }
    }
    text.push('.');
    for e in 1..=(count as i32 - weight - 1).max(1) {
        text.push_str(&format!("{:04}", digit_at(weight + e)));
    }
    Ok(SqlValue::Real(text.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> SqlValue {
        numeric_value(&numeric_from_decimal(text).unwrap()).unwrap()
    }

    #[test]
    fn numerics_encode_and_decode() {
        assert_eq!(round_trip("0"), SqlValue::Integer(0));
        assert_eq!(round_trip("12345678"), SqlValue::Integer(12_345_678));
        assert_eq!(round_trip("-10000"), SqlValue::Integer(-10_000));
        assert_eq!(
            round_trip("9223372036854775807"),
            SqlValue::Integer(i64::MAX)
        );
        assert_eq!(
            round_trip("-9223372036854775808"),
            SqlValue::Integer(i64::MIN)
        );
        assert_eq!(
            round_trip("92233720368547758070"),
            SqlValue::Real(9.223372036854776e19)
        );
        assert_eq!(round_trip("2.5"), SqlValue::Real(2.5));
        assert_eq!(round_trip("-0.0001"), SqlValue::Real(-0.0001));
        assert_eq!(round_trip("7.000"), SqlValue::Integer(7));
        assert!(numeric_from_decimal("1e5").is_none());
        assert!(numeric_from_decimal("abc").is_none());
        assert!(numeric_from_decimal(".").is_none());
    }
}
