//! The environment's roll hooks: shell commands rendered with the environment, group and
//! instance, run on this machine, e.g. `kubectl wait node {{ instance.name }}`.

use super::{aws, RollError, RollGroup};
use crate::aws::Cloud;

/// What hooks are told about an instance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub address: String,
    /// The private DNS name, which Kubernetes uses as the node name on AWS.
    pub name: String,
}

/// The instances with their addresses, in the order asked for, so hooks run predictably.
pub async fn describe_instances(cloud: &Cloud, ids: &[String]) -> Result<Vec<InstanceInfo>, RollError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let described =
        cloud.ec2.describe_instances().set_instance_ids(Some(ids.to_vec())).send().await.map_err(|e| aws("describing instances")(e.into()))?;
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
    found.sort_by_key(|i| ids.iter().position(|id| *id == i.id));
    Ok(found)
}

#[derive(Debug, Clone, Copy)]
pub enum Hook {
    Readiness,
    PreStop,
    Validate,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Readiness => "readiness",
            Hook::PreStop => "pre_stop",
            Hook::Validate => "validate",
        }
    }
}

/// Renders and runs a hook with `sh -c`, if the environment has one; a failure stops the roll.
pub async fn run(hook: Hook, roll: &RollGroup<'_>, instance: Option<&InstanceInfo>) -> Result<(), RollError> {
    let template = match hook {
        Hook::Readiness => &roll.hooks.readiness,
        Hook::PreStop => &roll.hooks.pre_stop,
        Hook::Validate => &roll.hooks.validate,
    };
    let Some(template) = template else { return Ok(()) };
    let which = hook.name();
    let mut jinja = minijinja::Environment::new();
    jinja.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let context = minijinja::context! { env => roll.environment, group => roll.group, instance => instance };
    let command = jinja.render_str(template, context).map_err(|e| RollError::Failed(format!("the {which} hook is not a valid template: {e}")))?;
    (roll.progress)(&format!("{}: {which} hook: {command}", roll.aws_name));
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
    Err(RollError::Failed(format!("the {which} hook failed{on} ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim())))
}
