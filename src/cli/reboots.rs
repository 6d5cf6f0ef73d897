//! `kstack reboots <env>`: the reboot schedule of the running nodes, and with `--assign`
//! the tags and node files that put it in force.

use std::collections::BTreeMap;
use std::sync::Arc;

use owo_colors::OwoColorize;
use serde::Serialize;

use crate::aws::{running_instances, Cloud, Instance};
use crate::compile::TAG_REBOOT_TIME;
use crate::model::reboots::{format_minute, parse_minute};
use crate::model::{Environment, ImageRef, Project, RebootPolicy};
use crate::reboots::schedule::slots;
use crate::reboots::stats::{birthday, random_within_gap, worst_within_gap};
use crate::reboots::{assign, node_config, violations, Fleet, Member};
use crate::ssh::{Connection, Login};

use super::provision::SshArgs;
use super::session::{open_store, owner, runtime};
use super::{fail, load_and_compile, report_problems, term, Failure, LoadedImage};

/// Show when each running node reboots for OS updates; with --assign, tag the instances and
/// write each node's slot over SSH.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack reboots dev                      the schedule, and how random times would compare
  kstack reboots dev --assign             tag the instances and write the nodes' slots
  kstack reboots dev --assign --seed 7    reproduce a spread

Exit status: 0 the schedule holds every rule (and was written, with --assign), 1 it cannot,
or a node could not be written.")]
pub struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Put the schedule in force: tag each instance and write its slot to the node over SSH.
    #[arg(long)]
    assign: bool,

    /// Seed of the random spread [default: a random one, printed so it can be reproduced].
    #[arg(long)]
    seed: Option<u64>,

    /// Give every node a new time instead of keeping the times that still fit.
    #[arg(long)]
    reshuffle: bool,

    /// Print the schedule as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Nodes written to at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=500))]
    forks: u16,

    #[command(flatten)]
    ssh: SshArgs,
}

#[derive(Debug, Serialize)]
struct Slot {
    instance: String,
    group: String,
    zone: String,
    address: Option<String>,
    time: String,
    /// Whether the instance's tag says otherwise (or nothing).
    changed: bool,
}

#[derive(Debug, Serialize)]
struct GroupFigures {
    group: String,
    nodes: usize,
    policy: RebootPolicy,
    /// The most of the group's reboots starting within any gap-long stretch.
    worst_within_gap: usize,
    /// If every node picked a random minute of the window instead.
    random_shared_minute: f64,
    random_within_gap: f64,
}

#[derive(Debug, Serialize)]
struct Schedule {
    environment: String,
    seed: u64,
    slots: Vec<Slot>,
    groups: Vec<GroupFigures>,
    /// No two nodes of one availability zone start closer than this.
    zone_gap_minutes: u32,
    /// Running groups without reboot settings.
    unscheduled_groups: Vec<String>,
}

pub fn run(project: &Project, args: &Args) -> Result<(), Failure> {
    let (sources, result) = load_and_compile(project, &args.env);
    let compiled = result.map_err(|problems| report_problems(&args.env, problems, &sources))?;
    let environment = &compiled.checked.environment;
    if environment.reboot_groups().is_empty() {
        return Err(fail(
            &format!("`{}` has no reboot settings", environment.name),
            Some("add `reboots: { window: { start: \"03:00\", end: \"05:00\" } }` to the environment (or to a node group)"),
        ));
    }
    let runtime = runtime()?;
    let store = open_store(project, &environment.name, &environment.state)?;
    let _lock = match args.assign {
        true => {
            // Tags and slot files, each written whole: nothing is half done if the run ends.
            let stop = crate::stop::Stop::default();
            Some(store.lock(&format!("kstack reboots {} --assign", args.env), &stop).map_err(|e| fail(&e.to_string(), Some(&e.hint())))?)
        }
        false => None,
    };
    let cloud = runtime.block_on(Cloud::connect(&environment.region.value, owner(&store)?));
    let seed = args.seed.unwrap_or_else(rand::random);
    let planned =
        runtime.block_on(plan(&cloud, environment, seed, args.reshuffle, &args.ssh)).map_err(|(message, hint)| fail(&message, Some(&hint)))?;
    if args.json {
        term::outln(format_args!("{}", serde_json::to_string_pretty(&planned.schedule).unwrap_or_default()));
    } else {
        print_schedule(&planned.schedule, term::stdout_color());
    }
    if !args.assign {
        if planned.schedule.slots.iter().any(|s| s.changed) && !args.json {
            term::outln(format_args!("\nRun with --assign to tag the instances and write the nodes' slots."));
        }
        return Ok(());
    }
    let written = runtime
        .block_on(put_in_force(&cloud, environment, &compiled.images, &planned, &args.ssh, usize::from(args.forks)))
        .map_err(|message| fail(&message, None))?;
    if !args.json {
        term::outln(format_args!(
            "\nAssigned: {} nodes tagged ({TAG_REBOOT_TIME}); {} written ({}){}.",
            planned.schedule.slots.len(),
            written.written.len(),
            node_config::PATH,
            match written.unreached.len() {
                0 => String::new(),
                n => format!("; {n} not reached: {}", written.unreached.iter().map(|(node, _)| node.as_str()).collect::<Vec<_>>().join(", ")),
            }
        ));
    }
    match written.shortfall() {
        None => Ok(()),
        Some(message) => Err(fail(&message, Some("fix SSH access and run `kstack reboots --assign` again; it keeps the times"))),
    }
}

/// What putting a schedule in force did on the nodes (every instance is tagged first).
struct Written {
    /// The nodes whose slot file was written (instance ids).
    written: Vec<String>,
    /// The nodes not written (`instance (address)`), and why.
    unreached: Vec<(String, String)>,
}

impl Written {
    /// Says how many nodes were not written, if any.
    fn shortfall(&self) -> Option<String> {
        let nodes = self.written.len() + self.unreached.len();
        (!self.unreached.is_empty()).then(|| format!("{} of {nodes} nodes were not written; their tags are set", self.unreached.len()))
    }
}

/// A checked schedule of the environment's running nodes.
struct Planned {
    fleet: Fleet,
    assignment: BTreeMap<String, u32>,
    schedule: Schedule,
}

/// Schedules the running nodes of the groups with reboot settings, or says why it cannot
/// (message, hint).
async fn plan(cloud: &Cloud, environment: &Environment, seed: u64, reshuffle: bool, ssh: &SshArgs) -> Result<Planned, (String, String)> {
    let policies: BTreeMap<String, RebootPolicy> =
        environment.node_groups.iter().filter_map(|g| g.reboots.clone().map(|p| (g.name.value.clone(), p))).collect();
    let instances = running_instances(cloud)
        .await
        .map_err(|e| (format!("AWS failed while listing instances: {e}"), String::from("check credentials and AWS_ENDPOINT_URL, then run again")))?;
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
    let assignment =
        assign(&fleet, seed, reshuffle).map_err(|e| (format!("no reboot schedule for `{}`: {e}", environment.name), e.hint().to_owned()))?;
    // The checker is independent of the search: a schedule that breaks a rule is never used.
    let broken = violations(&fleet, &assignment);
    if !broken.is_empty() {
        return Err((
            format!("the reboot schedule breaks its rules: {}", broken.join("; ")),
            String::from("this is a bug in kstack; please report it"),
        ));
    }
    let schedule = describe(&fleet, &scheduled, &unscheduled, &assignment, seed, ssh, &environment.name);
    Ok(Planned { fleet, assignment, schedule })
}

/// Tags the instances whose time changed, then writes every node's slot (its peers' times
/// change with theirs). Each node not written is reported as an error; an AWS failure to tag
/// is the message.
async fn put_in_force(
    cloud: &Cloud,
    environment: &Environment,
    images: &BTreeMap<String, LoadedImage>,
    planned: &Planned,
    ssh: &SshArgs,
    forks: usize,
) -> Result<Written, String> {
    tag_instances(cloud, &planned.schedule.slots).await.map_err(|e| format!("AWS failed while tagging instances: {e}"))?;
    let writes = node_writes(environment, images, &planned.schedule, &planned.fleet, &planned.assignment, ssh);
    let written = write_slots(writes, forks).await;
    for (node, error) in &written.unreached {
        term::error(&format!("{node}: could not write the reboot slot: {error}"), None);
    }
    Ok(written)
}

/// After `apply` or `roll`: gives running nodes without a slot (new since the last
/// assignment) one, keeping everyone else's, and writes the groups' nodes. Problems are
/// warnings: the change to the fleet itself succeeded.
pub async fn fold_in_new_nodes(cloud: &Cloud, environment: &Environment, images: &BTreeMap<String, LoadedImage>, ssh: &SshArgs, write_slots: bool) {
    if environment.reboot_groups().is_empty() {
        return;
    }
    let name = &environment.name;
    let planned = match plan(cloud, environment, rand::random(), false, ssh).await {
        Ok(planned) => planned,
        Err((message, hint)) => return term::warning(&format!("reboot schedule not updated: {message} ({hint})")),
    };
    let new = planned.schedule.slots.iter().filter(|s| s.changed).count();
    if new == 0 {
        return;
    }
    if !write_slots {
        // apply and roll reach nodes over SSH only when asked: the tags are the schedule, and a
        // node without its slot file picks a minute of the window at boot until `--assign`.
        return match tag_instances(cloud, &planned.schedule.slots).await {
            Ok(()) => term::errln(format_args!(
                "Reboot schedule: {new} new node(s) folded in (tagged); `kstack reboots {name} --assign` writes their slots on the nodes."
            )),
            Err(error) => term::warning(&format!("reboot schedule not updated: AWS failed while tagging instances: {error}")),
        };
    }
    match put_in_force(cloud, environment, images, &planned, ssh, 10).await.map(|written| written.shortfall()) {
        Ok(None) => term::errln(format_args!("Reboot schedule: {new} new node(s) folded in; `kstack reboots {name}` shows it.")),
        Ok(Some(message)) | Err(message) => term::warning(&format!(
            "reboot schedule: {new} new node(s) folded in, but {message}; run `kstack reboots {name} --assign` once SSH reaches them"
        )),
    }
}

fn describe(
    fleet: &Fleet,
    scheduled: &[&Instance],
    unscheduled: &[&Instance],
    assignment: &BTreeMap<String, u32>,
    seed: u64,
    ssh: &SshArgs,
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
                address: ssh.address(i),
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

fn print_schedule(schedule: &Schedule, color: bool) {
    term::outln(format_args!("Reboot schedule of `{}` (seed {})", schedule.environment, schedule.seed));
    for figures in &schedule.groups {
        let policy = &figures.policy;
        let window = &policy.window;
        term::outln(format_args!(
            "\n{}: {} nodes, {}-{} {} ({}), {} minutes apart ({} within a zone), at most {} down",
            figures.group,
            figures.nodes,
            format_minute(window.start),
            format_minute(window.end),
            window.days.join(","),
            window.time_zone,
            policy.group_gap_minutes,
            schedule.zone_gap_minutes,
            policy.max_down
        ));
        let mut rows: Vec<&Slot> = schedule.slots.iter().filter(|s| s.group == figures.group).collect();
        rows.sort_by(|a, b| (&a.zone, &a.time).cmp(&(&b.zone, &b.time)));
        for slot in rows {
            let note = if slot.changed { "new" } else { "kept" };
            let note = if color && slot.changed { note.yellow().to_string() } else { note.to_owned() };
            term::outln(format_args!(
                "  {:<12} {:<21} {:<15} {}  {note}",
                slot.zone,
                slot.instance,
                slot.address.as_deref().unwrap_or("-"),
                slot.time
            ));
        }
        term::outln(format_args!(
            "  scheduled: at most {} reboot(s) within any {} minutes (window fits {} reboots that far apart)",
            figures.worst_within_gap,
            policy.group_gap_minutes,
            match slots(window.minutes(), policy.group_gap_minutes) {
                u32::MAX => String::from("any number of"),
                n => n.to_string(),
            }
        ));
        term::outln(format_args!(
            "  random minutes instead: P(two share a minute) = {:.4}, P(two within {} minutes) = {:.4}",
            figures.random_shared_minute, policy.group_gap_minutes, figures.random_within_gap
        ));
    }
    if !schedule.unscheduled_groups.is_empty() {
        term::outln(format_args!("\nNo reboot settings (not scheduled): {}", schedule.unscheduled_groups.join(", ")));
    }
}

async fn tag_instances(cloud: &Cloud, slots: &[Slot]) -> Result<(), crate::aws::AwsError> {
    let mut by_time: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for slot in slots.iter().filter(|s| s.changed) {
        by_time.entry(&slot.time).or_default().push(slot.instance.clone());
    }
    // One call per distinct time: CreateTags takes many resources, one value.
    for (time, instances) in by_time {
        let tag = aws_sdk_ec2::types::Tag::builder().key(TAG_REBOOT_TIME).value(time).build();
        cloud.ec2.create_tags().set_resources(Some(instances)).tags(tag).send().await?;
    }
    Ok(())
}

/// One node's slot file to write.
struct NodeWrite {
    instance: String,
    /// None when the instance has no address of the kind SSH uses (private or public).
    address: Option<String>,
    login: Login,
    content: String,
}

/// Per node of the schedule: its address, how to log in, and the file to write.
fn node_writes(
    environment: &Environment,
    images: &BTreeMap<String, LoadedImage>,
    schedule: &Schedule,
    fleet: &Fleet,
    assignment: &BTreeMap<String, u32>,
    ssh: &SshArgs,
) -> Vec<NodeWrite> {
    let mut writes = Vec::new();
    for slot in &schedule.slots {
        let policy = &fleet.groups[&slot.group];
        let peers: Vec<(String, u32)> =
            fleet.members.iter().filter(|m| m.group == slot.group && m.id != slot.instance).map(|m| (m.id.clone(), assignment[&m.id])).collect();
        let user = environment
            .node_groups
            .iter()
            .find(|g| g.name.value == slot.group)
            .and_then(|g| match &g.image.value {
                ImageRef::Named(name) => images.get(name).map(|i| i.image.ssh_user.clone()),
                ImageRef::Ami(_) => None,
            })
            .unwrap_or_else(|| String::from("ubuntu"));
        let content = node_config::apt_config(&environment.name, &slot.instance, assignment[&slot.instance], policy, &peers);
        writes.push(NodeWrite { instance: slot.instance.clone(), address: slot.address.clone(), login: ssh.login(&user), content });
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
