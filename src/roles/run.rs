//! Applies roles to hosts: one SSH connection per host, hosts in parallel (bounded by
//! `forks`), tasks in order, notified handlers once after each role, and a failed task
//! stopping only its own host. `verify` runs the roles' checks the same way.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::checks::{self, CheckResult};
use super::modules::{self, Host, Observations, Outcome, TaskError};
use super::{Role, Task, Variables};
use crate::ssh::{Connection, Facts, Login, Output};
use kstack_project::roles::checks::Check;
use kstack_project::roles::modules::Module;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub check: bool,
    pub forks: usize,
    /// Stop starting new hosts once more than this many have failed.
    pub max_fail: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Ok,
    Changed,
    Failed,
    /// Its `when` was false.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub role: String,
    pub task: String,
    pub handler: bool,
    pub status: TaskStatus,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    pub host: String,
    /// Why the host could not be worked on at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    pub tasks: Vec<TaskReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// Times the connection dropped mid-role and the role was run again on a new one.
    #[serde(skip_serializing_if = "is_zero")]
    pub reconnects: u32,
    /// Commands run on the host (facts, queries, acts): each a round trip and a process.
    pub commands: usize,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// New connections a host gets after the one it had dropped mid-role.
const RECONNECTS: u32 = 2;

impl HostReport {
    pub fn count(&self, status: TaskStatus) -> usize {
        self.tasks.iter().filter(|t| t.status == status).count()
    }

    pub fn failed(&self) -> bool {
        self.unreachable.is_some() || self.count(TaskStatus::Failed) > 0 || self.checks.iter().any(|c| !c.passed)
    }
}

#[derive(Debug, Clone)]
pub enum RunEvent {
    Task { host: String, report: TaskReport },
    Unreachable { host: String, error: String },
}

type Events = Arc<dyn Fn(RunEvent) + Send + Sync>;

/// What each host needs: the roles, the variables, and what to do with them.
enum Work {
    Converge { check: bool },
    Verify,
}

pub async fn run(hosts: &[String], login: &Login, roles: &[Role], variables: &Variables, options: &RunOptions, events: Events) -> Vec<HostReport> {
    for_each_host(hosts, login, roles, variables, options, Work::Converge { check: options.check }, events).await
}

/// Runs the roles' checks, rendered with `variables` as the tasks were.
pub async fn verify(hosts: &[String], login: &Login, roles: &[Role], variables: &Variables, options: &RunOptions, events: Events) -> Vec<HostReport> {
    for_each_host(hosts, login, roles, variables, options, Work::Verify, events).await
}

async fn for_each_host(
    hosts: &[String],
    login: &Login,
    roles: &[Role],
    variables: &Variables,
    options: &RunOptions,
    work: Work,
    events: Events,
) -> Vec<HostReport> {
    let shared = Arc::new((login.clone(), roles.to_vec(), variables.clone(), work));
    let slots = Arc::new(Semaphore::new(options.forks.max(1)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut running = JoinSet::new();
    for (index, host) in hosts.iter().enumerate() {
        let (shared, slots, failures, events, host) =
            (Arc::clone(&shared), Arc::clone(&slots), Arc::clone(&failures), Arc::clone(&events), host.clone());
        let max_fail = options.max_fail;
        // Hosts start in the order given, as slots free up.
        let slot = slots.acquire_owned().await;
        running.spawn(async move {
            let _slot = slot;
            if max_fail.is_some_and(|max| failures.load(std::sync::atomic::Ordering::SeqCst) > max) {
                let report = HostReport {
                    host,
                    unreachable: Some(String::from("not started: more hosts failed than --max-fail allows")),
                    ..HostReport::default()
                };
                return (index, report);
            }
            let (login, roles, variables, work) = &*shared;
            let report = on_host(&host, login, roles, variables, work, &events).await;
            if report.failed() {
                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (index, report)
        });
    }
    let mut reports: Vec<(usize, HostReport)> = Vec::new();
    while let Some(joined) = running.join_next().await {
        if let Ok(done) = joined {
            reports.push(done);
        }
    }
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, report)| report).collect()
}

async fn connect(host: &str, login: &Login) -> Result<(Connection, Facts), String> {
    let connected = match Connection::open(host, login).await {
        Ok(connection) => connection.facts().await.map(|facts| (connection, facts)),
        Err(error) => Err(error),
    };
    connected.map_err(|error| match error.hint() {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_string(),
    })
}

async fn on_host(host: &str, login: &Login, roles: &[Role], variables: &Variables, work: &Work, events: &Events) -> HostReport {
    let mut report = HostReport { host: host.to_owned(), ..HostReport::default() };
    let (mut connection, mut facts) = match connect(host, login).await {
        Ok(connected) => connected,
        Err(message) => {
            events(RunEvent::Unreachable { host: host.to_owned(), error: message.clone() });
            report.unreachable = Some(message);
            return report;
        }
    };
    match work {
        Work::Converge { check } => {
            let mut role_index = 0;
            // Handlers notified survive a dropped connection: the rerun finds those tasks done.
            let mut notified: Vec<String> = Vec::new();
            // Fetched ahead for the tasks of every role still to run.
            let observations = Observations::default();
            // Each role's template variables, with the facts of the connection in use.
            let contexts_of = |facts: &Facts| -> Vec<minijinja::Value> { roles.iter().map(|r| context(r, variables, facts, host)).collect() };
            let mut contexts = contexts_of(&facts);
            while let Some(role) = roles.get(role_index) {
                let on = OnHost { connection: &connection, facts: &facts, check: *check, host, events };
                match converge_role(&on, &roles[role_index..], &contexts[role_index..], &mut notified, &observations).await {
                    RoleOutcome::Done(tasks) => {
                        report.tasks.extend(tasks);
                        notified.clear();
                        role_index += 1;
                    }
                    RoleOutcome::Failed(tasks) => {
                        report.tasks.extend(tasks);
                        break;
                    }
                    // Tasks converge, so the role runs again from its start on a new connection;
                    // a file write cut off left the old file (writes go to a temporary + rename).
                    RoleOutcome::Dropped(tasks) if report.reconnects < RECONNECTS => {
                        // What ran before the drop stays in the report, as it did happen.
                        report.tasks.extend(tasks);
                        report.reconnects += 1;
                        tracing::warn!("{host}: the connection dropped during role {}; reconnecting", role.name);
                        report.commands += connection.commands_run();
                        // What the dropped task did is unknown: the host is read again.
                        observations.forget();
                        match connect(host, login).await {
                            Ok(connected) => {
                                (connection, facts) = connected;
                                contexts = contexts_of(&facts);
                            }
                            Err(message) => {
                                events(RunEvent::Unreachable { host: host.to_owned(), error: message.clone() });
                                report.unreachable = Some(message);
                                return report;
                            }
                        }
                    }
                    RoleOutcome::Dropped(tasks) => {
                        report.tasks.extend(tasks);
                        break;
                    }
                }
            }
        }
        Work::Verify => {
            let jinja = crate::template::engine();
            'roles: for role in roles {
                let context = context(role, variables, &facts, host);
                for check in &role.checks {
                    let kind = match condition_holds(check.when.as_deref(), &jinja, &context) {
                        Ok(false) => continue,
                        Ok(true) => render(&check.body, &jinja, &context).and_then(Check::kind),
                        Err(error) => Err(error),
                    };
                    let result = match kind {
                        Ok(kind) => checks::run(&check.name, &kind, &connection, &facts).await,
                        Err(error) => Ok(CheckResult::failed(&check.name, error)),
                    };
                    match result {
                        Ok(result) => report.checks.push(result),
                        Err(error) => {
                            report.unreachable = Some(error.to_string());
                            break 'roles;
                        }
                    }
                }
            }
        }
    }
    report.commands += connection.commands_run();
    connection.close().await;
    report
}

enum RoleOutcome {
    Done(Vec<TaskReport>),
    Failed(Vec<TaskReport>),
    /// The connection went away under a task.
    Dropped(Vec<TaskReport>),
}

/// A host being worked on, over one connection.
struct OnHost<'a> {
    connection: &'a Connection,
    facts: &'a Facts,
    check: bool,
    host: &'a str,
    events: &'a Events,
}

/// The first of `roles`' tasks, then the handlers they (or an earlier, dropped attempt)
/// notified. Queries are fetched ahead for the rest of this role and the roles after it, each
/// with its template variables (`contexts`, in the roles' order).
async fn converge_role(
    on: &OnHost<'_>,
    roles: &[Role],
    contexts: &[minijinja::Value],
    notified: &mut Vec<String>,
    observations: &Observations,
) -> RoleOutcome {
    let OnHost { connection, facts, check, host, events } = *on;
    let (role, context) = (&roles[0], &contexts[0]);
    let ahead: Vec<(&Task, &minijinja::Value)> = roles.iter().zip(contexts).flat_map(|(r, c)| r.tasks.iter().map(move |t| (t, c))).collect();
    let mut done = Vec::new();
    for (index, task) in role.tasks.iter().enumerate() {
        if observations.wanted() {
            prefetch(connection, &ahead[index..], observations).await;
        }
        let acts = observations.acts();
        let report = run_task(connection, facts, check, role, task, context, false, observations).await;
        observations.task_done(acts);
        if report.status == TaskStatus::Failed && connection.is_closed() {
            return RoleOutcome::Dropped(done);
        }
        events(RunEvent::Task { host: host.to_owned(), report: report.clone() });
        if report.status == TaskStatus::Changed {
            notified.extend(task.notify.iter().cloned());
        }
        let failed = report.status == TaskStatus::Failed;
        done.push(report);
        if failed {
            return RoleOutcome::Failed(done);
        }
    }
    let handlers: Vec<(&Task, &minijinja::Value)> = role.handlers.iter().filter(|h| notified.contains(&h.name)).map(|h| (h, context)).collect();
    for (index, (handler, _)) in handlers.iter().enumerate() {
        if observations.wanted() {
            prefetch(connection, &handlers[index..], observations).await;
        }
        let acts = observations.acts();
        let report = run_task(connection, facts, check, role, handler, context, true, observations).await;
        observations.task_done(acts);
        if report.status == TaskStatus::Failed && connection.is_closed() {
            return RoleOutcome::Dropped(done);
        }
        events(RunEvent::Task { host: host.to_owned(), report: report.clone() });
        let failed = report.status == TaskStatus::Failed;
        done.push(report);
        if failed {
            return RoleOutcome::Failed(done);
        }
    }
    RoleOutcome::Done(done)
}

/// Template variables: the role's defaults, overridden by the caller's merged variables,
/// plus `facts`, `host`, and `host_seed`: a number stable per host, for spreading hosts
/// over a window (e.g. reboot times) without coordination.
fn context(role: &Role, variables: &Variables, facts: &Facts, host: &str) -> minijinja::Value {
    use sha2::{Digest, Sha256};
    let mut context: Variables = role.defaults.clone().into_iter().collect();
    context.extend(variables.clone());
    context.insert("facts".into(), serde_json::to_value(facts).unwrap_or_default());
    context.insert("host".into(), serde_json::Value::String(host.to_owned()));
    let digest = Sha256::digest(host.as_bytes());
    let seed = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    context.insert("host_seed".into(), serde_json::json!(seed));
    minijinja::Value::from_serialize(&context)
}

/// Whether a task's or check's `when:` holds (no condition always does).
fn condition_holds(condition: Option<&str>, jinja: &minijinja::Environment, context: &minijinja::Value) -> Result<bool, String> {
    let Some(condition) = condition else { return Ok(true) };
    jinja
        .compile_expression(condition)
        .and_then(|expression| expression.eval(context))
        .map(|value| value.is_true())
        .map_err(|error| format!("`when: {condition}`: {error}"))
}

fn render(value: &serde_json::Value, jinja: &minijinja::Environment, context: &minijinja::Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        serde_json::Value::String(text) if text.contains("{{") || text.contains("{%") => {
            serde_json::Value::String(jinja.render_str(text, context).map_err(|e| {
                let mut message = e.kind().to_string();
                if let Some(detail) = e.detail() {
                    message = format!("{message}: {detail}");
                }
                format!("template error in `{}`: {message}", text.lines().next().unwrap_or_default())
            })?)
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(|v| render(v, jinja, context)).collect::<Result<_, _>>()?),
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), render(v, jinja, context)?))).collect::<Result<_, String>>()?)
        }
        other => other.clone(),
    })
}

/// The task's module with its arguments rendered, or `None` when its `when:` is false.
fn prepare(task: &Task, jinja: &minijinja::Environment, context: &minijinja::Value) -> Result<Option<Module>, String> {
    if !condition_holds(task.when.as_deref(), jinja, context)? {
        return Ok(None);
    }
    let mut args = render(&task.args, jinja, context)?;
    if let (Some(content), Some(map)) = (&task.raw_content, args.as_object_mut()) {
        map.insert("content".into(), serde_json::Value::String(content.clone()));
    }
    let wrapped = serde_json::Value::Object(serde_json::Map::from_iter([(task.module.clone(), args)]));
    serde_json::from_value::<Module>(wrapped).map(Some).map_err(|e| format!("invalid arguments: {e}"))
}

/// Fetches the queries of the `tasks` that will run (each with its role's context) in one
/// round trip, so each finds what it judges already read. When that would not save a round
/// trip, or fails, each task queries for itself (a dropped connection shows there).
async fn prefetch(connection: &Connection, tasks: &[(&Task, &minijinja::Value)], observations: &Observations) {
    let jinja = crate::template::engine();
    let mut scripts: Vec<String> = Vec::new();
    for (task, context) in tasks {
        if let Ok(Some(module)) = prepare(task, &jinja, context) {
            scripts.extend(modules::query(&module).filter(|q| !scripts.contains(q)));
        }
    }
    if scripts.len() < 2 {
        return;
    }
    if let Ok(output) = connection.run(&batched(&scripts), None).await {
        if output.success() {
            observations.extend(scripts.into_iter().zip(output.stdout.lines().map(unbatched)).filter_map(|(script, found)| Some((script, found?))));
        }
    }
}

/// One script that runs each query in a subshell of its own (no input, its own output and
/// status) and prints a line per query: its exit status, then its output and errors in base64.
fn batched(scripts: &[String]) -> String {
    let mut batch = String::from(
        "d=$(mktemp -d) || exit 1\n\
         q() { ( eval \"$1\" ) >\"$d/o\" 2>\"$d/e\" </dev/null; printf '%s ' \"$?\"; base64 -w0 <\"$d/o\"; printf ' '; base64 -w0 <\"$d/e\"; echo; }\n",
    );
    for script in scripts {
        batch.push_str(&format!("q {}\n", modules::quote(script)));
    }
    batch.push_str("rm -rf \"$d\"\n");
    batch
}

/// A query's result from its line of [`batched`]'s output.
fn unbatched(line: &str) -> Option<Output> {
    let mut fields = line.split(' ');
    let status = fields.next()?.parse().ok()?;
    let mut decoded = || aws_smithy_types::base64::decode(fields.next()?).ok().map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
    let (stdout, stderr) = (decoded()?, decoded()?);
    Some(Output { status, stdout, stderr })
}

#[allow(clippy::too_many_arguments)]
async fn run_task(
    connection: &Connection,
    facts: &Facts,
    check: bool,
    role: &Role,
    task: &Task,
    context: &minijinja::Value,
    handler: bool,
    observations: &Observations,
) -> TaskReport {
    let jinja = crate::template::engine();
    let report = |status, outcome, error| TaskReport { role: role.name.clone(), task: task.name.clone(), handler, status, outcome, error };
    let module = match prepare(task, &jinja, context) {
        Ok(Some(module)) => module,
        Ok(None) => return report(TaskStatus::Skipped, Outcome::default(), None),
        Err(error) => return report(TaskStatus::Failed, Outcome::default(), Some(error)),
    };
    let host = Host { connection, facts, check, observations };
    match modules::converge(&module, &host).await {
        Ok(outcome) if outcome.changed() => report(TaskStatus::Changed, outcome, None),
        Ok(outcome) => report(TaskStatus::Ok, outcome, None),
        Err(TaskError::Ssh(error)) => report(TaskStatus::Failed, Outcome::default(), Some(error.to_string())),
        Err(TaskError::Failed(message)) => report(TaskStatus::Failed, Outcome::default(), Some(message)),
    }
}
