//! `kstack state list|show|unlock <env>`

use crate::model::Project;
use crate::resource::Address;
use crate::state::{Lock, StateStore};

use super::{term, Failure};

/// Inspect what kstack knows exists, or release a lock left by a run that died.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  kstack state list dev
  kstack state show dev asg.workers
  kstack state unlock dev")]
pub struct Args {
    #[command(subcommand)]
    command: Command,
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
    },
}

pub fn run(project: &Project, args: &Args) -> Result<(), Failure> {
    match &args.command {
        Command::List { env } => {
            let state = load(project, env)?;
            for (address, resource) in &state.resources {
                println!("{address}\t{}", resource.id);
            }
            Ok(())
        }
        Command::Show { env, address } => {
            let state = load(project, env)?;
            match state.resources.get(&Address::from(address.as_str())) {
                Some(resource) => {
                    println!("{:#}", serde_json::to_value(resource).unwrap_or_default());
                    Ok(())
                }
                None => {
                    let known: Vec<&str> = state.resources.keys().map(Address::as_str).collect();
                    let hint = crate::diagnostics::did_you_mean(address, known.iter().copied())
                        .map(|close| format!("did you mean `{close}`?"))
                        .unwrap_or_else(|| format!("`kstack state list {env}` shows every address"));
                    term::error(&format!("`{address}` is not in the state of `{env}`"), Some(&hint));
                    Err(Failure::Reported)
                }
            }
        }
        Command::Unlock { env } => {
            let store = StateStore::new(&project.root, env);
            let path = store.lock_path();
            let holder = Lock::holder(&path);
            match Lock::force_release(&path) {
                Ok(true) => {
                    match holder {
                        Some(h) => println!("removed the lock of `{env}` held by {}@{} (pid {}) since {}", h.holder, h.host, h.pid, h.started),
                        None => println!("removed the lock of `{env}`"),
                    }
                    Ok(())
                }
                Ok(false) => {
                    println!("`{env}` is not locked");
                    Ok(())
                }
                Err(error) => {
                    term::error(&format!("cannot remove {}: {error}", path.display()), None);
                    Err(Failure::Reported)
                }
            }
        }
    }
}

fn load(project: &Project, env: &str) -> Result<crate::state::State, Failure> {
    StateStore::new(&project.root, env).load().map_err(|error| {
        term::error(&error.to_string(), None);
        Failure::Reported
    })
}
