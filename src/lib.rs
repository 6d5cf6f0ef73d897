//! kstack: Kubernetes node fleets on AWS from one declarative model.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod apply;
pub mod aws;
pub mod bake;
pub mod cli;
pub mod compile;
pub mod diagnostics;
pub mod graph;
pub mod model;
pub mod plan;
pub mod resource;
pub mod reboots;
pub mod roll;
pub mod roles;
pub mod ssh;
pub mod state;
pub mod template;
pub mod yaml;
