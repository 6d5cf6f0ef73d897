//! `kstack import <env>`

use std::path::PathBuf;

use kstack::model::Project;
use kstack::ops::import::{ImportPlan, ImportRequest, PlannedAdoption};
use kstack::plan::{render_changes, ActionKind};

use super::running::{confirm, runtime, stop_on_signals};
use super::term::Terminal;
use super::{term, CliError};

/// Take over resources another tool made (Terraform, a console): each is matched to an
/// address of the model and planned as kstack's own. Carrying it out changes nothing but
/// kstack's tags: each resource gets the environment's tags and its record in state, nothing
/// is recreated; what the model would change of them is left to `kstack apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack import dev --from-terraform terraform.tfstate      after `terraform state pull > terraform.tfstate`
  kstack import dev vpc.main=vpc-0abc123 asg.workers=workers-asg
  kstack import dev --vpc vpc-0abc123                        everything in the VPC, no state file
  kstack import dev --from-terraform terraform.tfstate --auto-approve

A resource found goes to the model's address it matches: a subnet by its range,
a route table by the subnets it serves, a NAT gateway by its subnet and its address by the
gateway, a DNS record by name and type, anything else by name (Terraform's resource name, its
`name` or `Name` tag equal to the model's); ADDRESS=ID pairs come first.

Exit status: 0 imported (or nothing to do), 1 error or cancelled, 2 bad input.")]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// Resources to adopt, each as ADDRESS=ID (an ARN for IAM, a name for groups, load
    /// balancers and launch configurations, `<zone id>|<name>|<type>` for a DNS record).
    #[arg(value_name = "ADDRESS=ID")]
    pairs: Vec<String>,

    /// A Terraform state file (format 4, as `terraform state pull` writes it).
    #[arg(long, value_name = "FILE")]
    from_terraform: Option<PathBuf>,

    /// A VPC to take over with what is in it: its subnets, route tables, gateways, security
    /// groups and load balancers, the groups in its subnets with their launch settings,
    /// instance profiles and roles, and the model's DNS records.
    #[arg(long, value_name = "VPC_ID")]
    vpc: Option<String>,

    /// Import without asking for confirmation.
    #[arg(long)]
    auto_approve: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let runtime = runtime()?;
    let stop = stop_on_signals(&runtime);
    let request = ImportRequest { pairs: &args.pairs, terraform: args.from_terraform.as_deref(), vpc: args.vpc.as_deref(), dns_zones: &[] };
    let command = format!("kstack import {}", args.env);
    let plan = runtime.block_on(ImportPlan::open(project, &args.env, &request, &command, &stop, &Terminal))?;
    show(&plan);
    if !args.auto_approve {
        confirm(&runtime, &stop, &format!("Do you want to adopt these resources into `{}`?", plan.environment()))?;
    }
    let forgets = plan.terraform_forgets.clone();
    let environment = plan.environment().to_owned();
    let adopted = runtime.block_on(plan.apply())?;
    term::outln(format_args!(
        "\nImport complete! {adopted} resources adopted into `{environment}`; `kstack plan {}` shows what the model changes.",
        args.env
    ));
    if !forgets.is_empty() {
        term::outln(format_args!("\nTerraform still manages them: make it forget them, so its next apply or destroy leaves them be:"));
        for address in &forgets {
            term::outln(format_args!("  terraform state rm '{address}'"));
        }
    }
    Ok(())
}

/// The take-over, Terraform-style: each adoption with what the model would change.
fn show(plan: &ImportPlan) {
    term::outln(format_args!("kstack will adopt these resources into `{}`:\n", plan.environment()));
    for adoption in &plan.adoptions {
        show_adoption(adoption);
    }
    if !plan.unmatched.is_empty() {
        term::outln(format_args!("Found but matching no address of the model (left alone):"));
        for found in &plan.unmatched {
            term::outln(format_args!("  {} {} ({})", found.kind.prefix(), found.id, found.origin));
        }
        term::outln(format_args!(""));
    }
    if !plan.missing.is_empty() {
        let missing: Vec<&str> = plan.missing.iter().map(|a| a.as_str()).collect();
        term::outln(format_args!(
            "Nothing found for {} of the model's resources; the next apply creates them: {}\n",
            missing.len(),
            missing.join(", ")
        ));
    }
    if !plan.terraform_keeps.is_empty() {
        term::outln(format_args!("Terraform keeps what kstack does not model: {}\n", plan.terraform_keeps.join(", ")));
    }
    let s = &plan.summary;
    term::outln(format_args!("Import: {} to adopt, {} to change, {} to replace.", s.adopt, s.change, s.replace));
    if s.replace > 0 {
        term::warning("the model differs from what exists in attributes AWS cannot change in place: the next apply would replace those marked `must be replaced`; change the model to match them first");
    }
}

fn show_adoption(adoption: &PlannedAdoption) {
    let then = match adoption.then {
        ActionKind::Replace => ", then must be replaced",
        ActionKind::Update => ", then updated in place",
        _ => "",
    };
    term::outln(format_args!("  # {} adopts {} (from {}){then}", adoption.address, adoption.id, adoption.origin));
    term::out(format_args!("{}", render_changes(&adoption.changes, term::stdout_color())));
}
