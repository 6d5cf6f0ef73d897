//! Reboot windows: a schedule of daily reboot minutes for a fleet's nodes ([`schedule`]),
//! and the figures that compare it with random choice ([`stats`]).

pub mod node_config;
pub mod running;
pub mod schedule;
pub mod stats;

pub use schedule::{assign, violations, Fleet, Member, ScheduleError};
