//! Tags: kstack's filter for finding an environment's resources, and tag updates per service.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use super::{AwsError, Cloud};
use crate::compile::{TAG_ADDRESS, TAG_ENVIRONMENT};
use crate::resource::{Address, Kind};

/// The Describe filter that selects the environment's resources.
pub fn environment_filter(cloud: &Cloud) -> Filter {
    Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(cloud.environment()).build()
}

pub fn ec2_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// Tags at creation, so a resource is never untagged even if kstack dies a moment later.
pub fn ec2_tag_specification(resource_type: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder().resource_type(resource_type).set_tags(Some(ec2_tags(tags))).build()
}

pub fn from_ec2(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

/// The address a resource's tags give it, if it belongs to the environment.
pub fn address_of(tags: &BTreeMap<String, String>) -> Option<Address> {
    tags.get(TAG_ADDRESS).map(|a| Address::from(a.as_str()))
}

/// Sets tags to `desired`: adds and changes, then removes keys no longer wanted.
pub async fn update(
    cloud: &Cloud,
    kind: Kind,
    id: &str,
    actual: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> Result<(), AwsError> {
    let changed: BTreeMap<String, String> = desired.iter().filter(|(k, v)| actual.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let removed: Vec<String> = actual.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
    match kind {
        Kind::AutoScalingGroup => {
            use aws_sdk_autoscaling::types::Tag as GroupTag;
            let tag = |k: &String, v: Option<&String>| {
                GroupTag::builder().resource_id(id).resource_type("auto-scaling-group").key(k).set_value(v.cloned()).propagate_at_launch(true).build()
            };
            if !changed.is_empty() {
                let tags = changed.iter().map(|(k, v)| tag(k, Some(v))).collect();
                cloud.autoscaling.create_or_update_tags().set_tags(Some(tags)).send().await?;
            }
            if !removed.is_empty() {
                let tags = removed.iter().map(|k| tag(k, None)).collect();
                cloud.autoscaling.delete_tags().set_tags(Some(tags)).send().await?;
            }
        }
        Kind::LoadBalancer => {
            use aws_sdk_elasticloadbalancing::types::{Tag as ElbTag, TagKeyOnly};
            if !changed.is_empty() {
                let tags = changed
                    .iter()
                    .map(|(k, v)| ElbTag::builder().key(k).value(v).build())
                    .collect::<Result<_, _>>()
                    .map_err(|e| AwsError::internal(e.to_string()))?;
                cloud.elb.add_tags().load_balancer_names(id).set_tags(Some(tags)).send().await?;
            }
            if !removed.is_empty() {
                let keys = removed.iter().map(|k| TagKeyOnly::builder().key(k).build()).collect();
                cloud.elb.remove_tags().load_balancer_names(id).set_tags(Some(keys)).send().await?;
            }
        }
        Kind::IamRole | Kind::InstanceProfile => {
            use aws_sdk_iam::types::Tag as IamTag;
            let name = super::iam::name_from_arn(id);
            let tags: Vec<IamTag> = changed
                .iter()
                .map(|(k, v)| IamTag::builder().key(k).value(v).build())
                .collect::<Result<_, _>>()
                .map_err(|e| AwsError::internal(e.to_string()))?;
            if kind == Kind::IamRole {
                if !tags.is_empty() {
                    cloud.iam.tag_role().role_name(name).set_tags(Some(tags)).send().await?;
                }
                if !removed.is_empty() {
                    cloud.iam.untag_role().role_name(name).set_tag_keys(Some(removed)).send().await?;
                }
            } else {
                if !tags.is_empty() {
                    cloud.iam.tag_instance_profile().instance_profile_name(name).set_tags(Some(tags)).send().await?;
                }
                if !removed.is_empty() {
                    cloud.iam.untag_instance_profile().instance_profile_name(name).set_tag_keys(Some(removed)).send().await?;
                }
            }
        }
        // Launch configurations cannot be tagged; kstack finds them by name.
        Kind::LaunchConfiguration => {}
        _ => {
            if !changed.is_empty() {
                cloud.ec2.create_tags().resources(id).set_tags(Some(ec2_tags(&changed))).send().await?;
            }
            if !removed.is_empty() {
                let keys = removed.iter().map(|k| Tag::builder().key(k).build()).collect();
                cloud.ec2.delete_tags().resources(id).set_tags(Some(keys)).send().await?;
            }
        }
    }
    Ok(())
}

/// An observed resource, if its tags place it in the environment.
pub fn observed(kind: Kind, id: &str, tags: BTreeMap<String, String>, attributes: serde_json::Value) -> Option<super::Observed> {
    Some(super::Observed { address: address_of(&tags)?, kind, id: id.to_owned(), tags, attributes })
}
