//! Node roles as written in `roles/<name>/`: tasks, handlers, defaults, checks, templates and
//! files, loaded and checked before any host is touched.

pub mod checks;
mod load;
pub mod modules;

use std::path::Path;

pub use load::{load_roles, Role, Task, Variables};

/// The names of the roles in `roles_dir`, sorted.
pub fn list_roles(roles_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(roles_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("tasks.yaml").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}
