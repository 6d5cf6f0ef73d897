//! `kstack validate <env>`

use kstack::model::Project;

use super::error::Exit;
use super::term::Terminal;
use super::{report_problems, term, CliError};
use kstack::ops::load::load_and_compile;

/// Check an environment: syntax, types, references, CIDRs and sizes, all problems at once.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kstack validate dev\n  kstack validate environments/prod.yaml --json\n\nExit status: 0 valid, 1 problems found."
)]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let (sources, result) = load_and_compile(project, &args.env, &Terminal);
    match (result, args.json) {
        (Ok(compiled), false) => {
            let env = &compiled.checked.environment;
            term::outln(format_args!(
                "environment `{}` is valid: {} resources, {} dependencies in {} across {} zones",
                env.name,
                compiled.graph.len(),
                compiled.graph.edge_count(),
                env.region.value,
                env.network.availability_zones.len()
            ));
            Ok(())
        }
        (Ok(compiled), true) => {
            let json = serde_json::json!({
                "environment": compiled.checked.environment.name,
                "valid": true,
                "resources": compiled.graph.len(),
                "problems": [],
            });
            term::outln(format_args!("{json:#}"));
            Ok(())
        }
        (Err(problems), false) => Err(report_problems(&args.env, problems, &sources)),
        (Err(problems), true) => {
            let json = serde_json::json!({
                "environment": args.env,
                "valid": false,
                "problems": term::problems_json(problems, &sources),
            });
            term::outln(format_args!("{json:#}"));
            Err(CliError::shown(Exit::Invalid))
        }
    }
}
