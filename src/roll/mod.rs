//! Rolling a node group onto its current launch settings in batches sized by its
//! [`RollPolicy`]: each batch terminates up to `max_unavailable` outdated instances (the
//! group replaces them) and surges up to `max_surge` new ones above the group's size, waits
//! until the new instances are in service, healthy behind the group's load balancers and
//! pass the readiness hook, then terminates the surged-for outdated instances through the
//! group, which deregisters them and waits out connection draining first.
//!
//! Every step is recorded in the [`Journal`] before it is taken, and every step is derived
//! from what AWS shows plus that record, so a roll that failed or was killed resumes where
//! it stopped, or is undone by [`abort`]. A stopped run ([`Stop`]: a signal, the lock lost)
//! starts no new batch: a batch still waiting for its new instances undoes its surge, one
//! whose new instances serve finishes.

mod hooks;
mod journal;
mod outdated;

use crate::naming::TAG_UNFINISHED_ROLL;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::AutoScalingGroup;

use crate::aws::{AwsError, Cloud};

use crate::events::{Event, Watch};
use crate::model::{BatchSize, RollHooks, RollPolicy};
use crate::stop::{Reason, Stop};
use hooks::{describe_instances, Hook};

pub use crate::state::{BatchRecord, GroupRecord, RollRecord};
pub use journal::{Journal, Unfinished};
pub use outdated::{group_state, GroupState};

/// Processes that would fight a roll: rebalancing across zones, replacing instances the roll
/// takes out of service, and scheduled or alarm-driven scaling resizing the group under it.
const SUSPENDED: [&str; 4] = ["AZRebalance", "ReplaceUnhealthy", "ScheduledActions", "AlarmNotification"];

#[derive(Debug, thiserror::Error)]
pub enum RollError {
    #[error("AWS failed while {doing}: {error}")]
    Aws { doing: String, error: AwsError },
    #[error("cannot record the roll's progress: {0}")]
    Journal(crate::state::StateError),
    #[error("auto scaling group {group} does not exist; apply the environment first")]
    NoGroup { group: String },
    #[error("launch template version {version} of the group does not exist")]
    NoTemplateVersion { version: String },
    #[error("launch configuration {name} does not exist")]
    NoLaunchConfiguration { name: String },
    /// The group's roll settings give no batch for its size.
    #[error("{group}: {reason}")]
    Policy { group: String, reason: String },
    #[error("{group}: new instances {} do not run the group's current launch settings; did they change during the roll?", .instances.join(", "))]
    SettingsChanged { group: String, instances: Vec<String> },
    #[error(
        "{group}: {healthy} of {desired} instances are healthy, and max_surge {max_surge} with max_unavailable {max_unavailable} \
         allows none of the outdated to go without dropping below the group's floor; let the group heal, or raise max_surge"
    )]
    BelowFloor { group: String, healthy: usize, desired: u32, max_surge: crate::model::Amount, max_unavailable: crate::model::Amount },
    #[error("{group}: new instances were not in service and healthy within {seconds}s")]
    NotHealthy { group: String, seconds: u64 },
    #[error("{group}: {} did not leave the group within {seconds}s", .instances.join(", "))]
    NotGone { group: String, instances: Vec<String>, seconds: u64 },
    #[error("{error}; undoing the batch's surge failed too: {undo}")]
    UndoFailed { error: Box<RollError>, undo: Box<RollError> },
    #[error("the {hook} hook is not a valid template: {}", .problems.join("; "))]
    HookTemplate { hook: &'static str, problems: Vec<String> },
    #[error("cannot run the {hook} hook: {error}")]
    HookNotRun { hook: &'static str, error: std::io::Error },
    #[error("the {hook} hook timed out{on} after {seconds}s and was killed (`timeout_seconds` in `roll_hooks` sets the limit)")]
    HookTimedOut { hook: &'static str, on: String, seconds: u64 },
    #[error("the {hook} hook failed{on} ({status}): {stderr}")]
    HookFailed { hook: &'static str, on: String, status: std::process::ExitStatus, stderr: String },
    #[error("{0}")]
    Stopped(Reason),
}

/// What to do is said by the roll command for the group that failed; AWS's and the journal's
/// own advice comes along.
impl crate::hint::Hint for RollError {
    fn hint(&self) -> Option<String> {
        match self {
            RollError::Aws { error, .. } => error.hint(),
            RollError::Journal(error) => error.hint(),
            _ => None,
        }
    }
}

fn aws(doing: &str) -> impl FnOnce(AwsError) -> RollError + '_ {
    move |error| RollError::Aws { doing: doing.to_owned(), error }
}

/// What a roll is doing, for the terminal. Each event is also a line of text (its `Display`),
/// which is all a log or a pipe gets.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RollEvent {
    /// A batch starts: `instances` are replaced while at least `floor` stay in service.
    Batch { group: String, number: usize, of: usize, surged: Vec<String>, taken_out: Vec<String>, floor: u32 },
    /// The roll waits on AWS: new instances in service, old ones gone.
    Waiting { group: String, what: String },
    /// A step: surging, terminating, a hook, an abort's undoing.
    Step { group: String, what: String },
}

impl RollEvent {
    pub(super) fn waiting(group: &str, what: String) -> RollEvent {
        RollEvent::Waiting { group: group.to_owned(), what }
    }

    fn step(group: &str, what: String) -> RollEvent {
        RollEvent::Step { group: group.to_owned(), what }
    }

    pub fn group(&self) -> &str {
        match self {
            RollEvent::Batch { group, .. } | RollEvent::Waiting { group, .. } | RollEvent::Step { group, .. } => group,
        }
    }
}

impl std::fmt::Display for RollEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollEvent::Batch { group, number, of, surged, taken_out, floor } => write!(
                f,
                "{group}: batch {number}/{of}: replacing {} ({} surged for, {} taken out first; at least {floor} in service)",
                [surged.as_slice(), taken_out.as_slice()].concat().join(", "),
                surged.len(),
                taken_out.len()
            ),
            RollEvent::Waiting { group, what } => write!(f, "{group}: waiting for {what}"),
            RollEvent::Step { group, what } => write!(f, "{group}: {what}"),
        }
    }
}

/// What a roll of one group needs besides AWS.
pub struct RollGroup<'a> {
    pub environment: &'a str,
    /// The node group's name in the model.
    pub group: &'a str,
    /// Its auto scaling group's name.
    pub aws_name: &'a str,
    pub policy: RollPolicy,
    pub timeout: Duration,
    pub hooks: &'a RollHooks,
    pub progress: &'a dyn Watch,
    /// Checked before every change a batch starts.
    pub stop: &'a Stop,
}

impl RollGroup<'_> {
    fn check(&self) -> Result<(), RollError> {
        self.stop.check().map_err(RollError::Stopped)
    }
}

/// The group's instances that are not on their way out.
pub fn live_members(group: &AutoScalingGroup) -> Vec<String> {
    group
        .instances()
        .iter()
        .filter(|i| {
            let state = i.lifecycle_state().map_or("", |s| s.as_str());
            !(state.starts_with("Terminat") || state.starts_with("Detach"))
        })
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// Replaces the group's outdated instances, continuing the journal's batch if it is this
/// group's. Returns how many instances were replaced.
pub async fn roll_group(cloud: &Cloud, roll: &RollGroup<'_>, journal: &mut Journal) -> Result<usize, RollError> {
    roll.check()?;
    let resuming = journal.group().is_some_and(|g| g.group == roll.group);
    let state = group_state(cloud, roll.aws_name).await?;
    if state.outdated.is_empty() && !resuming {
        return Ok(0);
    }
    if !resuming {
        let group = &state.group;
        let already_suspended =
            group.suspended_processes().iter().filter_map(|p| p.process_name()).filter(|p| SUSPENDED.contains(p)).map(str::to_owned).collect();
        let record = GroupRecord {
            group: roll.group.to_owned(),
            auto_scaling_group: roll.aws_name.to_owned(),
            desired: group.desired_capacity().unwrap_or(0),
            max: group.max_size().unwrap_or(0),
            already_suspended,
            batch: None,
        };
        journal.update(|r| r.group = Some(record))?;
    }
    set_processes(cloud, roll.aws_name, &[], true).await?;
    // The group itself says a roll holds it, for whoever looks at it in AWS, also after a
    // failure or a kill leaves the roll unfinished.
    if let Some(group) = journal.group() {
        let held = suspended_by_roll(&group.already_suspended).join(", ");
        let note = format!(
            "roll started {}: {held} suspended until it ends; if no roll runs: kstack roll {} --resume (or --abort)",
            journal.record.started, roll.environment
        );
        mark_unfinished(cloud, roll.aws_name, Some(&note)).await?;
    }
    let outcome = replace_outdated(cloud, roll, journal).await;
    // With no batch in flight the group is at its own size again: let it heal itself.
    // Otherwise its processes stay suspended until `--resume` or `--abort`.
    if journal.batch().is_none() {
        if let Some(group) = journal.group().cloned() {
            set_processes(cloud, roll.aws_name, &group.already_suspended, false).await?;
            mark_unfinished(cloud, roll.aws_name, None).await?;
            journal.update(|r| r.group = None)?;
        }
    }
    outcome
}

/// The processes a roll holds suspended: its own, less those suspended before it began.
pub fn suspended_by_roll(already_suspended: &[String]) -> Vec<&'static str> {
    SUSPENDED.into_iter().filter(|p| !already_suspended.iter().any(|a| a == p)).collect()
}

/// Tags the group with `note` about its unfinished roll, or removes the tag.
async fn mark_unfinished(cloud: &Cloud, name: &str, note: Option<&str>) -> Result<(), RollError> {
    use aws_sdk_autoscaling::types::Tag;
    let tag = Tag::builder().resource_id(name).resource_type("auto-scaling-group").key(TAG_UNFINISHED_ROLL).propagate_at_launch(false);
    let doing = "marking the group's unfinished roll";
    match note {
        // AWS caps tag values at 256 characters.
        Some(note) => {
            let value: String = note.chars().take(256).collect();
            cloud.autoscaling.create_or_update_tags().tags(tag.value(value).build()).send().await.map_err(|e| aws(doing)(e.into()))?;
        }
        None => {
            cloud.autoscaling.delete_tags().tags(tag.build()).send().await.map_err(|e| aws(doing)(e.into()))?;
        }
    }
    Ok(())
}

async fn replace_outdated(cloud: &Cloud, roll: &RollGroup<'_>, journal: &mut Journal) -> Result<usize, RollError> {
    let Some(record) = journal.group().cloned() else { return Ok(0) };
    let size = roll.policy.batch(record.desired.max(0) as u32).map_err(|reason| RollError::Policy { group: roll.group.to_owned(), reason })?;
    let mut replaced = 0;
    let mut number = 0;
    if let Some(batch) = record.batch.clone() {
        number = batch.number;
        replaced += run_batch(cloud, roll, journal, &batch).await?;
    }
    let mut seen_outdated: Option<BTreeSet<String>> = None;
    loop {
        roll.check()?;
        let state = group_state(cloud, roll.aws_name).await?;
        if state.outdated.is_empty() {
            return Ok(replaced);
        }
        // Outdated instances the roll did not start with were launched during it: the
        // group's settings changed under the roll, which would never end.
        if let Some(seen) = &seen_outdated {
            let unexpected: Vec<&str> = state.outdated.iter().filter(|id| !seen.contains(*id)).map(String::as_str).collect();
            if !unexpected.is_empty() {
                return Err(RollError::SettingsChanged {
                    group: roll.aws_name.to_owned(),
                    instances: unexpected.into_iter().map(str::to_owned).collect(),
                });
            }
        }
        seen_outdated = Some(state.outdated.iter().cloned().collect());
        // The floor is judged from the instances healthy now: one already down uses up the
        // batch's unavailability, and outdated ones that are down go first, at no cost.
        let healthy = healthy_members(cloud, &state.group).await?;
        let desired = record.desired.max(0) as u32;
        let Some((surged, replaced_first)) = next_batch(&state.outdated, &healthy, desired, size) else {
            return Err(RollError::BelowFloor {
                group: roll.aws_name.to_owned(),
                healthy: healthy.len(),
                desired,
                max_surge: roll.policy.max_surge,
                max_unavailable: roll.policy.max_unavailable,
            });
        };
        let estimate = batches(&state.outdated, size).len();
        number += 1;
        let base = state.group.desired_capacity().unwrap_or(record.desired);
        let batch = BatchRecord { number, surged, replaced: replaced_first, known: live_members(&state.group), base: Some(base) };
        roll.progress.event(Event::Roll(RollEvent::Batch {
            group: roll.aws_name.to_owned(),
            number,
            of: number + estimate - 1,
            surged: batch.surged.clone(),
            taken_out: batch.replaced.clone(),
            floor: desired.saturating_sub(size.unavailable),
        }));
        journal.set_batch(Some(batch.clone()))?;
        replaced += run_batch(cloud, roll, journal, &batch).await?;
    }
}

/// The batches that replace `outdated` in a group whose instances are all healthy: per
/// batch, the instances surged for (they go once their replacements serve) and the ones
/// taken out first.
pub fn batches(outdated: &[String], size: BatchSize) -> Vec<(Vec<String>, Vec<String>)> {
    let mut left = outdated.to_vec();
    let mut planned = Vec::new();
    while let Some((surged, first)) = next_batch(&left, &left.iter().cloned().collect(), left.len() as u32, size) {
        left.retain(|id| !surged.contains(id) && !first.contains(id));
        planned.push((surged, first));
    }
    planned
}

/// The next batch for a group of `desired` instances of which `healthy` are healthy now:
/// outdated instances that are down are taken out first (they serve nothing), healthy ones
/// only as far as the unavailability the group is not already short of, and the rest are
/// surged for. `None` when no instance may go without dropping below the floor.
pub fn next_batch(outdated: &[String], healthy: &BTreeSet<String>, desired: u32, size: BatchSize) -> Option<(Vec<String>, Vec<String>)> {
    let per_batch = (size.surge + size.unavailable).max(1) as usize;
    let already_down = desired.saturating_sub(healthy.len() as u32);
    let mut budget = size.unavailable.saturating_sub(already_down) as usize;
    let (mut surged, mut first) = (Vec::new(), Vec::new());
    for id in outdated.iter().filter(|id| !healthy.contains(*id)).chain(outdated.iter().filter(|id| healthy.contains(*id))) {
        if surged.len() + first.len() == per_batch {
            break;
        }
        if !healthy.contains(id) {
            first.push(id.clone());
        } else if surged.len() < size.surge as usize {
            surged.push(id.clone());
        } else if budget > 0 {
            budget -= 1;
            first.push(id.clone());
        }
    }
    (!surged.is_empty() || !first.is_empty()).then_some((surged, first))
}

/// Runs one recorded batch from wherever it got to. Any failure before the batch's
/// surged-for instances are gone undoes the surge, so the group keeps its size.
async fn run_batch(cloud: &Cloud, roll: &RollGroup<'_>, journal: &mut Journal, batch: &BatchRecord) -> Result<usize, RollError> {
    let Some(record) = journal.group().cloned() else { return Ok(0) };
    let name = roll.aws_name;
    let group = outdated::describe_group(cloud, name).await?;
    let live = live_members(&group);
    let still = |ids: &[String]| ids.iter().filter(|id| live.contains(id)).cloned().collect::<Vec<String>>();
    let target = batch.base.unwrap_or(record.desired) + still(&batch.surged).len() as i32;
    if group.desired_capacity() != Some(target) || group.max_size().unwrap_or(0) < target {
        roll.progress.event(Event::Roll(RollEvent::step(name, format!("surging to {target} instances"))));
        set_size(cloud, name, Some(target), record.max.max(target)).await?;
    }
    let mut failing = None;
    let brought_up = bring_up(cloud, roll, batch, &still(&batch.replaced), &mut failing).await;
    let fresh = match brought_up {
        Ok(fresh) => fresh,
        Err(error) => return Err(stop_batch(cloud, roll, journal, error, failing.as_deref()).await),
    };
    roll.progress.event(Event::Roll(RollEvent::step(name, format!("{} in service and ready", fresh.join(", ")))));
    for old in describe_instances(cloud, &still(&batch.surged)).await? {
        if let Err(error) = hooks::run(Hook::PreStop, roll, Some(&old)).await {
            return Err(stop_batch(cloud, roll, journal, error, None).await);
        }
        roll.progress.event(Event::Roll(RollEvent::step(
            name,
            format!("terminating {} (the group deregisters it and waits out connection draining)", old.id),
        )));
        terminate_in_group(cloud, &old.id, true).await?;
    }
    let old = [batch.surged.as_slice(), batch.replaced.as_slice()].concat();
    wait_gone(cloud, name, &old, roll.timeout, roll.progress).await?;
    set_size(cloud, name, None, record.max).await?;
    journal.set_batch(None)?;
    hooks::run(Hook::Validate, roll, None).await?;
    Ok(old.len())
}

/// Undoes the batch's surge after `error`, and says so if that fails too.
async fn stop_batch(cloud: &Cloud, roll: &RollGroup<'_>, journal: &mut Journal, error: RollError, prefer: Option<&str>) -> RollError {
    match undo_surge(cloud, roll.aws_name, journal, roll.timeout, roll.progress, prefer).await {
        Ok(()) => error,
        Err(undo) => RollError::UndoFailed { error: Box::new(error), undo: Box::new(undo) },
    }
}

/// Takes the batch's replaced instances out (the group launches their successors), then
/// waits for every new instance to be in service and pass the readiness hook.
async fn bring_up(
    cloud: &Cloud,
    roll: &RollGroup<'_>,
    batch: &BatchRecord,
    replaced: &[String],
    failing: &mut Option<String>,
) -> Result<Vec<String>, RollError> {
    for old in describe_instances(cloud, replaced).await? {
        roll.check()?;
        hooks::run(Hook::PreStop, roll, Some(&old)).await?;
        roll.progress.event(Event::Roll(RollEvent::step(roll.aws_name, format!("terminating {} (the group launches its replacement)", old.id))));
        terminate_in_group(cloud, &old.id, false).await?;
    }
    let expected = batch.surged.len() + batch.replaced.len();
    let fresh = wait_for_new_in_service(cloud, roll, &batch.known, expected).await?;
    for instance in describe_instances(cloud, &fresh).await? {
        if let Err(error) = hooks::run(Hook::Readiness, roll, Some(&instance)).await {
            *failing = Some(instance.id);
            return Err(error);
        }
    }
    Ok(fresh)
}

/// Terminates the new instances above the group's recorded size (`prefer` first, then the
/// newest) and restores its size, so a stopped roll leaves the group as big as it found
/// it. The batch stays recorded when some of its instances were already replaced: their
/// successors still have to pass the readiness hook when the roll resumes.
async fn undo_surge(
    cloud: &Cloud,
    name: &str,
    journal: &mut Journal,
    timeout: Duration,
    progress: &dyn Watch,
    prefer: Option<&str>,
) -> Result<(), RollError> {
    let (Some(record), Some(batch)) = (journal.group().cloned(), journal.batch().cloned()) else { return Ok(()) };
    let group = outdated::describe_group(cloud, name).await?;
    // Only the batch's own surge goes: a size someone else set meanwhile stays.
    let base = batch.base.unwrap_or(record.desired);
    let surplus = (group.desired_capacity().unwrap_or(0) - base).clamp(0, batch.surged.len() as i32) as usize;
    let mut fresh: Vec<String> = live_members(&group).into_iter().filter(|id| !batch.known.contains(id)).rev().collect();
    if let Some(position) = prefer.and_then(|p| fresh.iter().position(|id| id == p)) {
        let failing = fresh.remove(position);
        fresh.insert(0, failing);
    }
    fresh.truncate(surplus);
    for id in &fresh {
        progress.event(Event::Roll(RollEvent::step(name, format!("stopping; terminating surged instance {id}"))));
        terminate_in_group(cloud, id, true).await?;
    }
    wait_gone(cloud, name, &fresh, timeout, progress).await?;
    // Terminating with a decrement took the surge off the size.
    set_size(cloud, name, None, record.max).await?;
    if batch.replaced.is_empty() {
        journal.set_batch(None)?;
    }
    Ok(())
}

/// Puts the journal's group back to its size (taking off only the roll's own surge, so a size
/// someone else set meanwhile stays) and processes from before the roll, and forgets the
/// roll. New instances already serving stay; surged ones above the size go.
pub async fn abort(cloud: &Cloud, journal: &mut Journal, timeout: Duration, progress: &dyn Watch) -> Result<(), RollError> {
    if let Some(group) = journal.group().cloned() {
        let name = &group.auto_scaling_group;
        undo_surge(cloud, name, journal, timeout, progress, None).await?;
        set_processes(cloud, name, &group.already_suspended, false).await?;
        mark_unfinished(cloud, name, None).await?;
        progress.event(Event::Roll(RollEvent::step(name, format!("surge undone (maximum back to {}), processes resumed", group.max))));
    }
    journal.finish()
}

/// Suspends the roll's processes, or resumes them except those in `keep`.
async fn set_processes(cloud: &Cloud, name: &str, keep: &[String], suspend: bool) -> Result<(), RollError> {
    let processes: Vec<String> = suspended_by_roll(keep).into_iter().map(str::to_owned).collect();
    if processes.is_empty() {
        return Ok(());
    }
    let processes = Some(processes);
    if suspend {
        let request = cloud.autoscaling.suspend_processes().auto_scaling_group_name(name).set_scaling_processes(processes);
        request.send().await.map_err(|e| aws("suspending the group's processes")(e.into()))?;
    } else {
        let request = cloud.autoscaling.resume_processes().auto_scaling_group_name(name).set_scaling_processes(processes);
        request.send().await.map_err(|e| aws("resuming the group's processes")(e.into()))?;
    }
    Ok(())
}

/// Terminates an instance through its group, which drains it first. With `shrink` the
/// group's size drops by one; without, the group launches a replacement.
async fn terminate_in_group(cloud: &Cloud, id: &str, shrink: bool) -> Result<(), RollError> {
    cloud
        .autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(id)
        .should_decrement_desired_capacity(shrink)
        .send()
        .await
        .map_err(|e| aws("terminating an instance")(e.into()))?;
    Ok(())
}

async fn set_size(cloud: &Cloud, name: &str, desired: Option<i32>, max: i32) -> Result<(), RollError> {
    cloud
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(name)
        .set_desired_capacity(desired)
        .max_size(max)
        .send()
        .await
        .map_err(|e| aws("resizing the group")(e.into()))?;
    Ok(())
}

/// Waits for `count` instances not in `known` to be InService in the group and healthy on
/// every load balancer of the group.
async fn wait_for_new_in_service(cloud: &Cloud, roll: &RollGroup<'_>, known: &[String], count: usize) -> Result<Vec<String>, RollError> {
    let name = roll.aws_name;
    let started = Instant::now();
    roll.progress.event(Event::Roll(RollEvent::waiting(name, format!("{count} new instance(s) to be in service and healthy"))));
    loop {
        let group = outdated::describe_group(cloud, name).await?;
        let fresh: BTreeSet<String> = group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .filter(|id| !known.contains(id))
            .collect();
        if fresh.len() >= count && fresh.is_subset(&healthy_members(cloud, &group).await?) {
            roll.progress.event(Event::Roll(RollEvent::step(name, format!("in service after {}s", started.elapsed().as_secs()))));
            return Ok(fresh.into_iter().collect());
        }
        // Waiting on: stopping now undoes the batch's surge.
        roll.check()?;
        if started.elapsed() > roll.timeout {
            return Err(RollError::NotHealthy { group: name.to_owned(), seconds: roll.timeout.as_secs() });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The group's instances that serve now: in service, healthy as the group sees them, and in
/// service on every load balancer of the group.
async fn healthy_members(cloud: &Cloud, group: &AutoScalingGroup) -> Result<BTreeSet<String>, RollError> {
    let mut healthy: BTreeSet<String> = group
        .instances()
        .iter()
        .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService") && i.health_status() == Some("Healthy"))
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    for balancer in group.load_balancer_names() {
        let health = cloud
            .elb
            .describe_instance_health()
            .load_balancer_name(balancer)
            .send()
            .await
            .map_err(|e| aws("reading load balancer health")(e.into()))?;
        healthy.retain(|id| health.instance_states().iter().any(|s| s.instance_id() == Some(id.as_str()) && s.state() == Some("InService")));
    }
    Ok(healthy)
}

async fn wait_gone(cloud: &Cloud, name: &str, instances: &[String], timeout: Duration, progress: &dyn Watch) -> Result<(), RollError> {
    if instances.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    progress.event(Event::Roll(RollEvent::waiting(name, format!("{} to leave the group", instances.join(", ")))));
    loop {
        let group = outdated::describe_group(cloud, name).await?;
        let left = group.instances().iter().any(|i| i.instance_id().is_some_and(|id| instances.iter().any(|o| o == id)));
        if !left {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(RollError::NotGone { group: name.to_owned(), instances: instances.to_vec(), seconds: timeout.as_secs() });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn an_instance_already_down_uses_up_the_batch_s_unavailability_and_goes_first() {
        let outdated = ids(&["a", "b", "c"]);
        let one_at_a_time = BatchSize { surge: 0, unavailable: 1 };
        let all: BTreeSet<String> = outdated.iter().cloned().collect();
        assert_eq!(next_batch(&outdated, &all, 3, one_at_a_time), Some((ids(&[]), ids(&["a"]))));
        // `c` is down: it goes first, and no healthy one goes with it.
        let without_c: BTreeSet<String> = ids(&["a", "b"]).into_iter().collect();
        assert_eq!(next_batch(&outdated, &without_c, 3, one_at_a_time), Some((ids(&[]), ids(&["c"]))));
        // Down and not outdated: nothing may go without a surge.
        assert_eq!(next_batch(&ids(&["a", "b"]), &ids(&["a", "b"]).into_iter().collect(), 3, one_at_a_time), None);
        // A surge still replaces a healthy one.
        let surge = BatchSize { surge: 1, unavailable: 0 };
        assert_eq!(next_batch(&ids(&["a", "b"]), &ids(&["a", "b"]).into_iter().collect(), 3, surge), Some((ids(&["a"]), ids(&[]))));
    }

    #[test]
    fn planned_batches_cover_every_outdated_instance_once() {
        let outdated = ids(&["a", "b", "c", "d", "e"]);
        let planned = batches(&outdated, BatchSize { surge: 2, unavailable: 1 });
        assert_eq!(planned, [(ids(&["a", "b"]), ids(&["c"])), (ids(&["d", "e"]), ids(&[]))]);
    }
}
