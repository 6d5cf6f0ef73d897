//! The running instances of an environment's node groups, for SSH.

use std::collections::BTreeMap;

use crate::naming::{TAG_ADDRESS, TAG_REBOOT_TIME};
use crate::resource::{Address, Kind};
use aws_sdk_ec2::types::Filter;

use super::tags::from_ec2;
use super::{AwsError, Cloud};

#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    /// The node group, from the `asg.<group>` address its group propagates to it.
    pub group: String,
    pub zone: String,
    /// Its reboot time (`HH:MM`), from the `kstack:reboot-time` tag `kstack reboots` sets.
    pub reboot_time: Option<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
}

/// Running instances of the environment (see `Owner::owns_instance`), one paginated call:
/// those the groups state records launched (AWS tags each with its group's name), whatever
/// else they carry (a group imported from another tool has no kstack tags).
pub async fn running_instances(cloud: &Cloud) -> Result<Vec<Instance>, AwsError> {
    let mut found = Vec::new();
    let groups: Vec<String> = cloud.owner.recorded_ids(Kind::AutoScalingGroup).map(str::to_owned).collect();
    if groups.is_empty() {
        return Ok(found);
    }
    let mut pages = cloud
        .ec2
        .describe_instances()
        .filters(Filter::builder().name("tag:aws:autoscaling:groupName").set_values(Some(groups)).build())
        .filters(Filter::builder().name("instance-state-name").values("running").build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for instance in page?.reservations().iter().flat_map(|r| r.instances()) {
            let tags = from_ec2(instance.tags());
            let tag = |key: &str| tags.get(key).cloned();
            let id = instance.instance_id().unwrap_or_default();
            let group_name = tags.get("aws:autoscaling:groupName").map(String::as_str);
            if !cloud.owner.owns_instance(&tags, group_name) {
                continue;
            }
            // Its group's address as state records it (a moved group's instances keep the
            // address tag they were launched with).
            let recorded = group_name.and_then(|name| cloud.owner.recorded_address(Kind::AutoScalingGroup, name)).map(Address::to_string);
            let Some(group) = recorded.or_else(|| tag(TAG_ADDRESS)).and_then(|a| a.strip_prefix("asg.").map(str::to_owned)) else { continue };
            found.push(Instance {
                id: id.to_owned(),
                group,
                zone: instance.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_owned(),
                reboot_time: tag(TAG_REBOOT_TIME),
                private_ip: instance.private_ip_address().map(str::to_owned),
                public_ip: instance.public_ip_address().map(str::to_owned),
            });
        }
    }
    found.sort_by(|a, b| (&a.group, &a.private_ip).cmp(&(&b.group, &b.private_ip)));
    Ok(found)
}

/// Tags each instance with its reboot time (`instance`, `HH:MM`): one call per distinct time,
/// since CreateTags takes many resources but one value.
pub async fn tag_reboot_times(cloud: &Cloud, times: &[(&str, &str)]) -> Result<(), AwsError> {
    let mut by_time: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (instance, time) in times {
        by_time.entry(time).or_default().push((*instance).to_owned());
    }
    for (time, instances) in by_time {
        let tag = aws_sdk_ec2::types::Tag::builder().key(TAG_REBOOT_TIME).value(time).build();
        cloud.ec2.create_tags().set_resources(Some(instances)).tags(tag).send().await?;
    }
    Ok(())
}
