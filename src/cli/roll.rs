//! `kstack roll <env>`

use std::time::Duration;

use kstack::hint::Hint;
use kstack::model::{Amount, PolicyOverrides, Project};
use kstack::naming::TAG_UNFINISHED_ROLL;
use kstack::ops::account;
use kstack::ops::load::{for_roll, state_location, ForRoll};
use kstack::ops::reboots::NewNodes;
use kstack::ops::roll::{DryRunGroup, EnvironmentRoll, RollRequest, DEFAULT_TIMEOUT_SECONDS};
use kstack::roll::{abort, Journal, RollRecord, Unfinished};

use super::progress::Shown;
use super::running::{runtime, stop_on_signals};
use super::ssh_args::SshArgs;
use super::term::Terminal;
use super::{check_groups, term, CliError};
use kstack::ops::load::open_store;

/// Move every node group onto its current launch settings (AMI, instance type, user data)
/// in batches, without dropping below the capacity each group's roll policy keeps.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack roll dev --dry-run                  show the outdated instances and the batches
  kstack roll dev --group workers --max-surge 25%
  kstack roll dev --resume                   continue a roll that stopped
  kstack roll dev --abort                    put the group being rolled back to its size

Exit status: 0 every group runs its current settings, 1 the roll stopped (see the message) or
its lock was lost to another run, 130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM: no
new batch starts, the batch in flight finishes or undoes its surge, and the lock is released.")]
// SSH options only serve --write-reboot-slots: given alone, they are refused, not ignored.
#[command(mut_group("SshArgs", |group| group.requires("write_reboot_slots")))]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Only these node groups (repeatable); groups go in the environment's `roll_order`.
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,

    /// New instances launched above a group's size per batch: a count or a percentage of the
    /// group [default: the group's `roll.max_surge`, 1 unless set].
    #[arg(long, value_name = "AMOUNT")]
    max_surge: Option<Amount>,

    /// Outdated instances taken out before their replacements serve, per batch [default: the
    /// group's `roll.max_unavailable`, 0 unless set].
    #[arg(long, value_name = "AMOUNT")]
    max_unavailable: Option<Amount>,

    /// In-service instances never drop below this percentage of a group's size.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
    min_healthy_percent: Option<u32>,

    /// Print the outdated instances and the batches per group, and change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Continue the roll that stopped, with the settings it was started with.
    #[arg(long, conflicts_with_all = ["abort", "dry_run", "groups", "max_surge", "max_unavailable", "min_healthy_percent"])]
    resume: bool,

    /// Stop the roll that stopped for good: terminate instances it surged above the group's
    /// size, restore the group's size and processes, and forget it.
    #[arg(long, conflicts_with_all = ["dry_run", "groups", "max_surge", "max_unavailable", "min_healthy_percent"])]
    abort: bool,

    /// Say whether a roll is unfinished, where it stopped and which processes it holds
    /// suspended; change nothing (exit 0 either way).
    #[arg(long, conflicts_with_all = ["resume", "abort", "dry_run", "groups", "max_surge", "max_unavailable", "min_healthy_percent"])]
    status: bool,

    /// How long to wait for new instances to be in service, or old ones to leave, in seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECONDS, value_name = "SECONDS")]
    timeout: u64,

    /// Also write new nodes' reboot slots over SSH (environments with `reboots:`); without it
    /// new nodes are only tagged with their slot.
    #[arg(long)]
    write_reboot_slots: bool,

    /// Reaching new nodes to write their reboot slots (only with --write-reboot-slots).
    #[command(flatten, next_help_heading = "Reboot slots of new nodes")]
    ssh: SshArgs,
}

impl Args {
    fn overrides(&self) -> PolicyOverrides {
        PolicyOverrides { max_surge: self.max_surge, max_unavailable: self.max_unavailable, min_healthy_percent: self.min_healthy_percent }
    }
}

/// `--status`: the unfinished roll, if any, as its journal and the group's tag tell it.
fn status(env: &str, record: Option<&RollRecord>) {
    let Some(record) = record else {
        term::outln(format_args!("No unfinished roll of `{env}`."));
        return;
    };
    let unfinished = Unfinished { environment: env, record };
    term::outln(format_args!("{unfinished}."));
    if let Some(group) = &record.group {
        let held = kstack::roll::suspended_by_roll(&group.already_suspended);
        let batch = match &group.batch {
            Some(batch) => {
                format!("batch {} in flight (surged for: {}; taken out first: {})", batch.number, or_none(&batch.surged), or_none(&batch.replaced))
            }
            None => String::from("no batch in flight"),
        };
        term::outln(format_args!("  {} ({}): {batch}", group.group, group.auto_scaling_group));
        if group.batch.is_some() {
            term::outln(format_args!("  suspended by the roll: {} (tag {TAG_UNFINISHED_ROLL} on the group)", held.join(", ")));
        }
    }
    term::outln(format_args!("  {}", unfinished.hint().unwrap_or_default()));
}

fn or_none(ids: &[String]) -> String {
    if ids.is_empty() {
        String::from("none")
    } else {
        ids.join(", ")
    }
}

/// `--status` and `--abort` work from the environment's state and where it lives: in an
/// incident, a secret's variable unset or a file half edited never keeps a person from seeing
/// or undoing an unfinished roll.
fn run_from_state(project: &Project, args: &Args) -> Result<(), CliError> {
    let location = state_location(project, &args.env, &Terminal)?;
    let env = &location.name;
    let store = open_store(project, &location)?;
    if args.status {
        let record = store.load()?.roll;
        status(env, record.as_ref());
        return Ok(());
    }
    let runtime = runtime()?;
    let stop = stop_on_signals(&runtime);
    let _lock = store.lock(&format!("kstack roll {} --abort", args.env), &stop)?;
    let state = store.load()?;
    let Some(region) = location.region.or_else(|| state.region.clone()) else {
        return Err(CliError::failed(format!("the region of `{env}` is unknown"), Some("fix the environment's `region:`")));
    };
    let Some(mut journal) = Journal::open(store.clone())? else {
        return Err(CliError::failed(format!("`{env}` has no unfinished roll"), Some(&format!("start one with `kstack roll {env}`"))));
    };
    let (cloud, _) = runtime.block_on(account::connect(&location.aws, &region, state.owner(), state.account.as_deref()))?;
    runtime
        .block_on(abort(&cloud, &mut journal, Duration::from_secs(args.timeout), &Shown::roll()))
        .map_err(|e| CliError::failed(format!("abort stopped: {e}"), None))?;
    term::outln(format_args!("Roll of `{env}` aborted: group sizes and processes restored."));
    Ok(())
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    if args.status || args.abort {
        return run_from_state(project, args);
    }
    let ForRoll { mut checked, images } = for_roll(project, &args.env, &Terminal)?;
    check_groups(&checked.environment, &args.groups)?;
    let store = open_store(project, &checked.environment.state_location())?;
    let command = format!("kstack roll {}", args.env);
    let runtime = runtime()?;
    // The hooks may use the secrets kept in the account's stores; a dry run runs none.
    if !args.dry_run {
        runtime.block_on(kstack::ops::secrets::read(&mut checked.environment, &Terminal))?;
    }
    let environment = &checked.environment;
    let stop = stop_on_signals(&runtime);
    let _lock = store.lock(&command, &stop)?;
    let roll = runtime.block_on(EnvironmentRoll::open(environment, store))?;
    if args.dry_run {
        if let Some(unfinished) = roll.unfinished() {
            term::warning(&format!("{unfinished}; {}", unfinished.hint().unwrap_or_default()));
        }
        print_dry_run(&runtime.block_on(roll.dry_run(&args.groups, args.overrides()))?);
        return Ok(());
    }
    let reach = args.ssh.reach();
    let request = RollRequest {
        groups: &args.groups,
        resume: args.resume,
        overrides: args.overrides(),
        timeout_seconds: args.timeout,
        command: &command,
        new_nodes: NewNodes { images: &images, reach: &reach, write_slots: args.write_reboot_slots },
    };
    runtime.block_on(roll.run(&request, &stop, &Shown::roll(), &Terminal))?;
    Ok(())
}

/// Per group: the outdated instances, and the batches a roll would take them in.
fn print_dry_run(groups: &[DryRunGroup]) {
    for DryRunGroup { group, outdated, total, batches } in groups {
        term::outln(format_args!("{group}: {outdated} outdated of {total}"));
        if *outdated == 0 {
            continue;
        }
        let batches = match batches {
            Ok(batches) => batches,
            Err(why) => {
                term::outln(format_args!("  cannot roll: {why}"));
                continue;
            }
        };
        for (number, (surged, first)) in batches.iter().enumerate() {
            let mut parts = Vec::new();
            if !surged.is_empty() {
                parts.push(format!("surge for {}", surged.join(", ")));
            }
            if !first.is_empty() {
                parts.push(format!("take out {}", first.join(", ")));
            }
            term::outln(format_args!("  batch {}: {}", number + 1, parts.join("; ")));
        }
    }
}
