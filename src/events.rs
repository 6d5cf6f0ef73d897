//! What long work reports while it runs (apply and destroy, a roll, a bake, roles on hosts):
//! one typed stream through one interface, [`Watch`], which the command line renders live on
//! a terminal, as plain lines in a log, or as JSON lines for a machine following the run.
//! Knows nothing of how it is shown.

use serde::Serialize;

use crate::apply::ApplyEvent;
use crate::roles::RunEvent;
use crate::roll::RollEvent;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "work", content = "event", rename_all = "snake_case")]
pub enum Event {
    /// A resource's change in an apply or a destroy.
    Apply(ApplyEvent),
    /// A roll's batch, wait or step.
    Roll(RollEvent),
    /// A bake's step, as its line of text.
    Bake(String),
    /// A task's report on a host, or a host out of reach.
    Roles(RunEvent),
}

/// Where long work sends its events.
pub trait Watch: Send + Sync {
    fn event(&self, event: Event);
}

/// An error in an event: its message, as a person reads it.
pub(crate) fn as_text<S: serde::Serializer>(value: &impl std::fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// A duration in an event: seconds, to the millisecond.
pub(crate) fn as_seconds<S: serde::Serializer>(value: &std::time::Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((value.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Nobody watching: work whose progress is not shown.
pub struct Unwatched;

impl Watch for Unwatched {
    fn event(&self, _: Event) {}
}
