//! Local state: one JSON file per environment under `.kstack/state/`, holding what kstack
//! knows exists (address, id, attributes). It is written atomically after every change in
//! AWS, so a crash loses at most the change in flight, which refresh then finds by tag.

mod lock;
mod time;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use lock::{Lock, LockError, LockInfo};
pub use time::now_rfc3339;

use crate::aws::Observed;
use crate::resource::Address;
use crate::roll::RollRecord;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is not valid kstack state: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("state file {path} has format version {found}; this kstack reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write state file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub environment: String,
    /// Bumped on every write, so two copies can be told apart.
    pub serial: u64,
    pub updated: String,
    pub resources: BTreeMap<Address, Observed>,
    /// A roll that has not finished: what `kstack roll --resume` continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollRecord>,
}

/// Where an environment's state and lock live.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    environment: String,
}

impl StateStore {
    pub fn new(project_root: &Path, environment: &str) -> StateStore {
        StateStore {
            dir: project_root.join(".kstack").join("state"),
            environment: environment.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.environment))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(format!("{}.lock", self.environment))
    }

    /// Takes the environment's exclusive lock for the lifetime of the returned guard.
    pub fn lock(&self, command: &str) -> Result<Lock, LockError> {
        Lock::acquire(&self.lock_path(), &self.environment, command)
    }

    /// The stored state, or an empty one for an environment never applied.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: FORMAT_VERSION,
                    environment: self.environment.clone(),
                    serial: 0,
                    updated: now_rfc3339(),
                    resources: BTreeMap::new(),
                    roll: None,
                })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Parse { path: path.clone(), source })?;
        if state.version != FORMAT_VERSION {
            return Err(StateError::Version { path, found: state.version });
        }
        Ok(state)
    }

    /// Writes the state atomically: a temporary file, synced, renamed over the old one.
    /// Readable by the owner only, since attributes describe the account's infrastructure.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.serial += 1;
        state.updated = now_rfc3339();
        let path = self.path();
        let error = |source| StateError::Write { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let temporary = self.dir.join(format!(".{}.json.{}.tmp", self.environment, std::process::id()));
        let mut text = serde_json::to_vec_pretty(state).map_err(|e| error(std::io::Error::other(e)))?;
        text.push(b'\n');
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(error)?;
        file.write_all(&text).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, &path).map_err(error)?;
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}
