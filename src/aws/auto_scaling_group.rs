//! `asg`: a node group's auto scaling group.

use crate::naming::{TAG_ENVIRONMENT, TAG_UNFINISHED_ROLL};
use crate::resource::AutoScalingGroupSpec;
use std::time::Duration;

use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::builders::DescribeAutoScalingGroupsFluentBuilder;
use aws_sdk_autoscaling::types::{Filter, LaunchTemplateSpecification, Tag};
use serde_json::json;

use super::tags::TagChange;
use super::{id_of, ids_of, AwsError, Cloud, Ids, Observed};

use crate::resource::{Address, Kind, Resource};

pub(super) async fn read(cloud: &Cloud) -> Result<Vec<Observed>, AwsError> {
    let describe = |request: DescribeAutoScalingGroupsFluentBuilder| async move {
        let mut groups = Vec::new();
        let mut pages = request.into_paginator().send();
        while let Some(page) = pages.next().await {
            groups.extend(page?.auto_scaling_groups().iter().cloned());
        }
        Ok::<_, AwsError>(groups)
    };
    let filter = Filter::builder().name(format!("tag:{TAG_ENVIRONMENT}")).values(cloud.environment()).build();
    let mut groups = describe(cloud.autoscaling.describe_auto_scaling_groups().filters(filter)).await?;
    // Recorded groups without the tag (imported, or untagged by hand), by name, 50 a call.
    let untagged = super::tags::untagged_recorded(cloud, Kind::AutoScalingGroup, groups.iter().filter_map(|g| g.auto_scaling_group_name()));
    for names in untagged.chunks(50) {
        groups.extend(describe(cloud.autoscaling.describe_auto_scaling_groups().set_auto_scaling_group_names(Some(names.to_vec()))).await?);
    }
    let mut found = Vec::new();
    {
        for group in &groups {
            let tags = group
                .tags()
                .iter()
                .filter(|t| t.key() != Some(TAG_UNFINISHED_ROLL))
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                .collect();
            let mut subnets: Vec<&str> =
                group.vpc_zone_identifier().unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            subnets.sort_unstable();
            let mut balancers: Vec<&str> = group.load_balancer_names().iter().map(String::as_str).collect();
            balancers.sort_unstable();
            let launch = group.launch_template().and_then(|t| t.launch_template_id()).or(group.launch_configuration_name());
            let attributes = json!({
                "min": group.min_size(),
                "max": group.max_size(),
                "desired": group.desired_capacity(),
                "subnets": subnets,
                "launch": launch,
                "load_balancers": balancers,
                "health_check": {
                    "elb": group.health_check_type() == Some("ELB"),
                    "grace_period": group.health_check_grace_period().unwrap_or(0),
                },
            });
            let name = group.auto_scaling_group_name().unwrap_or_default();
            found.extend(super::tags::observed(&cloud.owner, Kind::AutoScalingGroup, name, tags, attributes));
        }
    }
    Ok(found)
}

struct Settings {
    subnets: String,
    launch_template: Option<LaunchTemplateSpecification>,
    launch_configuration: Option<String>,
    health_check_type: &'static str,
}

fn settings(spec: &AutoScalingGroupSpec, ids: &Ids) -> Result<Settings, AwsError> {
    let AutoScalingGroupSpec { subnets, launch, health_check, .. } = spec;
    let subnets = ids_of(ids, subnets)?.join(",");
    let launch_id = id_of(ids, launch)?;
    let (launch_template, launch_configuration) = if launch.is_kind(Kind::LaunchTemplate) {
        // The latest version, so instances launched after a template change use it.
        let spec = LaunchTemplateSpecification::builder().launch_template_id(launch_id).version("$Latest").build();
        (Some(spec), None)
    } else {
        (None, Some(launch_id.to_owned()))
    };
    Ok(Settings { subnets, launch_template, launch_configuration, health_check_type: if health_check.elb { "ELB" } else { "EC2" } })
}

pub(super) async fn create(cloud: &Cloud, resource: &Resource, spec: &AutoScalingGroupSpec, ids: &Ids) -> Result<String, AwsError> {
    let AutoScalingGroupSpec { min, max, desired, load_balancers, health_check, .. } = spec;
    let settings = settings(spec, ids)?;
    let tags = resource.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).propagate_at_launch(true).build()).collect();
    cloud
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&resource.name)
        .min_size(*min as i32)
        .max_size(*max as i32)
        .desired_capacity(*desired as i32)
        .vpc_zone_identifier(settings.subnets)
        .set_launch_template(settings.launch_template)
        .set_launch_configuration_name(settings.launch_configuration)
        .set_load_balancer_names(Some(ids_of(ids, load_balancers)?))
        .health_check_type(settings.health_check_type)
        .health_check_grace_period(health_check.grace_period as i32)
        .set_tags(Some(tags))
        .send()
        .await?;
    Ok(resource.name.clone())
}

/// Sets the desired capacity only when the plan changes it: a change of other settings never
/// undoes what an autoscaler set meanwhile (see `plan::capacity`).
pub(super) async fn update(cloud: &Cloud, spec: &AutoScalingGroupSpec, actual: &Observed, changed: &[String], ids: &Ids) -> Result<(), AwsError> {
    let AutoScalingGroupSpec { min, max, desired, load_balancers, health_check, .. } = spec;
    let settings = settings(spec, ids)?;
    cloud
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(&actual.id)
        .min_size(*min as i32)
        .max_size(*max as i32)
        .set_desired_capacity(changed.iter().any(|c| c == "desired").then_some(*desired as i32))
        .vpc_zone_identifier(settings.subnets)
        .set_launch_template(settings.launch_template)
        .set_launch_configuration_name(settings.launch_configuration)
        .health_check_type(settings.health_check_type)
        .health_check_grace_period(health_check.grace_period as i32)
        .send()
        .await?;
    let wanted = ids_of(ids, load_balancers)?;
    let current: Vec<String> = actual.attributes["load_balancers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str())
        .map(|b| ids.get(&Address::from(b)).cloned().unwrap_or_else(|| b.to_owned()))
        .collect();
    let attach: Vec<String> = wanted.iter().filter(|b| !current.contains(b)).cloned().collect();
    let detach: Vec<String> = current.iter().filter(|b| !wanted.contains(b)).cloned().collect();
    if !attach.is_empty() {
        cloud.autoscaling.attach_load_balancers().auto_scaling_group_name(&actual.id).set_load_balancer_names(Some(attach)).send().await?;
    }
    if !detach.is_empty() {
        cloud.autoscaling.detach_load_balancers().auto_scaling_group_name(&actual.id).set_load_balancer_names(Some(detach)).send().await?;
    }
    Ok(())
}

/// Deletes the group with its instances and waits until it is gone, so that its subnets,
/// security groups and launch settings can be deleted after it.
pub(super) async fn delete(cloud: &Cloud, name: &str) -> Result<(), AwsError> {
    cloud.autoscaling.delete_auto_scaling_group().auto_scaling_group_name(name).force_delete(true).send().await?;
    for attempt in 0..180u64 {
        let described = cloud.autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await?;
        if described.auto_scaling_groups().is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(attempt.min(4) + 1)).await;
    }
    Err(AwsError::internal(format!("auto scaling group {name} was still deleting after 10 minutes")))
}

/// Retags a group; its tags reach the instances it launches from then on.
pub(super) async fn retag(cloud: &Cloud, name: &str, change: &TagChange) -> Result<(), AwsError> {
    use aws_sdk_autoscaling::types::Tag as GroupTag;
    let tag = |k: &String, v: Option<&String>| {
        GroupTag::builder().resource_id(name).resource_type("auto-scaling-group").key(k).set_value(v.cloned()).propagate_at_launch(true).build()
    };
    if !change.changed.is_empty() {
        let tags = change.changed.iter().map(|(k, v)| tag(k, Some(v))).collect();
        cloud.autoscaling.create_or_update_tags().set_tags(Some(tags)).send().await?;
    }
    if !change.removed.is_empty() {
        let tags = change.removed.iter().map(|k| tag(k, None)).collect();
        cloud.autoscaling.delete_tags().set_tags(Some(tags)).send().await?;
    }
    Ok(())
}
