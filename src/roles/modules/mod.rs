//! How each task module converges a host; their arguments are typed in
//! `kstack_project::roles::modules`. Each module is idempotent: it first queries the host and
//! answers "ok" or "needs change" with a field-level diff, and acts only on a change and never
//! in check mode. A query is one round trip; so is an act.

mod account;
mod command;
mod content;
mod file;
mod kernel;
mod package;
mod sysctl;
mod systemd;

use kstack_project::roles::modules::Module;
use serde::Serialize;

use crate::ssh::{Connection, Facts, SshError};

/// One attribute that differs between the host and the task, as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDiff {
    pub field: String,
    pub before: String,
    pub after: String,
}

impl FieldDiff {
    pub fn new(field: &str, before: impl Into<String>, after: impl Into<String>) -> FieldDiff {
        FieldDiff { field: field.to_owned(), before: before.into(), after: after.into() }
    }
}

/// What a task found, and did unless in check mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub diffs: Vec<FieldDiff>,
    /// A unified diff of file content, for `--diff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_diff: Option<String>,
    /// Things the user should know, e.g. a kernel setting that a container cannot apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !self.diffs.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{0}")]
    Failed(String),
}

/// What a module can use on the host.
pub struct Host<'a> {
    pub connection: &'a Connection,
    pub facts: &'a Facts,
    pub check: bool,
}

impl Host<'_> {
    /// Runs a script that must succeed; its failure is the task's failure.
    pub async fn must(&self, script: &str, what: &str) -> Result<String, TaskError> {
        let output = self.connection.run(script, None).await?;
        if output.success() {
            Ok(output.stdout)
        } else {
            let detail = if output.stderr.trim().is_empty() { output.stdout.trim() } else { output.stderr.trim() };
            Err(TaskError::Failed(format!("{what} failed (exit {}): {detail}", output.status)))
        }
    }
}

/// Brings the host in line with one module's arguments.
pub(crate) trait Converge {
    async fn converge(&self, host: &Host<'_>) -> Result<Outcome, TaskError>;
}

/// Converges the host to `module`: the module's query, and its act unless in check mode.
pub async fn converge(module: &Module, host: &Host<'_>) -> Result<Outcome, TaskError> {
    match module {
        Module::File(m) => m.converge(host).await,
        Module::Copy(m) | Module::Template(m) => m.converge(host).await,
        Module::Line(m) => m.converge(host).await,
        Module::Sysctl(m) => m.converge(host).await,
        Module::SystemdUnit(m) | Module::Service(m) => m.converge(host).await,
        Module::Package(m) => m.converge(host).await,
        Module::AptRepository(m) => m.converge(host).await,
        Module::KernelCmdline(m) => m.converge(host).await,
        Module::User(m) => m.converge(host).await,
        Module::Group(m) => m.converge(host).await,
        Module::Command(m) => m.converge(host).await,
    }
}

/// Parses an octal mode such as `"0644"` or `"755"`.
pub fn parse_mode(text: &str) -> Result<u32, TaskError> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| TaskError::Failed(format!("`{text}` is not an octal file mode such as \"0644\"")))
}

pub use crate::ssh::shell_quote as quote;
