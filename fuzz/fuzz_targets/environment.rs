//! Any bytes as an environment file: problems or an environment, never a panic.
#![no_main]

use kstack_project::diagnostics::Problems;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut problems = Problems::default();
    if let Some(node) = kstack_project::yaml::parse(0, &text, &mut problems) {
        let _ = kstack_project::model::decode::environment("fuzz", None, &node, &mut problems);
    }
});
