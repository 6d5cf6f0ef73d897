//! `kstack generate <env>`

use std::path::PathBuf;

use kstack::model::Project;
use kstack::ops::import::{generate, ImportRequest};

use super::running::runtime;
use super::{term, CliError};

/// Write an environment file from what runs in AWS, as a person would write it: the network
/// (subnets carved or explicit), security groups and their rules, IAM roles, node groups with
/// their launch settings and user data, and load balancers, from a Terraform state or from a
/// VPC. Review it, then `kstack import` adopts what it describes.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack generate prod --vpc vpc-0abc123 --region eu-west-1
  kstack generate prod --from-terraform terraform.tfstate --region eu-west-1
  kstack generate prod --vpc vpc-0abc123 --region eu-west-1 --stdout | less

Exit status: 0 written, 1 error (the file exists, AWS failed), 2 bad input.")]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["from_terraform", "vpc"])))]
pub(super) struct Args {
    /// The environment to write (environments/<env>.yaml).
    env: String,

    /// A Terraform state file (format 4, as `terraform state pull` writes it).
    #[arg(long, value_name = "FILE")]
    from_terraform: Option<PathBuf>,

    /// A VPC, with what is in it and what runs in its subnets.
    #[arg(long, value_name = "VPC_ID")]
    vpc: Option<String>,

    /// The region the resources are in.
    #[arg(long)]
    region: String,

    /// With --vpc: a hosted zone whose records alias the VPC's load balancers (or are CNAMEs
    /// of those) to describe too (repeatable).
    #[arg(long = "dns-zone", value_name = "ZONE", requires = "vpc")]
    dns_zones: Vec<String>,

    /// Print the file instead of writing it.
    #[arg(long)]
    stdout: bool,

    /// Write over an existing environment file.
    #[arg(long)]
    force: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let path = project.environment_path(&args.env);
    if path.exists() && !args.stdout && !args.force {
        return Err(CliError::failed(
            format!("{} exists; nothing was written", path.display()),
            Some("pass --force to write over it, or --stdout to see it"),
        ));
    }
    let request = ImportRequest { pairs: &[], terraform: args.from_terraform.as_deref(), vpc: args.vpc.as_deref(), dns_zones: &args.dns_zones };
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or(&args.env);
    let generated = runtime()?.block_on(generate(project, name, &args.region, &request))?;
    if args.stdout {
        term::out(format_args!("{}", generated.text));
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::failed(format!("cannot create {}: {e}", dir.display()), None))?;
    }
    std::fs::write(&path, &generated.text).map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display()), None))?;
    term::outln(format_args!(
        "Wrote {} describing {} resources; review it (`kstack validate {}`), then `kstack import {}` with the same source adopts them.",
        path.display(),
        generated.described,
        args.env,
        args.env
    ));
    Ok(())
}
