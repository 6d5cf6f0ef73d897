//! Resolves images of `images/` to the newest AMI baked for them, and finds the AMIs that
//! launch templates and configurations use.

use crate::naming::{TAG_ENVIRONMENT, TAG_IMAGE, TAG_PROJECT};
use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{Filter, Image};

use super::{AwsError, Cloud};

/// Whether `project` may launch `image`: its own bakes (tagged `kstack:project` with its name)
/// and untagged ones (a project without a name bakes those, and a stand-in made by hand is
/// one), never one tagged with another project's name. EC2 cannot filter on a tag's absence,
/// so this is checked on what a call returned.
pub fn usable_by(image: &Image, project: Option<&str>) -> bool {
    match image.tags().iter().find(|t| t.key() == Some(TAG_PROJECT)) {
        Some(tag) => project.is_some_and(|project| tag.value() == Some(project)),
        None => true,
    }
}

/// The newest available AMI of each named image that `project` may launch; names without one
/// are left out.
pub async fn resolve_images(cloud: &Cloud, names: &[String], project: Option<&str>) -> Result<BTreeMap<String, String>, AwsError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let images = cloud
        .ec2
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name(format!("tag:{TAG_IMAGE}")).set_values(Some(names.to_vec())).build())
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await?;
    let mut newest: BTreeMap<String, (String, String)> = BTreeMap::new();
    for image in images.images().iter().filter(|image| usable_by(image, project)) {
        let Some(name) = image.tags().iter().find(|t| t.key() == Some(TAG_IMAGE)).and_then(|t| t.value()) else {
            continue;
        };
        let (Some(id), created) = (image.image_id(), image.creation_date().unwrap_or_default()) else { continue };
        let entry = newest.entry(name.to_owned()).or_insert_with(|| (String::new(), String::new()));
        // ISO 8601 timestamps order correctly as text.
        if created >= entry.1.as_str() {
            *entry = (id.to_owned(), created.to_owned());
        }
    }
    Ok(newest.into_iter().map(|(name, (id, _))| (name, id)).collect())
}

/// Every AMI in the region that something starts instances from, with what does: each
/// launch configuration, and each launch template's default and latest versions and the
/// versions auto scaling groups name. A user is named by the environment its kstack tags
/// say (a configuration by its group's), else by its kind and name. Whoever made them: an
/// AMI any of them uses is never taken away. A few calls, one more per launch template.
pub async fn images_in_use(cloud: &Cloud) -> Result<BTreeMap<String, BTreeSet<String>>, AwsError> {
    let environment = |tags: Vec<(Option<&str>, Option<&str>)>| {
        tags.into_iter().find(|(k, _)| *k == Some(TAG_ENVIRONMENT)).and_then(|(_, v)| v).map(|env| format!("environment {env}"))
    };
    // Template id or name → versions groups name; configuration name → its group's label.
    let (mut named_versions, mut configuration_users) = (BTreeMap::<String, BTreeSet<String>>::new(), BTreeMap::new());
    let mut pages = cloud.autoscaling.describe_auto_scaling_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        for group in page?.auto_scaling_groups() {
            let label = environment(group.tags().iter().map(|t| (t.key(), t.value())).collect());
            let mixed = group.mixed_instances_policy().and_then(|m| m.launch_template()).and_then(|t| t.launch_template_specification());
            for spec in group.launch_template().into_iter().chain(mixed) {
                let version = spec.version().unwrap_or("$Default").to_owned();
                for key in spec.launch_template_id().into_iter().chain(spec.launch_template_name()) {
                    named_versions.entry(key.to_owned()).or_default().insert(version.clone());
                }
            }
            if let (Some(configuration), Some(label)) = (group.launch_configuration_name(), label) {
                configuration_users.insert(configuration.to_owned(), label);
            }
        }
    }
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pages = cloud.autoscaling.describe_launch_configurations().into_paginator().send();
    while let Some(page) = pages.next().await {
        for configuration in page?.launch_configurations() {
            let (Some(name), Some(ami)) = (configuration.launch_configuration_name(), configuration.image_id()) else { continue };
            let label = configuration_users.get(name).cloned().unwrap_or_else(|| format!("launch configuration {name}"));
            used.entry(ami.to_owned()).or_default().insert(label);
        }
    }
    let mut templates = Vec::new();
    let mut pages = cloud.ec2.describe_launch_templates().into_paginator().send();
    while let Some(page) = pages.next().await {
        templates.extend(page?.launch_templates().iter().cloned());
    }
    for template in templates {
        let (Some(id), Some(name)) = (template.launch_template_id(), template.launch_template_name()) else { continue };
        let label = environment(template.tags().iter().map(|t| (t.key(), t.value())).collect()).unwrap_or_else(|| format!("launch template {name}"));
        let mut versions = BTreeSet::from([String::from("$Default"), String::from("$Latest")]);
        versions.extend(named_versions.get(id).into_iter().chain(named_versions.get(name)).flatten().cloned());
        let described =
            cloud.ec2.describe_launch_template_versions().launch_template_id(id).set_versions(Some(versions.into_iter().collect())).send().await?;
        for version in described.launch_template_versions() {
            if let Some(ami) = version.launch_template_data().and_then(|d| d.image_id()) {
                used.entry(ami.to_owned()).or_default().insert(label.clone());
            }
        }
    }
    Ok(used)
}
