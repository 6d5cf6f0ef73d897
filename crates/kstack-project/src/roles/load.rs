//! Reads roles from `roles/<name>/`: `tasks.yaml` (`depends` and `tasks`), `handlers.yaml`
//! (handler name → task), `defaults.yaml` (variables), `checks.yaml` (check name → check),
//! `templates/` and `files/`. Every problem is reported with its location, all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use marked_yaml::Node;

use super::checks::{self, Check};
use super::modules::{Module, NAMES};
use crate::diagnostics::{did_you_mean, display_path, expected_one_of, Loc, Problems, Sources, Spanned};
use crate::paths;
use crate::yaml::{self, MapReader};

#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    /// The module's name, e.g. `file`.
    pub module: String,
    /// Its arguments as written; strings are templates, rendered per host.
    pub args: serde_json::Value,
    /// Content read from the role's `files/`, used as is (never rendered).
    pub raw_content: Option<String>,
    pub notify: Vec<String>,
    /// A minijinja expression; the task is skipped when it is false, e.g.
    /// `not facts.container`.
    pub when: Option<String>,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub dir: PathBuf,
    pub depends: Vec<String>,
    pub tasks: Vec<Task>,
    /// In file order; notified handlers run in this order once the role's tasks are done.
    pub handlers: Vec<Task>,
    pub defaults: serde_json::Map<String, serde_json::Value>,
    pub checks: Vec<Check>,
}

/// Loads `names` and the roles they depend on, dependencies first, each once.
pub fn load_roles(roles_dir: &Path, names: &[Spanned<String>], sources: &mut Sources) -> Result<Vec<Role>, Problems> {
    let mut problems = Problems::default();
    let mut loaded: Vec<Role> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    for name in names {
        visit(roles_dir, name, sources, &mut loaded, &mut visiting, &mut problems);
    }
    if problems.is_empty() {
        Ok(loaded)
    } else {
        Err(problems)
    }
}

fn visit(
    roles_dir: &Path,
    name: &Spanned<String>,
    sources: &mut Sources,
    loaded: &mut Vec<Role>,
    visiting: &mut Vec<String>,
    problems: &mut Problems,
) {
    if loaded.iter().any(|r| r.name == name.value) {
        return;
    }
    if visiting.contains(&name.value) {
        let chain = visiting.iter().chain(std::iter::once(&name.value)).cloned().collect::<Vec<_>>().join(" -> ");
        problems
            .error(name.loc, format!("roles depend on each other in a cycle: {chain}"))
            .hint("a role may depend on roles that do not depend on it");
        return;
    }
    if !paths::check_name(&name.value, Some(name.loc), "role", "roles are directories under roles/", problems) {
        return;
    }
    let dir = roles_dir.join(&name.value);
    // roles/ itself may be a link too: what is read stays inside the project either way.
    let project_root = roles_dir.parent().unwrap_or(roles_dir);
    if !paths::check_inside(project_root, &dir, "the project", Some(name.loc), problems)
        || !paths::check_inside(roles_dir, &dir, "the project's roles/ directory", Some(name.loc), problems)
    {
        return;
    }
    if !dir.join("tasks.yaml").is_file() {
        let known = super::list_roles(roles_dir);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        problems
            .error(name.loc, format!("role `{}` does not exist: there is no {}", name.value, display_path(&dir.join("tasks.yaml"))))
            .label("unknown role")
            .hint(expected_one_of(&name.value, &known));
        return;
    }
    visiting.push(name.value.clone());
    let Some(role) = read_role(name, &dir, sources, problems) else {
        visiting.pop();
        return;
    };
    for dependency in &role.1 {
        visit(roles_dir, dependency, sources, loaded, visiting, problems);
    }
    visiting.pop();
    loaded.push(role.0);
}

/// One of the role's YAML files (`tasks.yaml`, ...), if it exists and stays inside the role;
/// `name` is where the role was named, for a symlink leading out.
fn read_file(dir: &Path, file: &str, name: &Spanned<String>, sources: &mut Sources, problems: &mut Problems) -> Option<Node> {
    let path = dir.join(file);
    if !paths::check_inside(dir, &path, "the role", Some(name.loc), problems) {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let id = sources.add(&path, text.clone());
    yaml::parse(id, &text, problems)
}

/// The role, and its dependencies with their locations.
fn read_role(name: &Spanned<String>, dir: &Path, sources: &mut Sources, problems: &mut Problems) -> Option<(Role, Vec<Spanned<String>>)> {
    let root = read_file(dir, "tasks.yaml", name, sources, problems)?;
    let mut map = MapReader::new(&root, "tasks file", problems)?;
    let depends = map.get("depends").and_then(|n| yaml::string_list(n, problems)).unwrap_or_default();
    let tasks =
        map.required("tasks", problems).and_then(|n| yaml::list(n, problems, |node, problems| task(node, None, dir, problems))).unwrap_or_default();
    map.finish(problems);
    let handlers = match read_file(dir, "handlers.yaml", name, sources, problems) {
        Some(node) => yaml::named(&node, "handler", problems, |key, body, problems| task(body, Some(key), dir, problems)),
        None => Vec::new(),
    };
    let defaults = match read_file(dir, "defaults.yaml", name, sources, problems) {
        Some(node) => yaml::to_json(&node).as_object().cloned().unwrap_or_default(),
        None => serde_json::Map::new(),
    };
    let checks = match read_file(dir, "checks.yaml", name, sources, problems) {
        Some(node) => checks::read(&node, problems),
        None => Vec::new(),
    };
    for task in &tasks {
        for handler in &task.notify {
            if !handlers.iter().any(|h: &Task| &h.name == handler) {
                let names: Vec<&str> = handlers.iter().map(|h| h.name.as_str()).collect();
                problems
                    .error(task.loc, format!("task `{}` notifies `{handler}`, which is not a handler of role `{}`", task.name, name.value))
                    .hint(expected_one_of(handler, &names));
            }
        }
    }
    let role = Role {
        name: name.value.clone(),
        dir: dir.to_owned(),
        depends: depends.iter().map(|d| d.value.clone()).collect(),
        tasks,
        handlers,
        defaults,
        checks,
    };
    Some((role, depends))
}

/// One task: `name`, `notify` and exactly one module key.
fn task(node: &Node, handler_name: Option<Spanned<String>>, dir: &Path, problems: &mut Problems) -> Option<Task> {
    let Node::Mapping(map) = node else {
        problems.error(yaml::loc(node), "a task must be a mapping with `name` and one module, e.g. `file: {...}`");
        return None;
    };
    let settings = settings(map, handler_name.map(|n| n.value), problems);
    let loc = yaml::loc(node);
    let Some((module, args_node, module_loc)) = settings.module else {
        problems.error(loc, "this task names no module").hint(format!("add one of: {}", NAMES.join(", ")));
        return None;
    };
    let Some(name) = settings.name else {
        problems.error(loc, "this task has no `name`").hint("add `name: <what it does>`, shown in every run");
        return None;
    };
    let (args, raw_content) = arguments(&module, args_node, dir, problems)?;
    check_arguments(&module, &args, raw_content.as_deref(), module_loc, problems)?;
    Some(Task { name, module, args, raw_content, notify: settings.notify, when: settings.when, loc })
}

/// What a task's keys say: its name, handlers, condition, and its one module.
struct Settings<'a> {
    name: Option<String>,
    notify: Vec<String>,
    when: Option<String>,
    module: Option<(String, &'a Node, Loc)>,
}

fn settings<'a>(map: &'a marked_yaml::types::MarkedMappingNode, name: Option<String>, problems: &mut Problems) -> Settings<'a> {
    let mut settings = Settings { name, notify: Vec::new(), when: None, module: None };
    for (key, value) in map.iter() {
        match key.as_str() {
            "name" if settings.name.is_none() => settings.name = yaml::string(value, problems).map(|s| s.value),
            "notify" => {
                settings.notify = match value {
                    Node::Scalar(_) => yaml::string(value, problems).map(|s| vec![s.value]).unwrap_or_default(),
                    _ => yaml::string_list(value, problems).unwrap_or_default().into_iter().map(|s| s.value).collect(),
                }
            }
            "when" => {
                settings.when =
                    yaml::string(value, problems).and_then(|expression| crate::template::condition(expression, "not facts.container", problems));
            }
            other if NAMES.contains(&other) => {
                if let Some((first, _, _)) = &settings.module {
                    problems
                        .error(yaml::scalar_loc(key), format!("a task has one module; this one has `{first}` and `{other}`"))
                        .hint("split it into two tasks");
                } else {
                    settings.module = Some((other.to_owned(), value, yaml::scalar_loc(key)));
                }
            }
            other => {
                let hint = match did_you_mean(other, NAMES.iter().copied().chain(["name", "notify", "when"])) {
                    Some(close) => format!("did you mean `{close}`?"),
                    None => format!("modules: {}", NAMES.join(", ")),
                };
                problems.error(yaml::scalar_loc(key), format!("unknown module or setting `{other}` in task")).label("unknown").hint(hint);
            }
        }
    }
    settings
}

/// A module's arguments with the role files they name read in: `src` (a template's or unit's
/// text, or a copied file's raw content) and `key_src`.
fn arguments(module: &str, args_node: &Node, dir: &Path, problems: &mut Problems) -> Option<(serde_json::Value, Option<String>)> {
    let mut args = yaml::to_json(args_node);
    let mut raw_content = None;
    // `src` names a file of the role for these; for `file` it is a link's target.
    if matches!(module, "copy" | "template" | "systemd_unit" | "service") {
        let folder = if module == "copy" { "files" } else { "templates" };
        if let Some(text) = role_file(args_node, "src", dir, folder, problems).ok()? {
            if module == "copy" {
                raw_content = Some(text);
            } else {
                args["content"] = serde_json::Value::String(text);
            }
            args.as_object_mut().map(|m| m.remove("src"));
        }
    }
    if let Some(key) = role_file(args_node, "key_src", dir, "files", problems).ok()? {
        args["key"] = serde_json::Value::String(key);
        args.as_object_mut().map(|m| m.remove("key_src"));
    }
    Some((args, raw_content))
}

/// Checks the arguments against the module's type now, before any host is touched; they are
/// checked again after templating.
fn check_arguments(module: &str, args: &serde_json::Value, raw_content: Option<&str>, loc: Loc, problems: &mut Problems) -> Option<()> {
    let mut checked = args.clone();
    if let (Some(content), Some(map)) = (raw_content, checked.as_object_mut()) {
        map.insert("content".into(), serde_json::Value::String(content.to_owned()));
    }
    let typed = serde_json::Value::Object(serde_json::Map::from_iter([(module.to_owned(), checked)]));
    match serde_json::from_value::<Module>(typed) {
        Ok(_) => Some(()),
        Err(error) => {
            problems.error(loc, format!("invalid `{module}` arguments: {error}")).hint("see the module reference in the README");
            None
        }
    }
}

/// The text of the file that `key` (`src`, `key_src`) names in the role's `folder`, read
/// only when it stays inside the role; `Ok(None)` when the task has no such key.
fn role_file(args: &Node, key: &'static str, dir: &Path, folder: &str, problems: &mut Problems) -> Result<Option<String>, ()> {
    let Some(written) =
        args.as_mapping().and_then(|m| m.get_node(key)).filter(|n| matches!(n, Node::Scalar(_))).and_then(|n| yaml::string(n, problems))
    else {
        return Ok(None);
    };
    let hint = format!("name a file in the role's {folder}/ directory by its path there, e.g. `{key}: app.conf`");
    let reference = paths::Reference { key, path: &written, base: &dir.join(folder), root: dir, scope: "the role", hint: &hint };
    let path = reference.resolve(problems).ok_or(())?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(_) => {
            problems
                .error(written.loc, format!("`{key}: {}` names {}, which does not exist", written.value, display_path(&path)))
                .hint(format!("put the file in the role's {folder}/ directory"));
            Err(())
        }
    }
}

pub type Variables = BTreeMap<String, serde_json::Value>;
