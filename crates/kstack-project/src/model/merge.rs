//! How `extends` combines an environment file with the base it names.
//!
//! The rules, also in the README:
//! - mappings merge key by key, recursively, so a child overrides one setting of one
//!   node group without repeating the rest;
//! - lists and plain values in the child replace the base's whole value;
//! - a key set to `null` (or `~`) in the child removes it from the base.
//!
//! Every merged node keeps the file and position it came from, so a problem found later
//! points into the file that actually holds the offending value.

use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{Node, Span};

use crate::yaml::is_null;

pub fn merge(base: Node, child: Node) -> Node {
    match (base, child) {
        (Node::Mapping(mut base), Node::Mapping(mut child)) => {
            for (key, value) in std::mem::take(&mut *child) {
                if is_null(&value) {
                    base.remove(&key);
                    continue;
                }
                match base.get_mut(&key) {
                    Some(slot) => {
                        let old = std::mem::replace(slot, placeholder());
                        *slot = merge(old, value);
                    }
                    None => {
                        base.insert(key, value);
                    }
                }
            }
            Node::Mapping(base)
        }
        (_, child) => child,
    }
}

fn placeholder() -> Node {
    Node::Scalar(MarkedScalarNode::new_empty(Span::new_blank()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Problems;

    fn parse(source: usize, text: &str) -> Node {
        crate::yaml::parse(source, text, &mut Problems::default()).unwrap()
    }

    #[test]
    fn mappings_merge_lists_replace_and_null_removes() {
        let base = parse(0, "groups:\n  workers: {min: 3, max: 30, zones: [a, b, c]}\n  gpu: {min: 0}\nregion: eu-west-1\n");
        let child = parse(1, "groups:\n  workers: {max: 5, zones: [a]}\n  gpu: ~\n");
        let merged = crate::yaml::to_json(&merge(base, child));
        assert_eq!(
            merged,
            serde_json::json!({
                "groups": {"workers": {"min": 3, "max": 5, "zones": ["a"]}},
                "region": "eu-west-1"
            })
        );
    }

    #[test]
    fn merged_values_remember_their_file() {
        let base = parse(0, "a: {b: 1, c: 2}\n");
        let child = parse(1, "a: {c: 3}\n");
        let merged = merge(base, child);
        let a = merged.as_mapping().unwrap().get_mapping("a").unwrap();
        assert_eq!(a.get_node("b").unwrap().span().start().unwrap().source(), 0);
        assert_eq!(a.get_node("c").unwrap().span().start().unwrap().source(), 1);
    }
}
