//! `kstack provision <env>` and `kstack verify <env>`: node roles over SSH on the running
//! instances of the environment's node groups.

use std::sync::Arc;

use owo_colors::OwoColorize;

use kstack::events::Unwatched;
use kstack::model::Project;
use kstack::ops::account;
use kstack::ops::fleet::{select, GroupWork, Selection};
use kstack::roles::{HostReport, RunOptions, TaskStatus};

use super::progress::Shown;

use super::error::Exit;
use super::running::runtime;
use super::ssh_args::SshArgs;
use super::term::Terminal;
use super::{check_groups, term, CliError};
use kstack::ops::load::compiled;
use kstack::ops::load::open_store;
use kstack::state::Lock;
use kstack::stop::Stop;

#[derive(Debug, Clone, clap::Args)]
pub(super) struct Targets {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Only these node groups (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,

    /// Only these hosts: addresses or instance ids (repeatable).
    #[arg(long = "limit", value_name = "HOST")]
    limit: Vec<String>,

    #[command(flatten)]
    ssh: SshArgs,

    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=500))]
    forks: u16,

    /// Stop starting new hosts once more than this many have failed.
    #[arg(long, value_name = "N")]
    max_fail: Option<usize>,

    /// Print the per-host reports as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Apply each node group's roles (from its image) to its running instances over SSH.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack provision dev
  kstack provision dev --group workers --limit 10.20.33.7 --check --diff
  kstack provision dev --ssh-user admin --ssh-key ~/.ssh/fleet --max-fail 2
  kstack provision dev --host-key-wait 300   # nodes just started: wait for their console's host keys

Exit status: 0 every host converged (or would, with --check), 1 a host failed or was unreachable.")]
pub(super) struct ProvisionArgs {
    #[command(flatten)]
    targets: Targets,

    /// Report what would change, change nothing.
    #[arg(long)]
    check: bool,

    /// Show file content changes as unified diffs.
    #[arg(long)]
    diff: bool,
}

/// Run the checks of each node group's roles on its running instances.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack verify dev
  kstack verify dev --group ingress --json

Exit status: 0 every check passed, 1 a check failed or a host was unreachable.")]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    targets: Targets,
}

/// The work per node group, under the environment's lock (held until the returned lock is
/// dropped: no apply or roll replaces nodes meanwhile). Secrets become variables; `term`
/// hides their values in all output.
fn plan_work(project: &Project, targets: &Targets, command: &str) -> Result<(Lock, Vec<GroupWork>), CliError> {
    let mut compiled = compiled(project, &targets.env, &Terminal)?;
    check_groups(&compiled.checked.environment, &targets.groups)?;
    let store = open_store(project, &compiled.checked.environment.state_location())?;
    let lock = store.lock(&format!("kstack {command} {}", targets.env), &Stop::default())?;
    let runtime = runtime()?;
    runtime.block_on(kstack::ops::secrets::read(&mut compiled.checked.environment, &Terminal))?;
    let environment = &compiled.checked.environment;
    let state = store.load()?;
    let (cloud, _) = runtime.block_on(account::connect(&environment.aws, &environment.region.value, state.owner(), state.account.as_deref()))?;
    let selection = Selection { groups: &targets.groups, limit: &targets.limit };
    let work = runtime.block_on(select(&cloud, &compiled, &selection, &targets.ssh.reach(), &Terminal))?;
    Ok((lock, work))
}

pub(super) fn run_provision(project: &Project, args: &ProvisionArgs) -> Result<(), CliError> {
    let (_lock, work) = plan_work(project, &args.targets, "provision")?;
    let runtime = runtime()?;
    let color = term::stdout_color();
    let events = Arc::new(Shown::roles(!args.targets.json, args.diff));
    let mut reports = Vec::new();
    for group in &work {
        let options = RunOptions { check: args.check, forks: usize::from(args.targets.forks), max_fail: args.targets.max_fail };
        let login = args.targets.ssh.access().login(&group.ssh_user);
        reports.extend(runtime.block_on(kstack::roles::run(&group.hosts, &login, &group.roles, &group.variables, &options, events.clone())));
    }
    finish(&reports, args.targets.json, color)
}

pub(super) fn run_verify(project: &Project, args: &VerifyArgs) -> Result<(), CliError> {
    let (_lock, work) = plan_work(project, &args.targets, "verify")?;
    let runtime = runtime()?;
    let color = term::stdout_color();
    let mut reports = Vec::new();
    for group in &work {
        let options = RunOptions { check: true, forks: usize::from(args.targets.forks), max_fail: args.targets.max_fail };
        let login = args.targets.ssh.access().login(&group.ssh_user);
        reports.extend(runtime.block_on(kstack::roles::verify(&group.hosts, &login, &group.roles, &group.variables, &options, Arc::new(Unwatched))));
    }
    if !args.targets.json {
        for report in &reports {
            for check in &report.checks {
                let (mark, text) = match (&check.skipped, check.passed) {
                    (Some(why), _) => ("skip", format!("{} ({why})", check.name)),
                    (None, true) => ("pass", check.name.clone()),
                    (None, false) => ("FAIL", format!("{}: {}", check.name, check.detail)),
                };
                let mark = match (color, mark) {
                    (true, "pass") => mark.green().to_string(),
                    (true, "FAIL") => mark.red().bold().to_string(),
                    (true, _) => mark.dimmed().to_string(),
                    _ => mark.to_owned(),
                };
                term::outln(format_args!("{mark}: [{}] {text}", report.host));
            }
        }
    }
    finish(&reports, args.targets.json, color)
}

/// The recap, one line per host, and the exit status.
fn finish(reports: &[HostReport], json: bool, color: bool) -> Result<(), CliError> {
    if json {
        let mut shown = reports.to_vec();
        for task in shown.iter_mut().flat_map(|r| r.tasks.iter_mut()) {
            task.outcome.content_diff = term::withheld_if_secret(task.outcome.content_diff.take());
        }
        term::outln(format_args!("{:#}", serde_json::to_value(&shown).unwrap_or_default()));
    } else {
        term::outln(format_args!("\nRECAP"));
        let width = reports.iter().map(|r| r.host.len()).max().unwrap_or(0);
        for report in reports {
            let unreachable = u8::from(report.unreachable.is_some());
            let line = if report.checks.is_empty() {
                format!(
                    "{:width$} : ok={} changed={} failed={} skipped={} unreachable={unreachable}",
                    report.host,
                    report.count(TaskStatus::Ok),
                    report.count(TaskStatus::Changed),
                    report.count(TaskStatus::Failed),
                    report.count(TaskStatus::Skipped),
                )
            } else {
                let skipped = report.checks.iter().filter(|c| c.skipped.is_some()).count();
                let failed = report.checks.iter().filter(|c| !c.passed).count();
                let passed = report.checks.len() - skipped - failed;
                format!("{:width$} : passed={passed} skipped={skipped} failed={failed} unreachable={unreachable}", report.host)
            };
            term::outln(format_args!("{}", if color && report.failed() { line.red().to_string() } else { line }));
        }
    }
    if reports.iter().any(HostReport::failed) {
        Err(CliError::shown(Exit::Failed))
    } else {
        Ok(())
    }
}
