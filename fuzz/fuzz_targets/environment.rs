//! Any bytes as an environment file: problems or an environment, never a panic.
#![no_main]

use kstack::diagnostics::Problems;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut problems = Problems::default();
    if let Some(node) = kstack::yaml::parse(0, &text, &mut problems) {
        let _ = kstack::model::decode::environment("fuzz", &node, &mut problems);
    }
});
