//! What a kstack project's files say: environments and images (`model`), node roles
//! (`roles`), the templates in both, and the diagnostics every problem is reported with.
//!
//! Parsing and checking only, no AWS or SSH: the `kstack` crate acts on what this one reads,
//! and the fuzz targets build against this crate alone.

pub mod diagnostics;
pub mod model;
pub mod paths;
pub mod roles;
pub mod template;
pub mod yaml;
