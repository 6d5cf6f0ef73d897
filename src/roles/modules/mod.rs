//! How each task module converges a host; their arguments are typed in
//! `kstack_project::roles::modules`. Each module is idempotent: it first queries the host and
//! answers "ok" or "needs change" with a field-level diff, and acts only on a change and never
//! in check mode. A module's query is a script of its own ([`query`]), so the runner can fetch
//! the queries of many tasks in one round trip ([`Observations`]); an act is one round trip, and
//! forgets what was fetched, so a later task judges the host as the act left it.

mod account;
mod command;
mod content;
mod file;
mod kernel;
mod package;
mod sysctl;
mod systemd;

use std::collections::HashMap;
use std::sync::Mutex;

use kstack_project::roles::modules::Module;
use serde::Serialize;

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

/// Query results fetched ahead, by script. Any act empties them: what a task changed, a later
/// task must see.
#[derive(Default)]
pub struct Observations(Mutex<Fetched>);

#[derive(Default)]
struct Fetched {
    outputs: HashMap<String, Output>,
    /// Acts so far: a task during which none happened left the host as it found it.
    acts: u64,
    /// The last task acted: the next reads for itself, since a run of changes (a first run)
    /// would read everything after each one again.
    changing: bool,
}

impl Observations {
    /// Whether the tasks ahead should be read in one batch now: nothing fetched is left, and
    /// the host has stopped changing.
    pub fn wanted(&self) -> bool {
        self.0.lock().map(|f| f.outputs.is_empty() && !f.changing).unwrap_or(false)
    }

    pub fn extend(&self, fetched: impl IntoIterator<Item = (String, Output)>) {
        if let Ok(mut observations) = self.0.lock() {
            observations.outputs.extend(fetched);
        }
    }

    /// Acts so far, to tell after a task whether it changed the host.
    pub fn acts(&self) -> u64 {
        self.0.lock().map(|f| f.acts).unwrap_or(0)
    }

    /// The task that began after `acts` acts has finished: batch again if it changed nothing.
    pub fn task_done(&self, acts: u64) {
        if let Ok(mut observations) = self.0.lock() {
            observations.changing = observations.acts != acts;
        }
    }

    fn take(&self, script: &str) -> Option<Output> {
        self.0.lock().ok()?.outputs.remove(script)
    }

    pub fn forget(&self) {
        if let Ok(mut observations) = self.0.lock() {
            observations.outputs.clear();
            observations.acts += 1;
        }
    }
}

/// What a module can use on the host.
pub struct Host<'a> {
    pub connection: &'a Connection,
    pub facts: &'a Facts,
    pub check: bool,
    pub observations: &'a Observations,
}

impl Host<'_> {
    /// Runs a module's query: fetched ahead with other tasks' queries when it was, else now.
    pub async fn query(&self, script: &str) -> Result<Output, SshError> {
        match self.observations.take(script) {
            Some(output) => Ok(output),
            None => self.connection.run(script, None).await,
        }
    }

    /// A query that must succeed; its failure is the task's failure.
    pub async fn query_must(&self, script: &str, what: &str) -> Result<String, TaskError> {
        succeeded(self.query(script).await?, what)
    }

    /// Runs a script that changes the host and must succeed; its failure is the task's failure.
    pub async fn must(&self, script: &str, what: &str) -> Result<String, TaskError> {
        self.observations.forget();
        succeeded(self.connection.run(script, None).await?, what)
    }

    /// Runs a script that changes the host, whatever its exit status.
    pub async fn act(&self, script: &str) -> Result<Output, SshError> {
        self.observations.forget();
        self.connection.run(script, None).await
    }

    /// Writes a file (see [`Connection::write_file`]).
    pub async fn write_file(&self, path: &str, content: &[u8], mode: u32, owner: &str, group: &str) -> Result<(), SshError> {
        self.observations.forget();
        self.connection.write_file(path, content, mode, owner, group).await
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

/// Brings the host in line with one module's arguments.
pub(crate) trait Converge {
    /// The script that reads what the module judges, if it reads anything: it changes nothing,
    /// so it can run ahead of the task, batched with other tasks' queries.
    fn query(&self) -> Option<String>;

    async fn converge(&self, host: &Host<'_>) -> Result<Outcome, TaskError>;
}

/// The query `module` starts with (see [`Converge::query`]).
pub fn query(module: &Module) -> Option<String> {
    match module {
        Module::File(m) => m.query(),
        Module::Copy(m) | Module::Template(m) => m.query(),
        Module::Line(m) => m.query(),
        Module::Sysctl(m) => m.query(),
        Module::SystemdUnit(m) | Module::Service(m) => m.query(),
        Module::Package(m) => m.query(),
        Module::AptRepository(m) => m.query(),
        Module::KernelCmdline(m) => m.query(),
        Module::User(m) => m.query(),
        Module::Group(m) => m.query(),
        Module::Command(m) => m.query(),
    }
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
