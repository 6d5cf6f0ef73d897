//! Rolling an environment: its groups in `roll_order`, each onto its current launch settings
//! (`roll::roll_group`), under one journal in state that a stopped roll resumes from.

use std::time::Duration;

use super::reboots::{fold_in_new_nodes, NewNodes};
use super::{Notice, OpsError};
use crate::aws::Cloud;
use crate::events::Watch;
use crate::model::{Environment, PolicyOverrides};
use crate::resource::{Address, Kind};
use crate::roll::{batches, group_state, roll_group, Journal, RollError, RollGroup, Unfinished};
use crate::state::{State, StateStore};
use crate::stop::{Reason, Stop};

/// What a roll of an environment reports as it goes, besides notices: each group's events,
/// and its end.
pub trait RollWatch: Watch {
    /// A group's roll ended: `replaced` of its instances were, or it stopped (`None`).
    fn group_ended(&self, group: &str, replaced: Option<usize>);
    /// The roll ended with every group on its current settings, `replaced` instances replaced.
    fn roll_ended(&self, replaced: usize);
}

/// How long a batch waits for new instances to be in service, or old ones to leave, unless
/// told otherwise.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 900;

/// A roll to start, or the unfinished one to resume.
pub struct RollRequest<'a> {
    /// Folding the nodes the roll brings into the reboot schedule.
    pub new_nodes: NewNodes<'a>,
    /// Only these node groups; every group when empty.
    pub groups: &'a [String],
    pub resume: bool,
    pub overrides: PolicyOverrides,
    pub timeout_seconds: u64,
    /// The command line, which the journal records.
    pub command: &'a str,
}

impl<'a> RollRequest<'a> {
    /// Every group, each with its own roll policy: what `apply --roll` runs.
    pub fn everything(command: &'a str, new_nodes: NewNodes<'a>) -> RollRequest<'a> {
        RollRequest {
            groups: &[],
            resume: false,
            overrides: PolicyOverrides::default(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            command,
            new_nodes,
        }
    }
}

/// A batch of a roll: the outdated instances surged for, and those taken out first.
pub type Batch = (Vec<String>, Vec<String>);

/// One group as a dry run sees it: its outdated instances, and the batches (surged for, taken
/// out first) a roll would replace them in, or why it cannot roll.
pub struct DryRunGroup {
    pub group: String,
    pub outdated: usize,
    pub total: usize,
    pub batches: Result<Vec<Batch>, String>,
}

/// An environment opened for a roll: its state, AWS, and its unfinished roll if any.
pub struct EnvironmentRoll<'a> {
    environment: &'a Environment,
    store: StateStore,
    state: State,
    pub cloud: Cloud,
    unfinished: Option<Journal>,
}

impl<'a> EnvironmentRoll<'a> {
    pub async fn open(environment: &'a Environment, store: StateStore) -> Result<EnvironmentRoll<'a>, OpsError> {
        let state = store.load()?;
        let (cloud, _) = super::account::connect(&environment.aws, &environment.region.value, state.owner(), state.account.as_deref()).await?;
        let unfinished = Journal::open(store.clone())?;
        Ok(EnvironmentRoll { environment, store, state, cloud, unfinished })
    }

    /// The roll a run stopped, if one did.
    pub fn unfinished(&self) -> Option<Unfinished<'_>> {
        self.unfinished.as_ref().map(|journal| Unfinished { environment: &self.environment.name, record: &journal.record })
    }

    /// The auto scaling group state recorded for a node group: it carries the environment's
    /// identity (or predates identities), so it cannot be derived from the model alone.
    fn aws_name(&self, group: &str) -> Result<String, OpsError> {
        let env = &self.environment.name;
        match self.state.resources.get(&Address::new(Kind::AutoScalingGroup, group)) {
            Some(recorded) => Ok(recorded.id.clone()),
            None => Err(OpsError::failed(
                format!("node group `{group}` of `{env}` has no auto scaling group in state"),
                format!("apply the environment first with `kstack apply {env}`"),
            )),
        }
    }

    /// The groups `groups` names (all when empty), in roll order.
    fn sequence<'g>(&self, groups: &'g [String]) -> impl Iterator<Item = &'a crate::model::NodeGroup> + 'g
    where
        'a: 'g,
    {
        self.environment.roll_sequence().into_iter().filter(move |g| groups.is_empty() || groups.contains(&g.name.value))
    }

    /// Per group: the outdated instances, and the batches a roll would take them in.
    pub async fn dry_run(&self, groups: &[String], overrides: PolicyOverrides) -> Result<Vec<DryRunGroup>, OpsError> {
        let mut planned = Vec::new();
        for group in self.sequence(groups) {
            let state = group_state(&self.cloud, &self.aws_name(&group.name.value)?).await?;
            let size = overrides.over(group.roll).batch(state.group.desired_capacity().unwrap_or(0).max(0) as u32);
            planned.push(DryRunGroup {
                group: group.name.value.clone(),
                outdated: state.outdated.len(),
                total: state.outdated.len() + state.current.len(),
                batches: size.map(|size| batches(&state.outdated, size)).map_err(|why| why.to_string()),
            });
        }
        Ok(planned)
    }

    /// Rolls, or resumes the unfinished roll, then folds the nodes it brought into the reboot
    /// schedule; how many instances were replaced.
    pub async fn run(mut self, request: &RollRequest<'_>, stop: &Stop, watch: &dyn RollWatch, notice: &dyn Notice) -> Result<usize, OpsError> {
        let env = &self.environment.name;
        let mut journal = match (self.unfinished.take(), request.resume) {
            (Some(journal), true) => journal,
            (Some(journal), false) => {
                let unfinished = Unfinished { environment: env, record: &journal.record };
                return Err(OpsError::Failed { message: unfinished.to_string(), hint: crate::hint::Hint::hint(&unfinished) });
            }
            (None, true) => {
                return Err(OpsError::failed(format!("`{env}` has no unfinished roll"), format!("start one with `kstack roll {env}`")));
            }
            (None, false) => {
                let groups = self.sequence(request.groups).map(|g| g.name.value.clone()).collect();
                Journal::new(self.store.clone(), request.command, groups, request.overrides, request.timeout_seconds)
            }
        };
        if request.resume {
            notice.note(&format!("resuming the roll started {} by `{}`", journal.record.started, journal.record.command));
        }
        let record = journal.record.clone();
        let mut replaced = 0;
        for name in &record.groups {
            let Some(group) = self.environment.node_groups.iter().find(|g| &g.name.value == name) else { continue };
            let aws_name = self.aws_name(name)?;
            let roll = RollGroup {
                environment: env,
                group: name,
                aws_name: &aws_name,
                policy: record.overrides.over(group.roll),
                timeout: Duration::from_secs(record.timeout_seconds),
                hooks: &self.environment.roll_hooks,
                progress: watch,
                stop,
            };
            match roll_group(&self.cloud, &roll, &mut journal).await {
                Ok(rolled) => {
                    replaced += rolled;
                    watch.group_ended(name, Some(rolled));
                }
                Err(error) => {
                    watch.group_ended(name, None);
                    return Err(self.stopped(&mut journal, name, &aws_name, error, stop));
                }
            }
        }
        journal.finish()?;
        watch.roll_ended(replaced);
        if replaced > 0 {
            fold_in_new_nodes(&self.cloud, self.environment, &request.new_nodes, notice).await;
        }
        Ok(replaced)
    }

    /// The roll of `name` failed or was stopped: recorded in the journal, and said with what
    /// to do next.
    fn stopped(&self, journal: &mut Journal, name: &str, aws_name: &str, error: RollError, stop: &Stop) -> OpsError {
        let env = &self.environment.name;
        // The stop reason is worth keeping, but the roll failing is the news.
        let _ = journal.update(|r| r.stopped = Some(format!("{name}: {error}")));
        let message = format!("roll of `{name}` in {} stopped: {error}", self.cloud.region);
        let next = if journal.batch().is_some() {
            format!(
                "the batch in flight is recorded and {aws_name}'s processes stay suspended: `kstack roll {env} --resume` continues it, or `--abort`"
            )
        } else {
            format!("{aws_name} is back at its size: `kstack roll {env} --resume` continues, or `--abort` forgets the roll")
        };
        // Ctrl-C in a terminal also reaches the hooks' processes, which then fail: the roll
        // was stopped all the same.
        let stopped = match error {
            RollError::Stopped(reason) => Some(reason),
            _ => stop.reason(),
        };
        match stopped {
            Some(reason) => {
                let hint = match reason {
                    Reason::LockLost(_) => format!("another run may be working on `{env}` now: let it finish; {next}"),
                    Reason::Signal(_) => format!("the lock is released; {next}"),
                };
                OpsError::Stopped { reason, message, hint: Some(hint) }
            }
            None => OpsError::failed(message, format!("fix the cause; {next}")),
        }
    }
}
