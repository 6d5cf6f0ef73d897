//! `kstack roll <env>`

use crate::naming::TAG_UNFINISHED_ROLL;
use std::time::Duration;

use crate::aws::Cloud;

use crate::hint::Hint;
use crate::model::{Amount, PolicyOverrides, Project};
use crate::roll::{abort, batches, group_state, roll_group, Journal, RollError, RollEvent, RollGroup, RollRecord, Unfinished};

use super::progress::RollProgress;
use super::session::{open_store, runtime, stop_on_signals, Held};
use super::ssh_args::SshArgs;
use super::{check_groups, locate_state, report_problems, term, CliError};

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
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
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
    /// Every group of `env`, with the groups' own settings: what `apply --roll` runs.
    pub(super) fn everything(env: &str, ssh: SshArgs, write_reboot_slots: bool) -> Args {
        Args {
            env: env.to_owned(),
            groups: Vec::new(),
            max_surge: None,
            max_unavailable: None,
            min_healthy_percent: None,
            dry_run: false,
            resume: false,
            abort: false,
            status: false,
            timeout: 900,
            write_reboot_slots,
            ssh,
        }
    }

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
        let held = crate::roll::suspended_by_roll(&group.already_suspended);
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

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    run_holding(project, args, None)
}

/// `--status` and `--abort` work from the environment's state and where it lives: in an
/// incident, a secret's variable unset or a file half edited never keeps a person from seeing
/// or undoing an unfinished roll.
fn run_from_state(project: &Project, args: &Args) -> Result<(), CliError> {
    let location = locate_state(project, &args.env)?;
    let env = &location.name;
    let store = open_store(project, env, location.project.as_deref(), &location.state)?;
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
    let cloud = runtime.block_on(Cloud::connect(&region, state.owner()));
    let shown = RollProgress::new();
    let progress = |event: RollEvent| shown.event(event);
    runtime
        .block_on(abort(&cloud, &mut journal, Duration::from_secs(args.timeout), &progress))
        .map_err(|e| CliError::failed(format!("abort stopped: {e}"), None))?;
    term::outln(format_args!("Roll of `{env}` aborted: group sizes and processes restored."));
    Ok(())
}

/// Rolls; under `held`, the lock an apply took (`apply --roll`), or else under its own.
pub(super) fn run_holding(project: &Project, args: &Args, held: Option<Held>) -> Result<(), CliError> {
    if (args.status || args.abort) && held.is_none() {
        return run_from_state(project, args);
    }
    let (sources, result) = super::load_for_roll(project, &args.env);
    let super::ForRoll { checked, images } = result.map_err(|problems| report_problems(&args.env, problems, &sources))?;
    let environment = &checked.environment;
    let env = &environment.name;
    check_groups(environment, &args.groups)?;
    let store = open_store(project, &environment.name, environment.project.as_deref(), &environment.state)?;
    let command = format!("kstack roll {}", args.env);
    let (runtime, stop, _lock) = match held {
        Some(Held { runtime, stop, lock }) => (runtime, stop, lock),
        None => {
            let runtime = runtime()?;
            let stop = stop_on_signals(&runtime);
            let lock = store.lock(&command, &stop)?;
            (runtime, stop, lock)
        }
    };
    let state = store.load()?;
    let group_names = GroupNames(&state);
    let cloud = runtime.block_on(Cloud::connect(&environment.region.value, state.owner()));
    let unfinished_roll = Journal::open(store.clone())?;
    let shown = RollProgress::new();
    let progress = |event: RollEvent| shown.event(event);

    if args.dry_run {
        if let Some(journal) = &unfinished_roll {
            let unfinished = Unfinished { environment: env, record: &journal.record };
            term::warning(&format!("{unfinished}; {}", unfinished.hint().unwrap_or_default()));
        }
        return runtime.block_on(dry_run(&cloud, environment, &group_names, args));
    }
    let mut journal = match (unfinished_roll, args.resume) {
        (Some(journal), true) => journal,
        (Some(journal), false) => {
            return Err(Unfinished { environment: env, record: &journal.record }.into());
        }
        (None, true) => {
            return Err(CliError::failed(format!("`{env}` has no unfinished roll"), Some(&format!("start one with `kstack roll {env}`"))))
        }
        (None, false) => {
            let groups = environment
                .roll_sequence()
                .into_iter()
                .map(|g| g.name.value.clone())
                .filter(|g| args.groups.is_empty() || args.groups.contains(g))
                .collect();
            Journal::new(store, &command, groups, args.overrides(), args.timeout)
        }
    };
    if args.resume {
        shown.note(&format!("resuming the roll started {} by `{}`", journal.record.started, journal.record.command));
    }
    let record = journal.record.clone();
    let mut replaced = 0;
    for name in &record.groups {
        let Some(group) = environment.node_groups.iter().find(|g| &g.name.value == name) else { continue };
        let aws_name = group_names.get(env, name)?;
        let roll = RollGroup {
            environment: env,
            group: name,
            aws_name: &aws_name,
            policy: record.overrides.over(group.roll),
            timeout: Duration::from_secs(record.timeout_seconds),
            hooks: &environment.roll_hooks,
            progress: &progress,
            stop: &stop,
        };
        let rolled = runtime.block_on(roll_group(&cloud, &roll, &mut journal));
        shown.finish();
        match rolled {
            Ok(rolled) => {
                replaced += rolled;
                if rolled > 0 {
                    term::outln(format_args!("{name}: {rolled} replaced"));
                }
            }
            Err(error) => {
                let reason = format!("{name}: {error}");
                // The stop reason is worth keeping, but the roll failing is the news.
                let _ = journal.update(|r| r.stopped = Some(reason));
                let in_flight = journal.batch().is_some();
                let message = format!("roll of `{name}` in {} stopped: {error}", cloud.region);
                let next = if in_flight {
                    format!("the batch in flight is recorded and {aws_name}'s processes stay suspended: `kstack roll {env} --resume` continues it, or `--abort`")
                } else {
                    format!("{aws_name} is back at its size: `kstack roll {env} --resume` continues, or `--abort` forgets the roll")
                };
                // Ctrl-C in a terminal also reaches the hooks' processes, which then fail: the
                // roll was stopped all the same.
                let stopped = match error {
                    RollError::Stopped(reason) => Some(reason),
                    _ => stop.reason(),
                };
                return Err(match stopped {
                    Some(reason) => {
                        let hint = match reason {
                            crate::stop::Reason::LockLost(_) => format!("another run may be working on `{env}` now: let it finish; {next}"),
                            crate::stop::Reason::Signal(_) => format!("the lock is released; {next}"),
                        };
                        CliError::stopped(reason, message, Some(&hint))
                    }
                    None => CliError::failed(message, Some(&format!("fix the cause; {next}"))),
                });
            }
        }
    }
    journal.finish()?;
    if replaced == 0 {
        term::outln(format_args!("Nothing to roll: every instance runs its group's current launch settings."));
    } else {
        runtime.block_on(super::reboots::fold_in_new_nodes(&cloud, environment, &images, &args.ssh, args.write_reboot_slots));
    }
    Ok(())
}

/// The auto scaling group names state recorded: they carry the environment's identity (or
/// predate identities), so they cannot be derived from the model alone.
struct GroupNames<'a>(&'a crate::state::State);

impl GroupNames<'_> {
    fn get(&self, env: &str, group: &str) -> Result<String, CliError> {
        let address = crate::resource::Address::new(crate::resource::Kind::AutoScalingGroup, group);
        match self.0.resources.get(&address) {
            Some(recorded) => Ok(recorded.id.clone()),
            None => Err(CliError::failed(
                format!("node group `{group}` of `{env}` has no auto scaling group in state"),
                Some(&format!("apply the environment first with `kstack apply {env}`")),
            )),
        }
    }
}

/// Per group: the outdated instances, and the batches a roll would take them in.
async fn dry_run(cloud: &Cloud, environment: &crate::model::Environment, names: &GroupNames<'_>, args: &Args) -> Result<(), CliError> {
    for group in environment.roll_sequence() {
        let name = &group.name.value;
        if !args.groups.is_empty() && !args.groups.contains(name) {
            continue;
        }
        let aws_name = names.get(&environment.name, name)?;
        let state = group_state(cloud, &aws_name).await?;
        let total = state.outdated.len() + state.current.len();
        term::outln(format_args!("{name}: {} outdated of {total}", state.outdated.len()));
        if state.outdated.is_empty() {
            continue;
        }
        let policy = args.overrides().over(group.roll);
        let size = match policy.batch(state.group.desired_capacity().unwrap_or(0).max(0) as u32) {
            Ok(size) => size,
            Err(why) => {
                term::outln(format_args!("  cannot roll: {why}"));
                continue;
            }
        };
        for (number, (surged, first)) in batches(&state.outdated, size).iter().enumerate() {
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
    Ok(())
}
