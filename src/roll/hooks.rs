//! The environment's roll hooks: shell commands rendered with the environment, group and
//! instance, run on this machine, e.g. `kubectl wait node {{ instance.name }}`.

use crate::events::Event;
use std::collections::BTreeMap;
use std::time::Duration;

use minijinja::Value;

use super::{aws, RollError, RollGroup};
use crate::aws::Cloud;
use crate::diagnostics::Problems;
use crate::model::check::ROLL_HOOK_HINT;
use crate::model::RollHook;
use crate::template::Renderer;

/// What hooks are told about an instance.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct InstanceInfo {
    pub id: String,
    pub address: String,
    /// The private DNS name, which Kubernetes uses as the node name on AWS.
    pub name: String,
}

/// The instances with their addresses, in the order asked for, so hooks run predictably.
pub(super) async fn describe_instances(cloud: &Cloud, ids: &[String]) -> Result<Vec<InstanceInfo>, RollError> {
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
pub(super) enum Hook {
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

/// Renders and runs a hook with `sh -c`, if the environment has one; a failure, or a hook
/// still running after its timeout (killed, with everything it started), stops the roll.
pub(super) async fn run(hook: Hook, roll: &RollGroup<'_>, instance: Option<&InstanceInfo>) -> Result<(), RollError> {
    let which = hook.name();
    let Some(RollHook { command: template, timeout_seconds }) =
        roll.hooks.named().into_iter().find(|(name, _)| *name == which).and_then(|(_, hook)| hook)
    else {
        return Ok(());
    };
    let mut context = BTreeMap::from([("env".to_owned(), Value::from(roll.environment)), ("group".to_owned(), Value::from(roll.group))]);
    if let Some(instance) = instance {
        context.insert("instance".to_owned(), Value::from_serialize(instance));
    }
    let mut problems = Problems::default();
    let Some(command) = Renderer::with_hint(ROLL_HOOK_HINT).render(template, &context, &mut problems) else {
        let why: Vec<String> = problems.iter().map(|p| p.message.clone()).collect();
        return Err(RollError::HookTemplate { hook: which, problems: why });
    };
    let on = instance.map(|i| format!(" for {} ({})", i.id, i.address)).unwrap_or_default();
    // The roll waits on the hook as it does on AWS: the live line says so until the next step.
    roll.progress.event(Event::Roll(super::RollEvent::waiting(roll.aws_name, format!("the {which} hook{on}: {command}"))));
    // Its own process group, so a timeout ends whatever the hook started, not only `sh`.
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .process_group(0)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| RollError::HookNotRun { hook: which, error })?;
    let group = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let output = match tokio::time::timeout(Duration::from_secs(*timeout_seconds), child.wait_with_output()).await {
        Ok(output) => output.map_err(|error| RollError::HookNotRun { hook: which, error })?,
        Err(_) => {
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            return Err(RollError::HookTimedOut { hook: which, on, seconds: *timeout_seconds });
        }
    };
    if output.status.success() {
        return Ok(());
    }
    Err(RollError::HookFailed { hook: which, on, status: output.status, stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() })
}
