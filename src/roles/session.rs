//! One host's work in progress over its connection: query results fetched ahead, and changes
//! queued to be made together. A role's tasks are judged against what was fetched; their
//! changes wait in a queue until a later task would read something a queued change touches
//! (see [`Touch`]), or the role ends. Then one command makes the queued changes in order and,
//! when they all succeeded, reads the tasks ahead again, so a later task judges the host as
//! the earlier ones left it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::modules::{quote, Touch};
use crate::ssh::{write_script, Connection, Output, SshError};

#[derive(Default)]
pub(crate) struct Session(Mutex<State>);

#[derive(Default)]
struct State {
    /// Query results by script, valid until the next change is made.
    fetched: HashMap<String, Output>,
    /// Changes queued, in the order the tasks asked for them.
    queued: Vec<Change>,
}

/// A change a task asked for, not made yet.
pub(crate) struct Change {
    /// The task's place in the role's reports, to answer for the change.
    pub task: usize,
    pub step: Step,
    /// What the change is, for its error: "changing the user".
    pub what: String,
    pub touches: Vec<Touch>,
}

pub(crate) enum Step {
    Script(String),
    Write { path: String, content: Vec<u8>, mode: u32, owner: String, group: String },
}

/// How the queued changes went.
#[derive(Debug)]
pub(crate) enum Made {
    All,
    /// This task's change failed; the ones queued after it were not made.
    Failed {
        task: usize,
        message: String,
    },
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves nothing half-updated here.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A query's fetched result, if it was fetched since the last change.
    pub(crate) fn fetched(&self, script: &str) -> Option<Output> {
        self.state().fetched.get(script).cloned()
    }

    /// Whether nothing is fetched: the tasks ahead should be read in one batch.
    pub(crate) fn wanted(&self) -> bool {
        self.state().fetched.is_empty()
    }

    pub(crate) fn queue(&self, change: Change) {
        self.state().queued.push(change);
    }

    /// The first task whose changes are still queued.
    pub(crate) fn first_queued_task(&self) -> Option<usize> {
        self.state().queued.iter().map(|c| c.task).min()
    }

    /// Whether a queued change touches anything in `reads`: the task reading it must wait.
    pub(crate) fn conflicts(&self, reads: &[Touch]) -> bool {
        self.state().queued.iter().any(|change| change.touches.iter().any(|t| reads.iter().any(|r| t.overlaps(r))))
    }

    /// After a dropped connection: what it fetched is stale and what it queued is unknown.
    pub(crate) fn forget(&self) {
        let mut state = self.state();
        state.fetched.clear();
        state.queued.clear();
    }

    /// Reads `queries` in one round trip, when that saves one. On failure each task queries
    /// for itself (a dropped connection shows there).
    pub(crate) async fn prefetch(&self, connection: &Connection, queries: Vec<String>) {
        if queries.len() < 2 {
            return;
        }
        if let Ok(output) = connection.run(&batch(&[], &queries), None).await {
            if output.success() {
                self.keep(queries, output.stdout.lines());
            }
        }
    }

    /// Makes the queued changes in one round trip and, when all succeed, reads `queries` after
    /// them in the same one. With nothing queued it does nothing.
    pub(crate) async fn make_changes(&self, connection: &Connection, queries: Vec<String>) -> Result<Made, SshError> {
        let changes = {
            let mut state = self.state();
            if state.queued.is_empty() {
                // What was fetched still holds.
                return Ok(Made::All);
            }
            state.fetched.clear();
            std::mem::take(&mut state.queued)
        };
        let input: Vec<u8> = changes
            .iter()
            .flat_map(|c| match &c.step {
                Step::Write { content, .. } => content.as_slice(),
                Step::Script(_) => &[],
            })
            .copied()
            .collect();
        let output = connection.run(&batch(&changes, &queries), Some(&input)).await?;
        let mut lines = output.stdout.lines();
        for change in &changes {
            let made = lines.next().and_then(result);
            match made {
                Some(made) if made.success() => {}
                Some(made) => {
                    let detail = if made.stderr.trim().is_empty() { made.stdout } else { made.stderr };
                    let message = format!("{} failed (exit {}): {}", change.what, made.status, detail.trim());
                    return Ok(Made::Failed { task: change.task, message });
                }
                None => {
                    let message = format!("{}: the batch of changes ended early (exit {}): {}", change.what, output.status, output.stderr.trim());
                    return Ok(Made::Failed { task: change.task, message });
                }
            }
        }
        self.keep(queries, lines);
        Ok(Made::All)
    }

    fn keep<'a>(&self, queries: Vec<String>, lines: impl Iterator<Item = &'a str>) {
        let results = queries.into_iter().zip(lines.map(result)).filter_map(|(script, found)| Some((script, found?)));
        self.state().fetched.extend(results);
    }
}

/// One script that makes `changes` in order, stopping at the first that fails, then runs each
/// of `queries`. Each runs in a subshell of its own with its own output and status and prints
/// a line: its exit status, then its output and errors in base64. A file's content is read
/// from the input, the contents in the order of the writes; other steps get no input.
fn batch(changes: &[Change], queries: &[String]) -> String {
    let mut batch = String::from(
        "d=$(mktemp -d) || exit 1\n\
         r() { printf '%s ' \"$1\"; base64 -w0 <\"$d/o\"; printf ' '; base64 -w0 <\"$d/e\"; echo; }\n\
         q() { ( eval \"$1\" ) >\"$d/o\" 2>\"$d/e\" </dev/null; r \"$?\"; }\n\
         w() { ( eval \"$1\" ) >\"$d/o\" 2>\"$d/e\"; s=$?; r \"$s\"; [ \"$s\" = 0 ] || { rm -rf \"$d\"; exit 0; }; }\n\
         c() { ( eval \"$1\" ) >\"$d/o\" 2>\"$d/e\" </dev/null; s=$?; r \"$s\"; [ \"$s\" = 0 ] || { rm -rf \"$d\"; exit 0; }; }\n",
    );
    for change in changes {
        match &change.step {
            Step::Script(script) => batch.push_str(&format!("c {}\n", quote(script))),
            Step::Write { path, content, mode, owner, group } => {
                batch.push_str(&format!("w {}\n", quote(&write_script(path, content, *mode, owner, group))));
            }
        }
    }
    for query in queries {
        batch.push_str(&format!("q {}\n", quote(query)));
    }
    batch.push_str("rm -rf \"$d\"\n");
    batch
}

/// A step's result from its line of [`batch`]'s output.
fn result(line: &str) -> Option<Output> {
    let mut fields = line.split(' ');
    let status = fields.next()?.parse().ok()?;
    let mut decoded = || aws_smithy_types::base64::decode(fields.next()?).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let (stdout, stderr) = (decoded()?, decoded()?);
    Some(Output { status, stdout, stderr })
}
