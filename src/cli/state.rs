//! `kstack state list|show|unlock|migrate|identity|adopt|mv|rm <env>`

use kstack::identity::Identity;
use kstack::model::{Project, StateLocation};
use kstack::resource::Address;
use kstack::state::StateStore;

use super::term::Terminal;
use super::{term, CliError};
use kstack::ops::load::{open_store, state_location};
use kstack::ops::state::{adopt_one, migrate, move_record, record, recover_identity, remove_record, MigrateTo, Migrated};

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
            for (address, resource) in &load(project, env)?.resources {
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
        Command::Unlock { env, lock_id, force } => unlock(project, env, lock_id.as_deref(), *force),
        Command::Migrate { env, to } => migrate_state(project, env, *to),
        Command::Identity { env, recover: None } => {
            let state = load(project, env)?;
            match &state.identity {
                Some(identity) => term::outln(format_args!("{identity}")),
                None => term::outln(format_args!("`{env}` has no identity yet: its first plan or apply gives it one")),
            }
            // The result alone on stdout, for `$(kstack state identity ENV)`; where, beside it.
            if let (Some(account), Some(region)) = (&state.account, &state.region) {
                term::errln(format_args!("`{env}` is in AWS account {account}, region {region}"));
            }
            Ok(())
        }
        Command::Identity { env, recover: Some(id) } => recover(project, env, id),
        Command::Adopt { env, address, id } => {
            let (location, store) = located(project, env)?;
            let address = Address::from(address.as_str());
            runtime()?.block_on(adopt_one(&store, &location, &address, id, &format!("kstack state adopt {env} {address}")))?;
            term::outln(format_args!("adopted {id} as {address} of `{env}`: its next plan compares it with the model"));
            Ok(())
        }
        Command::Mv { env, from, to } => {
            let (location, store) = located(project, env)?;
            let (from, to) = (Address::from(from.as_str()), Address::from(to.as_str()));
            let moved =
                runtime()?.block_on(move_record(&store, &location.aws, &from, &to, &format!("kstack state mv {env} {from} {to}"), &Terminal))?;
            let tag = if moved.retagged { "; its kstack:address tag follows" } else { "" };
            term::outln(format_args!("Moved {} from {from} to {to}{tag}. Nothing was replaced.", moved.id));
            Ok(())
        }
        Command::Rm { env, addresses } => remove(project, env, addresses),
    }
}

/// Where the environment's state lives, and its store.
fn located(project: &Project, env: &str) -> Result<(StateLocation, StateStore), CliError> {
    let location = state_location(project, env, &Terminal)?;
    let store = open_store(project, &location)?;
    Ok((location, store))
}

fn unlock(project: &Project, env: &str, lock_id: Option<&str>, force: bool) -> Result<(), CliError> {
    let (_, store) = located(project, env)?;
    match store.unlock(lock_id, force)? {
        Some(h) => term::outln(format_args!(
            "removed the lock of `{env}` [lock {}] held by {}@{} (pid {}, `{}`) since {}",
            h.id, h.holder, h.host, h.pid, h.command, h.started
        )),
        None => term::outln(format_args!("`{env}` is not locked")),
    }
    Ok(())
}

fn migrate_state(project: &Project, env: &str, to: Target) -> Result<(), CliError> {
    let location = state_location(project, env, &Terminal)?;
    let to = match to {
        Target::Local => MigrateTo::Local,
        Target::S3 => MigrateTo::S3,
    };
    let Migrated { bytes, target, retired } = migrate(project, &location, to, &format!("kstack state migrate {env}"))?;
    term::outln(format_args!("Migrated the state of `{env}` ({bytes} bytes) to {target}; retired {retired}."));
    if to == MigrateTo::Local {
        term::warning(&format!(
            "set `state: {{ backend: local }}` in the environment of `{env}` (or remove `state:`) so kstack reads the local file"
        ));
    }
    Ok(())
}

fn recover(project: &Project, env: &str, id: &str) -> Result<(), CliError> {
    let identity = Identity::try_from(id.to_owned()).map_err(|why| CliError::failed(why, Some("copy it from a resource's `kstack:id` tag")))?;
    let (location, store) = located(project, env)?;
    let command = format!("kstack state identity {env} --recover");
    let adopted = runtime()?.block_on(recover_identity(&store, &location, identity.clone(), &command))?;
    term::outln(format_args!("`{env}` has identity {identity}; adopted the {adopted} resources carrying it."));
    Ok(())
}

fn remove(project: &Project, env: &str, addresses: &[String]) -> Result<(), CliError> {
    let (location, store) = located(project, env)?;
    let runtime = runtime()?;
    for address in addresses.iter().map(|a| Address::from(a.as_str())) {
        let removed = runtime.block_on(remove_record(&store, &location.aws, &address, &format!("kstack state rm {env} {address}"), &Terminal))?;
        let tags = if removed.retagged { ", its kstack tags removed" } else { "" };
        term::outln(format_args!("Removed {address} ({}) from the state of `{env}`: it stays in AWS{tags}.", removed.id));
    }
    Ok(())
}

fn load(project: &Project, env: &str) -> Result<kstack::state::State, CliError> {
    Ok(located(project, env)?.1.load()?)
}
