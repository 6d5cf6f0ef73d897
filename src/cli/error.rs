//! The one error every command returns: what to say (errors with what to do about them, or
//! problems rendered at their places in the project's files) and the exit status. Commands
//! never print their failure; `main` says it, once.

use kstack::diagnostics::{Problems, Sources};
use kstack::hint::Hint;
use kstack::ops::OpsError;
use kstack::stop::Reason;

use super::term;

#[derive(Debug)]
pub(super) struct CliError {
    exit: Exit,
    said: Said,
}

#[derive(Debug)]
enum Said {
    /// Errors, each with what to do about it.
    Errors(Vec<(String, Option<String>)>),
    /// Problems in the project's files, rendered with their places.
    Problems(String),
    /// The command's output has shown it already (a recap of failed hosts, JSON problems).
    Shown,
}

/// What a failed command exits with.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Exit {
    /// 1: the run failed (AWS, SSH, a node, the file system).
    Failed,
    /// 2: the input is wrong (the project's files, a name the command was given) and nothing
    /// was done; clap's status for a bad command line too.
    Invalid,
    /// The run was stopped (a signal, its lock lost): the reason's status (130 SIGINT, 143
    /// SIGTERM, 1 lock lost).
    Stopped(Reason),
}

impl CliError {
    /// The run failed: exit status 1.
    pub(super) fn failed(message: impl Into<String>, hint: Option<&str>) -> CliError {
        CliError { exit: Exit::Failed, said: Said::Errors(vec![(message.into(), hint.map(str::to_owned))]) }
    }

    /// The input is wrong and nothing was done: exit status 2.
    pub(super) fn invalid(message: impl Into<String>, hint: Option<&str>) -> CliError {
        CliError { exit: Exit::Invalid, ..CliError::failed(message, hint) }
    }

    /// A library error about what the command was given (a file that is no saved plan): exit
    /// status 2, where `?` would give 1.
    pub(super) fn invalid_input(error: impl Hint) -> CliError {
        CliError { exit: Exit::Invalid, ..CliError::hinted(&error) }
    }

    /// The run was stopped for `reason`, as `message` says.
    pub(super) fn stopped(reason: Reason, message: impl Into<String>, hint: Option<&str>) -> CliError {
        CliError { exit: Exit::Stopped(reason), ..CliError::failed(message, hint) }
    }

    /// Several errors at once (each unknown name, each resource that failed); the last says
    /// what became of the run.
    pub(super) fn all(exit: Exit, errors: Vec<(String, Option<String>)>) -> CliError {
        CliError { exit, said: Said::Errors(errors) }
    }

    /// Problems in `what` (e.g. "environment `dev`"), rendered against their files: exit 2.
    pub(super) fn problems(what: &str, problems: Problems, sources: &Sources) -> CliError {
        CliError { exit: Exit::Invalid, said: Said::Problems(term::render_problems(what, problems, sources)) }
    }

    /// A failure the command's output has shown already.
    pub(super) fn shown(exit: Exit) -> CliError {
        CliError { exit, said: Said::Shown }
    }

    pub(super) fn exit(&self) -> &Exit {
        &self.exit
    }

    /// Prints it on stderr.
    pub(super) fn say(&self) {
        match &self.said {
            Said::Errors(errors) => {
                for (message, hint) in errors {
                    term::error(message, hint.as_deref());
                }
            }
            Said::Problems(rendered) => term::err(format_args!("{rendered}")),
            Said::Shown => {}
        }
    }

    pub(super) fn exit_code(&self) -> std::process::ExitCode {
        match &self.exit {
            Exit::Failed => std::process::ExitCode::FAILURE,
            Exit::Invalid => std::process::ExitCode::from(EXIT_INVALID),
            Exit::Stopped(reason) => std::process::ExitCode::from(reason.exit_code()),
        }
    }
}

/// The exit status of bad input: clap's for a bad command line, and kstack's for problems in
/// the project's files or in what the command names. A failed run exits 1.
const EXIT_INVALID: u8 = 2;

impl From<OpsError> for CliError {
    fn from(error: OpsError) -> CliError {
        match error {
            OpsError::Problems { what, problems, sources } => CliError::problems(&what, problems, &sources),
            OpsError::Stopped { reason, message, hint } => CliError::stopped(reason, message, hint.as_deref()),
            OpsError::Invalid { message, hint } => CliError::invalid(message, hint.as_deref()),
            other => CliError::failed(other.to_string(), other.hint().as_deref()),
        }
    }
}

impl CliError {
    /// A library error: its message and what to do about it; exit status 1.
    fn hinted(error: &impl Hint) -> CliError {
        CliError::failed(error.to_string(), error.hint().as_deref())
    }
}

/// Every library error that can reach a person converts the same way, through [`Hint`]. (One
/// blanket impl cannot say it: `OpsError` converts by its own rule, and the library could give
/// it `Hint` some day.)
macro_rules! from_hinted {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for CliError {
            fn from(error: $error) -> CliError {
                CliError::hinted(&error)
            }
        })*
    };
}

from_hinted!(
    kstack::aws::AwsError,
    kstack::ssh::SshError,
    kstack::reboots::running::RebootsError,
    kstack::reboots::ScheduleError,
    kstack::bake::resolve::ResolveError,
    kstack::plan::saved::SavedPlanError,
    kstack::roll::RollError,
    kstack::roll::Unfinished<'_>,
    kstack::state::LockError,
    kstack::state::StateError,
    kstack::apply::Unrecorded,
);
