//! A roll's progress, kept in the environment's state file and written before every change
//! it makes, so a roll that failed or was killed can be resumed (`--resume`) or undone
//! (`--abort`) from what AWS shows plus what was recorded here.

use serde::{Deserialize, Serialize};

use super::RollError;
use crate::model::PolicyOverrides;
use crate::state::{now_rfc3339, StateStore};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollRecord {
    pub started: String,
    pub command: String,
    /// The node groups the roll covers, in the order it takes them.
    pub groups: Vec<String>,
    /// Settings given on the command line, which a resumed roll keeps.
    #[serde(default)]
    pub overrides: PolicyOverrides,
    pub timeout_seconds: u64,
    /// Why the roll last stopped, when it failed rather than being killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The group being rolled, once kstack has touched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRecord>,
}

/// What a group looked like before the roll touched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: String,
    pub auto_scaling_group: String,
    pub desired: i32,
    pub max: i32,
    /// Processes the group had suspended already, which the roll leaves suspended.
    pub already_suspended: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRecord>,
}

/// One batch, recorded before its first change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub number: usize,
    /// Outdated instances that go once their replacements (surged above the size) serve.
    pub surged: Vec<String>,
    /// Outdated instances terminated first, which the group replaces itself.
    pub replaced: Vec<String>,
    /// The group's instances before the batch: anything else is one of its new instances.
    pub known: Vec<String>,
    /// The group's desired size when the batch began, which its surge goes on top of: a
    /// change someone else makes to the size (an autoscaler) is kept, only the surge undone.
    /// Absent in journals of older versions, whose batches went on the roll's recorded size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<i32>,
}

/// The record and the store it is written to.
pub struct Journal {
    store: StateStore,
    pub record: RollRecord,
    /// Whether the record is in the state file, so finishing has something to remove.
    written: bool,
}

impl Journal {
    pub fn new(store: StateStore, command: &str, groups: Vec<String>, overrides: PolicyOverrides, timeout_seconds: u64) -> Journal {
        let record =
            RollRecord { started: now_rfc3339(), command: command.to_owned(), groups, overrides, timeout_seconds, stopped: None, group: None };
        Journal { store, record, written: false }
    }

    /// The unfinished roll of the store's environment, if there is one.
    pub fn open(store: StateStore) -> Result<Option<Journal>, RollError> {
        let state = store.load().map_err(|e| RollError::Failed(e.to_string()))?;
        Ok(state.roll.map(|record| Journal { store, record, written: true }))
    }

    /// Changes the record and writes it before anything else happens.
    pub fn update(&mut self, change: impl FnOnce(&mut RollRecord)) -> Result<(), RollError> {
        change(&mut self.record);
        self.written = true;
        self.write(Some(self.record.clone()))
    }

    /// The roll is over: nothing is left to resume.
    pub fn finish(&mut self) -> Result<(), RollError> {
        if !self.written {
            return Ok(());
        }
        self.written = false;
        self.write(None)
    }

    fn write(&self, record: Option<RollRecord>) -> Result<(), RollError> {
        let error = |e: crate::state::StateError| RollError::Failed(format!("cannot record the roll's progress: {e}"));
        let mut state = self.store.load().map_err(error)?;
        state.roll = record;
        self.store.save(&mut state).map_err(error)
    }

    pub fn group(&self) -> Option<&GroupRecord> {
        self.record.group.as_ref()
    }

    pub fn batch(&self) -> Option<&BatchRecord> {
        self.group().and_then(|g| g.batch.as_ref())
    }

    pub fn set_batch(&mut self, batch: Option<BatchRecord>) -> Result<(), RollError> {
        self.update(|r| {
            if let Some(group) = &mut r.group {
                group.batch = batch;
            }
        })
    }
}
