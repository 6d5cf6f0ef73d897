//! What a plan covers: the whole environment, or only what `--target` names and everything
//! that depends on nothing outside it (the targets and what they depend on, transitively); and
//! what `--replace` names, replaced although no attribute forces it; and the protected
//! resources `--unprotect` lets it delete or replace.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::graph::ResourceGraph;
use crate::resource::Address;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Only these, and what they depend on; everything when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Address>,
    /// Replaced whatever their attributes say (a node that misbehaves, a resource changed by
    /// hand in a way refresh cannot see).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<Address>,
    /// Protected resources (`protect:`) the command may delete or replace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unprotect: Vec<Address>,
}

impl Scope {
    /// The whole environment, nothing replaced on request.
    pub fn is_default(&self) -> bool {
        self.targets.is_empty() && self.replace.is_empty() && self.unprotect.is_empty()
    }

    /// Whether the plan leaves parts of the model out (`--target`).
    pub fn is_partial(&self) -> bool {
        !self.targets.is_empty()
    }

    /// The addresses a partial plan covers: each target, and every resource of the model a
    /// covered one depends on. `None` when the plan covers everything.
    pub fn covered(&self, desired: &ResourceGraph) -> Option<BTreeSet<Address>> {
        if !self.is_partial() {
            return None;
        }
        let mut covered = BTreeSet::new();
        let mut next: Vec<Address> = self.targets.clone();
        while let Some(address) = next.pop() {
            if let Some(resource) = desired.get(&address) {
                next.extend(resource.dependencies().filter(|d| !covered.contains(*d)).cloned());
            }
            covered.insert(address);
        }
        Some(covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Kind, Resource, SecurityGroupSpec, Spec, VpcSpec};

    #[test]
    fn a_target_covers_what_it_depends_on_and_nothing_that_depends_on_it() {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.1.0.0/16".parse().unwrap() }));
        let group = |name: &str| {
            Resource::new(Kind::SecurityGroup, name, Spec::SecurityGroup(SecurityGroupSpec { vpc: vpc.address.clone(), description: name.into() }))
        };
        let graph = ResourceGraph::build(vec![vpc.clone(), group("web"), group("db")]).unwrap();
        let scope = Scope { targets: vec![Address::from("security_group.web")], ..Scope::default() };
        let covered: Vec<String> = scope.covered(&graph).unwrap().iter().map(Address::to_string).collect();
        assert_eq!(covered, ["security_group.web", "vpc.main"]);
        let everything = Scope::default();
        assert!(everything.covered(&graph).is_none() && everything.is_default());
    }
}
