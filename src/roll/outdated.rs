//! Which of a group's instances run its current launch settings.
//!
//! With a launch template, an instance is current when EC2's `aws:ec2launchtemplate:version`
//! tag (set on every instance launched from a template) names the version the group
//! launches now, so a change to user data alone is caught too. With a launch configuration,
//! the configuration name the group reports for the instance must match, and so must its
//! AMI and instance type, which the instance itself reports.

use aws_sdk_autoscaling::types::AutoScalingGroup;
use aws_sdk_ec2::types::Instance;

use super::{aws, RollError};
use crate::aws::Cloud;

const TEMPLATE_VERSION_TAG: &str = "aws:ec2launchtemplate:version";

/// A group's instances, split by whether they run its current launch settings.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub group: AutoScalingGroup,
    pub current: Vec<String>,
    pub outdated: Vec<String>,
}

/// What the group launches now.
#[derive(Debug, PartialEq)]
struct Desired {
    image: String,
    instance_type: String,
    /// The launch template version number, or the launch configuration's name.
    source: Source,
}

#[derive(Debug, PartialEq)]
enum Source {
    TemplateVersion(i64),
    Configuration(String),
}

pub(super) async fn describe_group(cloud: &Cloud, name: &str) -> Result<AutoScalingGroup, RollError> {
    let described = cloud
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| aws("describing the group")(e.into()))?;
    described.auto_scaling_groups().first().cloned().ok_or_else(|| RollError::NoGroup { group: name.to_owned() })
}

async fn desired(cloud: &Cloud, group: &AutoScalingGroup) -> Result<Desired, RollError> {
    if let Some(template) = group.launch_template() {
        // `$Latest`, `$Default` or a number: AWS resolves it to the version it launches.
        let version = template.version().unwrap_or("$Default");
        let versions = cloud
            .ec2
            .describe_launch_template_versions()
            .set_launch_template_id(template.launch_template_id().map(str::to_owned))
            .versions(version)
            .send()
            .await
            .map_err(|e| aws("reading the launch template")(e.into()))?;
        let found = versions.launch_template_versions().first().ok_or_else(|| RollError::NoTemplateVersion { version: version.to_string() })?;
        let data = found.launch_template_data();
        return Ok(Desired {
            image: data.and_then(|d| d.image_id()).unwrap_or_default().to_owned(),
            instance_type: data.and_then(|d| d.instance_type()).map(|t| t.as_str().to_owned()).unwrap_or_default(),
            source: Source::TemplateVersion(found.version_number().unwrap_or_default()),
        });
    }
    let name = group.launch_configuration_name().unwrap_or_default();
    let configs = cloud
        .autoscaling
        .describe_launch_configurations()
        .launch_configuration_names(name)
        .send()
        .await
        .map_err(|e| aws("reading the launch configuration")(e.into()))?;
    let config = configs.launch_configurations().first().ok_or_else(|| RollError::NoLaunchConfiguration { name: name.to_owned() })?;
    Ok(Desired {
        image: config.image_id().unwrap_or_default().to_owned(),
        instance_type: config.instance_type().unwrap_or_default().to_owned(),
        source: Source::Configuration(name.to_owned()),
    })
}

fn is_current(desired: &Desired, instance: &Instance, group: &AutoScalingGroup) -> bool {
    let same_machine =
        instance.image_id() == Some(desired.image.as_str()) && instance.instance_type().map(|t| t.as_str()) == Some(desired.instance_type.as_str());
    let same_source = match &desired.source {
        Source::TemplateVersion(version) => {
            let tagged = instance.tags().iter().find(|t| t.key() == Some(TEMPLATE_VERSION_TAG)).and_then(|t| t.value());
            // An instance without the tag was not launched from a template: outdated.
            tagged.and_then(|v| v.parse::<i64>().ok()) == Some(*version)
        }
        Source::Configuration(name) => group
            .instances()
            .iter()
            .find(|i| i.instance_id() == instance.instance_id())
            .and_then(|i| i.launch_configuration_name())
            .is_none_or(|launched| launched == name),
    };
    same_machine && same_source
}

pub async fn group_state(cloud: &Cloud, name: &str) -> Result<GroupState, RollError> {
    let group = describe_group(cloud, name).await?;
    let desired = desired(cloud, &group).await?;
    let ids = super::live_members(&group);
    let mut state = GroupState { group, current: Vec::new(), outdated: Vec::new() };
    if ids.is_empty() {
        return Ok(state);
    }
    let described =
        cloud.ec2.describe_instances().set_instance_ids(Some(ids)).send().await.map_err(|e| aws("describing the group's instances")(e.into()))?;
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let id = instance.instance_id().unwrap_or_default().to_owned();
        if is_current(&desired, instance, &state.group) {
            state.current.push(id);
        } else {
            state.outdated.push(id);
        }
    }
    state.current.sort();
    state.outdated.sort();
    Ok(state)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{InstanceType, Tag};

    use super::*;

    fn instance(template_version: Option<&str>) -> Instance {
        let tags = template_version.map(|v| vec![Tag::builder().key(TEMPLATE_VERSION_TAG).value(v).build()]);
        Instance::builder().instance_id("i-1").image_id("ami-1").instance_type(InstanceType::T3Small).set_tags(tags).build()
    }

    #[test]
    fn a_template_version_change_alone_makes_an_instance_outdated() {
        // What a change of user data alone looks like: same AMI and type, a new version.
        let desired = Desired { image: "ami-1".into(), instance_type: "t3.small".into(), source: Source::TemplateVersion(3) };
        let group = AutoScalingGroup::builder().build();
        assert!(is_current(&desired, &instance(Some("3")), &group));
        assert!(!is_current(&desired, &instance(Some("2")), &group));
        assert!(!is_current(&desired, &instance(None), &group), "not launched from the template");
        let other_type = Desired { instance_type: "t3.medium".into(), ..desired };
        assert!(!is_current(&other_type, &instance(Some("3")), &group));
    }

    #[test]
    fn a_configuration_instance_is_outdated_when_the_group_says_it_was_launched_from_another() {
        let desired = Desired { image: "ami-1".into(), instance_type: "t3.small".into(), source: Source::Configuration("new".into()) };
        let member = |config: &str| {
            let member = aws_sdk_autoscaling::types::Instance::builder().instance_id("i-1").launch_configuration_name(config).build();
            AutoScalingGroup::builder().instances(member).build()
        };
        assert!(is_current(&desired, &instance(None), &member("new")));
        assert!(!is_current(&desired, &instance(None), &member("old")));
    }
}
