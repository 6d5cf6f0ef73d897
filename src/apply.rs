//! Carries out a plan: walks the resource DAG with bounded parallelism, retrying what AWS's
//! eventual consistency makes fail for a while, and recording every change in state at once.
//!
//! Three phases, each a DAG walk: (1) deletions of resources replaced destroy-first, in
//! reverse dependency order; (2) creations and updates, in dependency order; (3) deletions,
//! including the old half of create-before-destroy replacements, in reverse order.
//! A failure stops new work from starting; work in flight finishes and is recorded. So does
//! the run's [`Stop`] (a signal, or the environment's lock lost), checked before every step.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::aws::{self, AwsError, Cloud, Ids, Observed};
use crate::graph::ResourceGraph;
use crate::plan::{ActionKind, Plan};
use crate::resource::{Address, Resource};
use crate::state::{State, StateError, StateStore};
use crate::stop::{Reason, Stop};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn progressive(self) -> &'static str {
        match self {
            Verb::Create => "creating",
            Verb::Update => "updating",
            Verb::Delete => "deleting",
        }
    }

    pub fn past(self) -> &'static str {
        match self {
            Verb::Create => "created",
            Verb::Update => "updated",
            Verb::Delete => "deleted",
        }
    }
}

/// What the walk reports while it runs, for progress output.
#[derive(Debug, Clone)]
pub enum Event {
    Started { address: Address, verb: Verb },
    Retrying { address: Address, error: AwsError, delay: Duration },
    Finished { address: Address, verb: Verb, id: String, elapsed: Duration },
    Failed { address: Address, verb: Verb, error: AwsError },
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub address: Address,
    pub verb: Verb,
    pub error: AwsError,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub done: usize,
    pub failures: Vec<Failure>,
    /// Steps never started because of a failure.
    pub not_started: Vec<Address>,
    pub state_error: Option<String>,
    /// Why the run stopped starting steps, when it was stopped.
    pub stopped: Option<Reason>,
}

enum Step {
    Create(Resource),
    Update { resource: Resource, actual: Observed, changed: Vec<String> },
    Delete(Observed),
}

impl Step {
    fn address(&self) -> &Address {
        match self {
            Step::Create(r) | Step::Update { resource: r, .. } => &r.address,
            Step::Delete(o) => &o.address,
        }
    }

    fn verb(&self) -> Verb {
        match self {
            Step::Create(_) => Verb::Create,
            Step::Update { .. } => Verb::Update,
            Step::Delete(_) => Verb::Delete,
        }
    }
}

struct Context {
    cloud: Cloud,
    ids: Mutex<Ids>,
    state: Mutex<State>,
    store: StateStore,
    parallelism: usize,
    stop: Stop,
    events: Box<dyn Fn(Event) + Send + Sync>,
}

pub struct Options {
    pub parallelism: usize,
    /// Checked before every step: once set, no step starts.
    pub stop: Stop,
}

/// Where each change is recorded as it happens.
pub struct Journal {
    pub store: StateStore,
    pub state: State,
}

/// Executes `plan`, built from `desired` (images resolved) and `observed`.
pub async fn apply(
    cloud: Cloud,
    plan: &Plan,
    desired: &ResourceGraph,
    observed: &[Observed],
    journal: Journal,
    options: Options,
    events: impl Fn(Event) + Send + Sync + 'static,
) -> Outcome {
    let mut ids: Ids = BTreeMap::new();
    for resource in observed {
        ids.entry(resource.address.clone()).or_insert_with(|| resource.id.clone());
    }
    let find = |address: &Address, id: &Option<String>| observed.iter().find(|o| &o.address == address && Some(&o.id) == id.as_ref()).cloned();
    let mut first_deletes = Vec::new();
    let mut changes = Vec::new();
    let mut last_deletes = Vec::new();
    for action in &plan.actions {
        let resource = desired.get(&action.address).cloned();
        let actual = find(&action.address, &action.id);
        match (action.action, resource, actual) {
            (ActionKind::Create, Some(resource), _) => changes.push(Step::Create(resource)),
            (ActionKind::Update, Some(resource), Some(actual)) => {
                let changed = changed_attributes(&action.changes);
                changes.push(Step::Update { resource, actual, changed });
            }
            (ActionKind::Replace, Some(resource), Some(actual)) => {
                changes.push(Step::Create(resource));
                if action.create_before_destroy {
                    last_deletes.push(Step::Delete(actual));
                } else {
                    first_deletes.push(Step::Delete(actual));
                }
            }
            (ActionKind::Delete, _, Some(actual)) => last_deletes.push(Step::Delete(actual)),
            _ => {}
        }
    }
    let context = Arc::new(Context {
        cloud,
        ids: Mutex::new(ids),
        state: Mutex::new(journal.state),
        store: journal.store,
        parallelism: options.parallelism.max(1),
        stop: options.stop,
        events: Box::new(events),
    });
    let mut outcome = Outcome::default();
    for steps in [first_deletes, changes, last_deletes] {
        if !outcome.failures.is_empty() || outcome.state_error.is_some() || context.stop.reason().is_some() {
            outcome.not_started.extend(steps.iter().map(|s| s.address().clone()));
            continue;
        }
        let edges = order(&steps, desired);
        walk(&context, steps, &edges, &mut outcome).await;
    }
    outcome.stopped = context.stop.reason();
    outcome
}

/// (before, after) index pairs: creations after what they refer to, deletions before what
/// they refer to.
fn order(steps: &[Step], desired: &ResourceGraph) -> Vec<(usize, usize)> {
    let index: HashMap<&Address, usize> = steps.iter().enumerate().map(|(i, s)| (s.address(), i)).collect();
    let mut edges = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Create(resource) | Step::Update { resource, .. } => {
                for dependency in resource.dependencies() {
                    if let Some(&j) = index.get(dependency) {
                        edges.push((j, i));
                    }
                }
            }
            Step::Delete(actual) => {
                // What an old resource refers to is in its observed attributes; what the
                // model says it depends on covers the rest (e.g. a group's rules).
                for (j, other) in steps.iter().enumerate() {
                    let referenced = other.address();
                    let mentioned = i != j && crate::plan::mentions(&actual.attributes, referenced.as_str());
                    let modelled = desired.get(&actual.address).is_some_and(|r| r.dependencies().any(|d| d == referenced));
                    if mentioned || modelled {
                        edges.push((i, j));
                    }
                }
            }
        }
    }
    edges.sort_unstable();
    edges.dedup();
    edges
}

async fn walk(context: &Arc<Context>, steps: Vec<Step>, edges: &[(usize, usize)], outcome: &mut Outcome) {
    let mut waiting_on = vec![0usize; steps.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for &(before, after) in edges {
        waiting_on[after] += 1;
        dependents[before].push(after);
    }
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| waiting_on[i] == 0).rev().collect();
    let mut running = JoinSet::new();
    let mut stopped = false;
    loop {
        stopped |= context.stop.reason().is_some();
        while !stopped && running.len() < context.parallelism {
            let Some(next) = ready.pop() else { break };
            let Some(step) = steps[next].take() else { continue };
            let context = Arc::clone(context);
            running.spawn(async move {
                let result = run(&context, &step).await;
                (next, step, result)
            });
        }
        let Some(joined) = running.join_next().await else { break };
        let (index, step, result) = match joined {
            Ok(done) => done,
            Err(panic) => {
                outcome.state_error = Some(format!("internal error: a step panicked: {panic}"));
                stopped = true;
                continue;
            }
        };
        match result {
            Ok(()) => {
                outcome.done += 1;
                for &after in &dependents[index] {
                    waiting_on[after] -= 1;
                    if waiting_on[after] == 0 {
                        ready.push(after);
                    }
                }
            }
            Err(StepError::Aws(error)) => {
                outcome.failures.push(Failure { address: step.address().clone(), verb: step.verb(), error });
                stopped = true;
            }
            Err(StepError::State(error)) => {
                outcome.state_error = Some(error.to_string());
                stopped = true;
            }
        }
    }
    outcome.not_started.extend(steps.into_iter().flatten().map(|s| s.address().clone()));
}

enum StepError {
    Aws(AwsError),
    State(StateError),
}

async fn run(context: &Context, step: &Step) -> Result<(), StepError> {
    let address = step.address().clone();
    let verb = step.verb();
    (context.events)(Event::Started { address: address.clone(), verb });
    let started = Instant::now();
    let mut delay = Duration::from_secs(1);
    let deadline = started + Duration::from_secs(180);
    let id = loop {
        let ids = context.ids.lock().map(|ids| ids.clone()).unwrap_or_default();
        let result = match step {
            Step::Create(resource) => aws::create(&context.cloud, resource, &ids).await,
            Step::Update { resource, actual, changed } => {
                aws::update(&context.cloud, resource, actual, changed, &ids).await.map(|()| actual.id.clone())
            }
            Step::Delete(actual) => aws::delete(&context.cloud, actual, &ids).await.map(|()| actual.id.clone()),
        };
        let result = match (result, step) {
            // The create may have happened anyway: a reply lost, or an earlier attempt's.
            (Err(error), Step::Create(resource)) if error.is_ambiguous() || error.is_already_exists() => match adopt(context, resource, &ids).await {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(error),
                Err(lookup) => Err(if lookup.is_ambiguous() { error } else { lookup }),
            },
            (result, _) => result,
        };
        match result {
            Ok(id) => break id,
            // Instances of a deleted group release their network interfaces a while later.
            // A stopped run does not wait to try again: what the failed attempt left, the next
            // run finds by tag.
            Err(error)
                if (error.is_transient() || error.is_ambiguous() || (verb == Verb::Delete && error.is_code("DependencyViolation")))
                    && Instant::now() + delay < deadline
                    && context.stop.reason().is_none() =>
            {
                (context.events)(Event::Retrying { address: address.clone(), error, delay });
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(error) => {
                (context.events)(Event::Failed { address: address.clone(), verb, error: error.clone() });
                return Err(StepError::Aws(error));
            }
        }
    };
    record(context, step, &id).map_err(StepError::State)?;
    (context.events)(Event::Finished { address, verb, id, elapsed: started.elapsed() });
    Ok(())
}

/// Top-level attributes that `changes` touch, as providers' updates take them.
fn changed_attributes(changes: &[crate::plan::Change]) -> Vec<String> {
    let mut changed: Vec<String> = changes.iter().map(|c| c.path.split('.').next().unwrap_or_default().to_owned()).collect();
    changed.dedup();
    changed
}

/// The resource a create made after all (its reply was lost, or an earlier attempt's was),
/// found by its tags and brought in line with the model; `None` when AWS has no such resource.
async fn adopt(context: &Context, resource: &Resource, ids: &Ids) -> Result<Option<String>, AwsError> {
    let refreshed = aws::refresh(&context.cloud).await?;
    let Some(found) = refreshed.observed.into_iter().find(|o| o.address == resource.address) else { return Ok(None) };
    let changes: Vec<crate::plan::Change> = crate::plan::diff::changes(resource, &found).into_iter().filter(|c| !c.forces_replacement).collect();
    if !changes.is_empty() {
        aws::update(&context.cloud, resource, &found, &changed_attributes(&changes), ids).await?;
    }
    tracing::info!("{}: adopted {} (created by an attempt whose reply was lost)", resource.address, found.id);
    Ok(Some(found.id))
}

/// Writes the change to state before anything else starts depending on it.
fn record(context: &Context, step: &Step, id: &str) -> Result<(), StateError> {
    let mut state = context.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match step {
        Step::Create(resource) | Step::Update { resource, .. } => {
            let spec = serde_json::to_value(&resource.spec).unwrap_or_default();
            state.resources.insert(
                resource.address.clone(),
                Observed {
                    address: resource.address.clone(),
                    kind: resource.kind(),
                    id: id.to_owned(),
                    tags: resource.tags.clone(),
                    attributes: spec.get("attributes").cloned().unwrap_or_default(),
                },
            );
            if let Ok(mut ids) = context.ids.lock() {
                ids.insert(resource.address.clone(), id.to_owned());
            }
        }
        Step::Delete(actual) => {
            if state.resources.get(&actual.address).is_some_and(|r| r.id == actual.id) {
                state.resources.remove(&actual.address);
            }
        }
    }
    context.store.save(&mut state)
}
