//! One host's work in progress over its connection: query results fetched ahead, and changes
//! queued to be made together. A role's tasks are judged against what was fetched; their
//! changes wait in a queue until a later task would read something a queued change touches
//! (see [`Touch`]), or the role ends. Then one command makes the queued changes in order and,
//! when they all succeeded, reads again what they touched of the tasks ahead, so a later task
//! judges the host as the earlier ones left it; what they did not touch stays as fetched.

use std::collections::HashMap;
use std::sync::Mutex;

use super::modules::reads_found;
use super::touch::Touch;
use crate::ssh::{shell_quote as quote, write_input, write_script, Connection, Facts, Output, SshError, FACTS_SCRIPT};

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
    Write(FileWrite),
    /// `systemctl daemon-reload`, left out when a later one follows with only writes between.
    ReloadUnits,
}

/// A whole file written with its attributes: what a read of the path finds afterwards.
#[derive(Clone)]
pub(crate) struct FileWrite {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
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

    /// What a fetched query read, as its result showed ([`reads_found`]).
    pub(crate) fn fetched_reads(&self, script: &str) -> Option<Vec<Touch>> {
        self.state().fetched.get(script).map(|(_, reads)| reads.clone())
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
    /// A read of `file` that [`Self::queued_file`] answers waits for nothing.
    pub(crate) fn conflicts(&self, reads: &[Touch], file: Option<&str>) -> bool {
        let state = self.state();
        let answered = file.filter(|path| last_write(&state.queued, path).is_some()).map(Touch::path);
        let reads: Vec<Touch> = reads.iter().filter(|read| Some(*read) != answered.as_ref()).cloned().collect();
        state.queued.iter().any(|change| change.affects(&reads))
    }

    /// The file at `path` as the queued changes leave it, when a queued write of it decides
    /// that alone: no change queued after it touches the path. A later task reading the file
    /// judges this instead of waiting for the write to be made.
    pub(crate) fn queued_file(&self, path: &str) -> Option<FileWrite> {
        last_write(&self.state().queued, path).cloned()
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

    /// Gathers the host's facts and, in the same round trip, reads the queries of `ahead`. The
    /// facts run in a subshell of their own (they read `/etc/os-release` into variables).
    pub(crate) async fn facts_and_prefetch(&self, connection: &Connection, ahead: Vec<AheadQuery>) -> Result<Facts, SshError> {
        let queries = self.missing(ahead);
        if queries.is_empty() {
            return connection.facts().await;
        }
        let gather = (format!("(\n{FACTS_SCRIPT}\n)"), Vec::new());
        let batch = Batch::new(&[], &[std::slice::from_ref(&gather), &queries].concat());
        let output = connection.run(&batch.script, None).await?;
        let mut results = batch.results(&output).into_iter();
        match results.next() {
            Some(facts) if facts.success() => {
                self.keep(queries, results);
                Ok(Facts::parse(&facts.stdout))
            }
            _ => connection.facts().await,
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
                Step::Write(write) => Some(write_input(&write.content)),
                Step::Script(_) | Step::ReloadUnits => None,
            })
            .flatten()
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
        self.state().fetched.extend(queries.into_iter().zip(results).map(|((script, reads), output)| {
            let reads = reads_found(reads, &output.stdout);
            (script, (output, reads))
        }));
    }
}

/// The last queued change touching `path`, when it is a write of exactly that path whose
/// owner and group are names (a read shows names; a number would show as one).
fn last_write<'a>(queued: &'a [QueuedChange], path: &str) -> Option<&'a FileWrite> {
    let read = [Touch::path(path)];
    match &queued.iter().rev().find(|change| change.affects(&read))?.step {
        Step::Write(write) if Touch::path(&write.path) == read[0] && ![&write.owner, &write.group].iter().any(|n| n.parse::<u32>().is_ok()) => {
            Some(write)
        }
        _ => None,
    }
}

/// One script that makes `changes` in order, stopping at the first that fails, then runs each
/// of `queries`. Changes run in subshells; queries, kstack's own scripts that change nothing,
/// in the batch's shell (a fork each saved; a user's guard brings its own subshell). Of
/// systemd reloads with only file writes between them, only the last is made. Each step's
/// output and errors go straight to the channel, each followed by a line with the batch's
/// random marker (and, on stdout, its exit status): no temporary files. A file's content is
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
             q() {{ eval \"$1\" </dev/null; r \"$?\"; }}\n\
             w() {{ ( eval \"$1\" ); s=$?; r \"$s\"; [ \"$s\" = 0 ] || exit 0; }}\n\
             c() {{ ( eval \"$1\" ) </dev/null; s=$?; r \"$s\"; [ \"$s\" = 0 ] || exit 0; }}\n"
        );
        for (index, change) in changes.iter().enumerate() {
            match &change.step {
                Step::Script(step) => script.push_str(&format!("c {}\n", quote(step))),
                Step::ReloadUnits => {
                    let next_act = changes[index + 1..].iter().find(|c| !matches!(c.step, Step::Write(_)));
                    if next_act.is_some_and(|c| matches!(c.step, Step::ReloadUnits)) {
                        // The next reload reads this change's files too: this one succeeds as it.
                        script.push_str("r 0\n");
                    } else {
                        script.push_str("c 'systemctl daemon-reload'\n");
                    }
                }
                Step::Write(FileWrite { path, content, mode, owner, group }) => {
                    script.push_str(&format!("w {}\n", quote(&write_script(path, content.len(), *mode, owner, group))));
                }
            }
        }
        let paths = queries.iter().flat_map(|(_, reads)| reads).filter_map(|read| match read {
            Touch::Path(path) => Some(path.as_str()),
            _ => None,
        });
        script.push_str(&super::modules::stat_ahead(paths).unwrap_or_default());
        let units = queries.iter().flat_map(|(_, reads)| reads).filter_map(|read| match read {
            Touch::Unit(unit) => Some(unit.as_str()),
            _ => None,
        });
        script.push_str(&super::modules::units_ahead(units).unwrap_or_default());
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

    /// A path found absent shows no owner's name: an account change queued after the read
    /// leaves its answer standing, as it does not for a path found there.
    #[test]
    fn an_absent_paths_read_stands_through_account_changes() {
        use crate::roles::modules::stat_query;
        let session = HostSession::default();
        let (absent, present) = (stat_query("/srv/new"), stat_query("/srv/old"));
        let reads = |path: &str| vec![Touch::path(path), Touch::AccountNames];
        let found = |stdout: &str| Output { status: 0, stdout: stdout.to_owned(), stderr: String::new() };
        session.keep(
            vec![(absent.clone(), reads("/srv/new")), (present.clone(), reads("/srv/old"))],
            [found("absent\n\n\n"), found("directory\n\n755 app app\n")],
        );
        session.queue(step(Step::Script("useradd app".into()), vec![Touch::AccountNames]));
        assert!(!session.conflicts(&session.fetched_reads(&absent).unwrap(), None));
        assert!(session.conflicts(&session.fetched_reads(&present).unwrap(), None));
    }

    fn write(path: &str, content: &str, owner: &str) -> QueuedChange {
        let write = FileWrite { path: path.into(), content: content.into(), mode: 0o640, owner: owner.into(), group: "root".into() };
        QueuedChange { task: 0, step: Step::Write(write), what: String::new(), touches: vec![Touch::path(path)] }
    }

    fn step(step: Step, touches: Vec<Touch>) -> QueuedChange {
        QueuedChange { task: 0, step, what: String::new(), touches }
    }

    /// Systemd reloads one after another, with only writes between, are made once, after the
    /// last write; each keeps its place among the results.
    #[test]
    fn unit_reloads_with_only_writes_between_are_made_once() {
        let reload = || step(Step::ReloadUnits, Vec::new());
        let changes = [write("/a", "", "root"), reload(), write("/b", "", "root"), reload(), step(Step::Script("true".into()), Vec::new()), reload()];
        let batch = Batch::new(&changes, &[]);
        assert_eq!(batch.script.matches("systemctl daemon-reload").count(), 2, "{}", batch.script);
        let made = batch.script.lines().filter(|l| l.starts_with("c ") || l.starts_with("w ") || l.starts_with("r ")).count();
        assert_eq!(made, changes.len());
    }

    /// A read of a file a queued write decides is answered from the queue; a change queued
    /// after the write, a numeric owner, or another thing read (account names) still waits.
    #[test]
    fn a_read_after_a_queued_write_is_answered_from_the_queue_only_when_the_write_decides_it() {
        let session = HostSession::default();
        let reads = [Touch::path("/etc/default/app")];
        session.queue(write("/etc/default/app", "PORT=1\n", "root"));
        assert!(!session.conflicts(&reads, Some("/etc/default/app")));
        assert!(session.conflicts(&reads, None), "a module that cannot judge from the queue waits");
        assert_eq!(session.queued_file("/etc/default/app").map(|w| w.content), Some(b"PORT=1\n".to_vec()));
        assert!(!session.conflicts(&[reads[0].clone(), Touch::AccountNames], Some("/etc/default/app")));
        session.queue(step(Step::Script("useradd app".into()), vec![Touch::AccountNames]));
        assert!(session.conflicts(&[reads[0].clone(), Touch::AccountNames], Some("/etc/default/app")));
        session.queue(write("/etc/default/app", "PORT=2\n", "root"));
        assert_eq!(session.queued_file("/etc/default/app").map(|w| w.content), Some(b"PORT=2\n".to_vec()), "the last write decides");
        session.queue(step(Step::Script("rm -rf /etc/default".into()), vec![Touch::tree("/etc/default")]));
        assert!(session.queued_file("/etc/default/app").is_none() && session.conflicts(&reads, Some("/etc/default/app")));
        session.forget();
        session.queue(write("/srv/x", "", "1001"));
        assert!(session.queued_file("/srv/x").is_none(), "a read shows the owner's name, not its number");
    }

    /// Files stated ahead in one process read as each stated alone, and a file's content read
    /// by the shell is exact: no final newline, backslashes and spaces, a NUL byte, a large file.
    #[test]
    fn paths_stated_ahead_read_as_stated_alone() {
        use crate::roles::modules::{read_script, stat_query};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        // "glob ?" is stated after "glob 1", which it would match as a pattern.
        let contents: [(&str, Vec<u8>); 7] = [
            ("a file", b"x = 1\n".to_vec()),
            ("glob 1", b"one\n".to_vec()),
            ("glob ?", b"question\n".to_vec()),
            ("no newline", b"a\nb".to_vec()),
            ("escapes", b"  lead\\n\ttab \\ \r\n\n\n".to_vec()),
            ("nul", b"a\0b\n".to_vec()),
            ("large", "line of text\n".repeat(200).into_bytes()),
        ];
        for (name, content) in &contents {
            std::fs::write(path(name), content).unwrap();
        }
        std::fs::set_permissions(path("a file"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::create_dir(path("dir")).unwrap();
        std::os::unix::fs::symlink(path("dir"), path("link")).unwrap();
        let stated = ["dir", "link", "missing"].map(|name| (stat_query(&path(name)), vec![Touch::path(&path(name))]));
        let read = contents.each_ref().map(|(name, _)| (read_script(&path(name)), vec![Touch::path(&path(name))]));
        let queries: Vec<AheadQuery> = stated.into_iter().chain(read).collect();
        let together = Batch::new(&[], &queries);
        assert!(together.script.contains("ks="), "{}", together.script);
        let alone: Vec<_> = queries.iter().flat_map(|query| run(&Batch::new(&[], std::slice::from_ref(query)))).collect();
        assert_eq!(run(&together), alone);
        assert!(alone[3].1.starts_with("file\n\n600 "), "{alone:?}");
        for ((_, content), (_, output, _)) in contents.iter().zip(&alone[3..]) {
            let body = output.split_once("--- kstack content ---\n").unwrap().1;
            assert_eq!(body.as_bytes(), content.as_slice());
        }
    }
}
