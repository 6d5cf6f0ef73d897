//! Carries out a plan: walks the resource DAG with bounded parallelism, retrying what AWS's
//! eventual consistency makes fail for a while, and recording every change in state at once.
//!
//! Three phases, each a DAG walk: (1) deletions of resources replaced destroy-first, in
//! reverse dependency order; (2) creations and updates, in dependency order; (3) deletions,
//! including the old half of create-before-destroy replacements, in reverse order.
//! A failure stops new work from starting; work in flight finishes and is recorded. So does
//! the run's [`Stop`] (a signal, or the environment's lock lost), checked before every step.

use crate::resource::AutoScalingGroupSpec;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::aws::{self, AwsError, Cloud, Ids, Observed};
use crate::events::{Event, Watch};
use crate::graph::ResourceGraph;
use crate::plan::{ActionKind, Plan};
use crate::resource::{Address, Resource};
use crate::state::{State, StateError, StateStore};
use crate::stop::{Reason, Stop};
use std::future::Future;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ApplyEvent {
    Started {
        address: Address,
        verb: Verb,
    },
    Retrying {
        address: Address,
        #[serde(serialize_with = "crate::events::as_text")]
        error: AwsError,
        #[serde(serialize_with = "crate::events::as_seconds")]
        delay: Duration,
    },
    Finished {
        address: Address,
        verb: Verb,
        id: String,
        #[serde(serialize_with = "crate::events::as_seconds")]
        elapsed: Duration,
    },
    Failed {
        address: Address,
        verb: Verb,
        #[serde(serialize_with = "crate::events::as_text")]
        error: AwsError,
    },
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub address: Address,
    pub verb: Verb,
    pub error: AwsError,
}

/// Why a run's changes may be missing from its state.
#[derive(Debug, thiserror::Error)]
pub enum Unrecorded {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("internal error: a step panicked: {0}")]
    Panicked(String),
}

impl crate::hint::Hint for Unrecorded {
    fn hint(&self) -> Option<String> {
        Some("AWS was changed but state could not be saved; the next plan finds the resources by tag".to_owned())
    }
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub done: usize,
    pub failures: Vec<Failure>,
    /// Steps never started because of a failure.
    pub not_started: Vec<Address>,
    /// Why changes made in AWS may be missing from state.
    pub state_error: Option<Unrecorded>,
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

/// What the walk asks of a cloud: AWS through [`Cloud`]; the walk's own tests use one in memory.
pub trait Provider: Send + Sync + 'static {
    fn create(&self, resource: &Resource, ids: &Ids) -> impl Future<Output = Result<String, AwsError>> + Send;
    fn update(&self, resource: &Resource, actual: &Observed, changed: &[String], ids: &Ids) -> impl Future<Output = Result<(), AwsError>> + Send;
    fn delete(&self, actual: &Observed, ids: &Ids) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The resources carrying the environment's identity, recorded or not: where a create
    /// this run journalled, whose reply was lost, is found.
    fn refresh(&self) -> impl Future<Output = Result<Vec<Observed>, AwsError>> + Send;
}

impl Provider for Cloud {
    async fn create(&self, resource: &Resource, ids: &Ids) -> Result<String, AwsError> {
        aws::create(self, resource, ids).await
    }

    async fn update(&self, resource: &Resource, actual: &Observed, changed: &[String], ids: &Ids) -> Result<(), AwsError> {
        aws::update(self, resource, actual, changed, ids).await
    }

    async fn delete(&self, actual: &Observed, ids: &Ids) -> Result<(), AwsError> {
        aws::delete(self, actual, ids).await
    }

    async fn refresh(&self) -> Result<Vec<Observed>, AwsError> {
        let refreshed = aws::refresh(self).await?;
        Ok(refreshed.observed.into_iter().chain(refreshed.unrecorded).collect())
    }
}

struct Context<P> {
    cloud: P,
    ids: Mutex<Ids>,
    state: Mutex<State>,
    store: StateStore,
    parallelism: usize,
    stop: Stop,
    left_alone: std::collections::BTreeSet<String>,
    watch: Arc<dyn Watch>,
}

pub struct Options {
    pub parallelism: usize,
    /// Checked before every step: once set, no step starts.
    pub stop: Stop,
    /// Ids of what the plan leaves alone: never adopted by a create that finds its address
    /// taken (a copy wearing the environment's tags was there before the run).
    pub left_alone: std::collections::BTreeSet<String>,
}

/// Where each change is recorded as it happens.
pub struct Recorder {
    pub store: StateStore,
    pub state: State,
}

/// Executes `plan`, built from `desired` (images resolved) and `observed`.
pub async fn apply<P: Provider>(
    cloud: P,
    plan: &Plan,
    desired: &ResourceGraph,
    observed: &[Observed],
    recorder: Recorder,
    options: Options,
    watch: Arc<dyn Watch>,
) -> Outcome {
    // Someone else's VPC and subnets are referred to by their ids alike.
    let mut ids: Ids = desired.existing().clone();
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
    let mut state = recorder.state;
    if adopt_journalled(&mut state, observed) {
        if let Err(error) = recorder.store.save(&mut state) {
            return Outcome {
                state_error: Some(error.into()),
                not_started: plan.actions.iter().map(|a| a.address.clone()).collect(),
                ..Outcome::default()
            };
        }
    }
    let context = Arc::new(Context {
        cloud,
        ids: Mutex::new(ids),
        state: Mutex::new(state),
        store: recorder.store,
        parallelism: options.parallelism.max(1),
        stop: options.stop,
        left_alone: options.left_alone,
        watch,
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
    // Every create went through and was recorded: an intent still journalled is one whose
    // create an earlier run left ambiguous and refresh never found made. It would let anything
    // wearing its address in the environment's tags pass for made, so it goes.
    if outcome.failures.is_empty() && outcome.stopped.is_none() && outcome.state_error.is_none() {
        let mut state = context.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !state.intents.is_empty() {
            state.intents.clear();
            if let Err(error) = context.store.save(&mut state) {
                outcome.state_error = Some(error.into());
            }
        }
    }
    outcome
}

/// Makes state's record what refresh `observed`, before `plan` is carried out: what only state
/// holds (a group's last ask, `Kind::recorded_only`) stays from the earlier record of the same
/// resource, and a group the plan leaves as it is has been told the model's ask all the same,
/// so the next change of `desired:` in the file is told from it (see `plan::capacity`).
pub fn record_observed(state: &mut State, observed: &[Observed], plan: &Plan, desired: &ResourceGraph) {
    let mut resources: BTreeMap<Address, Observed> = observed.iter().rev().map(|o| (o.address.clone(), o.clone())).collect();
    for (address, resource) in &mut resources {
        if let Some(earlier) = state.resources.get(address).filter(|earlier| earlier.id == resource.id) {
            for attribute in resource.kind.recorded_only() {
                if let Some(value) = earlier.attributes.get(*attribute) {
                    resource.attributes[*attribute] = value.clone();
                }
            }
        }
    }
    for action in plan.actions.iter().filter(|a| a.action == ActionKind::NoOp) {
        if let (Some(resource), Some(crate::resource::Spec::AutoScalingGroup(AutoScalingGroupSpec { asked, .. }))) =
            (resources.get_mut(&action.address), desired.get(&action.address).map(|r| &r.spec))
        {
            resource.attributes["asked"] = serde_json::json!(asked);
        }
    }
    state.resources = resources;
}

/// Records what refresh found made by a create journalled in an earlier run (killed, or its
/// reply lost) and withdraws that intent: the resource is the environment's from now on, whatever
/// the plan does with it. Says whether state changed.
fn adopt_journalled(state: &mut State, observed: &[Observed]) -> bool {
    let mut changed = false;
    for resource in observed {
        if state.intents.remove(&resource.address).is_some() {
            if state.resources.get(&resource.address).is_none_or(|r| r.id != resource.id) {
                tracing::info!("{}: adopted {} (made by a create an earlier run journalled)", resource.address, resource.id);
                state.resources.insert(resource.address.clone(), resource.clone());
            }
            changed = true;
        }
    }
    changed
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

async fn walk<P: Provider>(context: &Arc<Context<P>>, steps: Vec<Step>, edges: &[(usize, usize)], outcome: &mut Outcome) {
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
                outcome.state_error = Some(Unrecorded::Panicked(panic.to_string()));
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
                outcome.state_error = Some(error.into());
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

async fn run<P: Provider>(context: &Context<P>, step: &Step) -> Result<(), StepError> {
    let address = step.address().clone();
    let verb = step.verb();
    context.watch.event(Event::Apply(ApplyEvent::Started { address: address.clone(), verb }));
    if let Step::Create(resource) = step {
        journal_intent(context, &resource.address).map_err(StepError::State)?;
    }
    let started = Instant::now();
    let mut delay = Duration::from_secs(1);
    let deadline = started + Duration::from_secs(180);
    let id = loop {
        let ids = context.ids.lock().map(|ids| ids.clone()).unwrap_or_default();
        let result = match step {
            Step::Create(resource) => context.cloud.create(resource, &ids).await,
            Step::Update { resource, actual, changed } => context.cloud.update(resource, actual, changed, &ids).await.map(|()| actual.id.clone()),
            Step::Delete(actual) => context.cloud.delete(actual, &ids).await.map(|()| actual.id.clone()),
        };
        // Whether trying again cannot make a second resource.
        let mut retry_is_safe = true;
        let result = match (result, step) {
            // The create may have happened anyway, wholly or in part: a reply lost, an earlier
            // attempt's, or a later call of a create of several (a route table's routes)
            // refused for now. Only a lookup that finds nothing makes creating again safe.
            (Err(error), Step::Create(resource)) if error.is_ambiguous() || error.is_already_exists() || error.is_transient() => {
                match adopt(context, resource, &ids).await {
                    Ok(Some(id)) => Ok(id),
                    Ok(None) => Err(error),
                    // Whether the create happened is unknown: the step fails, and its
                    // journalled intent lets the next run adopt what it made.
                    Err(lookup) => {
                        retry_is_safe = false;
                        Err(lookup)
                    }
                }
            }
            (result, _) => result,
        };
        match result {
            Ok(id) => break id,
            // Instances of a deleted group release their network interfaces a while later.
            // A stopped run does not wait to try again: what the failed attempt left, the next
            // run finds by tag.
            Err(error)
                if retry_is_safe
                    && (error.is_transient() || error.is_ambiguous() || (verb == Verb::Delete && error.is_code("DependencyViolation")))
                    && Instant::now() + delay < deadline
                    && context.stop.reason().is_none() =>
            {
                context.watch.event(Event::Apply(ApplyEvent::Retrying { address: address.clone(), error, delay }));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(error) => {
                context.watch.event(Event::Apply(ApplyEvent::Failed { address: address.clone(), verb, error: error.clone() }));
                // A failed create keeps its intent: a create of several calls (a role, then its
                // policies) may have made the resource before a later call failed, and the next
                // run adopts it. An apply that ends without failures clears what is left.
                return Err(StepError::Aws(error));
            }
        }
    };
    record(context, step, &id).map_err(StepError::State)?;
    context.watch.event(Event::Apply(ApplyEvent::Finished { address, verb, id, elapsed: started.elapsed() }));
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
async fn adopt<P: Provider>(context: &Context<P>, resource: &Resource, ids: &Ids) -> Result<Option<String>, AwsError> {
    let refreshed = context.cloud.refresh().await?;
    let Some(found) = refreshed.into_iter().find(|o| o.address == resource.address && !context.left_alone.contains(&o.id)) else { return Ok(None) };
    let changes: Vec<crate::plan::Change> = crate::plan::diff::changes(resource, &found).into_iter().filter(|c| !c.forces_replacement).collect();
    if !changes.is_empty() {
        context.cloud.update(resource, &found, &changed_attributes(&changes), ids).await?;
    }
    tracing::info!("{}: adopted {} (created by an attempt whose reply was lost)", resource.address, found.id);
    Ok(Some(found.id))
}

/// Journals the intent to create `address`, before the create goes out: only a journalled
/// create lets a later run adopt what carries the environment's tags.
fn journal_intent<P: Provider>(context: &Context<P>, address: &Address) -> Result<(), StateError> {
    let mut state = context.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    state.intents.insert(address.clone(), crate::state::now_rfc3339());
    context.store.save(&mut state)
}

/// Writes the change to state before anything else starts depending on it.
fn record<P: Provider>(context: &Context<P>, step: &Step, id: &str) -> Result<(), StateError> {
    let mut state = context.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match step {
        Step::Create(resource) | Step::Update { resource, .. } => {
            state.intents.remove(&resource.address);
            let spec = serde_json::to_value(&resource.spec).unwrap_or_default();
            state.resources.insert(
                resource.address.clone(),
                Observed {
                    address: resource.address.clone(),
                    kind: resource.kind(),
                    id: id.to_owned(),
                    tags: resource.tags.clone(),
                    attributes: spec.get("attributes").cloned().unwrap_or_default(),
                    assigned: BTreeMap::new(),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::aws::AwsErrorKind;
    use crate::resource::{InternetGatewaySpec, Kind, SecurityGroupSpec, Spec, VpcSpec};

    /// A cloud in memory: each call takes a few milliseconds, ids count up, and what it was
    /// asked is logged in order.
    #[derive(Default)]
    struct Memory {
        resources: Mutex<BTreeMap<Address, Observed>>,
        log: Mutex<Vec<String>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        /// A create that fails with this error; after making the resource when `made` (its
        /// reply lost), and once only.
        failing: Mutex<Option<(Address, bool, AwsError)>>,
        /// How many refreshes to come fail, as a lookup whose reply was lost.
        failing_refreshes: AtomicUsize,
        next_id: AtomicUsize,
    }

    impl Memory {
        async fn call(&self, verb: &str, address: &Address) {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            self.log.lock().unwrap().push(format!("start {verb} {address}"));
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.log.lock().unwrap().push(format!("end {verb} {address}"));
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }

        fn position(&self, entry: &str) -> usize {
            let log = self.log.lock().unwrap();
            log.iter().position(|e| e == entry).unwrap_or_else(|| panic!("`{entry}` is not in {log:#?}"))
        }

        fn ids(&self) -> BTreeMap<Address, String> {
            self.resources.lock().unwrap().iter().map(|(a, o)| (a.clone(), o.id.clone())).collect()
        }
    }

    impl Provider for Arc<Memory> {
        async fn create(&self, resource: &Resource, _ids: &Ids) -> Result<String, AwsError> {
            // A refusal comes at once; a lost reply after the work.
            let failing = self.failing.lock().unwrap().take_if(|(address, _, _)| *address == resource.address);
            if let Some((_, false, error)) = failing {
                return Err(error);
            }
            self.call("create", &resource.address).await;
            let id = format!("id-{}", self.next_id.fetch_add(1, Ordering::SeqCst));
            let attributes = serde_json::to_value(&resource.spec).unwrap()["attributes"].clone();
            let made = Observed {
                address: resource.address.clone(),
                kind: resource.kind(),
                id: id.clone(),
                tags: resource.tags.clone(),
                attributes,
                assigned: BTreeMap::new(),
            };
            self.resources.lock().unwrap().insert(resource.address.clone(), made);
            match failing {
                Some((_, true, error)) => Err(error),
                _ => Ok(id),
            }
        }

        async fn update(&self, resource: &Resource, _: &Observed, _: &[String], _: &Ids) -> Result<(), AwsError> {
            self.call("update", &resource.address).await;
            Ok(())
        }

        async fn delete(&self, actual: &Observed, _: &Ids) -> Result<(), AwsError> {
            self.call("delete", &actual.address).await;
            self.resources.lock().unwrap().remove(&actual.address);
            Ok(())
        }

        async fn refresh(&self) -> Result<Vec<Observed>, AwsError> {
            if self.failing_refreshes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(AwsError { kind: AwsErrorKind::Transport, ..AwsError::internal("connection reset") });
            }
            Ok(self.resources.lock().unwrap().values().cloned().collect())
        }
    }

    /// A VPC, and four resources in it that depend on it only.
    fn network() -> ResourceGraph {
        let vpc = Resource::new(Kind::Vpc, "main", Spec::Vpc(VpcSpec { cidr: "10.0.0.0/16".parse().unwrap() }));
        let mut resources =
            vec![Resource::new(Kind::InternetGateway, "main", Spec::InternetGateway(InternetGatewaySpec { vpc: vpc.address.clone() }))];
        for name in ["a", "b", "c"] {
            resources.push(Resource::new(
                Kind::SecurityGroup,
                name,
                Spec::SecurityGroup(SecurityGroupSpec { vpc: vpc.address.clone(), description: name.into() }),
            ));
        }
        resources.push(vpc);
        ResourceGraph::build(resources).unwrap()
    }

    /// Applies the plan from `memory`'s resources to `desired`, two steps at a time, recording in
    /// a state file under `dir`.
    async fn apply_to(memory: &Arc<Memory>, desired: &ResourceGraph, dir: &std::path::Path) -> (Outcome, State) {
        // What a session's refresh saw; the provider's refresh is the apply's own lookups.
        let observed: Vec<Observed> = memory.resources.lock().unwrap().values().cloned().collect();
        let plan = crate::plan::plan("test", desired, &observed, &crate::plan::Scope::default());
        let store = StateStore::local(dir, "test", None);
        let recorder = Recorder { state: store.load().unwrap(), store: store.clone() };
        let options = Options { parallelism: 2, stop: Stop::default(), left_alone: Default::default() };
        let outcome = apply(Arc::clone(memory), &plan, desired, &observed, recorder, options, Arc::new(crate::events::Unwatched)).await;
        (outcome, store.load().unwrap())
    }

    fn recorded(state: &State) -> BTreeMap<Address, String> {
        state.resources.iter().map(|(a, o)| (a.clone(), o.id.clone())).collect()
    }

    #[tokio::test]
    async fn creations_wait_for_what_they_refer_to_run_two_at_a_time_and_are_each_recorded() {
        let memory = Arc::new(Memory::default());
        let dir = tempfile::tempdir().unwrap();
        let (outcome, state) = apply_to(&memory, &network(), dir.path()).await;
        assert_eq!((outcome.done, outcome.failures.len(), outcome.not_started.len()), (5, 0, 0));
        let vpc_made = memory.position("end create vpc.main");
        for other in ["internet_gateway.main", "security_group.a", "security_group.b", "security_group.c"] {
            assert!(memory.position(&format!("start create {other}")) > vpc_made, "{other} waited for the VPC");
        }
        assert_eq!(memory.most_in_flight.load(Ordering::SeqCst), 2, "four ready steps ran two at a time");
        assert_eq!(recorded(&state), memory.ids(), "the state holds every resource made, with its id");
    }

    #[tokio::test]
    async fn a_failure_starts_nothing_new_and_what_was_made_is_in_state() {
        // The first of the four steps the VPC frees to start, as a run without failures shows.
        let rehearsal = Arc::new(Memory::default());
        apply_to(&rehearsal, &network(), tempfile::tempdir().unwrap().path()).await;
        let first = rehearsal.log.lock().unwrap()[2].trim_start_matches("start create ").to_owned();
        let first = network().in_dependency_order().map(|r| r.address.clone()).find(|a| a.as_str() == first).unwrap();

        let memory = Arc::new(Memory::default());
        let refused = AwsError { kind: AwsErrorKind::Service { code: Some("UnauthorizedOperation".into()) }, ..AwsError::internal("no") };
        *memory.failing.lock().unwrap() = Some((first.clone(), false, refused));
        let dir = tempfile::tempdir().unwrap();
        let (outcome, state) = apply_to(&memory, &network(), dir.path()).await;
        assert_eq!(outcome.failures.iter().map(|f| &f.address).collect::<Vec<_>>(), [&first]);
        assert_eq!(outcome.done, 2, "the VPC, and the step that ran beside the failed one: {outcome:?}");
        assert!(!outcome.not_started.is_empty(), "steps after the failure were not started: {outcome:?}");
        assert_eq!(outcome.done + outcome.failures.len() + outcome.not_started.len(), 5, "{outcome:?}");
        assert_eq!(recorded(&state), memory.ids(), "what was made before and alongside the failure is recorded, nothing else");
    }

    /// The lookup after a lost reply fails too: whether the create happened is unknown, so the
    /// step fails rather than create again, and the next run adopts what its intent made.
    #[tokio::test]
    async fn a_create_whose_reply_and_lookup_were_lost_is_never_made_twice() {
        let memory = Arc::new(Memory::default());
        let lost = AwsError { kind: AwsErrorKind::Transport, ..AwsError::internal("connection reset") };
        let gateway = Address::new(Kind::InternetGateway, "main");
        *memory.failing.lock().unwrap() = Some((gateway.clone(), true, lost));
        memory.failing_refreshes.store(1, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let (outcome, state) = apply_to(&memory, &network(), dir.path()).await;
        assert_eq!(outcome.failures.iter().map(|f| &f.address).collect::<Vec<_>>(), [&gateway], "{outcome:?}");
        assert!(state.intents.contains_key(&gateway), "the intent stays for the next run: {:?}", state.intents);

        let (outcome, state) = apply_to(&memory, &network(), dir.path()).await;
        assert_eq!(outcome.failures.len(), 0, "{outcome:?}");
        let creates = memory.log.lock().unwrap().iter().filter(|e| *e == "start create internet_gateway.main").count();
        assert_eq!(creates, 1, "made once, adopted by the next run");
        assert_eq!(recorded(&state), memory.ids());
    }

    /// Applies `network()` with the gateway's create making the gateway and then failing with
    /// `error`: the retry's lookup finds and adopts it, and it is made once.
    async fn made_once_though_its_create_failed_with(error: AwsError) {
        let memory = Arc::new(Memory::default());
        *memory.failing.lock().unwrap() = Some((Address::new(Kind::InternetGateway, "main"), true, error));
        let dir = tempfile::tempdir().unwrap();
        let (outcome, state) = apply_to(&memory, &network(), dir.path()).await;
        assert_eq!((outcome.done, outcome.failures.len()), (5, 0), "{outcome:?}");
        let creates = memory.log.lock().unwrap().iter().filter(|e| *e == "start create internet_gateway.main").count();
        assert_eq!(creates, 1, "found by the lookup, not created again");
        assert_eq!(recorded(&state), memory.ids());
    }

    /// A create of several calls made the resource, then a later call was refused for now
    /// (throttled, or a reference not yet visible).
    #[tokio::test]
    async fn a_create_refused_for_now_after_making_the_resource_is_adopted_instead_of_made_twice() {
        let throttled = AwsError { kind: AwsErrorKind::Service { code: Some("RequestLimitExceeded".into()) }, ..AwsError::internal("slow down") };
        assert!(throttled.is_transient() && !throttled.is_ambiguous());
        made_once_though_its_create_failed_with(throttled).await;
    }

    #[tokio::test]
    async fn a_create_whose_reply_was_lost_is_adopted_instead_of_made_twice() {
        made_once_though_its_create_failed_with(AwsError { kind: AwsErrorKind::Transport, ..AwsError::internal("connection reset") }).await;
    }

    #[tokio::test]
    async fn deletions_go_before_what_they_refer_to() {
        let memory = Arc::new(Memory::default());
        let dir = tempfile::tempdir().unwrap();
        apply_to(&memory, &network(), dir.path()).await;
        for resource in memory.resources.lock().unwrap().values_mut().filter(|r| r.kind != Kind::Vpc) {
            resource.attributes = json!({ "vpc": "vpc.main" });
        }
        memory.log.lock().unwrap().clear();
        let (outcome, state) = apply_to(&memory, &ResourceGraph::build(Vec::new()).unwrap(), dir.path()).await;
        assert_eq!(outcome.done, 5, "{outcome:?}");
        let vpc_deleted = memory.position("start delete vpc.main");
        for other in ["internet_gateway.main", "security_group.a", "security_group.b", "security_group.c"] {
            assert!(memory.position(&format!("end delete {other}")) < vpc_deleted, "{other} went before the VPC");
        }
        assert!(state.resources.is_empty() && memory.ids().is_empty());
    }
}
