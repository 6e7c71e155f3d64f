//! Typed reads of fields of the create body, which stays JSON. A missing
//! or `null` field reads as `None`; a field of the wrong type is a 400.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::SpecError;

fn wrong(key: &str, want: &str) -> SpecError {
    SpecError::invalid(format!("invalid JSON: field {key} must be {want}"))
}

fn get<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub fn field_str<'a>(obj: &'a Value, key: &str) -> Result<Option<&'a str>, SpecError> {
    get(obj, key).map(|v| v.as_str().ok_or_else(|| wrong(key, "a string"))).transpose()
}

pub fn field_bool(obj: &Value, key: &str) -> Result<Option<bool>, SpecError> {
    get(obj, key).map(|v| v.as_bool().ok_or_else(|| wrong(key, "a boolean"))).transpose()
}

pub fn field_i64(obj: &Value, key: &str) -> Result<Option<i64>, SpecError> {
    get(obj, key).map(|v| v.as_i64().ok_or_else(|| wrong(key, "an integer"))).transpose()
}

/// An integer field where 0 and absent mean the same.
pub fn int(obj: &Value, key: &str) -> Result<i64, SpecError> {
    Ok(field_i64(obj, key)?.unwrap_or(0))
}

/// A list of strings.
pub fn str_list(obj: &Value, key: &str) -> Result<Vec<String>, SpecError> {
    match get(obj, key) {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| wrong(key, "a list of strings")),
    }
}

/// Docker's `StrSlice`: a list, a single string, or null (`None`), where an
/// empty list is not the same as null.
pub fn str_slice(obj: &Value, key: &str) -> Result<Option<Vec<String>>, SpecError> {
    match get(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|_| wrong(key, "a string or a list of strings")),
    }
}

/// A map of strings to strings.
pub fn str_map(obj: &Value, key: &str) -> Result<BTreeMap<String, String>, SpecError> {
    match get(obj, key) {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| wrong(key, "a map of strings")),
    }
}

/// A list of objects.
pub fn obj_list<'a>(obj: &'a Value, key: &str) -> Result<&'a [Value], SpecError> {
    match get(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(wrong(key, "a list")),
    }
}
