//! A roll's progress, kept in the environment's state file and written before every change
//! it makes, so a roll that failed or was killed can be resumed (`--resume`) or undone
//! (`--abort`) from what AWS shows plus what was recorded here.

use super::RollError;
use crate::model::PolicyOverrides;
use crate::state::{now_rfc3339, BatchRecord, GroupRecord, RollRecord, StateStore};

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
        let state = store.load().map_err(RollError::Journal)?;
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
        let mut state = self.store.load().map_err(RollError::Journal)?;
        state.roll = record;
        self.store.save(&mut state).map_err(RollError::Journal)
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

/// An environment whose last roll did not finish: an apply is refused, and a plan warns, until
/// the roll is resumed or aborted (an apply would reset the size of a group a batch surged).
pub struct Unfinished<'a> {
    pub environment: &'a str,
    pub record: &'a RollRecord,
}

impl std::fmt::Display for Unfinished<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Unfinished { environment, record } = self;
        write!(f, "a roll of `{environment}` started {} by `{}` did not finish; ", record.started, record.command)?;
        match &record.stopped {
            Some(reason) => write!(f, "it stopped: {reason}"),
            None => f.write_str("it was interrupted"),
        }
    }
}

impl crate::hint::Hint for Unfinished<'_> {
    fn hint(&self) -> Option<String> {
        let env = self.environment;
        Some(format!("run `kstack roll {env} --resume` to continue it, or `kstack roll {env} --abort` to restore the group's size and forget it"))
    }
}
