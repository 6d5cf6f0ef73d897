//! A plan saved by `kstack plan --out FILE` for `kstack apply FILE` to carry out later: what it
//! pins (the model it was made from and what AWS held) and whether it still holds.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Plan;

/// The file format's version, written as `kstack_plan`.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub kstack_plan: u32,
    pub environment: String,
    /// The environment argument the plan was made with, to load the same model again.
    pub source: String,
    /// The model's digest before group sizes were settled against AWS (an autoscaler's size is
    /// part of what AWS holds, pinned by `actual_digest`).
    pub desired_digest: String,
    /// The digest of what refresh observed.
    pub actual_digest: String,
    pub plan: Plan,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("{path} is not a kstack plan: {error}")]
    NotAPlan { path: String, error: String },
    #[error("{path} is a plan of format {found}; this kstack reads format {FORMAT}")]
    OtherFormat { path: String, found: u32 },
}

impl crate::hint::Hint for SavedPlanError {
    fn hint(&self) -> Option<String> {
        Some(String::from(match self {
            SavedPlanError::NotAPlan { .. } => "make one with `kstack plan <env> --out FILE`",
            SavedPlanError::OtherFormat { .. } => "plan again with this kstack: `kstack plan <env> --out FILE`",
        }))
    }
}

/// What changed since a saved plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    Model,
    Aws,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stale::Model => "the environment's model (or the images it uses) changed",
            Stale::Aws => "resources in AWS changed",
        })
    }
}

impl SavedPlan {
    pub fn new(environment: &str, source: &str, desired_digest: String, actual_digest: String, plan: Plan) -> SavedPlan {
        SavedPlan { kstack_plan: FORMAT, environment: environment.to_owned(), source: source.to_owned(), desired_digest, actual_digest, plan }
    }

    /// The plan saved at `path`; `None` when the file is no JSON (or unreadable), so that
    /// `path` names an environment instead.
    pub fn read(path: &Path) -> Option<Result<SavedPlan, SavedPlanError>> {
        let text = std::fs::read_to_string(path).ok()?;
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let shown = path.display().to_string();
        let saved =
            serde_json::from_str::<SavedPlan>(&text).map_err(|error| SavedPlanError::NotAPlan { path: shown.clone(), error: error.to_string() });
        Some(saved.and_then(|saved| match saved.kstack_plan {
            FORMAT => Ok(saved),
            found => Err(SavedPlanError::OtherFormat { path: shown, found }),
        }))
    }

    /// What changed since the plan was made, judged by the digests of the model and of what
    /// AWS holds now.
    pub fn stale(&self, desired_digest: &str, actual_digest: &str) -> Option<Stale> {
        if self.desired_digest != desired_digest {
            Some(Stale::Model)
        } else if self.actual_digest != actual_digest {
            Some(Stale::Aws)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved() -> SavedPlan {
        let plan = Plan {
            environment: String::from("dev"),
            actions: Vec::new(),
            summary: super::super::Summary::default(),
            takes_over: Vec::new(),
            left_alone: Vec::new(),
            capacity: Vec::new(),
            scope: super::super::Scope::default(),
        };
        SavedPlan::new("dev", "dev", String::from("model"), String::from("aws"), plan)
    }

    #[test]
    fn a_saved_plan_reads_back_and_is_stale_when_the_model_or_aws_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.plan.json");
        std::fs::write(&path, serde_json::to_string(&saved()).unwrap()).unwrap();
        let read = SavedPlan::read(&path).unwrap().unwrap();
        assert_eq!(read.stale("model", "aws"), None);
        assert_eq!(read.stale("model 2", "aws"), Some(Stale::Model));
        assert_eq!(read.stale("model", "aws 2"), Some(Stale::Aws));

        std::fs::write(&path, "# an environment file\nname: dev\n").unwrap();
        assert!(SavedPlan::read(&path).is_none(), "not JSON: an environment, not a plan");
        std::fs::write(&path, "{\"kstack_plan\": 1}").unwrap();
        assert!(matches!(SavedPlan::read(&path), Some(Err(SavedPlanError::NotAPlan { .. }))));
        std::fs::write(&path, serde_json::to_string(&SavedPlan { kstack_plan: 2, ..saved() }).unwrap()).unwrap();
        let error = SavedPlan::read(&path).unwrap().unwrap_err();
        assert!(error.to_string().ends_with("is a plan of format 2; this kstack reads format 1"), "{error}");
    }
}
