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

use kstack_project::roles::modules::Module;
use serde::Serialize;

use super::session::{Change, Session, Step};
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

/// Something on a host that a task reads or a change touches. A queued change that touches
/// what a later task reads is made before that task is judged (see [`Touch::affects`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touch {
    /// A path itself: a file's content and attributes, a directory's attributes. Writing it
    /// also makes whatever directories above it are missing.
    Path(String),
    /// A path and everything under it: removed, or replaced by a link.
    Tree(String),
    Unit(String),
    Package(String),
    User(String),
    Group(String),
    /// The names `stat` shows for owners: any account made or changed can change them.
    AccountNames,
    /// Anything: a command of the user's, a package's install scripts, a service starting.
    Everything,
}

impl Touch {
    pub fn path(path: &str) -> Touch {
        Touch::Path(path.trim_end_matches('/').to_owned())
    }

    pub fn tree(path: &str) -> Touch {
        Touch::Tree(path.trim_end_matches('/').to_owned())
    }

    /// Whether this change can alter what `read` reads. Making a directory does not change
    /// what is under it; making anything makes its missing parents; removing or relinking a
    /// path changes everything under it. Units, packages and accounts are read through tools
    /// that keep them in files: a file change there affects them too.
    pub fn affects(&self, read: &Touch) -> bool {
        let within = |path: &str, dir: &str| path.strip_prefix(dir).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || dir.is_empty());
        let related = |a: &str, b: &str| within(a, b) || within(b, a);
        match (self, read) {
            (Touch::Everything, _) | (_, Touch::Everything) => true,
            (Touch::Path(changed), Touch::Path(read) | Touch::Tree(read)) => within(changed, read),
            (Touch::Tree(changed), Touch::Path(read) | Touch::Tree(read)) => related(changed, read),
            (Touch::Path(path) | Touch::Tree(path), named) | (named, Touch::Path(path) | Touch::Tree(path)) => {
                named.files().iter().any(|file| related(file, path))
            }
            (changed, read) => changed == read,
        }
    }

    /// Where the tools that read a unit, a package or the accounts keep them.
    fn files(&self) -> &'static [&'static str] {
        match self {
            Touch::Unit(_) => &["/etc/systemd", "/lib/systemd", "/usr/lib/systemd", "/run/systemd"],
            Touch::Package(_) => &["/var/lib/dpkg"],
            Touch::User(_) | Touch::Group(_) | Touch::AccountNames => &["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"],
            Touch::Path(_) | Touch::Tree(_) | Touch::Everything => &[],
        }
    }
}

/// What a module can use on the host: queries read it now or from what was fetched ahead,
/// changes are queued in the [`Session`] and made together later.
pub(crate) struct Host<'a> {
    pub(crate) connection: &'a Connection,
    pub(crate) facts: &'a Facts,
    pub(crate) check: bool,
    pub(crate) session: &'a Session,
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
        self.session.queue(Change { task: self.task, step: Step::Script(script), what: what.to_owned(), touches });
    }

    /// Queues a file write (see [`crate::ssh::write_script`]).
    pub(crate) fn write_file(&self, path: &str, content: &[u8], mode: u32, owner: &str, group: &str) {
        self.session.queue(Change {
            task: self.task,
            step: Step::Write { path: path.to_owned(), content: content.to_vec(), mode, owner: owner.to_owned(), group: group.to_owned() },
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
}

/// Brings the host in line with one module's arguments.
pub(crate) trait Converge: Query {
    async fn converge(&self, host: &Host<'_>) -> Result<Outcome, TaskError>;
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

/// Judges the host against `module`, queuing the changes it needs unless in check mode.
pub(crate) async fn converge(module: &Module, host: &Host<'_>) -> Result<Outcome, TaskError> {
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

#[cfg(test)]
mod tests {
    use super::Touch;

    #[test]
    fn a_change_affects_its_path_its_parents_and_under_a_removal_but_no_sibling() {
        let made = Touch::path("/srv/app/");
        assert!(made.affects(&Touch::path("/srv/app")));
        assert!(!made.affects(&Touch::path("/srv/app/conf/x")), "making a directory leaves what is under it as it was");
        assert!(Touch::path("/srv/app/conf/x").affects(&made), "writing a file makes its parents");
        assert!(Touch::tree("/srv/app").affects(&Touch::path("/srv/app/conf/x")), "removing a directory removes what is in it");
        assert!(!made.affects(&Touch::path("/srv/application")) && !made.affects(&Touch::path("/srv/other")));
        assert!(Touch::Everything.affects(&Touch::AccountNames) && Touch::Unit("a".into()).affects(&Touch::Everything));
        assert!(!Touch::Unit("a".into()).affects(&Touch::Unit("b".into())));
        assert!(!Touch::Group("g".into()).affects(&Touch::User("u".into())), "a new group changes no user");
        assert!(Touch::AccountNames.affects(&Touch::path("/etc/passwd")) && Touch::path("/etc").affects(&Touch::AccountNames));
        assert!(!Touch::AccountNames.affects(&Touch::path("/etc/hosts")));
        assert!(Touch::path("/etc/systemd/system/a.service.d/x.conf").affects(&Touch::Unit("a.service".into())));
    }
}
