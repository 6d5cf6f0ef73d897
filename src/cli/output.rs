//! `kstack output <env> [NAME]`

use kstack::model::Project;
use kstack::ops::account;
use kstack::ops::load::state_location;
use kstack::ops::outputs::current;

use super::running::runtime;
use super::term::Terminal;
use super::{show_outputs, CliError};
use kstack::ops::load::open_store;

/// Print what other tools and people need from an environment: load balancers' DNS names and
/// hosted zones, VPC, subnet and security group ids, auto scaling groups and their AMIs, the
/// environment's identity. Read from AWS now (refreshed, never stale), without taking the lock.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack output dev
  kstack output dev load_balancers.ingress.dns_name     the bare value, for scripts
  kstack output dev --json | jq -r '.outputs.vpc_id'

JSON: {\"format_version\": 1, \"outputs\": {environment, region, identity, vpc_id,
subnet_ids: {tier: {zone: id}}, security_group_ids: {name: id}, load_balancers: {name:
{name, dns_name, hosted_zone_id}}, node_groups: {name: {auto_scaling_group, ami}},
dns_records: {name: {name, type, zone}}}}. New
fields may appear; a changed or removed one bumps format_version.")]
pub(super) struct Args {
    /// Environment name (environments/<env>.yaml) or path to an environment file.
    env: String,

    /// One output by dotted name, e.g. `load_balancers.ingress.dns_name`.
    name: Option<String>,

    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    let location = state_location(project, &args.env, &Terminal)?;
    let store = open_store(project, &location)?;
    let state = store.load()?;
    let never_applied =
        || CliError::failed(format!("`{}` has no outputs: it was never applied", location.name), Some(&format!("kstack apply {}", args.env)));
    let Some(region) = location.region.clone().or_else(|| state.region.clone()) else { return Err(never_applied()) };
    let runtime = runtime()?;
    let (cloud, _) = runtime.block_on(account::connect(&location.aws, &region, state.owner(), state.account.as_deref()))?;
    let cloud = cloud.with_dns_zones(state.dns_zones());
    let outputs = runtime.block_on(current(&cloud, &location.name, None))?.ok_or_else(never_applied)?;
    show_outputs::print(&outputs, args.name.as_deref(), args.json)
}
