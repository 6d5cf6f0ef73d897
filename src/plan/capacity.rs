//! Whose desired capacity a group has. An autoscaler (cluster-autoscaler, a scheduled action,
//! a person in the console) resizes groups within min..max; that size is theirs. The model's
//! `desired` is the size at creation, and the size a person asks for by changing it in the
//! file: state records what the model asked at each apply (`asked`), so a new ask is told
//! from an old one. Without a record of an ask (a group adopted, a state from before asks were
//! recorded, a file without `desired:`) the group keeps its size. A new min or max that
//! excludes the current size clamps it. Pure.

use crate::resource::AutoScalingGroupSpec;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resource::Observed;
use crate::resource::{Address, Resource, Spec};

/// What became of a group's desired capacity where the group's size and the model's differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityNote {
    pub address: Address,
    /// The group's desired capacity in AWS.
    pub observed: u32,
    /// The model's `desired`.
    pub model: u32,
    pub outcome: CapacityOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityOutcome {
    /// Set outside kstack within min..max, and the model asks nothing new: kept.
    Kept,
    /// Set outside kstack, outside the new min..max: moved to the nearest bound.
    Clamped { to: u32 },
    /// The model's `desired` changed since kstack last applied it: a person asks for it.
    Asked,
}

/// Sets each existing group's `desired` to the capacity apply should leave it at, and says
/// why wherever that is not simply the model's. `recorded` is state's record.
pub fn settle<'a>(
    desired: impl IntoIterator<Item = &'a mut Resource>,
    observed: &[Observed],
    recorded: &BTreeMap<Address, Observed>,
) -> Vec<CapacityNote> {
    let mut notes = Vec::new();
    for resource in desired {
        let Spec::AutoScalingGroup(AutoScalingGroupSpec { min, max, desired: capacity, asked, .. }) = &mut resource.spec else { continue };
        let Some(size) = observed.iter().find(|o| o.address == resource.address).and_then(|o| o.attributes["desired"].as_u64()) else {
            continue;
        };
        let size = size as u32;
        let last_asked = recorded.get(&resource.address).and_then(|r| r.attributes.get("asked")?.as_u64());
        let outcome = match (*asked, last_asked) {
            (Some(asked), Some(last)) if u64::from(asked) != last => CapacityOutcome::Asked,
            _ if size < *min || size > *max => CapacityOutcome::Clamped { to: size.clamp(*min, *max) },
            _ => CapacityOutcome::Kept,
        };
        *capacity = match outcome {
            CapacityOutcome::Asked => asked.unwrap_or(size),
            CapacityOutcome::Clamped { to } => to,
            CapacityOutcome::Kept => size,
        };
        let model = asked.unwrap_or(*min);
        if size != model || outcome != CapacityOutcome::Kept {
            notes.push(CapacityNote { address: resource.address.clone(), observed: size, model, outcome });
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GroupHealthCheck;
    use crate::resource::Kind;
    use serde_json::json;

    fn group(min: u32, max: u32, desired: u32) -> Vec<Resource> {
        let spec = Spec::AutoScalingGroup(AutoScalingGroupSpec {
            min,
            max,
            desired,
            asked: Some(desired),
            subnets: Vec::new(),
            launch: Address::new(Kind::LaunchTemplate, "workers"),
            load_balancers: Vec::new(),
            health_check: GroupHealthCheck { elb: false, grace_period: 0 },
        });
        vec![Resource::new(Kind::AutoScalingGroup, "workers", spec)]
    }

    fn observed(desired: u32) -> Vec<Observed> {
        vec![Observed {
            address: Address::new(Kind::AutoScalingGroup, "workers"),
            kind: Kind::AutoScalingGroup,
            id: String::from("dev-workers"),
            tags: BTreeMap::new(),
            attributes: json!({ "desired": desired }),
            assigned: BTreeMap::new(),
        }]
    }

    fn recorded(attributes: serde_json::Value) -> BTreeMap<Address, Observed> {
        let mut record = observed(0).remove(0);
        record.attributes = attributes;
        BTreeMap::from([(record.address.clone(), record)])
    }

    fn capacity(group: &[Resource]) -> u32 {
        match group.first().map(|r| &r.spec) {
            Some(Spec::AutoScalingGroup(AutoScalingGroupSpec { desired, .. })) => *desired,
            other => panic!("a group was expected, not {other:?}"),
        }
    }

    fn settled(mut group: Vec<Resource>, size: u32, record: serde_json::Value) -> (u32, Vec<CapacityOutcome>) {
        let notes = settle(&mut group, &observed(size), &recorded(record));
        (capacity(&group), notes.iter().map(|n| n.outcome).collect())
    }

    #[test]
    fn a_size_set_outside_kstack_within_bounds_is_kept_and_said() {
        assert_eq!(settled(group(1, 6, 3), 5, json!({"desired": 3, "asked": 3})), (5, vec![CapacityOutcome::Kept]));
        // No ask recorded (a state from before asks, or a group adopted with the autoscaler's
        // size as `desired`): kept, never taken for an ask.
        assert_eq!(settled(group(1, 6, 3), 5, json!({"desired": 5})), (5, vec![CapacityOutcome::Kept]));
        // Kept at the size kstack itself set before, silently.
        assert_eq!(settled(group(1, 6, 3), 3, json!({"desired": 3, "asked": 3})), (3, vec![]));
        // A group adopted without a record keeps its size too.
        let mut adopted = group(1, 6, 3);
        assert_eq!(settle(&mut adopted, &observed(4), &BTreeMap::new())[0].outcome, CapacityOutcome::Kept);
        assert_eq!(capacity(&adopted), 4);
    }

    #[test]
    fn a_new_value_in_the_model_is_a_persons_ask() {
        // The autoscaler's 5 was kept (state says desired 5, asked 3); the file now says 4.
        assert_eq!(settled(group(1, 6, 4), 5, json!({"desired": 5, "asked": 3})), (4, vec![CapacityOutcome::Asked]));
    }

    #[test]
    fn a_file_without_desired_asks_nothing_so_a_new_min_inside_the_size_keeps_it() {
        let mut unwritten = group(3, 6, 3);
        if let Spec::AutoScalingGroup(AutoScalingGroupSpec { asked, .. }) = &mut unwritten[0].spec {
            *asked = None;
        }
        assert_eq!(settled(unwritten.clone(), 5, json!({"desired": 5})), (5, vec![CapacityOutcome::Kept]));
        assert_eq!(settled(unwritten, 2, json!({"desired": 2})), (3, vec![CapacityOutcome::Clamped { to: 3 }]));
    }

    #[test]
    fn new_bounds_that_exclude_the_size_clamp_it() {
        assert_eq!(settled(group(1, 4, 3), 5, json!({"desired": 5, "asked": 3})), (4, vec![CapacityOutcome::Clamped { to: 4 }]));
        assert_eq!(settled(group(3, 6, 3), 2, json!({"desired": 2, "asked": 3})), (3, vec![CapacityOutcome::Clamped { to: 3 }]));
    }
}
