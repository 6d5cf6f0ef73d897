//! Attribute-level comparison of a desired resource with an observed one.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resource::Observed;
use crate::resource::Resource;

/// One attribute that differs, by dotted path (`health_check.interval`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub forces_replacement: bool,
    /// The value stays the same text but refers to a resource being replaced.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub replaced_dependency: bool,
}

/// A resource's attributes as JSON, plus its tags, normalised for comparison.
pub fn attributes_of(resource: &Resource) -> Value {
    let spec = serde_json::to_value(&resource.spec).unwrap_or_default();
    let mut attributes = spec.get("attributes").cloned().unwrap_or_else(|| Value::Object(Default::default()));
    if let Value::Object(map) = &mut attributes {
        for attribute in resource.kind().recorded_only() {
            map.remove(*attribute);
        }
        if resource.kind().has_own_tags() {
            map.insert("tags".into(), serde_json::to_value(&resource.tags).unwrap_or_default());
        }
    }
    normalize(attributes)
}

fn observed_attributes(resource: &Observed) -> Value {
    let mut attributes = resource.attributes.clone();
    if let Value::Object(map) = &mut attributes {
        if resource.kind.has_own_tags() {
            map.insert("tags".into(), serde_json::to_value(&resource.tags).unwrap_or_default());
        }
    }
    normalize(attributes)
}

/// Every list kstack manages is a set (subnets, rules, listeners, policies), so lists are
/// compared in a canonical order.
fn normalize(value: Value) -> Value {
    match value {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(normalize).collect();
            items.sort_by_cached_key(|v| v.to_string());
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalize(v))).collect()),
        other => other,
    }
}

pub fn changes(desired: &Resource, actual: &Observed) -> Vec<Change> {
    let mut changes = Vec::new();
    compare("", &attributes_of(desired), &observed_attributes(actual), &mut changes);
    changes
}

fn compare(path: &str, desired: &Value, actual: &Value, changes: &mut Vec<Change>) {
    match (desired, actual) {
        (Value::Object(want), Value::Object(have)) if path.split('.').count() < 3 && path != "tags" => {
            let keys: std::collections::BTreeSet<&String> = want.keys().chain(have.keys()).collect();
            for key in keys {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                compare(&child, want.get(key).unwrap_or(&Value::Null), have.get(key).unwrap_or(&Value::Null), changes);
            }
        }
        (Value::Object(want), Value::Object(have)) if path == "tags" => {
            let keys: std::collections::BTreeSet<&String> = want.keys().chain(have.keys()).collect();
            for key in keys {
                if want.get(key) != have.get(key) {
                    changes.push(Change {
                        path: format!("tags.{key}"),
                        before: have.get(key).cloned(),
                        after: want.get(key).cloned(),
                        forces_replacement: false,
                        replaced_dependency: false,
                    });
                }
            }
        }
        _ if desired != actual => changes.push(Change {
            path: path.to_owned(),
            before: Some(actual.clone()),
            after: Some(desired.clone()),
            forces_replacement: false,
            replaced_dependency: false,
        }),
        _ => {}
    }
}

/// Every attribute of a resource to be created, as changes from nothing.
pub fn creation(resource: &Resource) -> Vec<Change> {
    leaves(&attributes_of(resource))
        .into_iter()
        .map(|(path, value)| Change { path, before: None, after: Some(value), forces_replacement: false, replaced_dependency: false })
        .collect()
}

pub fn deletion(resource: &Observed) -> Vec<Change> {
    leaves(&observed_attributes(resource))
        .into_iter()
        .map(|(path, value)| Change { path, before: Some(value), after: None, forces_replacement: false, replaced_dependency: false })
        .collect()
}

/// Scalars and lists by dotted path; objects are descended into.
fn leaves(value: &Value) -> Vec<(String, Value)> {
    fn walk(path: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    walk(&child_path, child, out);
                }
            }
            Value::Null => {}
            other if !path.is_empty() => out.push((path.to_owned(), other.clone())),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// Whether `value` refers to `address` anywhere inside it.
pub fn mentions(value: &Value, address: &str) -> bool {
    match value {
        Value::String(text) => text == address,
        Value::Array(items) => items.iter().any(|v| mentions(v, address)),
        Value::Object(map) => map.values().any(|v| mentions(v, address)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_attributes_are_compared_by_path_and_lists_as_sets() {
        let mut changes = Vec::new();
        compare(
            "",
            &normalize(json!({"min": 3, "subnets": ["b", "a"], "health_check": {"elb": true, "grace_period": 300}})),
            &normalize(json!({"min": 2, "subnets": ["a", "b"], "health_check": {"elb": true, "grace_period": 0}})),
            &mut changes,
        );
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["health_check.grace_period", "min"]);
        assert_eq!(changes[1].before, Some(json!(2)));
        assert_eq!(changes[1].after, Some(json!(3)));
    }
}
