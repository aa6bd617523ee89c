//! A row value read from JSON or parquet: JSON's shapes plus raw bytes (parquet image cells).

use std::collections::BTreeMap;

/// One value of a dataset row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Missing / null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Text.
    Str(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Cell>),
    /// A struct / object.
    Map(BTreeMap<String, Cell>),
}

impl Cell {
    /// The field `name` of a map cell.
    pub fn get(&self, name: &str) -> Option<&Cell> {
        match self {
            Cell::Map(m) => m.get(name),
            _ => None,
        }
    }

    /// The text of a string cell.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the cell is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// Converts to JSON (bytes become null), for parsing messages with serde.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Cell::Null | Cell::Bytes(_) => Value::Null,
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Int(i) => Value::from(*i),
            Cell::Float(f) => Value::from(*f),
            Cell::Str(s) => Value::String(s.clone()),
            Cell::List(l) => Value::Array(l.iter().map(Cell::to_json).collect()),
            Cell::Map(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

impl From<&serde_json::Value> for Cell {
    fn from(v: &serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => Cell::Null,
            Value::Bool(b) => Cell::Bool(*b),
            Value::Number(n) => n
                .as_i64()
                .map(Cell::Int)
                .unwrap_or_else(|| Cell::Float(n.as_f64().unwrap_or(f64::NAN))),
            Value::String(s) => Cell::Str(s.clone()),
            Value::Array(a) => Cell::List(a.iter().map(Cell::from).collect()),
            Value::Object(o) => {
                Cell::Map(o.iter().map(|(k, v)| (k.clone(), Cell::from(v))).collect())
            }
        }
    }
}
