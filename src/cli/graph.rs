//! `kstack graph <env>`

use kstack::model::Project;

use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::load::compiled;

/// Print the resource graph of an environment: each AWS resource and what it depends on.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  kstack graph dev | dot -Tsvg > dev.svg\n  kstack graph dev --format json | jq '.resources[].address'")]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Dot)]
    format: Format,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// Graphviz DOT.
    Dot,
    /// Resources with their attributes, and edges, as JSON.
    Json,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let compiled = compiled(project, &args.env, &Terminal)?;
    match args.format {
        Format::Dot => term::out(format_args!("{}", compiled.graph.to_dot(&compiled.checked.environment.name))),
        Format::Json => term::outln(format_args!("{:#}", compiled.graph.to_json())),
    }
    Ok(())
}
