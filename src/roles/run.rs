//! Applies roles to hosts: one SSH connection per host, hosts in parallel (bounded by
//! `forks`), tasks in order, notified handlers once after each role, and a failed task
//! stopping only its own host. `verify` runs the roles' checks the same way.

use crate::events::{Event, Watch};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::checks::{self, CheckResult};
use super::modules::{self, Host, TaskError, TaskOutcome};
use super::session::{AheadQuery, HostSession, Made};
use super::{Role, Task, Variables};
use crate::ssh::{Connection, Facts, Login, SshError};
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
    pub outcome: TaskOutcome,
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

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    Task { host: String, report: TaskReport },
    Unreachable { host: String, error: String },
}

type Events = Arc<dyn Watch>;

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

/// Why a host could not be worked on, with a hint where one helps.
fn unreachable(error: SshError) -> String {
    match crate::hint::Hint::hint(&error) {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_string(),
    }
}

/// Connects and gathers the host's facts, reading `early` (see [`queries_without_facts`]) in
/// the same command.
async fn connect(host: &str, login: &Login, session: &HostSession, early: &[AheadQuery]) -> Result<(Connection, Facts), String> {
    let connection = Connection::open(host, login).await.map_err(unreachable)?;
    let facts = session.facts_and_prefetch(&connection, early.to_vec()).await.map_err(unreachable)?;
    Ok((connection, facts))
}

async fn on_host(host: &str, login: &Login, roles: &[Role], variables: &Variables, work: &Work, events: &Events) -> HostReport {
    let mut report = HostReport { host: host.to_owned(), ..HostReport::default() };
    let worked = match work {
        Work::Converge { check } => converge(host, login, roles, variables, *check, events, &mut report).await,
        Work::Verify => verify_host(host, login, roles, variables, &mut report).await,
    };
    if let Err(message) = worked {
        events.event(Event::Roles(RunEvent::Unreachable { host: host.to_owned(), error: message.clone() }));
        report.unreachable = Some(message);
    }
    report
}

/// Applies `roles` to the host, filling `report`; an error says why the host could not be
/// reached.
async fn converge(
    host: &str,
    login: &Login,
    roles: &[Role],
    variables: &Variables,
    check: bool,
    events: &Events,
    report: &mut HostReport,
) -> Result<(), String> {
    let session = HostSession::default();
    let early = queries_without_facts(roles, variables, host);
    let (mut connection, mut facts) = connect(host, login, &session, &early).await?;
    let mut role_index = 0;
    // Handlers notified survive a dropped connection: the rerun finds those tasks done.
    let mut notified: Vec<String> = Vec::new();
    // Each role's template variables and tasks made ready, with the facts of the
    // connection in use.
    let ready = |facts: &Facts| -> (Vec<minijinja::Value>, Vec<Vec<Prepared>>) {
        let jinja = crate::template::engine();
        let contexts: Vec<minijinja::Value> = roles.iter().map(|r| context(r, variables, facts, host)).collect();
        let prepared = roles.iter().zip(&contexts).map(|(r, c)| r.tasks.iter().map(|t| prepare(t, &jinja, c)).collect()).collect();
        (contexts, prepared)
    };
    let (mut contexts, mut prepared) = ready(&facts);
    while let Some(role) = roles.get(role_index) {
        let on = OnHost { connection: &connection, facts: &facts, check, host, events };
        let run = RoleRun { on, session: &session, role, context: &contexts[role_index], done: Vec::new(), reported: 0 };
        match run.converge(&prepared[role_index..], &mut notified).await {
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
                // What the dropped command did is unknown: the host is read again.
                session.forget();
                (connection, facts) = connect(host, login, &session, &early).await?;
                (contexts, prepared) = ready(&facts);
            }
            RoleOutcome::Dropped(tasks) => {
                report.tasks.extend(tasks);
                break;
            }
        }
    }
    report.commands += connection.commands_run();
    connection.close().await;
    Ok(())
}

/// Makes the checks of `roles` on the host, filling `report`. The checks that render alike
/// whatever the facts are made in the command that gathers them; the rest (none, when no
/// check uses the facts) in one more.
async fn verify_host(host: &str, login: &Login, roles: &[Role], variables: &Variables, report: &mut HostReport) -> Result<(), String> {
    let early = checks_without_facts(roles, variables, host);
    let connection = Connection::open(host, login).await.map_err(unreachable)?;
    let (facts, answers) = checks::facts_and_probes(&connection, &early.iter().collect::<Vec<_>>()).await.map_err(unreachable)?;
    // Every check rendered with the facts, then made in order, each judged as if alone.
    let rendered = host_checks(roles, variables, &facts, host);
    let pending: Vec<&checks::Pending> = rendered.iter().filter_map(|check| check.as_ref().ok()).collect();
    let results = checks::run_all(&pending, &connection, &facts, answers).await.map_err(unreachable)?;
    let mut results = results.into_iter();
    report.checks = rendered.into_iter().filter_map(|check| check.err().or_else(|| results.next())).collect();
    report.commands += connection.commands_run();
    connection.close().await;
    Ok(())
}

/// The checks of `roles` that apply to a host (their `when:` holds), in order, rendered with the
/// variables and facts the tasks use: ready to run, or failed already when one cannot be
/// rendered.
pub fn host_checks(roles: &[Role], variables: &Variables, facts: &Facts, host: &str) -> Vec<Result<checks::Pending, CheckResult>> {
    each_check(roles, variables, facts, host).into_iter().flatten().collect()
}

/// The checks of `roles` that do not depend on the host's facts, so they can be made with the
/// facts' gathering: those whose probes come out the same rendered with either of two unlike
/// stand-ins for the facts ([`alike_whatever_the_facts`], as for the tasks' queries).
fn checks_without_facts(roles: &[Role], variables: &Variables, host: &str) -> Vec<checks::Pending> {
    let alike = alike_whatever_the_facts(
        |facts| each_check(roles, variables, facts, host),
        |check: &Option<Result<checks::Pending, CheckResult>>| check.as_ref().and_then(|c| c.as_ref().ok()).and_then(checks::Pending::probe_script),
    );
    alike.into_iter().flatten().filter_map(Result::ok).collect()
}

/// Each check of `roles` rendered for a host: `None` where its `when:` is false.
fn each_check(roles: &[Role], variables: &Variables, facts: &Facts, host: &str) -> Vec<Option<Result<checks::Pending, CheckResult>>> {
    let jinja = crate::template::engine();
    let mut rendered = Vec::new();
    for role in roles {
        let context = context(role, variables, facts, host);
        for check in &role.checks {
            let kind = match condition_holds(check.when.as_deref(), &jinja, &context) {
                Ok(false) => {
                    rendered.push(None);
                    continue;
                }
                Ok(true) => render(&check.body, &jinja, &context).and_then(Check::kind),
                Err(error) => Err(error),
            };
            rendered.push(Some(match kind {
                Ok(kind) => Ok(checks::Pending { name: check.name.clone(), kind, timeout_seconds: check.timeout_seconds }),
                Err(error) => Err(CheckResult::failed(&check.name, error)),
            }));
        }
    }
    rendered
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

/// A task made ready for a host: its module with its arguments rendered, `None` when its
/// `when:` is false, or why it could not be made ready.
type Prepared = Result<Option<Module>, String>;

/// Why a role stopped early.
enum Halt {
    Failed,
    /// The connection went away.
    Dropped,
}

/// One role on one host: its tasks in order, then the handlers they notified. Tasks are judged
/// against queries fetched ahead and their changes queued in the session; `done` holds the
/// reports, of which the first `reported` were sent as events (a task's report waits until its
/// changes are made).
struct RoleRun<'a> {
    on: OnHost<'a>,
    session: &'a HostSession,
    role: &'a Role,
    context: &'a minijinja::Value,
    done: Vec<TaskReport>,
    reported: usize,
}

impl RoleRun<'_> {
    /// `prepared` holds the tasks of this role and of the roles after it, whose queries are
    /// read ahead with this role's; `notified` holds the handlers this role's tasks (or an
    /// earlier, dropped attempt) notified.
    async fn converge(mut self, prepared: &[Vec<Prepared>], notified: &mut Vec<String>) -> RoleOutcome {
        let ahead: Vec<&Prepared> = prepared.iter().flatten().collect();
        let role = self.role;
        for (index, task) in role.tasks.iter().enumerate() {
            if let Err(stop) = self.task(task, ahead[index], false, &ahead[index..]).await {
                return self.stopped(stop);
            }
            if self.done.last().is_some_and(|r| r.status == TaskStatus::Changed) {
                notified.extend(task.notify.iter().cloned());
            }
        }
        let jinja = crate::template::engine();
        let handlers: Vec<(&Task, Prepared)> =
            role.handlers.iter().filter(|h| notified.contains(&h.name)).map(|h| (h, prepare(h, &jinja, self.context))).collect();
        let handlers_ahead: Vec<&Prepared> = handlers.iter().map(|(_, p)| p).collect();
        for (index, (handler, ready)) in handlers.iter().enumerate() {
            if let Err(stop) = self.task(handler, ready, true, &handlers_ahead[index..]).await {
                return self.stopped(stop);
            }
        }
        // The role is done when its changes are made; the next roles' tasks are read after them.
        let next: Vec<&Prepared> = prepared.iter().skip(1).flatten().collect();
        match self.make_changes(&next).await {
            Ok(()) => RoleOutcome::Done(self.done),
            Err(stop) => self.stopped(stop),
        }
    }

    /// Judges one task: first making the queued changes when it reads what they touch, and
    /// reading `ahead` (the task and those after it) in one batch when nothing is fetched.
    async fn task(&mut self, task: &Task, prepared: &Prepared, handler: bool, ahead: &[&Prepared]) -> Result<(), Halt> {
        if let Ok(Some(module)) = prepared {
            let fetched = modules::query(module).and_then(|script| self.session.fetched_reads(&script));
            if self.session.conflicts(&fetched.unwrap_or_else(|| modules::reads(module)), modules::reads_file(module)) {
                self.make_changes(ahead).await?;
            }
        }
        let connection = self.on.connection;
        self.session.prefetch(connection, queries(ahead)).await;
        let host = Host { connection, facts: self.on.facts, check: self.on.check, session: self.session, task: self.done.len() };
        let report = judge(&host, &self.role.name, task, prepared, handler).await;
        if report.status == TaskStatus::Failed && connection.is_closed() {
            return Err(self.dropped(self.session.first_queued_task()));
        }
        let failed = report.status == TaskStatus::Failed;
        self.done.push(report);
        if failed {
            // The earlier tasks' changes are made before the host stops, as they would have been
            // one by one.
            self.make_changes(&[]).await?;
            return Err(Halt::Failed);
        }
        self.send_reports();
        Ok(())
    }

    /// Makes the queued changes, then reads `ahead`, in one round trip.
    async fn make_changes(&mut self, ahead: &[&Prepared]) -> Result<(), Halt> {
        let first_queued = self.session.first_queued_task();
        match self.session.make_changes(self.on.connection, queries(ahead)).await {
            Ok(Made::All) => {
                self.send_reports();
                Ok(())
            }
            Ok(Made::Failed { task, message }) => {
                // The tasks after it did not happen, as they would not have one by one.
                self.done.truncate(task + 1);
                self.done[task].status = TaskStatus::Failed;
                self.done[task].error = Some(message);
                self.send_reports();
                Err(Halt::Failed)
            }
            Err(_) => Err(self.dropped(first_queued)),
        }
    }

    /// The connection dropped: the changes queued from task `first_queued` on may or may not
    /// have been made, so that task and the ones after it leave the report (the role runs again).
    fn dropped(&mut self, first_queued: Option<usize>) -> Halt {
        if let Some(first) = first_queued {
            self.done.truncate(first);
        }
        self.session.forget();
        self.reported = self.reported.min(self.done.len());
        Halt::Dropped
    }

    /// Sends the reports of the tasks done, up to the first whose changes are still queued.
    fn send_reports(&mut self) {
        let until = self.session.first_queued_task().unwrap_or(self.done.len()).min(self.done.len());
        for report in &self.done[self.reported.min(until)..until] {
            self.on.events.event(Event::Roles(RunEvent::Task { host: self.on.host.to_owned(), report: report.clone() }));
        }
        self.reported = self.reported.max(until);
    }

    fn stopped(self, stop: Halt) -> RoleOutcome {
        match stop {
            Halt::Failed => RoleOutcome::Failed(self.done),
            Halt::Dropped => RoleOutcome::Dropped(self.done),
        }
    }
}

/// The queries of the tasks in `ahead`, once each, with what they read.
fn queries(ahead: &[&Prepared]) -> Vec<AheadQuery> {
    let mut queries: Vec<AheadQuery> = Vec::new();
    for prepared in ahead {
        if let Ok(Some(module)) = prepared {
            if let Some(query) = modules::query(module).filter(|q| !queries.iter().any(|(known, _)| known == q)) {
                queries.push((query, modules::reads(module)));
            }
        }
    }
    queries
}

/// The queries of `roles`' tasks that do not depend on the host's facts, so they can be read
/// before the facts are known, with them: those that come out the same rendered with either
/// of two unlike stand-ins for the facts. The tasks rendered with the real facts then find
/// their queries read when the scripts are the same, so a host with nothing to change costs
/// one command; a stand-in's query that differs from the real one is never used.
fn queries_without_facts(roles: &[Role], variables: &Variables, host: &str) -> Vec<AheadQuery> {
    let jinja = crate::template::engine();
    let alike = alike_whatever_the_facts(
        |facts| {
            roles
                .iter()
                .flat_map(|role| {
                    let context = context(role, variables, facts, host);
                    role.tasks.iter().map(|task| prepare(task, &jinja, &context)).collect::<Vec<_>>()
                })
                .collect()
        },
        |prepared: &Prepared| match prepared {
            Ok(Some(module)) => modules::query(module),
            _ => None,
        },
    );
    queries(&alike.iter().collect::<Vec<_>>())
}

/// Of the items `render` makes for a host's facts, those whose script (`script`: what is sent
/// to the host) comes out the same with either of two unlike stand-ins for the facts, as the
/// first stand-in rendered them: what can go to the host before its facts are known.
fn alike_whatever_the_facts<T>(render: impl Fn(&Facts) -> Vec<T>, script: impl Fn(&T) -> Option<String>) -> Vec<T> {
    let [one, other] = Facts::stand_ins().map(|facts| render(&facts));
    one.into_iter()
        .zip(other)
        .filter(|(one, other)| matches!((script(one), script(other)), (Some(one), Some(other)) if one == other))
        .map(|(one, _)| one)
        .collect()
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

/// Judges one prepared task on the host (see [`modules::converge`]).
async fn judge(host: &Host<'_>, role: &str, task: &Task, prepared: &Prepared, handler: bool) -> TaskReport {
    let report = |status, outcome, error| TaskReport { role: role.to_owned(), task: task.name.clone(), handler, status, outcome, error };
    let module = match prepared {
        Ok(Some(module)) => module,
        Ok(None) => return report(TaskStatus::Skipped, TaskOutcome::default(), None),
        Err(error) => return report(TaskStatus::Failed, TaskOutcome::default(), Some(error.clone())),
    };
    match modules::converge(module, host).await {
        Ok(outcome) if outcome.changed() => report(TaskStatus::Changed, outcome, None),
        Ok(outcome) => report(TaskStatus::Ok, outcome, None),
        Err(TaskError::Ssh(error)) => report(TaskStatus::Failed, TaskOutcome::default(), Some(error.to_string())),
        Err(TaskError::Failed(message)) => report(TaskStatus::Failed, TaskOutcome::default(), Some(message)),
    }
}
