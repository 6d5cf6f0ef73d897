//! State: what kstack knows exists (address, id, attributes) and an unfinished roll, per
//! environment, written after every change in AWS, so a crash loses at most the change in
//! flight, which refresh then finds by tag. It lives in a local file (the default,
//! `local.rs`) or in S3 for teams (`s3.rs`); both lock the environment (`lock.rs`).

mod local;
pub mod lock;
mod roll_record;
mod s3;
pub(crate) mod time;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use lock::{hostname, Lock, LockError, LockInfo};
pub use roll_record::{BatchRecord, GroupRecord, RollRecord};
pub use time::{now_rfc3339, parse_rfc3339, rfc3339, rfc3339_in};

use crate::identity::{Identity, Owner};
use crate::model::{AwsAccess, StateBackend};
use crate::resource::Address;
use crate::resource::Observed;
use crate::stop::Stop;
use local::LocalBackend;
use s3::S3Backend;

/// Version 2 added the environment's identity, 3 the project and the journalled creates:
/// older kstack refuses them instead of dropping them on its next write (which would leave
/// every resource looking foreign, or let another project's state pass).
const FORMAT_VERSION: u32 = 3;
/// Read, and written as the current version from then on.
const READABLE_VERSIONS: std::ops::RangeInclusive<u32> = 1..=FORMAT_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state {location}: {message}")]
    Read { location: String, message: String },
    #[error("the state {location} is not valid kstack state: {source}")]
    Parse { location: String, source: serde_json::Error },
    #[error("the state {location} has format version {found}; this kstack reads versions up to {FORMAT_VERSION}")]
    Version { location: String, found: u32 },
    #[error("cannot write the state {location}: {message}")]
    Write { location: String, message: String },
    #[error("the state {location} changed since kstack read it; nothing was overwritten")]
    Conflict { location: String },
    #[error("bucket {bucket} has versioning off; kstack keeps state only where every write can be recovered")]
    Unversioned { bucket: String },
    #[error("the environment keeps its state in {configured}, which has none, but {found} exists")]
    Elsewhere { configured: String, found: String },
    #[error("the state {location} has none at its key, but {found} exists: the key's default before state keys named the project")]
    LegacyKey { location: String, found: String },
    #[error("the state {location} belongs to project `{found}`, not to this project `{ours}`; nothing was read or written")]
    OtherProject { location: String, found: String, ours: String },
    #[error("the state {location} is environment `{found}`'s, not `{ours}`'s; nothing was read or written")]
    OtherEnvironment { location: String, found: String, ours: String },
}

impl crate::hint::Hint for StateError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            StateError::Conflict { .. } => {
                String::from("another run wrote it (was the lock bypassed?); run the command again to work from the new state")
            }
            StateError::Unversioned { bucket } => {
                format!("aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled")
            }
            StateError::Elsewhere { .. } => {
                String::from("move it there with `kstack state migrate <env> --to s3`, or set `state: { backend: local }`")
            }
            StateError::LegacyKey { found, .. } => format!(
                "if it is this environment's, name it in `state:` (`key: {}`); kstack never starts an empty state beside it",
                found.splitn(4, '/').nth(3).unwrap_or_default()
            ),
            StateError::OtherProject { .. } | StateError::OtherEnvironment { .. } => String::from(
                "two environments never share a state: give this one its own `key:` in `state:` (or name the project in kstack.yaml and drop `key:`)",
            ),
            StateError::Version { .. } => String::from("a newer kstack wrote it: use that version or a later one (everyone sharing the state must)"),
            StateError::Parse { .. } => {
                String::from("restore it from a backup (or an earlier S3 version), or move it away to rebuild state from AWS tags")
            }
            StateError::Read { .. } | StateError::Write { .. } => String::from("check access to where the state lives, then run again"),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub environment: String,
    /// The project that wrote it (`kstack.yaml`'s `project:`), when it has a name: another
    /// project's state is refused, never read as this one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Bumped on every write, so two copies can be told apart.
    pub serial: u64,
    pub updated: String,
    /// The environment's identity (see `identity.rs`), from its first plan or apply on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The AWS account it was written in: credentials of another account are refused, never
    /// taken for an environment with nothing in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The environment's region, so `destroy` finds its resources while the environment file
    /// cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub resources: BTreeMap<Address, Observed>,
    /// Creates started and not yet recorded, by address, with when each was journalled: a
    /// resource at such an address carrying the identity is the environment's (its create's
    /// reply was lost, or the run was killed before recording it). Tags alone never are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub intents: BTreeMap<Address, String>,
    /// A roll that has not finished: what `kstack roll --resume` continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roll: Option<RollRecord>,
}

impl State {
    /// Whose resources this state's environment may touch: its identity, and the ids it
    /// recorded (groups by name, so their instances count too).
    pub fn owner(&self) -> Owner {
        Owner::new(&self.environment, self.identity.clone(), self.resources.iter().map(|(address, r)| (address.clone(), r.kind, r.id.clone())))
            .with_intents(self.intents.keys().map(Address::to_string))
    }

    /// The hosted zones of the DNS records state knows of: refresh lists them.
    pub fn dns_zones(&self) -> impl Iterator<Item = &str> {
        self.resources.values().filter(|r| r.kind == crate::resource::Kind::DnsRecord).filter_map(|r| r.attributes["zone"].as_str())
    }
}

/// Where an environment's state and lock live. Cloning shares the backend (and so the
/// version of the state it last read).
#[derive(Clone)]
pub struct StateStore {
    local: Arc<LocalBackend>,
    s3: Option<Arc<S3Backend>>,
    /// The project's name, which its states record and are checked against.
    project: Option<String>,
}

impl StateStore {
    /// The local backend: `.kstack/state/<env>.json` under the project, which is `project`.
    pub fn local(project_root: &Path, environment: &str, project: Option<&str>) -> StateStore {
        let local = LocalBackend { dir: project_root.join(".kstack").join("state"), environment: environment.to_owned() };
        StateStore { local: Arc::new(local), s3: None, project: project.map(str::to_owned) }
    }

    /// The backend the environment's `state:` names (S3: connected, its bucket checked).
    /// `access` reaches the bucket's account unless its settings say otherwise.
    pub fn open(
        project_root: &Path,
        environment: &str,
        project: Option<&str>,
        backend: &StateBackend,
        access: &AwsAccess,
    ) -> Result<StateStore, StateError> {
        let mut store = StateStore::local(project_root, environment, project);
        if let StateBackend::S3(location) = backend {
            store.s3 = Some(Arc::new(S3Backend::connect(location, environment, access)?));
        }
        Ok(store)
    }

    /// Where the state lives, for messages.
    pub fn location(&self) -> String {
        match &self.s3 {
            Some(s3) => s3.location(),
            None => self.local.path().display().to_string(),
        }
    }

    /// The stored state's bytes as they are, if there is any.
    pub fn read_raw(&self) -> Result<Option<Vec<u8>>, StateError> {
        match &self.s3 {
            Some(s3) => s3.read(),
            None => self.local.read(),
        }
    }

    /// Writes `bytes` where none are stored yet (S3: conditionally; local: atomically).
    pub fn write_raw(&self, bytes: &[u8]) -> Result<(), StateError> {
        match &self.s3 {
            Some(s3) => s3.write(bytes),
            None => self.local.write(bytes),
        }
    }

    /// Retires the stored state after it was migrated elsewhere: a local file is kept aside
    /// as `<env>.json.migrated`; an S3 object is deleted (the bucket's versioning keeps it).
    pub fn retire(&self) -> Result<String, StateError> {
        match &self.s3 {
            Some(s3) => s3.retire().map(|()| format!("{} (deleted; versioning keeps it)", s3.location())),
            None => self.local.retire().map(|aside| format!("{} (kept as {})", self.local.path().display(), aside.display())),
        }
    }

    /// Takes the environment's exclusive lock for the lifetime of the returned guard. A lock
    /// that is lost while held (S3: its lease was taken over or could not be renewed) stops
    /// the run through `stop`.
    pub fn lock(&self, command: &str, stop: &Stop) -> Result<Lock, LockError> {
        match &self.s3 {
            Some(s3) => s3.lock(command, stop),
            None => self.local.lock(command, stop),
        }
    }

    /// Removes the lock (only the one named `id`, when given; S3 requires it). A local lock
    /// whose holder runs on this machine stays unless `force`.
    pub fn unlock(&self, id: Option<&str>, force: bool) -> Result<Option<LockInfo>, LockError> {
        match &self.s3 {
            Some(s3) => s3.unlock(id),
            None => self.local.unlock(id, force),
        }
    }

    /// The stored state, or an empty one for an environment never applied.
    pub fn load(&self) -> Result<State, StateError> {
        let location = self.location();
        let Some(bytes) = self.read_raw()? else {
            if let Some(s3) = &self.s3 {
                if self.local.path().exists() {
                    return Err(StateError::Elsewhere { configured: location, found: self.local.path().display().to_string() });
                }
                if let Some(found) = s3.state_at_legacy_key(self.project.as_deref())? {
                    return Err(StateError::LegacyKey { location, found });
                }
            }
            return Ok(State {
                version: FORMAT_VERSION,
                environment: self.local.environment.clone(),
                project: self.project.clone(),
                serial: 0,
                updated: now_rfc3339(),
                identity: None,
                account: None,
                region: None,
                resources: BTreeMap::new(),
                intents: BTreeMap::new(),
                roll: None,
            });
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { location: location.clone(), source })?;
        if !READABLE_VERSIONS.contains(&state.version) {
            return Err(StateError::Version { location, found: state.version });
        }
        if state.environment != self.local.environment {
            return Err(StateError::OtherEnvironment { location, found: state.environment, ours: self.local.environment.clone() });
        }
        if let (Some(found), Some(ours)) = (&state.project, &self.project) {
            if found != ours {
                return Err(StateError::OtherProject { location, found: found.clone(), ours: ours.clone() });
            }
        }
        Ok(state)
    }

    /// Writes the state with a new serial: atomically to a local file, or to S3 only if the
    /// object is still the version this store read.
    pub fn save(&self, state: &mut State) -> Result<(), StateError> {
        state.version = FORMAT_VERSION;
        if self.project.is_some() {
            state.project = self.project.clone();
        }
        state.serial += 1;
        state.updated = now_rfc3339();
        let mut text = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write { location: self.location(), message: e.to_string() })?;
        text.push(b'\n');
        self.write_raw(&text)
    }
}
