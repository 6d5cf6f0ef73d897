//! One host's work in progress over its connection: query results fetched ahead, and changes
//! queued to be made together. A role's tasks are judged against what was fetched; their
//! changes wait in a queue until a later task would read something a queued change touches
//! (see [`Touch`]), or the role ends. Then one command makes the queued changes in order and,
//! when they all succeeded, reads again what they touched of the tasks ahead, so a later task
//! judges the host as the earlier ones left it; what they did not touch stays as fetched.

use std::collections::HashMap;
use std::sync::Mutex;

use super::touch::Touch;
use crate::ssh::{shell_quote as quote, write_script, Connection, Output, SshError};

#[derive(Default)]
pub(crate) struct HostSession(Mutex<State>);

/// A query of a task ahead: its script, and what it reads.
pub(crate) type AheadQuery = (String, Vec<Touch>);

#[derive(Default)]
struct State {
    /// AheadQuery results by script, with what each read: valid until a change touches that.
    fetched: HashMap<String, (Output, Vec<Touch>)>,
    /// Changes queued, in the order the tasks asked for them.
    queued: Vec<QueuedChange>,
}

/// A change a task asked for, not made yet.
pub(crate) struct QueuedChange {
    /// The task's place in the role's reports, to answer for the change.
    pub task: usize,
    pub step: Step,
    /// What the change is, for its error: "changing the user".
    pub what: String,
    pub touches: Vec<Touch>,
}

impl QueuedChange {
    /// Whether it can alter what a query reading `reads` found.
    fn affects(&self, reads: &[Touch]) -> bool {
        self.touches.iter().any(|t| reads.iter().any(|r| t.affects(r)))
    }
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

impl HostSession {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves nothing half-updated here.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A query's fetched result, if no change since touched what it read.
    pub(crate) fn fetched(&self, script: &str) -> Option<Output> {
        self.state().fetched.get(script).map(|(output, _)| output.clone())
    }

    /// The queries of `ahead` not fetched.
    fn missing(&self, ahead: Vec<AheadQuery>) -> Vec<AheadQuery> {
        let state = self.state();
        ahead.into_iter().filter(|(script, _)| !state.fetched.contains_key(script)).collect()
    }

    pub(crate) fn queue(&self, change: QueuedChange) {
        self.state().queued.push(change);
    }

    /// The first task whose changes are still queued.
    pub(crate) fn first_queued_task(&self) -> Option<usize> {
        self.state().queued.iter().map(|c| c.task).min()
    }

    /// Whether a queued change touches anything in `reads`: the task reading it must wait.
    pub(crate) fn conflicts(&self, reads: &[Touch]) -> bool {
        self.state().queued.iter().any(|change| change.affects(reads))
    }

    /// After a dropped connection: what it fetched is stale and what it queued is unknown.
    pub(crate) fn forget(&self) {
        let mut state = self.state();
        state.fetched.clear();
        state.queued.clear();
    }

    /// Reads the queries of `ahead` not fetched yet in one round trip, when that saves one. On
    /// failure each task queries for itself (a dropped connection shows there).
    pub(crate) async fn prefetch(&self, connection: &Connection, ahead: Vec<AheadQuery>) {
        let queries = self.missing(ahead);
        if queries.len() < 2 {
            return;
        }
        let batch = Batch::new(&[], &queries);
        if let Ok(output) = connection.run(&batch.script, None).await {
            if output.success() {
                self.keep(queries, batch.results(&output));
            }
        }
    }

    /// Makes the queued changes in one round trip and, when all succeed, reads in the same one
    /// the queries of `ahead` they touched (or that were never fetched). With nothing queued it
    /// does nothing.
    pub(crate) async fn make_changes(&self, connection: &Connection, ahead: Vec<AheadQuery>) -> Result<Made, SshError> {
        let changes = {
            let mut state = self.state();
            if state.queued.is_empty() {
                return Ok(Made::All);
            }
            let changes = std::mem::take(&mut state.queued);
            state.fetched.retain(|_, (_, reads)| !changes.iter().any(|c| c.affects(reads)));
            changes
        };
        let queries = self.missing(ahead);
        let input: Vec<u8> = changes
            .iter()
            .flat_map(|c| match &c.step {
                Step::Write { content, .. } => content.as_slice(),
                Step::Script(_) => &[],
            })
            .copied()
            .collect();
        let batch = Batch::new(&changes, &queries);
        let output = connection.run(&batch.script, Some(&input)).await?;
        let mut results = batch.results(&output).into_iter();
        for change in &changes {
            match results.next() {
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
        self.keep(queries, results);
        Ok(Made::All)
    }

    fn keep(&self, queries: Vec<AheadQuery>, results: impl IntoIterator<Item = Output>) {
        self.state().fetched.extend(queries.into_iter().zip(results).map(|((script, reads), output)| (script, (output, reads))));
    }
}

/// One script that makes `changes` in order, stopping at the first that fails, then runs each
/// of `queries`. Each runs in a subshell of its own, its output and errors going straight to
/// the channel, each followed by a line with the batch's random marker (and, on stdout, its exit
/// status): no temporary files, and no process per step but its subshell. A file's content is
/// read from the input, the contents in the order of the writes; other steps get no input.
struct Batch {
    script: String,
    marker: String,
}

impl Batch {
    fn new(changes: &[QueuedChange], queries: &[AheadQuery]) -> Batch {
        let marker = format!("kstack-{:032x}", rand::random::<u128>());
        let mut script = format!(
            "m={marker}\n\
             r() {{ printf '\\n%s %s\\n' \"$m\" \"$1\"; printf '\\n%s\\n' \"$m\" >&2; }}\n\
             q() {{ ( eval \"$1\" ) </dev/null; r \"$?\"; }}\n\
             w() {{ ( eval \"$1\" ); s=$?; r \"$s\"; [ \"$s\" = 0 ] || exit 0; }}\n\
             c() {{ ( eval \"$1\" ) </dev/null; s=$?; r \"$s\"; [ \"$s\" = 0 ] || exit 0; }}\n"
        );
        for change in changes {
            match &change.step {
                Step::Script(step) => script.push_str(&format!("c {}\n", quote(step))),
                Step::Write { path, content, mode, owner, group } => {
                    script.push_str(&format!("w {}\n", quote(&write_script(path, content, *mode, owner, group))));
                }
            }
        }
        for (query, _) in queries {
            script.push_str(&format!("q {}\n", quote(query)));
        }
        Batch { script, marker }
    }

    /// Each step's result, in order, as far as the batch got.
    fn results(&self, output: &Output) -> Vec<Output> {
        let (status_marker, error_marker) = (format!("\n{} ", self.marker), format!("\n{}\n", self.marker));
        let mut errors = output.stderr.split(error_marker.as_str());
        let mut results = Vec::new();
        let mut rest = output.stdout.as_str();
        while let Some(at) = rest.find(&status_marker) {
            let Some((status, after)) = rest[at + status_marker.len()..].split_once('\n') else { break };
            let Ok(status) = status.parse() else { break };
            results.push(Output { status, stdout: rest[..at].to_owned(), stderr: errors.next().unwrap_or_default().to_owned() });
            rest = after;
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `batch` with the local `sh`, as a node's would: each step's status, output, errors.
    fn run(batch: &Batch) -> Vec<(u32, String, String)> {
        let run = std::process::Command::new("sh").arg("-c").arg(&batch.script).output().unwrap();
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let output = Output { status: 0, stdout: text(&run.stdout), stderr: text(&run.stderr) };
        batch.results(&output).into_iter().map(|o| (o.status, o.stdout, o.stderr)).collect()
    }

    /// The batch's framing: outputs with and without a final newline, empty ones, errors, and
    /// a failing change that stops the rest.
    #[test]
    fn a_batch_frames_each_step_and_stops_at_a_failed_change() {
        let change = |script: &str| QueuedChange { task: 0, step: Step::Script(script.to_owned()), what: String::new(), touches: Vec::new() };
        let changes = [change("printf made"), change("echo broken >&2; exit 4"), change("echo never")];
        let batch = Batch::new(&changes, &[(String::from("echo query"), Vec::new())]);
        assert_eq!(run(&batch), [(0, "made".into(), String::new()), (4, String::new(), "broken\n".into())]);

        let queries = ["printf 'a\\nb\\n'", "true", "echo oops >&2; false"].map(|q| (q.to_owned(), Vec::new()));
        let batch = Batch::new(&[], &queries);
        assert_eq!(run(&batch), [(0, "a\nb\n".into(), String::new()), (0, String::new(), String::new()), (1, String::new(), "oops\n".into())]);
    }
}
