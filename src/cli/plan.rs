//! `kstack plan <env>`

use std::path::PathBuf;

use kstack::hint::Hint;
use kstack::model::Project;
use kstack::plan::render;
use kstack::roll::Unfinished;

use super::running::{runtime, stop_on_signals};
use super::scope_args::ScopeArgs;
use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::session::{Desired, Session};

/// Show what `apply` would change: refresh the environment from AWS and compare it with
/// its model, attribute by attribute.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack plan dev
  kstack plan dev --out dev.plan.json && kstack apply dev.plan.json
  kstack plan dev --json | jq '.plan.summary'
  kstack plan dev --destroy                 what `kstack destroy dev` would delete
  kstack plan dev --target asg.workers      only the group and what it depends on
  kstack plan dev --replace launch_template.workers

Exit status: 0 success, 1 error; with --detailed-exitcode 0 no changes, 1 error, 2 changes.")]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Print the plan as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Exit 2 when there are changes, 0 when there are none.
    #[arg(long)]
    pub detailed_exitcode: bool,

    /// Save the plan for `kstack apply FILE`, which refuses it if anything changed since.
    #[arg(long, value_name = "FILE", conflicts_with = "destroy")]
    out: Option<PathBuf>,

    /// Plan the environment's destruction, as `kstack destroy` would carry it out: from its
    /// state and tags, so it needs no secrets and works while the environment has problems.
    #[arg(long, conflicts_with_all = ["targets", "replace"])]
    destroy: bool,

    #[command(flatten)]
    scope: ScopeArgs,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<bool, CliError> {
    let runtime = runtime()?;
    let stop = stop_on_signals(&runtime);
    let command = format!("kstack plan {}", args.env);
    let desired = if args.destroy { Desired::Nothing(args.scope.scope()) } else { Desired::Model(args.scope.scope()) };
    let session = runtime.block_on(Session::open(project, &args.env, &command, desired, &stop, &Terminal))?;
    // Applying is refused until it is settled: say so before anyone reviews the plan.
    if let Some(record) = &session.state.roll {
        let unfinished = Unfinished { environment: &session.environment, record };
        let hint = unfinished.hint().unwrap_or_default();
        term::warning(&format!("{unfinished}; {hint} (`kstack roll {} --status` shows where it stopped)", session.environment));
    }
    if args.json {
        let json = serde_json::json!({ "plan": session.plan, "refresh": session.refresh });
        term::outln(format_args!("{json:#}"));
    } else {
        term::out(format_args!("{}", render(&session.plan, term::stdout_color())));
    }
    if let Some(path) = &args.out {
        let saved = serde_json::to_string_pretty(&session.saved(&args.env)).unwrap_or_default();
        std::fs::write(path, saved + "\n")
            .map_err(|error| CliError::failed(format!("cannot write the plan to {}: {error}", path.display()), None))?;
        if !args.json {
            term::outln(format_args!("\nSaved the plan to {}; run `kstack apply {}` to carry it out.", path.display(), path.display()));
        }
    }
    Ok(args.detailed_exitcode && session.plan.has_changes())
}
