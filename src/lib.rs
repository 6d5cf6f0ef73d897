//! kstack: Kubernetes node fleets on AWS from one declarative model.
//!
//! See ARCHITECTURE.md for how the modules fit together.

// What nothing outside a module needs stays `pub(crate)`, so the public surface is what tests,
// benches and tools use.
#![warn(unreachable_pub)]

pub mod apply;
pub mod aws;
pub mod bake;
pub mod compile;
pub mod events;
pub mod graph;
pub mod hint;
pub mod identity;
pub mod import;
pub mod naming;
pub mod node_keys;
pub mod ops;
pub mod outputs;
pub mod plan;
pub mod reboots;
pub mod redact;
pub mod resource;
pub mod roles;
pub mod roll;
pub mod ssh;
pub mod state;
pub mod stop;
pub mod user_data;
pub mod variables;

pub use kstack_project::{diagnostics, model, template, yaml};
