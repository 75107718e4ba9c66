//! Rows as the platform's values: binary strings are blobs, other strings text, decimals
//! integers or reals, dates and times their text. Plugin results and the sync's reads
//! of a MySQL core use the same conversion, for rows of either protocol (the text
//! protocol sends every value as bytes, the prepared-statement one typed).

use mysql::consts::ColumnType;
use sovereign_db_plugins::SqlValue;

/// A value that has no platform form.
#[derive(Debug, Clone, thiserror::Error)]
#[error("column {column} holds {problem}")]
pub struct ValueError {
    /// The column's name.
    pub column: String,
    /// What it holds.
    pub problem: String,
}

/// Converts one row, by column type.
pub fn row_values(row: mysql::Row) -> Result<Vec<SqlValue>, ValueError> {
    let columns = row.columns();
    let mut out = Vec::with_capacity(columns.len());
    for (value, column) in row.unwrap().into_iter().zip(columns.iter()) {
        let fail = |problem: String| ValueError {
            column: column.name_str().into_owned(),
            problem,
        };
        let binary = column.character_set() == 63;
        out.push(match value {
            mysql::Value::NULL => SqlValue::Null,
            mysql::Value::Int(v) => SqlValue::Integer(v),
            mysql::Value::UInt(v) => match i64::try_from(v) {
                Ok(v) => SqlValue::Integer(v),
                Err(_) => SqlValue::Real(v as f64),
            },
            mysql::Value::Float(v) => SqlValue::Real(f64::from(v)),
            mysql::Value::Double(v) => SqlValue::Real(v),
            mysql::Value::Bytes(bytes) => match column.column_type() {
                ColumnType::MYSQL_TYPE_TINY
                | ColumnType::MYSQL_TYPE_SHORT
                | ColumnType::MYSQL_TYPE_INT24
                | ColumnType::MYSQL_TYPE_LONG
                | ColumnType::MYSQL_TYPE_LONGLONG
                | ColumnType::MYSQL_TYPE_YEAR => {
                    let text = String::from_utf8_lossy(&bytes);
                    match text.parse::<i64>() {
                        Ok(v) => SqlValue::Integer(v),
                        Err(_) => SqlValue::Real(text.parse().map_err(|_| {
                            fail(format!("the integer {text}, which is not a number here"))
                        })?),
                    }
                }
                ColumnType::MYSQL_TYPE_FLOAT | ColumnType::MYSQL_TYPE_DOUBLE => {
                    let text = String::from_utf8_lossy(&bytes);
                    SqlValue::Real(
                        text.parse()
                            .map_err(|_| fail(format!("the real {text}, which is not a number")))?,
                    )
                }
                ColumnType::MYSQL_TYPE_DATE
                | ColumnType::MYSQL_TYPE_TIME
                | ColumnType::MYSQL_TYPE_DATETIME
                | ColumnType::MYSQL_TYPE_TIMESTAMP
                | ColumnType::MYSQL_TYPE_NEWDATE
                | ColumnType::MYSQL_TYPE_TIME2
                | ColumnType::MYSQL_TYPE_DATETIME2
                | ColumnType::MYSQL_TYPE_TIMESTAMP2 => SqlValue::Text(
                    String::from_utf8(bytes)
                        .map_err(|_| fail("a time that is not UTF-8".into()))?,
                ),
                ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                    let text = String::from_utf8_lossy(&bytes);
                    let integer = if column.decimals() == 0 {
                        text.parse::<i64>().ok()
                    } else {
                        None
                    };
                    match integer {
                        Some(v) => SqlValue::Integer(v),
                        None => SqlValue::Real(text.parse().map_err(|_| {
                            fail(format!("the decimal {text}, which is not a number here"))
                        })?),
                    }
                }
                _ if binary => SqlValue::Blob(bytes),
                _ => SqlValue::Text(
                    String::from_utf8(bytes).map_err(|_| fail("text that is not UTF-8".into()))?,
                ),
            },
            date @ (mysql::Value::Date(..) | mysql::Value::Time(..)) => {
                SqlValue::Text(date.as_sql(true).trim_matches('\'').to_owned())
            }
        });
    }
    Ok(out)
}

/// A platform value as a statement parameter.
pub fn param(value: &SqlValue) -> mysql::Value {
    match value {
        SqlValue::Null => mysql::Value::NULL,
        SqlValue::Integer(i) => mysql::Value::Int(*i),
        SqlValue::Real(f) => mysql::Value::Double(*f),
        SqlValue::Text(t) => mysql::Value::Bytes(t.as_bytes().to_vec()),
        SqlValue::Blob(b) => mysql::Value::Bytes(b.clone()),
    }
}
