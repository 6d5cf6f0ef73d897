//! `kstack output <env> [NAME]`

use kstack::aws::{self, Cloud};
use kstack::model::Project;
use kstack::outputs::{Outputs, FORMAT_VERSION};

use super::running::{open_store, runtime};
use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::load::state_location;

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
    let store = open_store(project, &location.name, location.project.as_deref(), &location.state)?;
    let state = store.load()?;
    let (Some(region), Some(identity)) = (location.region.or_else(|| state.region.clone()), state.identity.clone()) else {
        return Err(CliError::failed(
            format!("`{}` has no outputs: it was never applied", location.name),
            Some(&format!("kstack apply {}", args.env)),
        ));
    };
    let runtime = runtime()?;
    let cloud = runtime.block_on(Cloud::connect(&region, state.owner())).with_dns_zones(state.dns_zones());
    let refreshed = runtime.block_on(aws::refresh(&cloud)).map_err(|error| CliError::aws(&region, "refreshing", &error))?;
    let outputs = Outputs::of(&location.name, &region, identity.as_str(), &refreshed.observed);
    print(&outputs, args.name.as_deref(), args.json)
}

/// Prints all outputs (`name = value` lines, or JSON), or the one `name` asks for: a value
/// bare, so `$(kstack output dev NAME)` is the value itself.
pub(super) fn print(outputs: &Outputs, name: Option<&str>, json: bool) -> Result<(), CliError> {
    let Some(name) = name else {
        if json {
            term::outln(format_args!("{:#}", serde_json::json!({ "format_version": FORMAT_VERSION, "outputs": outputs })));
        } else {
            print_lines(outputs, "");
        }
        return Ok(());
    };
    let Some(value) = outputs.get(name) else {
        let names = outputs.names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(CliError::invalid(
            format!("`{name}` is not an output of `{}`", outputs.environment),
            Some(&kstack::diagnostics::expected_one_of(name, &names)),
        ));
    };
    match value {
        serde_json::Value::String(text) if !json => term::outln(format_args!("{text}")),
        value if json => term::outln(format_args!("{value:#}")),
        _ => print_lines(outputs, name),
    }
    Ok(())
}

/// What `apply` ends with, as Terraform's does: the outputs of the environment as it now is.
pub(super) fn after_apply(runtime: &tokio::runtime::Runtime, cloud: &Cloud, environment: &str, observed: Option<&[kstack::aws::Observed]>) {
    let (region, Some(identity)) = (&cloud.region, cloud.owner.identity.as_ref()) else { return };
    let refreshed;
    let observed = match observed {
        Some(observed) => observed,
        None => match runtime.block_on(aws::refresh(cloud)) {
            Ok(found) => {
                refreshed = found.observed;
                &refreshed
            }
            Err(error) => {
                term::warning(&format!("cannot show the outputs: AWS failed while refreshing in {region}: {error}"));
                return;
            }
        },
    };
    term::outln(format_args!("\nOutputs:\n"));
    print_lines(&Outputs::of(environment, region, identity.as_str(), observed), "");
}

/// `name = value` for each output at or under `prefix`.
fn print_lines(outputs: &Outputs, prefix: &str) {
    let under = |name: &str| prefix.is_empty() || name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'));
    for (name, value) in outputs.flattened().into_iter().filter(|(name, _)| under(name)) {
        term::outln(format_args!("{name} = {value}"));
    }
}
