//! The command line: argument parsing, dispatch, and exit codes.
//! Only this module knows about the terminal; everything below it returns data.

mod apply;
mod bake;
mod error;
mod graph;
mod output;
mod plan;
mod progress;
mod provision;
mod reboots;
mod roll;
mod session;
mod ssh_args;
mod state;
mod term;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::compile::compile;
use crate::diagnostics::{self, Problems, Sources};
use crate::graph::ResourceGraph;
use crate::model::image::{load_image, Image};
use crate::model::{load_environment, Checked, Project};
use crate::roles::{load_roles, Role};

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
    Output(output::Args),
    State(state::Args),
    Bake(bake::Args),
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
        Command::Output(args) => output::run(&project, &args),
        Command::State(args) => state::run(&project, &args),
        Command::Bake(args) => bake::run(&project, &args),
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
fn check_groups(environment: &crate::model::Environment, wanted: &[String]) -> Result<(), CliError> {
    let names: Vec<&str> = environment.node_groups.iter().map(|g| g.name.value.as_str()).collect();
    let unknown: Vec<(String, Option<String>)> = wanted
        .iter()
        .filter(|w| !names.contains(&w.as_str()))
        .map(|group| (format!("`{group}` is not a node group of `{}`", environment.name), Some(crate::diagnostics::expected_one_of(group, &names))))
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

/// An environment loaded, checked and compiled, or the problems that stopped it.
pub struct Compiled {
    pub checked: Checked,
    pub graph: ResourceGraph,
    /// The images its node groups name, with their roles.
    pub images: BTreeMap<String, LoadedImage>,
}

pub struct LoadedImage {
    pub image: Image,
    pub roles: Vec<Role>,
}

/// Loads, checks and compiles an environment, and loads the images its groups name with
/// their roles, so their problems show up with the environment's.
pub fn load_and_compile(project: &Project, env: &str) -> (Sources, Result<Compiled, Problems>) {
    let loaded = load_environment(project, env);
    let mut sources = loaded.sources;
    let result = loaded.result.and_then(|checked| {
        term::hide_secrets(checked.environment.secrets.values().filter_map(|s| s.value()));
        let mut problems = Problems::default();
        let graph = compile(&checked, &mut problems);
        let names = graph.as_ref().map(crate::compile::image_names).unwrap_or_default();
        let images = load_images(project, &names, &mut sources, &mut problems);
        match graph {
            Some(graph) if problems.is_empty() => Ok(Compiled { checked, graph, images }),
            _ => Err(problems),
        }
    });
    (sources, result)
}

/// The images `names`, with their roles.
fn load_images(project: &Project, names: &[String], sources: &mut Sources, problems: &mut Problems) -> BTreeMap<String, LoadedImage> {
    let mut images = BTreeMap::new();
    for name in names {
        match load_image(project, name, sources) {
            Ok(image) => match load_roles(&project.root.join("roles"), &image.roles, sources) {
                Ok(roles) => {
                    images.insert(name.clone(), LoadedImage { image, roles });
                }
                Err(more) => problems.extend(more),
            },
            Err(more) => problems.extend(more),
        }
    }
    images
}

/// An environment as a roll loads it (see [`load_for_roll`]).
pub struct ForRoll {
    pub checked: Checked,
    pub images: BTreeMap<String, LoadedImage>,
}

/// What a roll works from: the environment and the images its groups name, not compiled (a
/// roll changes no launch settings, and compiling renders user data). A secret whose variable
/// is unset is left so, with a warning: a hook using it then fails where it runs.
pub fn load_for_roll(project: &Project, env: &str) -> (Sources, Result<ForRoll, Problems>) {
    let loaded = crate::model::load_environment_with(project, env, crate::model::Secrets::IfSet);
    let mut sources = loaded.sources;
    let result = loaded.result.and_then(|checked| {
        let secrets = &checked.environment.secrets;
        term::hide_secrets(secrets.values().filter_map(|s| s.value()));
        for (name, secret) in secrets.iter().filter(|(_, s)| s.value().is_none()) {
            term::warning(&format!("secret `{name}` is not set (${}): a roll hook that uses it fails", secret.env_var));
        }
        let names: Vec<String> = checked
            .environment
            .node_groups
            .iter()
            .filter_map(|g| match &g.image.value {
                crate::model::ImageRef::Named(name) => Some(name.clone()),
                crate::model::ImageRef::Ami(_) => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut problems = Problems::default();
        let images = load_images(project, &names, &mut sources, &mut problems);
        if problems.is_empty() {
            Ok(ForRoll { checked, images })
        } else {
            Err(problems)
        }
    });
    (sources, result)
}

/// Problems of the environment `env`.
fn report_problems(env: &str, problems: Problems, sources: &Sources) -> CliError {
    CliError::problems(&format!("environment `{env}`"), problems, sources)
}

/// Problems of an image definition or its roles.
fn report_image_problems(image: &str, problems: Problems, sources: &Sources) -> CliError {
    CliError::problems(&format!("image `{image}`"), problems, sources)
}

/// Where the environment's state lives, found even while the environment has problems, which
/// are shown as warnings: recovering from a dead run must not wait for a fix elsewhere.
fn locate_state(project: &Project, env: &str) -> Result<crate::model::StateLocation, CliError> {
    let located = crate::model::locate_state(project, env);
    if !located.warnings.is_empty() {
        term::warning(&format!(
            "environment `{env}` has {} problem(s) (`kstack validate {env}` shows them); going on from its state:",
            located.warnings.len()
        ));
        for problem in located.warnings.into_sorted() {
            let place =
                problem.loc.map(|loc| format!("{}:{}:{}: ", diagnostics::display_path(&located.sources.get(loc.source).path), loc.line, loc.column));
            term::warning(&format!("{}{}", place.unwrap_or_default(), problem.message));
        }
    }
    located.result.map_err(|problems| report_problems(env, problems, &located.sources))
}
