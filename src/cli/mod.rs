//! The command line: argument parsing, dispatch, and exit codes.
//! Only this module knows about the terminal; everything below it returns data.

mod apply;
mod bake;
mod error;
mod generate;
mod graph;
mod images;
mod import;
mod output;
mod plan;
mod progress;
mod provision;
mod reboots;
mod roles;
mod roll;
mod running;
mod scope_args;
mod show_outputs;
mod ssh_args;
mod state;
mod term;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use kstack::diagnostics::{Problems, Sources};
use kstack::model::Project;

use error::CliError;
use error::Exit;

const ABOUT: &str = "Stand up and run Kubernetes node fleets on AWS.";

const EXAMPLES: &str = "\
Examples:
  kstack validate dev              check environments/dev.yaml and everything it extends
  kstack graph dev | dot -Tsvg > dev.svg
                                   draw the resources of dev and their dependencies
  kstack plan dev                  show what apply would change in AWS
  kstack apply dev                 make AWS match the model, after confirmation
  kstack destroy dev               delete everything of dev
  kstack output dev load_balancers.ingress.dns_name
                                   the ingress load balancer's DNS name
  kstack bake node                 bake images/node.yaml into an AMI (reused if unchanged)
  kstack provision dev --check     show what the node roles would change on running nodes
  kstack verify dev                run the roles' checks on running nodes
  kstack completions bash > /etc/bash_completion.d/kstack";

#[derive(Debug, Parser)]
#[command(name = "kstack", version, about = ABOUT, after_help = EXAMPLES)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// How long work (apply, destroy, roll, bake, provision) shows its progress on stderr:
    /// live lines on a terminal and plain lines elsewhere, plain lines, or one JSON object per
    /// event for a machine following the run.
    #[arg(long, value_enum, global = true, default_value_t, value_name = "HOW")]
    progress: progress::Mode,

    /// Project directory holding environments/, images/ and roles/ [default: the nearest
    /// directory at or above the current one that has environments/]
    #[arg(short = 'C', long, global = true, env = "KSTACK_PROJECT", value_name = "DIR")]
    project: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Validate(validate::Args),
    Graph(graph::Args),
    Plan(plan::Args),
    Apply(apply::ApplyArgs),
    Destroy(apply::DestroyArgs),
    Generate(generate::Args),
    Import(import::Args),
    Output(output::Args),
    State(state::Args),
    Bake(bake::Args),
    Images(images::Args),
    Roles(roles::Args),
    Provision(provision::ProvisionArgs),
    Verify(provision::VerifyArgs),
    Roll(roll::Args),
    Reboots(reboots::Args),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  kstack completions bash > ~/.local/share/bash-completion/completions/kstack\n  kstack completions zsh > ~/.zfunc/_kstack"
    )]
    Completions {
        shell: clap_complete::Shell,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    progress::set_mode(cli.progress);
    let project = match &cli.project {
        Some(dir) => Project { root: dir.clone() },
        None => match Project::discover(&std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))) {
            Ok(project) => project,
            // Completions need no project.
            Err(_) if matches!(cli.command, Command::Completions { .. }) => Project { root: PathBuf::from(".") },
            Err(foreign) => {
                let root = foreign.root.display();
                let hint = format!(
                    "if you trust it, name it with `-C {root}` (or KSTACK_PROJECT={root}); otherwise run kstack inside a project of your own"
                );
                let error = CliError::invalid(foreign.to_string(), Some(&hint));
                error.say();
                return error.exit_code();
            }
        },
    };
    let result = match cli.command {
        Command::Validate(args) => validate::run(&project, &args),
        Command::Graph(args) => graph::run(&project, &args),
        Command::Plan(args) => match plan::run(&project, &args) {
            Ok(true) if !term::stdout_failed() => return ExitCode::from(2),
            Ok(_) => Ok(()),
            // Terraform's meaning: with --detailed-exitcode, 2 says "changes", any error is 1.
            Err(error) if args.detailed_exitcode && *error.exit() == Exit::Invalid => {
                error.say();
                return ExitCode::FAILURE;
            }
            Err(error) => Err(error),
        },
        Command::Apply(args) => apply::run_apply(&project, &args),
        Command::Destroy(args) => apply::run_destroy(&project, &args),
        Command::Generate(args) => generate::run(&project, &args),
        Command::Import(args) => import::run(&project, &args),
        Command::Output(args) => output::run(&project, &args),
        Command::State(args) => state::run(&project, &args),
        Command::Bake(args) => bake::run(&project, &args),
        Command::Images(args) => images::run(&project, &args),
        Command::Roles(args) => roles::run(&project, &args),
        Command::Provision(args) => provision::run_provision(&project, &args),
        Command::Verify(args) => provision::run_verify(&project, &args),
        Command::Roll(args) => roll::run(&project, &args),
        Command::Reboots(args) => reboots::run(&project, &args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kstack", &mut script);
            term::out(format_args!("{}", String::from_utf8_lossy(&script)));
            Ok(())
        }
    };
    match result {
        Ok(()) if !term::stdout_failed() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::FAILURE,
        Err(error) => {
            error.say();
            error.exit_code()
        }
    }
}

/// Refuses `wanted` node groups the environment does not have, each with a did-you-mean.
fn check_groups(environment: &kstack::model::Environment, wanted: &[String]) -> Result<(), CliError> {
    let names: Vec<&str> = environment.node_groups.iter().map(|g| g.name.value.as_str()).collect();
    let unknown: Vec<(String, Option<String>)> = wanted
        .iter()
        .filter(|w| !names.contains(&w.as_str()))
        .map(|group| (format!("`{group}` is not a node group of `{}`", environment.name), Some(kstack::diagnostics::expected_one_of(group, &names))))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(CliError::all(Exit::Invalid, unknown))
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let default = match verbose {
        0 => "warn",
        1 => "kstack=info",
        2 => "kstack=debug",
        _ => "kstack=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Whatever the filter asks for: the HTTP and SSH stacks log request and response bodies
    // (user data, state, scripts sent to nodes) and raw packets at TRACE.
    let no_body_logs =
        tracing_subscriber::filter::filter_fn(|metadata| *metadata.level() != tracing::Level::TRACE || !logs_bodies_at_trace(metadata.target()));
    let logs = tracing_subscriber::fmt::layer().with_writer(|| LogEvent(Vec::new())).with_ansi(term::stderr_color());
    tracing_subscriber::registry().with(filter).with(no_body_logs).with(logs).init();
}

/// Crates whose TRACE events carry what they send and receive.
fn logs_bodies_at_trace(target: &str) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    crate_name.starts_with("aws_") || ["hyper", "hyper_util", "h2", "russh", "rustls"].contains(&crate_name)
}

/// One log event, written to stderr through `term::err` (which hides secrets) when the
/// formatter is done with it, so a value is never split across two writes.
struct LogEvent(Vec<u8>);

impl std::io::Write for LogEvent {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogEvent {
    fn drop(&mut self) {
        term::err(format_args!("{}", String::from_utf8_lossy(&self.0)));
    }
}

/// Problems of the environment `env`.
fn report_problems(env: &str, problems: Problems, sources: &Sources) -> CliError {
    CliError::problems(&format!("environment `{env}`"), problems, sources)
}
