//! Any bytes as a user-data template: problems or text, never a panic or a hang.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use kstack_project::diagnostics::{Loc, Problems, Sources, Spanned};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let mut sources = Sources::default();
    let source = sources.add(Path::new("fuzz"), text.clone());
    let template = Spanned::new(text.clone(), Loc { source, line: 1, column: 1, len: text.len() });
    let context = BTreeMap::from([(String::from("env"), minijinja::Value::from("fuzz"))]);
    let _ = kstack_project::template::Renderer::default().render(&template, &context, &mut Problems::default());
});
