//! Reading typed values out of marked YAML, reporting every problem with its location.
//!
//! Each decoder returns `None` after recording a problem, so a caller can keep going and
//! find the next problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Node, Span};

use crate::diagnostics::{did_you_mean, expected_one_of, Loc, Problems, SourceId, Spanned};

/// Parses one file. YAML syntax errors become a problem at their location.
pub fn parse(source: SourceId, text: &str, problems: &mut Problems) -> Option<Node> {
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true).toplevel_mapping();
    match marked_yaml::parse_yaml_with_options(source, text, options) {
        Ok(node) => Some(node),
        Err(error) => {
            report_load_error(source, &error, problems);
            None
        }
    }
}

fn report_load_error(source: SourceId, error: &LoadError, problems: &mut Problems) {
    let at = |marker: &marked_yaml::Marker| Loc { source, line: marker.line(), column: marker.column(), len: 1 };
    match error {
        LoadError::TopLevelMustBeMapping(m) => {
            problems
                .error(at(m), "the file must be a YAML mapping of settings")
                .hint("start with `region: <aws-region>` and the sections of an environment");
        }
        LoadError::TopLevelMustBeSequence(m) => {
            problems.error(at(m), "the file must be a YAML list");
        }
        LoadError::UnexpectedAnchor(m) => {
            problems
                .error(at(m), "YAML anchors and aliases are not supported")
                .hint("share settings between environments with `extends: <file>` instead");
        }
        LoadError::MappingKeyMustBeScalar(m) => {
            problems.error(at(m), "a mapping key must be a plain value").hint("keys are names such as `workers`; lists and mappings cannot be keys");
        }
        LoadError::UnexpectedTag(m) => {
            problems.error(at(m), "YAML tags (`!name`) are not supported").hint("remove the tag; values are typed by the setting they belong to");
        }
        LoadError::ScanError(m, e) => {
            problems.error(at(m), format!("invalid YAML: {}", e.info())).hint("check indentation and quoting near this position");
        }
        LoadError::DuplicateKey(inner) => {
            let key = &inner.key;
            let first = loc_of_span(inner.prev_key.span(), 1);
            problems
                .error(scalar_loc(key), format!("`{}` is defined twice in the same mapping", key.as_str()))
                .label("defined again here")
                .hint(format!("the first definition is on line {}; remove or rename one of them", first.line));
        }
    }
}

fn loc_of_span(span: &Span, len: usize) -> Loc {
    span.start().map_or(Loc { source: 0, line: 1, column: 1, len }, |m| Loc { source: m.source(), line: m.line(), column: m.column(), len })
}

pub fn scalar_loc(scalar: &MarkedScalarNode) -> Loc {
    loc_of_span(scalar.span(), scalar.as_str().chars().count().max(1))
}

pub fn loc(node: &Node) -> Loc {
    match node {
        Node::Scalar(s) => scalar_loc(s),
        _ => loc_of_span(node.span(), 1),
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) if is_null(node) => String::from("nothing (null)"),
        Node::Scalar(s) => format!("`{}`", s.as_str()),
        Node::Mapping(_) => String::from("a mapping"),
        Node::Sequence(_) => String::from("a list"),
    }
}

/// `~`, `null` and an empty value all mean "not set".
pub fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

fn type_error(node: &Node, expected: &str, problems: &mut Problems) {
    problems.error(loc(node), format!("expected {expected}, found {}", describe(node))).label(format!("expected {expected}"));
}

/// The keys of a mapping, read one by one; whatever is left at `finish` is unknown.
pub struct MapReader<'n> {
    node: &'n MarkedMappingNode,
    known: Vec<&'static str>,
    what: &'static str,
}

impl<'n> MapReader<'n> {
    /// `what` names the mapping in messages, e.g. "node group".
    pub fn new(node: &'n Node, what: &'static str, problems: &mut Problems) -> Option<Self> {
        match node {
            Node::Mapping(map) => Some(MapReader { node: map, known: Vec::new(), what }),
            _ => {
                type_error(node, &format!("a mapping ({what})"), problems);
                None
            }
        }
    }

    pub fn loc(&self) -> Loc {
        loc_of_span(self.node.span(), 1)
    }

    /// The value of `key`, if present and not null.
    pub fn get(&mut self, key: &'static str) -> Option<&'n Node> {
        self.known.push(key);
        self.node.get(key).filter(|n| !is_null(n))
    }

    pub fn required(&mut self, key: &'static str, problems: &mut Problems) -> Option<&'n Node> {
        let value = self.get(key);
        if value.is_none() {
            let loc = self.node.keys().find(|k| k.as_str() == key).map_or_else(|| self.loc(), scalar_loc);
            problems.error(loc, format!("{} is missing required setting `{key}`", self.what)).hint(format!("add `{key}: ...` to this {}", self.what));
        }
        value
    }

    /// Reports every key that no `get` asked for.
    pub fn finish(self, problems: &mut Problems) {
        for key in self.node.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let hint = match did_you_mean(key.as_str(), self.known.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("settings of a {}: {}", self.what, self.known.join(", ")),
            };
            problems.error(scalar_loc(key), format!("unknown setting `{}` in {}", key.as_str(), self.what)).label("unknown setting").hint(hint);
        }
    }
}

pub fn string(node: &Node, problems: &mut Problems) -> Option<Spanned<String>> {
    match node {
        Node::Scalar(s) => Some(Spanned::new(s.as_str().to_owned(), scalar_loc(s))),
        _ => {
            type_error(node, "a string", problems);
            None
        }
    }
}

pub fn boolean(node: &Node, problems: &mut Problems) -> Option<bool> {
    match node {
        Node::Scalar(s) if s.as_bool().is_some() => s.as_bool(),
        _ => {
            type_error(node, "`true` or `false`", problems);
            None
        }
    }
}

/// An unquoted whole number within `range`.
pub fn number<T>(node: &Node, range: RangeInclusive<T>, problems: &mut Problems) -> Option<Spanned<T>>
where
    T: FromStr + PartialOrd + Display + Copy,
{
    let parsed = match node {
        Node::Scalar(s) if s.may_coerce() => s.as_str().parse::<T>().ok(),
        _ => None,
    };
    match parsed {
        Some(value) if range.contains(&value) => Some(Spanned::new(value, loc(node))),
        Some(value) => {
            problems.error(loc(node), format!("{value} is out of range")).label("out of range").hint(format!(
                "use a number from {} to {}",
                range.start(),
                range.end()
            ));
            None
        }
        None => {
            type_error(node, "a whole number", problems);
            None
        }
    }
}

/// One of a fixed set of words, e.g. a protocol.
pub fn choice<T: Copy>(node: &Node, choices: &[(&str, T)], problems: &mut Problems) -> Option<Spanned<T>> {
    let text = string(node, problems)?;
    match choices.iter().find(|(name, _)| *name == text.value) {
        Some((_, value)) => Some(Spanned::new(*value, text.loc)),
        None => {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            problems
                .error(text.loc, format!("`{}` is not a valid value here", text.value))
                .label("invalid value")
                .hint(expected_one_of(&text.value, &names));
            None
        }
    }
}

/// A list; a single value where a list is expected is not accepted, to keep files uniform.
pub fn list<T>(node: &Node, problems: &mut Problems, mut item: impl FnMut(&Node, &mut Problems) -> Option<T>) -> Option<Vec<T>> {
    match node {
        Node::Sequence(items) => Some(items.iter().filter_map(|n| item(n, problems)).collect()),
        _ => {
            type_error(node, "a list", problems);
            None
        }
    }
}

pub fn string_list(node: &Node, problems: &mut Problems) -> Option<Vec<Spanned<String>>> {
    list(node, problems, string)
}

/// A mapping from names to values, e.g. `node_groups: { workers: {...} }`, in file order.
pub fn named<T>(
    node: &Node,
    what: &'static str,
    problems: &mut Problems,
    mut item: impl FnMut(Spanned<String>, &Node, &mut Problems) -> Option<T>,
) -> Vec<T> {
    let Node::Mapping(map) = node else {
        type_error(node, &format!("a mapping of {what} names to settings"), problems);
        return Vec::new();
    };
    map.iter()
        .filter(|(_, value)| !is_null(value))
        .filter_map(|(key, value)| item(Spanned::new(key.as_str().to_owned(), scalar_loc(key)), value, problems))
        .collect()
}

/// A mapping of plain strings, such as tags.
pub fn string_map(node: &Node, problems: &mut Problems) -> BTreeMap<String, Spanned<String>> {
    named(node, "key", problems, |key, value, problems| string(value, problems).map(|v| (key.value, v))).into_iter().collect()
}

/// Any YAML value as JSON, for IAM policy documents and template variables. Unquoted
/// `true`/`false` and whole numbers keep their type; everything else stays text as written,
/// so a version such as `1.10` is never turned into the number 1.1.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => {
            if let Some(b) = s.as_bool() {
                Value::Bool(b)
            } else if let Some(i) = s.as_i64() {
                Value::from(i)
            } else if is_null(node) {
                Value::Null
            } else {
                Value::String(s.as_str().to_owned())
            }
        }
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(map) => Value::Object(map.iter().map(|(k, v)| (k.as_str().to_owned(), to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Node {
        let mut problems = Problems::default();
        let node = parse(0, text, &mut problems).expect("valid yaml");
        assert!(problems.is_empty());
        node
    }

    #[test]
    fn unknown_keys_are_reported_with_a_suggestion() {
        let node = parse_ok("name: a\ninstanse_type: m5.large\n");
        let mut problems = Problems::default();
        let mut map = MapReader::new(&node, "node group", &mut problems).unwrap();
        map.get("name");
        map.get("instance_type");
        map.finish(&mut problems);
        let problem = problems.iter().next().expect("one problem");
        assert_eq!(problem.loc.unwrap().line, 2);
        assert_eq!(problem.hint.as_deref(), Some("did you mean `instance_type`?"));
    }

    #[test]
    fn quoted_numbers_are_not_numbers_and_versions_stay_text() {
        let node = parse_ok("a: \"3\"\nb: 1.10\nc: 4\n");
        let map = node.as_mapping().unwrap();
        let mut problems = Problems::default();
        assert!(number::<u32>(map.get("a").unwrap(), 0..=9, &mut problems).is_none());
        assert_eq!(to_json(map.get("b").unwrap()), serde_json::json!("1.10"));
        assert_eq!(to_json(map.get("c").unwrap()), serde_json::json!(4));
    }

    #[test]
    fn duplicate_keys_are_an_error() {
        let mut problems = Problems::default();
        assert!(parse(0, "a: 1\na: 2\n", &mut problems).is_none());
        assert_eq!(problems.iter().next().unwrap().loc.unwrap().line, 2);
    }
}
