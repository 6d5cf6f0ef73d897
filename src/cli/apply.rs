//! `kstack apply <env|FILE>` and `kstack destroy <env>`

use std::path::Path;
use std::sync::Arc;

use kstack::apply::{apply, record_observed, Options, Outcome, Recorder};
use kstack::compile::content_digest;
use kstack::hint::Hint;
use kstack::model::Project;
use kstack::plan::render;
use kstack::plan::saved::SavedPlan;
use kstack::roll::Unfinished;
use kstack::state::Lock;

use kstack::ops::outputs::current;
use kstack::ops::reboots::{fold_in_new_nodes, NewNodes};
use kstack::ops::roll::{EnvironmentRoll, RollRequest};
use kstack::ops::session::{Desired, Session};
use kstack::stop::Stop;

use super::error::Exit;
use super::progress::Shown;
use super::running::{confirm, runtime, stop_on_signals};
use super::scope_args::{ScopeArgs, UnprotectArgs};
use super::term::Terminal;
use super::{show_outputs, term, CliError};

/// Make the environment match its model: show the plan, ask, then create, update and delete.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack apply dev
  kstack apply dev --auto-approve --parallelism 20
  kstack plan dev --out dev.plan.json && kstack apply dev.plan.json
  kstack apply dev --auto-approve --roll
  kstack apply dev --target asg.workers      only the group and what it depends on

Exit status: 0 applied (or nothing to do), 1 error, cancelled or the lock lost to another run,
130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM: the change in flight is finished and
recorded, and the lock released.")]
// SSH options only serve --write-reboot-slots: given alone, they are refused, not ignored.
#[command(mut_group("SshArgs", |group| group.requires("write_reboot_slots")))]
pub(super) struct ApplyArgs {
    /// Environment name (environments/<env>.yaml), path to an environment file, or a plan
    /// saved with `kstack plan --out`.
    target: String,

    /// Apply without asking for confirmation.
    #[arg(long)]
    auto_approve: bool,

    /// How many resources to work on at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    parallelism: u16,

    /// Then roll every node group onto its current launch settings (see `kstack roll`).
    #[arg(long)]
    roll: bool,

    /// Also write new nodes' reboot slots over SSH (environments with `reboots:`); without it
    /// new nodes are only tagged with their slot.
    #[arg(long)]
    write_reboot_slots: bool,

    /// Reaching new nodes to write their reboot slots (only with --write-reboot-slots).
    #[command(flatten, next_help_heading = "Reboot slots of new nodes")]
    ssh: super::ssh_args::SshArgs,

    #[command(flatten)]
    scope: ScopeArgs,
}

/// Delete every resource of the environment, found by tag and by state.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack destroy dev
  kstack destroy dev --auto-approve

Exit status: 0 destroyed (or nothing to do), 1 error, cancelled or the lock lost to another run,
130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM: the change in flight is finished and
recorded, and the lock released.")]
pub(super) struct DestroyArgs {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Destroy without asking for confirmation.
    #[arg(long)]
    auto_approve: bool,

    /// How many resources to work on at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=100))]
    parallelism: u16,

    #[command(flatten)]
    unprotect: UnprotectArgs,
}

pub(super) fn run_apply(project: &Project, args: &ApplyArgs) -> Result<(), CliError> {
    let saved = SavedPlan::read(Path::new(&args.target)).transpose().map_err(CliError::invalid_input)?;
    let env = saved.as_ref().map_or(args.target.as_str(), |s| s.source.as_str()).to_owned();
    // A saved plan was made with its scope, which it carries.
    let scope = match &saved {
        Some(saved) if !args.scope.scope().is_default() => {
            return Err(CliError::invalid(
                format!("{} is a saved plan: it carries the --target and --replace it was made with", args.target),
                Some(&format!("plan again with them: `kstack plan {} ... --out {}`", saved.source, args.target)),
            ))
        }
        Some(saved) => saved.plan.scope.clone(),
        None => args.scope.scope(),
    };
    let runtime = runtime()?;
    let stop = stop_on_signals(&runtime);
    let command = format!("kstack apply {}", args.target);
    let session = runtime.block_on(Session::open(project, &env, &command, Desired::Model(scope), &stop, &Terminal))?;
    if let Some(stale) = saved.as_ref().and_then(|saved| saved.stale(&session.desired_digest(), &content_digest(&session.observed))) {
        return Err(CliError::failed(
            format!("the saved plan {} is stale: {stale} since it was made", args.target),
            Some(&format!("run `kstack plan {env} --out {}` again and review it", args.target)),
        ));
    }
    term::out(format_args!("{}", render(&session.plan, term::stdout_color())));
    let mut session = session;
    let (model, images) = (session.model.take(), std::mem::take(&mut session.images));
    let (mut cloud, environment, store) = (session.cloud.clone(), session.environment.clone(), session.store.clone());
    let applied = session.plan.has_changes();
    // The lock is held to the end: with --roll, no other run gets in between apply and roll.
    let _lock = if applied {
        // Applying would reset the size of a group a batch has surged.
        if let Some(record) = &session.state.roll {
            let unfinished = Unfinished { environment: &session.environment, record };
            return Err(CliError::failed(format!("{unfinished}; nothing was applied"), unfinished.hint().as_deref()));
        }
        // A saved plan was reviewed when it was made.
        if saved.is_none() && !args.auto_approve {
            confirm(&runtime, &stop, &format!("Do you want to perform these actions in `{}`?", session.environment))?;
        }
        let lock = execute(&runtime, session, args.parallelism, &stop, "Apply")?;
        // What the environment owns now: the apply recorded what it made.
        cloud.owner = store.load()?.owner();
        show_outputs::after_apply(runtime.block_on(current(&cloud, &environment, None)));
        lock
    } else {
        show_outputs::after_apply(runtime.block_on(current(&cloud, &environment, Some(&session.observed))));
        session.lock
    };
    let Some(mut model) = model else { return Ok(()) };
    let reach = args.ssh.reach();
    let new_nodes = NewNodes { images: &images, reach: &reach, write_slots: args.write_reboot_slots };
    if args.roll {
        // The roll's hooks may use the secrets kept in the account's stores.
        runtime.block_on(kstack::ops::secrets::read(&mut model, &Terminal))?;
        let roll = runtime.block_on(EnvironmentRoll::open(&model, store))?;
        runtime.block_on(roll.run(&RollRequest::everything(&command, new_nodes), &stop, &Shown::roll(), &Terminal))?;
    } else if applied {
        runtime.block_on(fold_in_new_nodes(&cloud, &model, &new_nodes, &Terminal));
    }
    Ok(())
}

pub(super) fn run_destroy(project: &Project, args: &DestroyArgs) -> Result<(), CliError> {
    let runtime = runtime()?;
    let stop = stop_on_signals(&runtime);
    let command = format!("kstack destroy {}", args.env);
    let session = runtime.block_on(Session::open(project, &args.env, &command, Desired::Nothing(args.unprotect.scope()), &stop, &Terminal))?;
    term::out(format_args!("{}", render(&session.plan, term::stdout_color())));
    if !session.plan.has_changes() {
        return Ok(());
    }
    if !args.auto_approve {
        confirm(
            &runtime,
            &stop,
            &format!("Do you really want to destroy all {} resources of `{}`? There is no undo.", session.plan.summary.delete, session.environment),
        )?;
    }
    execute(&runtime, session, args.parallelism, &stop, "Destroy").map(drop)
}

/// Carries out the session's plan; the session's lock comes back, still taken.
fn execute(runtime: &tokio::runtime::Runtime, session: Session, parallelism: u16, stop: &Stop, what: &str) -> Result<Lock, CliError> {
    let Session { cloud, desired, observed, plan, store, mut state, lock, .. } = session;
    // Record what refresh found first, so resources adopted by tag are in state even if the
    // run stops before touching them.
    record_observed(&mut state, &observed, &plan, &desired);
    if let Err(error) = store.save(&mut state) {
        return Err(CliError::failed(error.to_string(), Some("check that the project directory is writable")));
    }
    let steps = plan.summary.create + plan.summary.update + plan.summary.delete + 2 * plan.summary.replace;
    let progress = Arc::new(Shown::apply(steps));
    let outcome = runtime.block_on(apply(
        cloud,
        &plan,
        &desired,
        &observed,
        Recorder { store: store.clone(), state },
        Options { parallelism: usize::from(parallelism), stop: stop.clone(), left_alone: plan.left_alone.iter().map(|f| f.id.clone()).collect() },
        progress.clone(),
    ));
    progress.finish();
    report(&outcome, what, &plan, &store.location()).map(|()| lock)
}

fn report(outcome: &Outcome, what: &str, plan: &kstack::plan::Plan, state_location: &str) -> Result<(), CliError> {
    if let Some(error) = &outcome.state_error {
        let (message, hint) = (error.to_string(), error.hint());
        return Err(match outcome.stopped.clone() {
            Some(reason) => CliError::stopped(reason, message, hint.as_deref()),
            None => CliError::failed(message, hint.as_deref()),
        });
    }
    let mut errors: Vec<(String, Option<String>)> = outcome
        .failures
        .iter()
        .map(|failure| (format!("{} could not be {}: {}", failure.address, failure.verb.past(), failure.error), None))
        .collect();
    let steps = outcome.done + outcome.failures.len() + outcome.not_started.len();
    if let Some(reason) = &outcome.stopped {
        let (lock, hint) = match reason {
            kstack::stop::Reason::LockLost(_) => {
                ("", "another run may be working on the environment now: let it finish, then `kstack plan` shows where things stand")
            }
            kstack::stop::Reason::Signal(_) => (" and the lock is released", "run the command again to continue from where it stopped"),
        };
        errors.push((
            format!(
                "{what} stopped: {reason}. {} of {steps} steps done, {} not started; state holds everything done ({state_location}){lock}",
                outcome.done,
                outcome.not_started.len()
            ),
            Some(hint.to_owned()),
        ));
        return Err(CliError::all(Exit::Stopped(reason.clone()), errors));
    }
    if outcome.failures.is_empty() {
        let s = &plan.summary;
        term::outln(format_args!(
            "\n{what} complete! Resources: {} added, {} changed, {} destroyed. State: {}",
            s.create + s.replace,
            s.update,
            s.delete + s.replace,
            state_location
        ));
        if plan.scope.is_partial() {
            term::warning("the changes applied may be incomplete (--target): run `kstack plan` without it to see what else the model asks for");
        }
        return Ok(());
    }
    errors.push((
        format!(
            "{what} stopped after {} of {steps} steps; {} not started. State holds everything done so far.",
            outcome.done,
            outcome.not_started.len()
        ),
        Some(String::from("fix the cause above and run the command again; it continues from where it stopped")),
    ));
    Err(CliError::all(Exit::Failed, errors))
}
