//! The schedule of an environment's running nodes: planned from what AWS shows (each
//! instance's group, zone and tagged time), and put in force by tags on the instances and a
//! slot file on each node. The command line only renders it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use super::stats::{birthday, random_within_gap, worst_within_gap};
use super::{assign, node_config, violations, Fleet, Member, ScheduleError};
use crate::aws::{running_instances, tag_reboot_times, AwsError, Cloud, Instance};
use crate::hint::Hint;
use crate::model::reboots::{format_minute, parse_minute};
use crate::model::{Environment, RebootPolicy};
use crate::ssh::{Connection, Login, NodeAccess};

/// Why a schedule could not be made or put in force.
#[derive(Debug, thiserror::Error)]
pub enum RebootsError {
    #[error("AWS failed while {doing}: {error}")]
    Aws { doing: &'static str, error: AwsError },
    #[error("no reboot schedule for `{environment}`: {error}")]
    NoSchedule { environment: String, error: ScheduleError },
    /// The independent checker found a rule the search broke: never used.
    #[error("the reboot schedule breaks its rules: {}", .0.join("; "))]
    BrokenRules(Vec<String>),
}

impl Hint for RebootsError {
    fn hint(&self) -> Option<String> {
        match self {
            RebootsError::Aws { error, .. } => error.hint(),
            RebootsError::NoSchedule { error, .. } => error.hint(),
            RebootsError::BrokenRules(_) => Some(String::from("this is a bug in kstack; please report it")),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Slot {
    pub instance: String,
    pub group: String,
    pub zone: String,
    pub address: Option<String>,
    pub time: String,
    /// Whether the instance's tag says otherwise (or nothing).
    pub changed: bool,
}

#[derive(Debug, Serialize)]
pub struct GroupFigures {
    pub group: String,
    pub nodes: usize,
    pub policy: RebootPolicy,
    /// The most of the group's reboots starting within any gap-long stretch.
    pub worst_within_gap: usize,
    /// If every node picked a random minute of the window instead.
    pub random_shared_minute: f64,
    pub random_within_gap: f64,
}

#[derive(Debug, Serialize)]
pub struct Schedule {
    pub environment: String,
    pub seed: u64,
    pub slots: Vec<Slot>,
    pub groups: Vec<GroupFigures>,
    /// No two nodes of one availability zone start closer than this.
    pub zone_gap_minutes: u32,
    /// Running groups without reboot settings.
    pub unscheduled_groups: Vec<String>,
}

/// What putting a schedule in force did on the nodes (every instance is tagged first).
pub struct Written {
    /// The nodes whose slot file was written (instance ids).
    pub written: Vec<String>,
    /// The nodes not written (`instance (address)`), and why.
    pub unreached: Vec<(String, String)>,
}

impl Written {
    /// Says how many nodes were not written, if any.
    pub fn shortfall(&self) -> Option<String> {
        let nodes = self.written.len() + self.unreached.len();
        (!self.unreached.is_empty()).then(|| format!("{} of {nodes} nodes were not written; their tags are set", self.unreached.len()))
    }
}

/// A checked schedule of the environment's running nodes.
pub struct Planned {
    pub fleet: Fleet,
    pub assignment: BTreeMap<String, u32>,
    pub schedule: Schedule,
}

/// Schedules the running nodes of the groups with reboot settings, or says why it cannot.
pub async fn plan(cloud: &Cloud, environment: &Environment, seed: u64, reshuffle: bool, access: &NodeAccess) -> Result<Planned, RebootsError> {
    let policies: BTreeMap<String, RebootPolicy> =
        environment.node_groups.iter().filter_map(|g| g.reboots.clone().map(|p| (g.name.value.clone(), p))).collect();
    let instances = running_instances(cloud).await.map_err(|error| RebootsError::Aws { doing: "listing instances", error })?;
    let (scheduled, unscheduled): (Vec<&Instance>, Vec<&Instance>) = instances.iter().partition(|i| policies.contains_key(&i.group));
    let members: Vec<Member> = scheduled
        .iter()
        .map(|i| {
            // An untagged node (new since the last schedule) reboots at its fallback minute until
            // it is written: keep that minute where it fits, so its peers' files hold the truth.
            let fallback = || node_config::fallback_minute(&policies[&i.group].window, &i.id);
            let current = i.reboot_time.as_deref().and_then(parse_minute).unwrap_or_else(fallback);
            Member { id: i.id.clone(), group: i.group.clone(), zone: i.zone.clone(), current: Some(current) }
        })
        .collect();
    let zone_gap_minutes = environment.reboots.as_ref().map_or(0, |p| p.zone_gap_minutes);
    let fleet = Fleet { members, groups: policies, zone_gap_minutes };
    let assignment = assign(&fleet, seed, reshuffle).map_err(|error| RebootsError::NoSchedule { environment: environment.name.clone(), error })?;
    // The checker is independent of the search: a schedule that breaks a rule is never used.
    let broken = violations(&fleet, &assignment);
    if !broken.is_empty() {
        return Err(RebootsError::BrokenRules(broken));
    }
    let schedule = describe(&fleet, &scheduled, &unscheduled, &assignment, seed, access, &environment.name);
    Ok(Planned { fleet, assignment, schedule })
}

/// Tags the instances whose time changed, then writes every node's slot (its peers' times
/// change with theirs), `forks` at once. The nodes not written are in the result; an AWS
/// failure to tag is the error.
pub async fn put_in_force(
    cloud: &Cloud,
    environment: &Environment,
    users: &BTreeMap<String, String>,
    planned: &Planned,
    access: &NodeAccess,
    forks: usize,
) -> Result<Written, RebootsError> {
    tag_changed(cloud, &planned.schedule.slots).await?;
    Ok(write_slots(node_writes(environment, users, planned, access), forks).await)
}

/// Tags the instances whose time changed (`kstack:reboot-time`): the schedule AWS keeps.
pub async fn tag_changed(cloud: &Cloud, slots: &[Slot]) -> Result<(), RebootsError> {
    let changed: Vec<(&str, &str)> = slots.iter().filter(|s| s.changed).map(|s| (s.instance.as_str(), s.time.as_str())).collect();
    tag_reboot_times(cloud, &changed).await.map_err(|error| RebootsError::Aws { doing: "tagging instances", error })
}

fn describe(
    fleet: &Fleet,
    scheduled: &[&Instance],
    unscheduled: &[&Instance],
    assignment: &BTreeMap<String, u32>,
    seed: u64,
    access: &NodeAccess,
    environment: &str,
) -> Schedule {
    let slots: Vec<Slot> = scheduled
        .iter()
        .map(|i| {
            let time = format_minute(assignment[&i.id]);
            Slot {
                instance: i.id.clone(),
                group: i.group.clone(),
                zone: i.zone.clone(),
                address: access.address(i.private_ip.as_deref(), i.public_ip.as_deref()),
                changed: i.reboot_time.as_deref() != Some(time.as_str()),
                time,
            }
        })
        .collect();
    let groups = fleet
        .groups
        .iter()
        .filter_map(|(group, policy)| {
            let times: Vec<u32> = scheduled.iter().filter(|i| &i.group == group).map(|i| assignment[&i.id]).collect();
            let nodes = times.len();
            (nodes > 0).then(|| GroupFigures {
                group: group.clone(),
                nodes,
                policy: policy.clone(),
                worst_within_gap: worst_within_gap(&times, policy.group_gap_minutes),
                random_shared_minute: birthday(nodes as u32, policy.window.minutes()),
                random_within_gap: random_within_gap(nodes as u32, policy.window.minutes(), policy.group_gap_minutes, seed),
            })
        })
        .collect();
    let mut unscheduled_groups: Vec<String> = unscheduled.iter().map(|i| i.group.clone()).collect();
    unscheduled_groups.dedup();
    Schedule { environment: environment.to_owned(), seed, slots, groups, zone_gap_minutes: fleet.zone_gap_minutes, unscheduled_groups }
}

/// One node's slot file to write.
struct NodeWrite {
    instance: String,
    /// None when the instance has no address of the kind SSH uses (private or public).
    address: Option<String>,
    login: Login,
    content: String,
}

/// Per node of the schedule: its address, how to log in (as its group's SSH user, from
/// `users`, or `ubuntu`), and the file to write.
fn node_writes(environment: &Environment, users: &BTreeMap<String, String>, planned: &Planned, access: &NodeAccess) -> Vec<NodeWrite> {
    let Planned { fleet, assignment, schedule } = planned;
    let mut writes = Vec::new();
    for slot in &schedule.slots {
        let policy = &fleet.groups[&slot.group];
        let peers: Vec<(String, u32)> =
            fleet.members.iter().filter(|m| m.group == slot.group && m.id != slot.instance).map(|m| (m.id.clone(), assignment[&m.id])).collect();
        let user = users.get(&slot.group).map_or("ubuntu", String::as_str);
        let content = node_config::apt_config(&environment.name, &slot.instance, assignment[&slot.instance], policy, &peers);
        writes.push(NodeWrite { instance: slot.instance.clone(), address: slot.address.clone(), login: access.login(user), content });
    }
    writes
}

/// Writes every node's slot, `forks` at a time.
async fn write_slots(writes: Vec<NodeWrite>, forks: usize) -> Written {
    let permits = Arc::new(tokio::sync::Semaphore::new(forks.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut written = Written { written: Vec::new(), unreached: Vec::new() };
    for write in writes {
        let Some(address) = write.address else {
            written.unreached.push((format!("{} (no address)", write.instance), String::from("it has no address SSH could use")));
            continue;
        };
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = async {
                let connection = Connection::open(&address, &write.login).await?;
                connection.write_file(node_config::PATH, write.content.as_bytes(), 0o644, "root", "root").await
            };
            (format!("{} ({address})", write.instance), write.instance, result.await.map_err(|e| e.to_string()))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, instance, Ok(()))) => written.written.push(instance),
            Ok((node, _, Err(error))) => written.unreached.push((node, error)),
            // A write task that panicked: which node is unknown, but it still counts.
            Err(error) => written.unreached.push((String::from("a node"), error.to_string())),
        }
    }
    written.written.sort();
    written.unreached.sort();
    written
}
