//! Rolling a node group onto its current launch settings: surge new instances, wait until
//! they are in service (and healthy behind the group's load balancers), then terminate the
//! outdated ones through the group, which deregisters them from their load balancers and
//! waits out connection draining first. Capacity never drops below the group's size.
//!
//! An instance is outdated when its AMI or instance type differs from the group's launch
//! template (latest version) or launch configuration: the instance's own attributes, which
//! AWS and the emulator both report truthfully, rather than the group's bookkeeping.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::AutoScalingGroup;

use crate::aws::{AwsError, Cloud};
use crate::model::RollHooks;

/// Processes that would fight a roll: rebalancing across zones and replacing instances the
/// roll takes out of service.
const SUSPENDED: [&str; 2] = ["AZRebalance", "ReplaceUnhealthy"];

#[derive(Debug, thiserror::Error)]
pub enum RollError {
    #[error("AWS failed while {doing}: {error}")]
    Aws { doing: String, error: AwsError },
    #[error("{0}")]
    Failed(String),
}

fn aws(doing: &str) -> impl FnOnce(AwsError) -> RollError + '_ {
    move |error| RollError::Aws { doing: doing.to_owned(), error }
}

/// A group's instances, split by whether they run its current launch settings.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub group: String,
    pub current: Vec<String>,
    pub outdated: Vec<String>,
}

async fn describe_group(cloud: &Cloud, name: &str) -> Result<AutoScalingGroup, RollError> {
    let described = cloud
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| aws("describing the group")(e.into()))?;
    described
        .auto_scaling_groups()
        .first()
        .cloned()
        .ok_or_else(|| RollError::Failed(format!("auto scaling group {name} does not exist; apply the environment first")))
}

/// The (AMI, instance type) the group launches now.
async fn desired_settings(cloud: &Cloud, group: &AutoScalingGroup) -> Result<(String, String), RollError> {
    if let Some(template) = group.launch_template().and_then(|t| t.launch_template_id()) {
        let versions = cloud
            .ec2
            .describe_launch_template_versions()
            .launch_template_id(template)
            .versions("$Latest")
            .send()
            .await
            .map_err(|e| aws("reading the launch template")(e.into()))?;
        let data = versions.launch_template_versions().first().and_then(|v| v.launch_template_data());
        return Ok((
            data.and_then(|d| d.image_id()).unwrap_or_default().to_owned(),
            data.and_then(|d| d.instance_type()).map(|t| t.as_str().to_owned()).unwrap_or_default(),
        ));
    }
    let name = group.launch_configuration_name().unwrap_or_default();
    let configs = cloud
        .autoscaling
        .describe_launch_configurations()
        .launch_configuration_names(name)
        .send()
        .await
        .map_err(|e| aws("reading the launch configuration")(e.into()))?;
    let config = configs
        .launch_configurations()
        .first()
        .ok_or_else(|| RollError::Failed(format!("launch configuration {name} does not exist")))?;
    Ok((
        config.image_id().unwrap_or_default().to_owned(),
        config.instance_type().unwrap_or_default().to_owned(),
    ))
}

pub async fn group_state(cloud: &Cloud, name: &str) -> Result<GroupState, RollError> {
    let group = describe_group(cloud, name).await?;
    let (ami, instance_type) = desired_settings(cloud, &group).await?;
    let ids: Vec<String> = group.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    let mut state = GroupState { group: name.to_owned(), current: Vec::new(), outdated: Vec::new() };
    if ids.is_empty() {
        return Ok(state);
    }
    let described = cloud
        .ec2
        .describe_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .map_err(|e| aws("describing the group's instances")(e.into()))?;
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let id = instance.instance_id().unwrap_or_default().to_owned();
        let same = instance.image_id() == Some(ami.as_str())
            && instance.instance_type().map(|t| t.as_str()) == Some(instance_type.as_str());
        if same {
            state.current.push(id);
        } else {
            state.outdated.push(id);
        }
    }
    state.current.sort();
    state.outdated.sort();
    Ok(state)
}

pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What a roll of one group needs besides AWS.
pub struct RollGroup<'a> {
    pub environment: &'a str,
    /// The node group's name in the model.
    pub group: &'a str,
    /// Its auto scaling group's name.
    pub aws_name: &'a str,
    pub surge: usize,
    pub timeout: Duration,
    pub hooks: &'a RollHooks,
}

/// Replaces the group's outdated instances, `surge` at a time. Returns how many.
pub async fn roll_group(cloud: &Cloud, roll: &RollGroup<'_>, progress: Progress<'_>) -> Result<usize, RollError> {
    let (name, surge, timeout) = (roll.aws_name, roll.surge, roll.timeout);
    let state = group_state(cloud, name).await?;
    if state.outdated.is_empty() {
        return Ok(0);
    }
    cloud
        .autoscaling
        .suspend_processes()
        .auto_scaling_group_name(name)
        .set_scaling_processes(Some(SUSPENDED.iter().map(|p| (*p).to_owned()).collect()))
        .send()
        .await
        .map_err(|e| aws("suspending the group's processes")(e.into()))?;
    let rolled = replace_outdated(cloud, roll, &state.outdated, surge.max(1), timeout, progress).await;
    // Restored whatever happened, so a failed roll leaves the group healing itself again.
    let resumed = cloud
        .autoscaling
        .resume_processes()
        .auto_scaling_group_name(name)
        .set_scaling_processes(Some(SUSPENDED.iter().map(|p| (*p).to_owned()).collect()))
        .send()
        .await;
    let rolled = rolled?;
    resumed.map_err(|e| aws("resuming the group's processes")(e.into()))?;
    Ok(rolled)
}

async fn replace_outdated(
    cloud: &Cloud,
    roll: &RollGroup<'_>,
    outdated: &[String],
    surge: usize,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<usize, RollError> {
    let name = roll.aws_name;
    let mut replaced = 0;
    for batch in outdated.chunks(surge) {
        let group = describe_group(cloud, name).await?;
        let desired = group.desired_capacity().unwrap_or(0);
        let max = group.max_size().unwrap_or(0);
        let known: BTreeSet<String> = group.instances().iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
        let wanted = desired + batch.len() as i32;
        progress(&format!("{name}: surging to {wanted} for {}", batch.join(", ")));
        cloud
            .autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .desired_capacity(wanted)
            .max_size(max.max(wanted))
            .send()
            .await
            .map_err(|e| aws("surging the group")(e.into()))?;
        let fresh = wait_for_new_in_service(cloud, name, &known, batch.len(), timeout).await?;
        progress(&format!("{name}: {} in service", fresh.join(", ")));
        // Until an old instance goes, a failure undoes the surge: the group is as it was.
        if let Some(hook) = &roll.hooks.readiness {
            for instance in describe_instances(cloud, &fresh).await? {
                if let Err(error) = run_hook("readiness", hook, roll, Some(&instance), progress).await {
                    undo_surge(cloud, roll, &fresh, max, progress).await?;
                    return Err(error);
                }
            }
        }
        for (done, instance) in describe_instances(cloud, batch).await?.into_iter().enumerate() {
            if let Some(hook) = &roll.hooks.pre_stop {
                if let Err(error) = run_hook("pre_stop", hook, roll, Some(&instance), progress).await {
                    undo_surge(cloud, roll, &fresh[done..], max, progress).await?;
                    return Err(error);
                }
            }
            let old = &instance.id;
            progress(&format!("{name}: terminating {old} (the group deregisters it and waits out connection draining)"));
            terminate_in_group(cloud, old, "terminating an outdated instance").await?;
        }
        wait_until_gone(cloud, name, batch, timeout).await?;
        if let Some(hook) = &roll.hooks.validate {
            run_hook("validate", hook, roll, None, progress).await?;
        }
        set_max_size(cloud, name, max).await?;
        replaced += batch.len();
    }
    Ok(replaced)
}

/// Terminates surged instances that no old instance made room for, and restores the
/// group's maximum, so a stopped roll leaves the group's size as it found it.
async fn undo_surge(cloud: &Cloud, roll: &RollGroup<'_>, surplus: &[String], max: i32, progress: Progress<'_>) -> Result<(), RollError> {
    let name = roll.aws_name;
    for id in surplus {
        progress(&format!("{name}: stopping; terminating surged instance {id}"));
        terminate_in_group(cloud, id, "undoing the surge").await?;
    }
    wait_until_gone(cloud, name, surplus, roll.timeout).await?;
    set_max_size(cloud, name, max).await
}

/// Terminates an instance through its group, which shrinks by one and drains it first.
async fn terminate_in_group(cloud: &Cloud, id: &str, doing: &str) -> Result<(), RollError> {
    cloud
        .autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .map_err(|e| aws(doing)(e.into()))?;
    Ok(())
}

async fn set_max_size(cloud: &Cloud, name: &str, max: i32) -> Result<(), RollError> {
    cloud
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(name)
        .max_size(max)
        .send()
        .await
        .map_err(|e| aws("restoring the group's maximum")(e.into()))?;
    Ok(())
}

/// Waits for `count` instances not in `known` to be InService in the group and healthy on
/// every load balancer of the group.
async fn wait_for_new_in_service(
    cloud: &Cloud,
    name: &str,
    known: &BTreeSet<String>,
    count: usize,
    timeout: Duration,
) -> Result<Vec<String>, RollError> {
    let deadline = Instant::now() + timeout;
    loop {
        let group = describe_group(cloud, name).await?;
        let fresh: Vec<String> = group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .filter(|id| !known.contains(id))
            .collect();
        if fresh.len() >= count && healthy_behind_load_balancers(cloud, &group, &fresh).await? {
            return Ok(fresh);
        }
        if Instant::now() > deadline {
            return Err(RollError::Failed(format!(
                "{name}: new instances were not in service and healthy within {}s; the outdated ones are untouched",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn healthy_behind_load_balancers(cloud: &Cloud, group: &AutoScalingGroup, instances: &[String]) -> Result<bool, RollError> {
    for balancer in group.load_balancer_names() {
        let health = cloud
            .elb
            .describe_instance_health()
            .load_balancer_name(balancer)
            .send()
            .await
            .map_err(|e| aws("reading load balancer health")(e.into()))?;
        let healthy = instances.iter().all(|id| {
            health
                .instance_states()
                .iter()
                .any(|s| s.instance_id() == Some(id.as_str()) && s.state() == Some("InService"))
        });
        if !healthy {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn wait_until_gone(cloud: &Cloud, name: &str, instances: &[String], timeout: Duration) -> Result<(), RollError> {
    let deadline = Instant::now() + timeout;
    loop {
        let group = describe_group(cloud, name).await?;
        let left = group.instances().iter().any(|i| i.instance_id().is_some_and(|id| instances.iter().any(|o| o == id)));
        if !left {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(RollError::Failed(format!("{name}: {} did not leave the group within {}s", instances.join(", "), timeout.as_secs())));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What hooks are told about an instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub address: String,
    /// The private DNS name, which Kubernetes uses as the node name on AWS.
    pub name: String,
}

async fn describe_instances(cloud: &Cloud, ids: &[String]) -> Result<Vec<InstanceInfo>, RollError> {
    let described = cloud
        .ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(|e| aws("describing instances")(e.into()))?;
    let mut found: Vec<InstanceInfo> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| InstanceInfo {
            id: i.instance_id().unwrap_or_default().to_owned(),
            address: i.private_ip_address().unwrap_or_default().to_owned(),
            name: i.private_dns_name().unwrap_or_default().to_owned(),
        })
        .collect();
    // In the order asked for, so hooks run in a predictable order.
    found.sort_by_key(|i| ids.iter().position(|id| *id == i.id));
    Ok(found)
}

/// Renders and runs a hook with `sh -c` on this machine; a failure stops the roll.
async fn run_hook(
    which: &str,
    template: &str,
    roll: &RollGroup<'_>,
    instance: Option<&InstanceInfo>,
    progress: Progress<'_>,
) -> Result<(), RollError> {
    let mut jinja = minijinja::Environment::new();
    jinja.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let context = minijinja::context! { env => roll.environment, group => roll.group, instance => instance };
    let command = jinja
        .render_str(template, context)
        .map_err(|e| RollError::Failed(format!("the {which} hook is not a valid template: {e}")))?;
    progress(&format!("{}: {which} hook: {command}", roll.aws_name));
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .await
        .map_err(|e| RollError::Failed(format!("cannot run the {which} hook: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let on = instance.map(|i| format!(" for {} ({})", i.id, i.address)).unwrap_or_default();
    Err(RollError::Failed(format!(
        "the {which} hook failed{on} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}
