//! The plan: what apply must do to turn the resources that exist into the ones the model
//! describes. Pure: built from the compiled graph and a refresh, no I/O.

pub mod capacity;
pub mod diff;
mod render;
pub mod saved;
pub mod scope;

use crate::naming::TAG_IDENTITY;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use capacity::{settle as settle_capacity, CapacityNote, CapacityOutcome};
pub use diff::{attributes_of, mentions, Change};
pub use render::{render, render_changes};
pub use scope::Scope;

use crate::graph::ResourceGraph;
use crate::resource::Observed;

use crate::resource::{Address, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Create,
    Update,
    Replace,
    Delete,
    NoOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Action {
    pub address: Address,
    pub kind: Kind,
    pub action: ActionKind,
    /// The AWS id of the existing resource, for updates, replacements and deletions.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    pub changes: Vec<Change>,
    /// Attributes whose change forces replacement.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub forced_by: Vec<String>,
    /// For a replacement: the new resource is created before the old one is deleted.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub create_before_destroy: bool,
    /// Replaced because `--replace` named it, whatever its attributes say.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub replace_requested: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub unchanged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub environment: String,
    pub actions: Vec<Action>,
    pub summary: Summary,
    /// Resources state recorded before environments had identities: the plan's tag updates
    /// give them the environment's identity; nothing is recreated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub takes_over: Vec<Address>,
    /// Resources tagged with the environment's name that are another environment's: the plan
    /// leaves them alone (see `identity.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<Foreign>,
    /// Groups whose desired capacity in AWS is not the model's, and what the plan does about
    /// it (see `capacity.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capacity: Vec<CapacityNote>,
    /// What the plan covers and replaces on request (`--target`, `--replace`).
    #[serde(default, skip_serializing_if = "Scope::is_default")]
    pub scope: Scope,
}

/// A resource under the environment's name that is not its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Foreign {
    pub address: Address,
    pub id: String,
    /// The identity it carries; none when it predates identities and state never recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// It carries this environment's identity, but kstack never recorded making it (tags
    /// can be copied): `kstack state adopt` makes it the environment's.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub unrecorded: bool,
}

impl Foreign {
    pub fn of(resource: &Observed) -> Foreign {
        Foreign { address: resource.address.clone(), id: resource.id.clone(), identity: resource.tags.get(TAG_IDENTITY).cloned(), unrecorded: false }
    }

    pub fn unrecorded(resource: &Observed) -> Foreign {
        Foreign { unrecorded: true, ..Foreign::of(resource) }
    }
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.actions.iter().any(|a| a.action != ActionKind::NoOp)
    }
}

/// Compares the desired graph (images resolved) with what refresh found, within `scope`.
pub fn plan(environment: &str, desired: &ResourceGraph, observed: &[Observed], scope: &Scope) -> Plan {
    let mut actual: BTreeMap<&Address, &Observed> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for resource in observed {
        match actual.entry(&resource.address) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(resource);
            }
            // Two resources claim one address, e.g. a create retried after a crash: the
            // first one refresh reports is kept; the other must go.
            std::collections::btree_map::Entry::Occupied(_) => duplicates.push(resource),
        }
    }
    let mut actions = Vec::new();
    let mut replaced: BTreeSet<&Address> = BTreeSet::new();
    for resource in desired.in_dependency_order() {
        let Some(existing) = actual.get(&resource.address) else {
            actions.push(Action {
                address: resource.address.clone(),
                kind: resource.kind(),
                action: ActionKind::Create,
                id: None,
                changes: diff::creation(resource),
                forced_by: Vec::new(),
                create_before_destroy: false,
                replace_requested: false,
            });
            continue;
        };
        let mut changes = diff::changes(resource, existing);
        // A dependency replaced gets a new id: whatever refers to it changes too.
        let desired_attributes = attributes_of(resource);
        for (name, value) in desired_attributes.as_object().into_iter().flatten() {
            let refers_to_replaced = replaced.iter().any(|r| diff::mentions(value, r.as_str()));
            if refers_to_replaced && !changes.iter().any(|c| c.path.split('.').next() == Some(name)) {
                changes.push(Change {
                    path: name.clone(),
                    before: Some(value.clone()),
                    after: Some(value.clone()),
                    forces_replacement: resource.kind().forces_replacement(name),
                    replaced_dependency: true,
                });
            }
        }
        for change in &mut changes {
            let attribute = change.path.split('.').next().unwrap_or_default();
            change.forces_replacement = attribute != "tags" && resource.kind().forces_replacement(attribute);
        }
        let forced_by: Vec<String> = changes.iter().filter(|c| c.forces_replacement).map(|c| c.path.clone()).collect();
        let replace_requested = scope.replace.contains(&resource.address);
        let action = if replace_requested {
            replaced.insert(&resource.address);
            ActionKind::Replace
        } else if changes.is_empty() {
            ActionKind::NoOp
        } else if forced_by.is_empty() {
            ActionKind::Update
        } else {
            replaced.insert(&resource.address);
            ActionKind::Replace
        };
        actions.push(Action {
            address: resource.address.clone(),
            kind: resource.kind(),
            action,
            id: Some(existing.id.clone()),
            changes,
            forced_by,
            create_before_destroy: resource.kind().creates_before_destroying(),
            replace_requested,
        });
    }
    let mut deletions: Vec<&Observed> = observed.iter().filter(|o| desired.get(&o.address).is_none()).chain(duplicates).collect();
    deletions.sort_by(|a, b| a.address.cmp(&b.address).then(a.id.cmp(&b.id)));
    for resource in deletions {
        actions.push(Action {
            address: resource.address.clone(),
            kind: resource.kind,
            action: ActionKind::Delete,
            id: Some(resource.id.clone()),
            changes: diff::deletion(resource),
            forced_by: Vec::new(),
            create_before_destroy: false,
            replace_requested: false,
        });
    }
    if let Some(covered) = scope.covered(desired) {
        actions.retain(|action| covered.contains(&action.address));
    }
    // Read like a listing, as Terraform users expect; apply orders by the graph itself.
    actions.sort_by(|a, b| a.address.cmp(&b.address).then(a.id.cmp(&b.id)));
    let mut summary = Summary::default();
    for action in &actions {
        match action.action {
            ActionKind::Create => summary.create += 1,
            ActionKind::Update => summary.update += 1,
            ActionKind::Replace => summary.replace += 1,
            ActionKind::Delete => summary.delete += 1,
            ActionKind::NoOp => summary.unchanged += 1,
        }
    }
    // Launch configurations cannot carry tags: their names keep them recognised.
    let takes_over = observed
        .iter()
        .filter(|o| o.kind.has_own_tags() && !o.tags.contains_key(TAG_IDENTITY) && desired.get(&o.address).is_some())
        .map(|o| o.address.clone())
        .collect();
    Plan { environment: environment.to_owned(), actions, summary, takes_over, left_alone: Vec::new(), capacity: Vec::new(), scope: scope.clone() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::resource::{Resource, SecurityGroupSpec, Spec, VpcSpec};

    fn observed(resource: &Resource, id: &str, attributes: serde_json::Value) -> Observed {
        Observed {
            address: resource.address.clone(),
            kind: resource.kind(),
            id: id.into(),
            tags: BTreeMap::new(),
            attributes,
            assigned: BTreeMap::new(),
        }
    }

    fn action<'a>(plan: &'a Plan, address: &str) -> &'a Action {
        plan.actions.iter().find(|a| a.address.as_str() == address).unwrap()
    }

    #[test]
    fn a_replaced_resource_replaces_what_cannot_follow_it_and_orphans_are_deleted() {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.1.0.0/16".parse().unwrap() }));
        let group =
            Resource::new(Kind::SecurityGroup, "web", Spec::SecurityGroup(SecurityGroupSpec { vpc: vpc.address.clone(), description: "web".into() }));
        let graph = ResourceGraph::build(vec![vpc.clone(), group.clone()]).unwrap();
        let stray = Observed {
            address: Address::new(Kind::Vpc, "old"),
            kind: Kind::Vpc,
            id: "vpc-2".into(),
            tags: BTreeMap::new(),
            attributes: json!({"cidr": "10.9.0.0/16"}),
            assigned: BTreeMap::new(),
        };
        let actual = vec![
            observed(&vpc, "vpc-1", json!({"cidr": "10.0.0.0/16"})),
            observed(&group, "sg-1", json!({"vpc": "vpc.main", "description": "web"})),
            stray,
        ];
        let plan = plan("test", &graph, &actual, &Scope::default());
        let vpc = action(&plan, "vpc.main");
        assert_eq!(vpc.action, ActionKind::Replace);
        assert_eq!(vpc.forced_by, ["cidr"]);
        assert!(!vpc.create_before_destroy);
        let group = action(&plan, "security_group.web");
        assert_eq!(group.action, ActionKind::Replace, "a group cannot move to another VPC");
        assert!(group.changes[0].replaced_dependency);
        assert_eq!(action(&plan, "vpc.old").action, ActionKind::Delete);
        assert_eq!(plan.summary, Summary { create: 0, update: 0, replace: 2, delete: 1, unchanged: 0 });
    }

    #[test]
    fn a_second_resource_claiming_an_address_is_deleted() {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.1.0.0/16".parse().unwrap() }));
        let graph = ResourceGraph::build(vec![vpc.clone()]).unwrap();
        let actual = vec![observed(&vpc, "vpc-1", json!({"cidr": "10.1.0.0/16"})), observed(&vpc, "vpc-2", json!({"cidr": "10.1.0.0/16"}))];
        let plan = plan("test", &graph, &actual, &Scope::default());
        let kinds: Vec<(ActionKind, Option<&str>)> = plan.actions.iter().map(|a| (a.action, a.id.as_deref())).collect();
        assert_eq!(kinds, [(ActionKind::NoOp, Some("vpc-1")), (ActionKind::Delete, Some("vpc-2"))]);
    }

    #[test]
    fn a_replacement_asked_for_replaces_and_a_target_narrows_the_plan_to_what_it_depends_on() {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.1.0.0/16".parse().unwrap() }));
        let group =
            Resource::new(Kind::SecurityGroup, "web", Spec::SecurityGroup(SecurityGroupSpec { vpc: vpc.address.clone(), description: "web".into() }));
        let graph = ResourceGraph::build(vec![vpc.clone(), group.clone()]).unwrap();
        let actual =
            vec![observed(&vpc, "vpc-1", json!({"cidr": "10.1.0.0/16"})), observed(&group, "sg-1", json!({"vpc": "vpc.main", "description": "old"}))];
        let replace = Scope { replace: vec![Address::from("vpc.main")], ..Scope::default() };
        let replaced = plan("test", &graph, &actual, &replace);
        assert!(action(&replaced, "vpc.main").replace_requested && action(&replaced, "vpc.main").action == ActionKind::Replace);
        assert_eq!(action(&replaced, "security_group.web").action, ActionKind::Replace, "what cannot follow the new VPC is replaced too");
        let targeted = plan("test", &graph, &actual, &Scope { targets: vec![Address::from("vpc.main")], ..Scope::default() });
        assert_eq!(targeted.actions.len(), 1, "the group depends on the VPC, not the other way");
        assert_eq!(targeted.summary, Summary { unchanged: 1, ..Summary::default() });
    }
}
