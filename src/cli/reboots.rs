//! `kstack reboots <env>`: the reboot schedule of the running nodes, and with `--assign`
//! the tags and node files that put it in force.

use owo_colors::OwoColorize;

use kstack::model::reboots::format_minute;
use kstack::model::Project;
use kstack::naming::TAG_REBOOT_TIME;
use kstack::ops::account;
use kstack::ops::reboots::{slot_nodes, ssh_users, unreached};
use kstack::reboots::node_config;
use kstack::reboots::running::{plan, put_in_force, Schedule, Slot, Written};
use kstack::reboots::schedule::slots;

use super::running::runtime;
use super::ssh_args::SshArgs;
use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::load::compiled;
use kstack::ops::load::open_store;

/// Show when each running node reboots for OS updates; with --assign, tag the instances and
/// write each node's slot over SSH.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack reboots dev                      the schedule, and how random times would compare
  kstack reboots dev --assign             tag the instances and write the nodes' slots
  kstack reboots dev --assign --seed 7    reproduce a spread

Exit status: 0 the schedule holds every rule (and was written, with --assign), 1 it cannot,
or a node could not be written.")]
pub(super) struct Args {
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

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let compiled = compiled(project, &args.env, &Terminal)?;
    let environment = &compiled.checked.environment;
    if environment.reboot_groups().is_empty() {
        return Err(CliError::failed(
            format!("`{}` has no reboot settings", environment.name),
            Some("add `reboots: { window: { start: \"03:00\", end: \"05:00\" } }` to the environment (or to a node group)"),
        ));
    }
    let runtime = runtime()?;
    let store = open_store(project, &environment.state_location())?;
    let _lock = match args.assign {
        true => {
            // Tags and slot files, each written whole: nothing is half done if the run ends.
            let stop = kstack::stop::Stop::default();
            Some(store.lock(&format!("kstack reboots {} --assign", args.env), &stop)?)
        }
        false => None,
    };
    let state = store.load()?;
    let (cloud, _) = runtime.block_on(account::connect(&environment.aws, &environment.region.value, state.owner(), state.account.as_deref()))?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let access = args.ssh.access();
    let planned = runtime.block_on(plan(&cloud, environment, seed, args.reshuffle, &access))?;
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
    runtime.block_on(args.ssh.reach().record_console_host_keys(&cloud, &slot_nodes(&planned), &Terminal))?;
    let written =
        runtime.block_on(put_in_force(&cloud, environment, &ssh_users(environment, &compiled.images), &planned, &access, usize::from(args.forks)))?;
    report_unreached(&written);
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
        Some(message) => Err(CliError::failed(message, Some("fix SSH access and run `kstack reboots --assign` again; it keeps the times"))),
    }
}

/// Each unreached node, as an error.
fn report_unreached(written: &Written) {
    for line in unreached(written) {
        term::error(&line, None);
    }
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
