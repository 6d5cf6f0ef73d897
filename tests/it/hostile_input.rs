//! Hostile input: the shipped environment, image and role files and a user-data template,
//! mangled at random (proptest, shrinking to a small failing edit), must load to a result or
//! to problems, never panic, and never take long. Inputs that once broke something are kept
//! in `tests/hostile/` and replayed first.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kstack::diagnostics::{Loc, Problems, Sources, Spanned};
use kstack::model::{load_environment, Project};
use kstack_testkit::repo;
use proptest::prelude::*;

const SLOW: Duration = Duration::from_secs(2);

/// One edit: where (a fraction of the text), what (delete, insert, duplicate a line, swap
/// two lines) and the text inserted.
fn edits() -> impl Strategy<Value = Vec<(f64, u8, String)>> {
    proptest::collection::vec((0.0..1.0f64, 0..4u8, "[ -~\n\t:{}\\[\\]&*!|>%@#\"'-]{0,16}"), 1..6)
}

fn mangle(text: &str, edits: &[(f64, u8, String)]) -> String {
    let mut text = text.to_owned();
    for (at, kind, insert) in edits {
        let mut position = (text.len() as f64 * at) as usize;
        while !text.is_char_boundary(position) {
            position -= 1;
        }
        match kind {
            0 => {
                let mut end = (position + insert.len().max(1)).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.replace_range(position..end, "");
            }
            1 => text.insert_str(position, insert),
            2 | 3 => {
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.is_empty() {
                    continue;
                }
                let index = (lines.len() as f64 * at) as usize % lines.len();
                if *kind == 2 {
                    lines.insert(index, lines[index]);
                } else {
                    let other = (index + insert.len()) % lines.len();
                    lines.swap(index, other);
                }
                text = lines.join("\n");
            }
            _ => unreachable!("four kinds of edit"),
        }
    }
    text
}

/// A scratch project with the shipped files, `relative` replaced by `text`.
fn project_with(relative: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["environments", "images"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(repo().join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join(relative), text).unwrap();
    dir
}

/// Loads the `dev` environment (and so its images) of a scratch project, in bounded time.
fn load_dev(dir: &Path) {
    let started = Instant::now();
    let loaded = load_environment(&Project { root: dir.to_owned() }, "dev");
    if let Ok(checked) = &loaded.result {
        let mut problems = Problems::default();
        let _ = kstack::compile::compile(checked, &mut problems);
    }
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
}

fn load_role(text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let role = dir.path().join("docker");
    std::fs::create_dir_all(&role).unwrap();
    for entry in std::fs::read_dir(repo().join("roles/docker")).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            continue;
        }
        std::fs::copy(entry.path(), role.join(entry.file_name())).unwrap();
    }
    std::fs::write(role.join("tasks.yaml"), text).unwrap();
    let mut sources = Sources::default();
    let source = sources.add(Path::new("test"), String::from("docker"));
    let names = [Spanned::new(String::from("docker"), Loc { source, line: 1, column: 1, len: 6 })];
    let started = Instant::now();
    let _ = kstack::roles::load_roles(dir.path(), &names, &mut sources);
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
}

fn render(template: &str) {
    let mut sources = Sources::default();
    let source = sources.add(Path::new("test"), template.to_owned());
    let spanned = Spanned::new(template.to_owned(), Loc { source, line: 1, column: 1, len: template.len() });
    let context = BTreeMap::from([(String::from("env"), minijinja::Value::from("dev"))]);
    let started = Instant::now();
    let _ = kstack::template::Renderer::default().render(&spanned, &context, &mut Problems::default());
    assert!(started.elapsed() < SLOW, "took {:?}", started.elapsed());
}

fn shipped(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mangled_environment_files_load_or_report(edits in edits(), base in any::<bool>()) {
        let relative = if base { "environments/base.yaml" } else { "environments/dev.yaml" };
        let dir = project_with(relative, &mangle(&shipped(relative), &edits));
        load_dev(dir.path());
    }

    #[test]
    fn mangled_image_files_load_or_report(edits in edits()) {
        let dir = project_with("images/node.yaml", &mangle(&shipped("images/node.yaml"), &edits));
        load_dev(dir.path());
    }

    #[test]
    fn mangled_role_tasks_load_or_report(edits in edits()) {
        load_role(&mangle(&shipped("roles/docker/tasks.yaml"), &edits));
    }

    #[test]
    fn mangled_templates_render_or_report(edits in edits()) {
        render(&mangle("#!/bin/sh\n{% for i in range(3) %}echo {{ env }}-{{ i }}{% endfor %}\n{{ env | upper }}\n", &edits));
    }
}

/// Inputs kept because they once misbehaved (or are worst cases by construction).
#[test]
fn the_kept_hostile_inputs_load_or_report_quickly() {
    for entry in std::fs::read_dir(repo().join("tests/hostile")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match name.split('.').next().unwrap_or_default() {
            "template" => render(&text),
            "role" => load_role(&text),
            "environment" => load_dev(project_with("environments/dev.yaml", &text).path()),
            other => panic!("{name}: unknown kind {other}"),
        }
    }
}
