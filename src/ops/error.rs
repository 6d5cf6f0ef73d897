//! The one error of the operations layer: every domain error an operation meets, each with
//! what to do about it, and what the command line needs to pick an exit status (problems in
//! the project's files, a stop). Knows nothing of how it is shown.

use crate::aws::AwsError;
use crate::bake::resolve::ResolveError;
use crate::diagnostics::{Problems, Sources};
use crate::hint::Hint;
use crate::roll::RollError;
use crate::state::{LockError, StateError};
use crate::stop::Reason;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The run cannot go on, and why; with what to do about it.
    #[error("{message}")]
    Failed { message: String, hint: Option<String> },
    /// What the command was given is wrong, and nothing was done.
    #[error("{message}")]
    Invalid { message: String, hint: Option<String> },
    /// Problems in `what` (e.g. "environment `dev`"), at their places in `sources`.
    #[error("{what} has {} problem(s)", problems.len())]
    Problems { what: String, problems: Problems, sources: Sources },
    #[error("AWS failed while {doing} in {region}: {error}")]
    Aws { region: String, doing: &'static str, error: Box<AwsError> },
    /// The run was stopped (a signal, its lock lost), as `message` says.
    #[error("{message}")]
    Stopped { reason: Reason, message: String, hint: Option<String> },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Resolve(Box<ResolveError>),
    #[error(transparent)]
    Roll(Box<RollError>),
}

impl From<RollError> for OpsError {
    fn from(error: RollError) -> OpsError {
        OpsError::Roll(Box::new(error))
    }
}

impl From<ResolveError> for OpsError {
    fn from(error: ResolveError) -> OpsError {
        OpsError::Resolve(Box::new(error))
    }
}

impl OpsError {
    pub(crate) fn failed(message: impl Into<String>, hint: impl Into<String>) -> OpsError {
        OpsError::Failed { message: message.into(), hint: Some(hint.into()) }
    }

    /// A run stopped for `reason` before it changed anything.
    pub fn stopped_before_changes(reason: Reason) -> OpsError {
        OpsError::Stopped { message: format!("{reason}: stopped before any change"), reason, hint: None }
    }

    /// Problems of the environment `environment`.
    pub(crate) fn in_environment(environment: &str, problems: Problems, sources: Sources) -> OpsError {
        OpsError::Problems { what: format!("environment `{environment}`"), problems, sources }
    }

    /// AWS failed at `doing` in `region`.
    pub(crate) fn aws<'a>(region: &'a str, doing: &'static str) -> impl FnOnce(AwsError) -> OpsError + 'a {
        move |error| OpsError::Aws { region: region.to_owned(), doing, error: Box::new(error) }
    }

    /// What to do about it. (Not [`Hint`]: the command line turns hinted errors into failures,
    /// and this one may be problems in the input or a stop, each its own exit status.)
    pub fn hint(&self) -> Option<String> {
        match self {
            OpsError::Failed { hint, .. } | OpsError::Invalid { hint, .. } | OpsError::Stopped { hint, .. } => hint.clone(),
            OpsError::Problems { .. } => None,
            OpsError::Aws { error, .. } => error.hint(),
            OpsError::State(error) => error.hint(),
            OpsError::Lock(error) => error.hint(),
            OpsError::Resolve(error) => error.hint(),
            OpsError::Roll(error) => error.hint(),
        }
    }
}
