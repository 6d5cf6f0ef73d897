//! `command`: a shell command, made idempotent by `creates` (skip when a path exists) or
//! `unless` (skip when another command succeeds).

use super::{quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::Command;

impl Query for Command {
    /// The guard: `unless` is the user's own command, which must not change the host either.
    fn query(&self) -> Option<String> {
        match (&self.creates, &self.unless) {
            (Some(path), _) => Some(format!("test -e {}", quote(path))),
            // In a subshell of its own: it runs among kstack's queries in their shell.
            (None, Some(unless)) => Some(format!("(\n{unless}\n)")),
            (None, None) => None,
        }
    }

    fn reads(&self) -> Vec<Touch> {
        match (&self.creates, &self.unless) {
            (Some(path), _) => vec![Touch::path(path)],
            // The user's own command may read anything.
            (None, Some(_)) => vec![Touch::Everything],
            (None, None) => Vec::new(),
        }
    }
}

impl Converge for Command {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        if let Some(guard) = self.query() {
            if host.query(&guard).await?.success() {
                return Ok(TaskOutcome::default());
            }
        }
        let diffs = vec![FieldDiff::new("run", "", self.run.clone())];
        if !host.check {
            let script = match &self.chdir {
                Some(dir) => format!("cd {} && {}", quote(dir), self.run),
                None => self.run.clone(),
            };
            host.must(script, "the command", vec![Touch::Everything]);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}
