//! What the state file records of an unfinished roll: the data only. `roll::Journal` writes
//! it before every change a roll makes; `state` keeps it without knowing what a roll does.

use serde::{Deserialize, Serialize};

use crate::model::PolicyOverrides;

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
