//! `kstack state list|show|unlock|migrate|identity|adopt|mv|rm <env>`

use kstack::identity::Identity;
use kstack::model::{Project, StateBackend};
use kstack::resource::Address;
use kstack::state::StateStore;
use kstack::stop::Stop;

use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::load::{open_store, state_location};
use kstack::ops::state::{move_record, record, remove_record};

use super::running::runtime;

/// Inspect what kstack knows exists, release a lock left by a run that died, or move state
/// between the local and the S3 backend.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack state list dev
  kstack state show dev asg.workers
  kstack state unlock dev 3f2a9c01      the id is in the message of the command the lock refused
  kstack state migrate dev --to s3      after adding `state: { backend: s3, bucket: ... }`
  kstack state identity dev             the id every resource of `dev` is tagged with (kstack:id)
  kstack state adopt dev vpc.main vpc-0abc   take a resource the plan lists as unrecorded
  kstack state mv dev asg.workers asg.compute   after renaming the group in the model
  kstack state rm dev elb.legacy        forget it: it stays in AWS, kstack's tags removed")]
pub(super) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Target {
    Local,
    S3,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the addresses and ids of the environment's resources.
    List {
        /// Environment name.
        env: String,
    },
    /// Print one resource's recorded attributes as JSON.
    Show {
        /// Environment name.
        env: String,
        /// Resource address, e.g. `asg.workers`.
        address: String,
    },
    /// Remove the environment's lock. Only for a lock left by a run that died.
    Unlock {
        /// Environment name.
        env: String,
        /// The lock's id, from the message of the command it refused (required for S3).
        lock_id: Option<String>,
        /// Remove a local lock although its holder's pid runs on this machine (after checking
        /// that process is not kstack).
        #[arg(long)]
        force: bool,
    },
    /// Copy the state between the local file and the S3 object the environment's `state:`
    /// names, byte for byte, under both locks; the source is retired (a local file kept as
    /// `.migrated`, an S3 object deleted with versioning keeping it).
    Migrate {
        /// Environment name.
        env: String,
        /// Where the state goes.
        #[arg(long)]
        to: Target,
    },
    /// Make a resource the environment's own: one that carries its tags (`kstack:environment`,
    /// `kstack:address`, `kstack:id`) but that kstack never recorded making, which plans list
    /// as left alone; or a DNS record made by hand (by the id a plan's problem names), which
    /// then gets its owner record. Tags can be copied by anyone allowed to tag, so only a
    /// person decides.
    Adopt {
        /// Environment name.
        env: String,
        /// The address the resource's `kstack:address` tag names, e.g. `vpc.main`.
        address: String,
        /// Its AWS id (a group's or launch configuration's name).
        id: String,
    },
    /// Move a resource's record to another address, as when the model renames it: nothing is
    /// replaced; its `kstack:address` tag follows.
    Mv {
        /// Environment name.
        env: String,
        /// The address state records it at, e.g. `asg.workers`.
        from: String,
        /// Its address from now on, of the same kind, e.g. `asg.compute`.
        to: String,
    },
    /// Forget resources without deleting them: each stays in AWS with kstack's tags
    /// removed, and the environment never plans, changes or deletes it again.
    Rm {
        /// Environment name.
        env: String,
        /// Addresses to forget, e.g. `elb.legacy`.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Print the environment's identity: the `kstack:id` tag that makes a resource its own.
    /// With `--recover`, give a state that lost its resources the identity they carry, and
    /// adopt every resource of the environment carrying it.
    Identity {
        /// Environment name.
        env: String,
        /// The identity the environment's resources carry (`kstack:id`), for a state that was
        /// lost: only accepted while the state records no resources.
        #[arg(long, value_name = "ID")]
        recover: Option<String>,
    },
}

pub(super) fn run(project: &Project, args: &Args) -> Result<(), CliError> {
    match &args.command {
        Command::List { env } => {
            let state = load(project, env)?;
            for (address, resource) in &state.resources {
                term::outln(format_args!("{address}\t{}", resource.id));
            }
            Ok(())
        }
        Command::Show { env, address } => {
            let state = load(project, env)?;
            let resource = record(&state, &Address::from(address.as_str()))?;
            term::outln(format_args!("{:#}", serde_json::to_value(resource).unwrap_or_default()));
            Ok(())
        }
        Command::Unlock { env, lock_id, force } => {
            let environment = state_location(project, env, &Terminal)?;
            let store = open_store(project, &environment)?;
            match store.unlock(lock_id.as_deref(), *force)? {
                Some(h) => term::outln(format_args!(
                    "removed the lock of `{env}` [lock {}] held by {}@{} (pid {}, `{}`) since {}",
                    h.id, h.holder, h.host, h.pid, h.command, h.started
                )),
                None => term::outln(format_args!("`{env}` is not locked")),
            }
            Ok(())
        }
        Command::Migrate { env, to } => migrate(project, env, *to),
        Command::Identity { env, recover: None } => {
            match load(project, env)?.identity {
                Some(identity) => term::outln(format_args!("{identity}")),
                None => term::outln(format_args!("`{env}` has no identity yet: its first plan or apply gives it one")),
            }
            Ok(())
        }
        Command::Identity { env, recover: Some(id) } => recover_identity(project, env, id),
        Command::Adopt { env, address, id } => adopt_one(project, env, &Address::from(address.as_str()), id),
        Command::Mv { env, from, to } => {
            let store = open_store(project, &state_location(project, env, &Terminal)?)?;
            let (from, to) = (Address::from(from.as_str()), Address::from(to.as_str()));
            let command = format!("kstack state mv {env} {from} {to}");
            let moved = runtime()?.block_on(move_record(&store, &from, &to, &command, &Terminal))?;
            let tag = if moved.retagged { "; its kstack:address tag follows" } else { "" };
            term::outln(format_args!("Moved {} from {from} to {to}{tag}. Nothing was replaced.", moved.id));
            Ok(())
        }
        Command::Rm { env, addresses } => {
            let store = open_store(project, &state_location(project, env, &Terminal)?)?;
            let runtime = runtime()?;
            for address in addresses.iter().map(|a| Address::from(a.as_str())) {
                let command = format!("kstack state rm {env} {address}");
                let removed = runtime.block_on(remove_record(&store, &address, &command, &Terminal))?;
                let tags = if removed.retagged { ", its kstack tags removed" } else { "" };
                term::outln(format_args!("Removed {address} ({}) from the state of `{env}`: it stays in AWS{tags}.", removed.id));
            }
            Ok(())
        }
    }
}

/// Records in state what carries the environment's identity and `chosen` picks, under the
/// environment's lock, in one state write. Returns what was adopted. `cloud` reads as
/// [`Owner::adopting`](kstack::identity::Owner::adopting) does; `zones` are hosted zones to
/// list besides those state knows of.
fn adopt(
    store: &StateStore,
    state: &mut kstack::state::State,
    runtime: &tokio::runtime::Runtime,
    cloud: kstack::aws::Cloud,
    zones: &[String],
    chosen: impl Fn(&kstack::aws::Observed) -> bool,
) -> Result<Vec<kstack::aws::Observed>, CliError> {
    let cloud = cloud.with_dns_zones(state.dns_zones().chain(zones.iter().map(String::as_str)));
    let refreshed =
        runtime.block_on(kstack::aws::refresh(&cloud)).map_err(|error| CliError::aws(&cloud.region, "looking for the resources to adopt", &error))?;
    let adopted: Vec<kstack::aws::Observed> =
        refreshed.observed.into_iter().filter(|o| !state.resources.contains_key(&o.address)).filter(|o| chosen(o)).collect();
    for resource in &adopted {
        state.resources.insert(resource.address.clone(), resource.clone());
    }
    if !adopted.is_empty() {
        store.save(state)?;
    }
    Ok(adopted)
}

/// The runtime and the connection an adoption reads with: everything carrying the
/// environment's identity counts as its own, a person having said so.
fn adopting(state: &kstack::state::State, region: &str) -> Result<(tokio::runtime::Runtime, kstack::aws::Cloud), CliError> {
    let runtime = runtime()?;
    let cloud = runtime.block_on(kstack::aws::Cloud::connect(region, state.owner().adopting()));
    Ok((runtime, cloud))
}

fn adopt_one(project: &Project, env: &str, address: &Address, id: &str) -> Result<(), CliError> {
    let environment = state_location(project, env, &Terminal)?;
    let store = open_store(project, &environment)?;
    let _lock = store.lock(&format!("kstack state adopt {env} {address}"), &Stop::default())?;
    let mut state = store.load()?;
    let (Some(identity), Some(region)) = (state.identity.clone(), environment.region.or_else(|| state.region.clone())) else {
        return Err(CliError::failed(format!("`{env}` has no identity yet: nothing can carry it"), Some("plan or apply it first")));
    };
    if let Some(recorded) = state.resources.get(address) {
        return Err(CliError::failed(
            format!("the state of `{env}` records {} at {address}; two resources never share an address", recorded.id),
            Some("the recorded one stays the environment's; remove the other by hand if it is not wanted"),
        ));
    }
    let (runtime, cloud) = adopting(&state, &region)?;
    // A record made by hand has no owner record to carry the tags: adopting it writes one.
    let mut zones = Vec::new();
    if address.is_kind(kstack::resource::Kind::DnsRecord) {
        let tags = std::collections::BTreeMap::from([
            (kstack::naming::TAG_ENVIRONMENT.to_owned(), environment.name.clone()),
            (kstack::naming::TAG_ADDRESS.to_owned(), address.to_string()),
            (kstack::naming::TAG_IDENTITY.to_owned(), identity.to_string()),
        ]);
        let zone = runtime
            .block_on(kstack::aws::take_over_dns_record(&cloud, id, &tags))
            .map_err(|error| CliError::aws(&region, &format!("giving the record {id} an owner record"), &error))?;
        zones.push(zone);
    }
    let adopted = adopt(&store, &mut state, &runtime, cloud, &zones, |o| &o.address == address && o.id == id)?;
    if adopted.is_empty() {
        return Err(CliError::failed(
            format!("{region} has no resource {id} tagged as {address} of `{env}`"),
            Some(&format!("kstack adopts only what carries kstack:environment={env}, kstack:address={address} and kstack:id={identity}")),
        ));
    }
    term::outln(format_args!("adopted {id} as {address} of `{env}`: its next plan compares it with the model"));
    Ok(())
}

/// Gives an environment whose state was lost the identity its resources carry, so the next
/// plan finds them again. Never over a state that records resources: those would be orphaned.
fn recover_identity(project: &Project, env: &str, id: &str) -> Result<(), CliError> {
    let identity = Identity::try_from(id.to_owned()).map_err(|why| CliError::failed(why, Some("copy it from a resource's `kstack:id` tag")))?;
    let environment = state_location(project, env, &Terminal)?;
    let store = open_store(project, &environment)?;
    let Some(region) = environment.region.clone() else {
        return Err(CliError::failed(format!("the region of `{env}` is unknown"), Some("fix the environment's `region:`")));
    };
    // One state write: nothing is half done if the run ends.
    let _lock = store.lock(&format!("kstack state identity {env} --recover"), &Stop::default())?;
    let mut state = store.load()?;
    if !state.resources.is_empty() && state.identity.as_ref() != Some(&identity) {
        return Err(CliError::failed(
            format!(
                "the state of `{env}` records {} resources; its identity stays {}",
                state.resources.len(),
                state.identity.as_ref().map_or("unset", |i| i.as_str())
            ),
            Some("--recover is for a state that was lost; an environment's resources never change hands"),
        ));
    }
    state.identity = Some(identity.clone());
    state.region = Some(region.clone());
    store.save(&mut state)?;
    // Asked for by a person who knows the identity: everything carrying it is adopted.
    let (runtime, cloud) = adopting(&state, &region)?;
    let adopted = adopt(&store, &mut state, &runtime, cloud, &[], |_| true)?;
    term::outln(format_args!("`{env}` has identity {identity}; adopted the {} resources carrying it.", adopted.len()));
    Ok(())
}

fn migrate(project: &Project, env: &str, to: Target) -> Result<(), CliError> {
    let environment = state_location(project, env, &Terminal)?;
    if environment.state == StateBackend::Local {
        return Err(CliError::failed(
            format!("`{env}` names no S3 location for its state"),
            Some("add `state: { backend: s3, bucket: <bucket>, key: <key> }` to the environment first: migrate moves state between it and the local file"),
        ));
    }
    let s3 = open_store(project, &environment)?;
    let local = StateStore::local(&project.root, &environment.name, environment.project.as_deref());
    let (source, target) = match to {
        Target::S3 => (local, s3),
        Target::Local => (s3, local),
    };
    let command = format!("kstack state migrate {env}");
    // A few requests that change nothing in AWS: nothing needs to stop between them.
    let stop = Stop::default();
    let _source_lock = source.lock(&command, &stop)?;
    let _target_lock = target.lock(&command, &stop)?;
    let Some(bytes) = source.read_raw()? else {
        return Err(CliError::failed(format!("there is no state of `{env}` in {}", source.location()), Some("nothing to migrate")));
    };
    match target.read_raw()? {
        Some(existing) if existing == bytes => {}
        Some(_) => {
            return Err(CliError::failed(
                format!("{} already holds a different state of `{env}`; nothing was copied", target.location()),
                Some("compare the two (`kstack state list`), keep one, and move the other away first"),
            ))
        }
        None => target.write_raw(&bytes)?,
    }
    // Read back what landed before the source goes.
    if target.read_raw()?.as_deref() != Some(bytes.as_slice()) {
        return Err(CliError::failed(format!("the copy in {} does not match; the source was kept", target.location()), None));
    }
    let retired = source.retire()?;
    term::outln(format_args!("Migrated the state of `{env}` ({} bytes) to {}; retired {retired}.", bytes.len(), target.location()));
    if matches!(to, Target::Local) {
        term::warning(&format!(
            "set `state: {{ backend: local }}` in the environment of `{env}` (or remove `state:`) so kstack reads the local file"
        ));
    }
    Ok(())
}

fn load(project: &Project, env: &str) -> Result<kstack::state::State, CliError> {
    let environment = state_location(project, env, &Terminal)?;
    let store = open_store(project, &environment)?;
    Ok(store.load()?)
}
