//! Any bytes as a role's tasks.yaml: problems or a role, never a panic.
#![no_main]

use std::path::Path;

use kstack_project::diagnostics::{Loc, Sources, Spanned};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let role = dir.path().join("fuzz");
    std::fs::create_dir_all(&role).unwrap();
    std::fs::write(role.join("tasks.yaml"), data).unwrap();
    let mut sources = Sources::default();
    let source = sources.add(Path::new("fuzz"), String::from("fuzz"));
    let names = [Spanned::new(String::from("fuzz"), Loc { source, line: 1, column: 1, len: 4 })];
    let _ = kstack_project::roles::load_roles(dir.path(), &names, &mut sources);
});
