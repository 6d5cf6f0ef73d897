//! Tags: kstack's filter for finding an environment's resources, EC2's tag shapes, and what a
//! tag update changes (each service's provider applies it).

use crate::naming::{TAG_ADDRESS, TAG_ENVIRONMENT};
use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::{AwsError, Cloud};

use crate::identity::Owner;
use crate::resource::{Address, Kind};

/// The Describe filter that selects the environment's resources.
pub(super) fn environment_filter(cloud: &Cloud) -> Filter {
    Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(cloud.environment()).build()
}

/// An EC2 Describe call's answers for the environment: by its tag, then, for ids of `kind`
/// state records that the tag did not find (resources imported from another tool, or whose
/// tags were removed by hand), by the kind's `id_filter` (`vpc-id`; `None` where the call has
/// none, which reads them all and keeps those). The second call is made only when there are
/// such ids, so calls grow with kinds, never with resources.
pub(super) async fn describe_ec2<T, Answer>(
    cloud: &Cloud,
    kind: Kind,
    id_filter: Option<&str>,
    describe: impl Fn(Option<Filter>) -> Answer,
    id_of: impl Fn(&T) -> Option<&str>,
) -> Result<Vec<T>, AwsError>
where
    Answer: std::future::Future<Output = Result<Vec<T>, AwsError>>,
{
    let mut found = describe(Some(environment_filter(cloud))).await?;
    let untagged = untagged_recorded(cloud, kind, found.iter().filter_map(&id_of));
    if !untagged.is_empty() {
        let filter = id_filter.map(|name| Filter::builder().name(name).set_values(Some(untagged.clone())).build());
        let more = describe(filter).await?;
        found.extend(more.into_iter().filter(|item| id_of(item).is_some_and(|id| untagged.iter().any(|u| u == id))));
    }
    Ok(found)
}

/// The ids of `kind` state records that are not among `found`.
pub(super) fn untagged_recorded<'a>(cloud: &Cloud, kind: Kind, found: impl Iterator<Item = &'a str>) -> Vec<String> {
    let found: std::collections::BTreeSet<&str> = found.collect();
    cloud.owner.recorded_ids(kind).filter(|id| !found.contains(id)).map(str::to_owned).collect()
}

pub(super) fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// Tags at creation, so a resource is never untagged even if kstack dies a moment later.
pub(super) fn ec2_tag_specification(resource_type: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder().resource_type(resource_type).set_tags(Some(ec2_tags(tags))).build()
}

pub fn from_ec2(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

/// The address a resource's tags give it, if it belongs to the environment.
fn address_of(tags: &BTreeMap<String, String>) -> Option<Address> {
    tags.get(TAG_ADDRESS).map(|a| Address::from(a.as_str()))
}

/// A tag update: keys added or changed, then keys removed.
pub(super) struct TagChange {
    pub changed: BTreeMap<String, String>,
    pub removed: Vec<String>,
}

impl TagChange {
    /// What takes a resource's tags from `actual` to `desired`.
    pub(super) fn between(actual: &BTreeMap<String, String>, desired: &BTreeMap<String, String>) -> TagChange {
        let changed = desired.iter().filter(|(k, v)| actual.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let removed = actual.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        TagChange { changed, removed }
    }
}

/// Retags an EC2 resource.
pub(super) async fn retag_ec2(cloud: &Cloud, id: &str, change: &TagChange) -> Result<(), AwsError> {
    if !change.changed.is_empty() {
        cloud.ec2.create_tags().resources(id).set_tags(Some(ec2_tags(&change.changed))).send().await?;
    }
    if !change.removed.is_empty() {
        let keys = change.removed.iter().map(|k| Tag::builder().key(k).build()).collect();
        cloud.ec2.delete_tags().resources(id).set_tags(Some(keys)).send().await?;
    }
    Ok(())
}

/// An observed resource, if its tags or state's record place it in the environment.
pub(super) fn observed(
    owner: &Owner,
    kind: Kind,
    id: &str,
    tags: BTreeMap<String, String>,
    attributes: serde_json::Value,
) -> Option<super::Observed> {
    let address = address_of(&tags).or_else(|| owner.recorded_address(kind, id).cloned())?;
    Some(super::Observed { address, kind, id: id.to_owned(), tags, attributes, assigned: BTreeMap::new() })
}
