//! How each task module converges a host; their arguments are typed in
//! `kstack_project::roles::modules`. Each module is idempotent: it first queries the host and
//! answers "ok" or "needs change" with a field-level diff, and changes the host only on a
//! difference and never in check mode. A module's query is a script of its own ([`query`]) that
//! reads what [`reads`] names, so the runner can fetch the queries of many tasks in one round
//! trip; its changes are queued and made later with others ([`super::session`]).

mod account;
mod command;
mod content;
mod file;
mod kernel;
mod package;
mod sysctl;
mod systemd;

pub(crate) use file::{reads_found, stat_ahead};
use kstack_project::roles::modules::Module;
use serde::Serialize;
pub(crate) use systemd::{state_field, unit_state, units_ahead, SHOW_STATE};
#[cfg(test)]
pub(crate) use {content::read_script, file::stat_query};

use super::session::{FileWrite, HostSession, QueuedChange, Step};
pub(crate) use super::touch::{unit_template, Touch};
use crate::ssh::{Connection, Facts, Output, SshError};

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
pub struct TaskOutcome {
    pub diffs: Vec<FieldDiff>,
    /// A unified diff of file content, for `--diff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_diff: Option<String>,
    /// Things the user should know, e.g. a kernel setting that a container cannot apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl TaskOutcome {
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

/// What a module can use on the host: queries read it now or from what was fetched ahead,
/// changes are queued in the [`HostSession`] and made together later.
pub(crate) struct Host<'a> {
    pub(crate) connection: &'a Connection,
    pub(crate) facts: &'a Facts,
    pub(crate) check: bool,
    pub(crate) session: &'a HostSession,
    /// The task's place in the role's reports, which answers for its changes.
    pub(crate) task: usize,
}

impl Host<'_> {
    /// Runs a module's query: fetched ahead with other tasks' queries when it was, else now.
    pub(crate) async fn query(&self, script: &str) -> Result<Output, SshError> {
        match self.session.fetched(script) {
            Some(output) => Ok(output),
            None => self.connection.run(script, None).await,
        }
    }

    /// A query that must succeed; its failure is the task's failure.
    pub(crate) async fn query_must(&self, script: &str, what: &str) -> Result<String, TaskError> {
        succeeded(self.query(script).await?, what)
    }

    /// Queues a script that changes the host and must succeed, touching `touches`.
    pub(crate) fn must(&self, script: String, what: &str, touches: Vec<Touch>) {
        self.session.queue(QueuedChange { task: self.task, step: Step::Script(script), what: what.to_owned(), touches });
    }

    /// Queues systemd's `daemon-reload` after a change to `unit`'s files. Reloads queued one
    /// after another with only file writes between them are made as one, after the last.
    pub(crate) fn reload_units(&self, unit: &str, touches: Vec<Touch>) {
        self.session.queue(QueuedChange { task: self.task, step: Step::ReloadUnits, what: format!("reloading systemd for {unit}"), touches });
    }

    /// Queues a file write (see [`crate::ssh::write_script`]).
    pub(crate) fn write_file(&self, path: &str, content: &[u8], mode: u32, owner: &str, group: &str) {
        self.session.queue(QueuedChange {
            task: self.task,
            step: Step::Write(FileWrite { path: path.to_owned(), content: content.to_vec(), mode, owner: owner.to_owned(), group: group.to_owned() }),
            what: format!("writing {path}"),
            touches: vec![Touch::path(path)],
        });
    }
}

fn succeeded(output: Output, what: &str) -> Result<String, TaskError> {
    if output.success() {
        Ok(output.stdout)
    } else {
        let detail = if output.stderr.trim().is_empty() { output.stdout.trim() } else { output.stderr.trim() };
        Err(TaskError::Failed(format!("{what} failed (exit {}): {detail}", output.status)))
    }
}

/// What a module reads before it judges the host.
pub(crate) trait Query {
    /// The script that reads what the module judges, if it reads anything: it changes nothing,
    /// so it can run ahead of the task, batched with other tasks' queries.
    fn query(&self) -> Option<String>;

    /// What the query reads, so a change still queued that touches it is made first.
    fn reads(&self) -> Vec<Touch>;

    /// The file whose content and attributes the query reads, when the module judges a queued
    /// write of it from the queue ([`HostSession::queued_file`]) instead of reading the host.
    fn reads_file(&self) -> Option<&str> {
        None
    }
}

/// Brings the host in line with one module's arguments.
pub(crate) trait Converge: Query {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError>;
}

fn as_query(module: &Module) -> &dyn Query {
    match module {
        Module::File(m) => m,
        Module::Copy(m) | Module::Template(m) => m,
        Module::Line(m) => m,
        Module::Sysctl(m) => m,
        Module::SystemdUnit(m) | Module::Service(m) => m,
        Module::Package(m) => m,
        Module::AptRepository(m) => m,
        Module::KernelCmdline(m) => m,
        Module::User(m) => m,
        Module::Group(m) => m,
        Module::Command(m) => m,
    }
}

/// The query `module` starts with (see [`Query::query`]).
pub fn query(module: &Module) -> Option<String> {
    as_query(module).query()
}

/// What `module`'s query reads (see [`Query::reads`]).
pub fn reads(module: &Module) -> Vec<Touch> {
    as_query(module).reads()
}

/// The file a queued write of which answers `module`'s query (see [`Query::reads_file`]).
pub fn reads_file(module: &Module) -> Option<&str> {
    as_query(module).reads_file()
}

/// Judges the host against `module`, queuing the changes it needs unless in check mode.
pub(crate) async fn converge(module: &Module, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
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
