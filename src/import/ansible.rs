//! Converting an Ansible role (`tasks/main.yml`, `handlers/main.yml`, `defaults/main.yml`,
//! `vars/main.yml`, `meta/main.yml`, `templates/`, `files/`) into a kstack role: each task's
//! module mapped to kstack's, `when`, `notify` and `become` carried over, loops over lists the
//! role defines unrolled, a unit file written by a template and then started folded into one
//! `systemd_unit`, and Ansible's Jinja rewritten where minijinja differs (facts, filters). A
//! task that cannot be converted stays in the role as a comment, listed with its file and
//! line. Pure: reads the Ansible role's files and returns the kstack role's text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::yaml;

/// A kstack role made from an Ansible role.
#[derive(Debug, Default)]
pub struct Converted {
    pub depends: Vec<String>,
    /// `tasks.yaml`, `handlers.yaml` and `defaults.yaml` as written.
    pub tasks: String,
    pub handlers: String,
    pub defaults: String,
    /// Templates (rewritten) and files (as they are), by their path under the role.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    pub converted: usize,
    /// Tasks left as comments, and template constructs minijinja lacks.
    pub left: Vec<Left>,
    /// What was rewritten, for the person to review: `state: latest` as `present`, ...
    pub notes: Vec<String>,
}

/// Something the converter could not carry over, where it is in the Ansible role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Left {
    pub file: PathBuf,
    pub line: usize,
    pub what: String,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path} is not an Ansible role: it has no tasks/main.yml")]
    NotARole { path: String },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
}

impl crate::hint::Hint for ConvertError {
    fn hint(&self) -> Option<String> {
        Some(String::from(match self {
            ConvertError::NotARole { .. } => "name the role's directory, the one holding tasks/, handlers/, templates/ ...",
            ConvertError::Read { .. } | ConvertError::Yaml { .. } => "fix the file, or convert the role without it",
        }))
    }
}

/// A converted task: the kstack task's fields, in the order they are written.
struct Out {
    name: String,
    module: &'static str,
    args: Map<String, Value>,
    when: Option<String>,
    notify: Vec<String>,
}

/// A play of a playbook: the machines it is for, the roles they get and the variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Play {
    pub hosts: String,
    pub roles: Vec<String>,
    pub vars: Map<String, Value>,
    /// What of the play is not a role or a variable (its own tasks, handlers, `vars_files`):
    /// listed, for the person to move into a role.
    pub left: Vec<String>,
}

/// The plays of the playbook at `path`.
pub fn plays(path: &Path) -> Result<Vec<Play>, ConvertError> {
    let (dir, file) = (path.parent().unwrap_or(Path::new(".")), path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
    let Some(node) = read(dir, &file)? else { return Ok(Vec::new()) };
    let mut plays = Vec::new();
    for play in list(&node) {
        let json = yaml::to_json(play);
        let hosts = match json.get("hosts") {
            Some(Value::Array(all)) => all.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
            Some(other) => other.as_str().unwrap_or_default().to_owned(),
            None => String::from("all"),
        };
        let roles = json.get("roles").and_then(Value::as_array).into_iter().flatten();
        let roles = roles.filter_map(|r| r.as_str().or_else(|| r.get("role").and_then(Value::as_str)).map(str::to_owned)).collect();
        let vars = json.get("vars").and_then(Value::as_object).cloned().unwrap_or_default();
        let left = ["tasks", "pre_tasks", "post_tasks", "handlers", "vars_files"]
            .iter()
            .filter(|key| json.get(**key).is_some())
            .map(|key| format!("{file}:{}: the play's `{key}`: move them into a role", yaml::loc(play).line))
            .collect();
        plays.push(Play { hosts, roles, vars, left });
    }
    Ok(plays)
}

/// Reads and converts the Ansible role in `dir`.
pub fn convert(dir: &Path) -> Result<Converted, ConvertError> {
    let tasks_file = ["tasks/main.yml", "tasks/main.yaml"].into_iter().map(|f| dir.join(f)).find(|p| p.is_file());
    let Some(tasks_file) = tasks_file else { return Err(ConvertError::NotARole { path: dir.display().to_string() }) };
    let mut converted = Converted::default();
    let mut variables = Map::new();
    for file in ["defaults/main.yml", "defaults/main.yaml", "vars/main.yml", "vars/main.yaml"] {
        if let Some(node) = read(dir, file)? {
            // `vars/` after `defaults/`: Ansible gives a role's vars the higher precedence.
            variables.extend(yaml::to_json(&node).as_object().cloned().unwrap_or_default());
        }
    }
    if let Some(meta) = read(dir, "meta/main.yml")? {
        let dependencies = yaml::to_json(&meta).get("dependencies").cloned().unwrap_or(Value::Null);
        for dependency in dependencies.as_array().into_iter().flatten() {
            match dependency.as_str().or_else(|| dependency.get("role").and_then(Value::as_str)) {
                Some(name) => converted.depends.push(name.rsplit('.').next().unwrap_or(name).to_owned()),
                None => converted.notes.push(format!("meta/main.yml: dependency {dependency} left out: only a role's name carries over")),
            }
        }
    }
    let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).to_path_buf();
    let node = read(dir, &relative(&tasks_file).to_string_lossy())?;
    let mut tasks = Vec::new();
    let mut comments = Vec::new();
    for (index, item) in node.as_ref().map(list).unwrap_or_default().iter().enumerate() {
        match task(item, &variables, &mut converted.notes) {
            Ok(outs) => tasks.extend(outs.into_iter().map(|o| (index, o))),
            Err(why) => {
                let what = task_name(item);
                converted.left.push(Left { file: relative(&tasks_file), line: yaml::loc(item).line, what: what.clone(), why: why.clone() });
                comments.push((index, what, why, yaml::to_json(item)));
            }
        }
    }
    let tasks = fold_unit_files(tasks, &mut converted.notes);
    converted.converted = tasks.len();
    converted.tasks = tasks_text(&converted.depends, &tasks, &comments);
    if let Some(handlers) = read(dir, "handlers/main.yml")? {
        let mut written = String::new();
        for item in list(&handlers) {
            let name = task_name(item);
            let outs = task(item, &variables, &mut converted.notes);
            match outs.as_deref() {
                Ok([one]) => {
                    // Ansible notifies a handler by its name or by a topic it `listen`s to.
                    written.push_str(&format!("{}:\n{}", json!(name), fields(one, "  ")));
                    if let Some(topic) = yaml::to_json(item).get("listen").and_then(Value::as_str) {
                        converted.notes.push(format!("handler `{name}` listens to `{topic}`: notify it by its name in kstack"));
                    }
                }
                _ => {
                    let why = outs.err().unwrap_or_else(|| String::from("a handler is one task in kstack"));
                    converted.left.push(Left {
                        file: PathBuf::from("handlers/main.yml"),
                        line: yaml::loc(item).line,
                        what: name.clone(),
                        why: why.clone(),
                    });
                    written.push_str(&commented(&name, &why, &yaml::to_json(item), ""));
                }
            }
        }
        converted.handlers = written;
    }
    for reserved in ["env", "region", "group", "facts", "host", "host_seed", "secret_ref"].iter().filter(|name| variables.contains_key(**name)) {
        converted.notes.push(format!("variable `{reserved}`: kstack sets it for every role, so the role's own value is never seen; rename it"));
    }
    converted.defaults = variables.iter().map(|(k, v)| format!("{k}: {}\n", rewrite_values(v, &mut Vec::new()))).collect();
    for (sub, rewrite) in [("templates", true), ("files", false)] {
        for path in files_under(&dir.join(sub)) {
            let bytes = std::fs::read(&path).map_err(|e| ConvertError::Read { path: path.display().to_string(), error: e.to_string() })?;
            let bytes = match (rewrite, String::from_utf8(bytes)) {
                (true, Ok(text)) => {
                    // Ansible renders templates with Jinja's `trim_blocks`: the newline after a
                    // block or comment tag goes. minijinja keeps it unless the tag says `-`.
                    let (text, unsupported) = jinja(&text.replace("%}\n", "%}").replace("#}\n", "#}"));
                    for (line, construct) in unsupported {
                        converted.left.push(Left {
                            file: relative(&path),
                            line,
                            what: format!("template {}", relative(&path).display()),
                            why: format!("`{construct}` has no minijinja equivalent; the template is copied, edit it"),
                        });
                    }
                    text.into_bytes()
                }
                (_, Ok(text)) => text.into_bytes(),
                (_, Err(raw)) => raw.into_bytes(),
            };
            converted.files.push((relative(&path), bytes));
        }
    }
    Ok(converted)
}

/// A YAML file of the role, if it exists and holds anything.
fn read(dir: &Path, file: &str) -> Result<Option<marked_yaml::Node>, ConvertError> {
    let path = dir.join(file);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
    if text.lines().all(|l| l.trim().is_empty() || l.trim() == "---" || l.trim_start().starts_with('#')) {
        return Ok(None);
    }
    // Ansible's files are lists as often as mappings: read as YAML, whatever the shape.
    let first = text.lines().map(str::trim).find(|l| !l.is_empty() && *l != "---" && !l.starts_with('#')).unwrap_or_default();
    let options = match first.starts_with('-') {
        true => marked_yaml::LoaderOptions::default().toplevel_sequence(),
        false => marked_yaml::LoaderOptions::default(),
    };
    marked_yaml::parse_yaml_with_options(0, &text, options)
        .map(Some)
        .map_err(|e| ConvertError::Yaml { path: path.display().to_string(), message: e.to_string() })
}

fn list(node: &marked_yaml::Node) -> Vec<&marked_yaml::Node> {
    match node {
        marked_yaml::Node::Sequence(items) => items.iter().collect(),
        _ => Vec::new(),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn task_name(node: &marked_yaml::Node) -> String {
    let json = yaml::to_json(node);
    json.get("name").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("task at line {}", yaml::loc(node).line))
}

/// Task keywords Ansible reads beside the module; any other key is the module.
const KEYWORDS: &[&str] = &[
    "name",
    "when",
    "notify",
    "loop",
    "with_items",
    "with_list",
    "become",
    "become_user",
    "become_method",
    "tags",
    "args",
    "listen",
    "no_log",
    "register",
    "changed_when",
    "failed_when",
    "ignore_errors",
    "vars",
    "delegate_to",
    "run_once",
    "environment",
    "loop_control",
    "until",
    "retries",
    "delay",
    "check_mode",
    "diff",
    "block",
    "rescue",
    "always",
];

/// One Ansible task as kstack tasks (several when it loops), or why it cannot be one.
fn task(node: &marked_yaml::Node, variables: &Map<String, Value>, notes: &mut Vec<String>) -> Result<Vec<Out>, String> {
    let Value::Object(task) = yaml::to_json(node) else { return Err(String::from("a task is a mapping")) };
    let name = task.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    for keyword in ["register", "changed_when", "failed_when", "ignore_errors", "vars", "delegate_to", "run_once", "environment", "until", "block"] {
        if task.contains_key(keyword) {
            return Err(format!("`{keyword}` has no kstack equivalent"));
        }
    }
    if let Some(user) = task.get("become_user").and_then(Value::as_str).filter(|u| *u != "root") {
        return Err(format!("`become_user: {user}`: kstack runs tasks as root"));
    }
    let modules: Vec<&String> = task.keys().filter(|k| !KEYWORDS.contains(&k.as_str())).collect();
    let [module] = modules.as_slice() else {
        return Err(format!(
            "expected one module, found {}",
            if modules.is_empty() { String::from("none") } else { modules.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ") }
        ));
    };
    let short = module.rsplit('.').next().unwrap_or(module);
    let mut args = match &task[*module] {
        Value::Object(args) => args.clone(),
        Value::String(text) if matches!(short, "command" | "shell") => Map::from_iter([(String::from("cmd"), Value::String(text.clone()))]),
        Value::String(text) => key_values(text).ok_or_else(|| format!("the arguments of `{module}` as one string: write them as a mapping"))?,
        Value::Null => Map::new(),
        other => return Err(format!("the arguments of `{module}` are {other}")),
    };
    if let Some(Value::Object(more)) = task.get("args") {
        args.extend(more.clone());
    }
    let when = match task.get("when") {
        None => None,
        Some(Value::Array(all)) => Some(all.iter().map(|c| format!("({})", condition(c))).collect::<Vec<_>>().join(" and ")),
        Some(one) => Some(condition(one)),
    };
    let notify = match task.get("notify") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(all)) => all.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let items = match task.get("loop").or_else(|| task.get("with_items")).or_else(|| task.get("with_list")) {
        None => None,
        Some(Value::Array(items)) => Some(items.clone()),
        Some(Value::String(expression)) => Some(loop_items(expression, variables)?),
        Some(other) => return Err(format!("a loop over {other}")),
    };
    let mut outs = Vec::new();
    let converted = module_args(short, &args, notes)?;
    match items {
        None => {
            for (module, args) in converted {
                outs.push(Out { name: name.clone(), module, args, when: when.clone(), notify: notify.clone() });
            }
        }
        Some(items) => {
            for item in &items {
                let named = format!("{name} ({})", item.as_str().map_or_else(|| item.to_string(), str::to_owned));
                let with_item = |text: &str| substitute_item(text, item);
                for (module, args) in &converted {
                    let args = map_strings(&Value::Object(args.clone()), &with_item)?;
                    let when = when.as_deref().map(|w| substitute_item(w, item)).transpose()?;
                    outs.push(Out { name: named.clone(), module, args: args.as_object().cloned().unwrap_or_default(), when, notify: notify.clone() });
                }
            }
        }
    }
    let mut unsupported = Vec::new();
    for out in &mut outs {
        out.args = rewrite_values(&Value::Object(std::mem::take(&mut out.args)), &mut unsupported).as_object().cloned().unwrap_or_default();
        if let Some(when) = &out.when {
            let (rewritten, found) = jinja(when);
            unsupported.extend(found.into_iter().map(|(_, c)| c));
            out.when = Some(rewritten);
        }
    }
    if let Some(construct) = unsupported.first() {
        return Err(format!("`{construct}` has no minijinja equivalent"));
    }
    Ok(outs)
}

/// `key=value key2=value2`, Ansible's one-line arguments (no quoting).
fn key_values(text: &str) -> Option<Map<String, Value>> {
    text.split_whitespace().map(|pair| pair.split_once('=').map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))).collect()
}

/// A `when` as an expression: Ansible takes it bare, or (deprecated) wrapped in `{{ }}`.
fn condition(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.trim().to_owned(),
        other => other.to_string(),
    };
    text.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map_or(text.clone(), |inner| inner.trim().to_owned())
}

/// The items of `loop: "{{ name }}"` when the role defines `name` as a list.
fn loop_items(expression: &str, variables: &Map<String, Value>) -> Result<Vec<Value>, String> {
    let name = expression.trim().strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map(str::trim).unwrap_or(expression.trim());
    match variables.get(name) {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err(format!("a loop over `{expression}`, which is not a list the role's defaults or vars define: unroll it by hand")),
    }
}

/// `{{ item }}` and `{{ item.key }}` (or `item['key']`) in `text` replaced by the item's value.
fn substitute_item(text: &str, item: &Value) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(length) = rest[start..].find("}}") else { break };
        let inner = rest[start + 2..start + length].trim();
        let path = inner.strip_prefix("item").filter(|p| p.is_empty() || p.starts_with('.') || p.starts_with('['));
        let value = path.map(|path| {
            let key = path.trim_start_matches('.').trim_start_matches("['").trim_start_matches("[\"").trim_end_matches("']").trim_end_matches("\"]");
            if key.is_empty() {
                Some(item)
            } else {
                item.get(key)
            }
        });
        out.push_str(&rest[..start]);
        match value {
            Some(Some(Value::String(text))) => out.push_str(text),
            Some(Some(other)) => out.push_str(&other.to_string()),
            Some(None) => return Err(format!("`{{{{ {inner} }}}}`: the loop's items have no such field")),
            None => out.push_str(&rest[start..start + length + 2]),
        }
        rest = &rest[start + length + 2..];
    }
    out.push_str(rest);
    // What is left between `{{ }}` or `{% %}` still names the item: an expression of it.
    let in_expression = ["{{", "{%"].iter().any(|open| {
        out.split(open).skip(1).any(|after| {
            let inside = after.split(['}', '%']).next().unwrap_or_default();
            replace_word(inside, "item", "") != inside
        })
    });
    if in_expression {
        return Err(String::from("the loop item is used inside an expression: unroll it by hand"));
    }
    Ok(out)
}

/// Every string of `value` through `change`.
fn map_strings(value: &Value, change: &dyn Fn(&str) -> Result<String, String>) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => Value::String(change(text)?),
        Value::Array(items) => Value::Array(items.iter().map(|i| map_strings(i, change)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), map_strings(v, change)?))).collect::<Result<_, String>>()?),
        other => other.clone(),
    })
}

/// Every string of `value` with Ansible's Jinja rewritten; what minijinja lacks into `unsupported`.
fn rewrite_values(value: &Value, unsupported: &mut Vec<String>) -> Value {
    let found = std::cell::RefCell::new(Vec::new());
    let rewritten = map_strings(value, &|text| {
        let (text, constructs) = jinja(text);
        found.borrow_mut().extend(constructs.into_iter().map(|(_, c)| c));
        Ok(text)
    })
    .unwrap_or_else(|_| value.clone());
    unsupported.extend(found.into_inner());
    rewritten
}

/// A kstack module's name and arguments.
type ModuleArgs = (&'static str, Map<String, Value>);

/// A kstack module and its arguments for an Ansible module and its arguments (a package
/// list makes one task per package).
fn module_args(module: &str, args: &Map<String, Value>, notes: &mut Vec<String>) -> Result<Vec<ModuleArgs>, String> {
    let text = |key: &str| args.get(key).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    let mut out = Map::new();
    let take = |from: &[&str], to: &str, out: &mut Map<String, Value>| {
        if let Some(value) = from.iter().find_map(|k| text(k)) {
            out.insert(to.to_owned(), Value::String(value));
        }
    };
    let allowed = |known: &[&str]| -> Result<(), String> {
        let unknown: Vec<&String> = args.keys().filter(|k| !known.contains(&k.as_str())).collect();
        match unknown.as_slice() {
            [] => Ok(()),
            some => Err(format!("`{module}` with {}: no kstack equivalent", some.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))),
        }
    };
    let mode = |out: &mut Map<String, Value>| {
        if let Some(mode) = args.get("mode") {
            // An unquoted 0644 is a number to YAML; Ansible reads it as octal.
            let mode = match mode {
                Value::Number(n) => format!("0{n}"),
                other => other.as_str().unwrap_or_default().to_owned(),
            };
            out.insert(String::from("mode"), Value::String(mode));
        }
    };
    let truthy = |key: &str| args.get(key).is_some_and(|v| v.as_bool() == Some(true) || matches!(v.as_str(), Some("yes" | "true" | "True")));
    Ok(match module {
        "file" => {
            allowed(&["path", "dest", "name", "state", "src", "mode", "owner", "group", "force", "follow"])?;
            take(&["path", "dest", "name"], "path", &mut out);
            match text("state").as_deref() {
                None | Some("file") => {}
                Some(state @ ("directory" | "link" | "absent")) => {
                    out.insert(String::from("state"), json!(state));
                }
                Some(other) => return Err(format!("`file` with `state: {other}`: no kstack equivalent")),
            }
            take(&["src"], "src", &mut out);
            mode(&mut out);
            take(&["owner"], "owner", &mut out);
            take(&["group"], "group", &mut out);
            vec![("file", out)]
        }
        "copy" | "template" => {
            allowed(&["dest", "src", "content", "mode", "owner", "group", "force", "backup"])?;
            if truthy("backup") {
                notes.push(format!("`{module}` to {}: `backup` dropped", text("dest").unwrap_or_default()));
            }
            take(&["dest"], "dest", &mut out);
            take(&["content"], "content", &mut out);
            if let Some(src) = text("src") {
                if src.ends_with('/') {
                    return Err(String::from("a directory copy: copy each file"));
                }
                // kstack finds them in the role's own files/ and templates/, as Ansible does.
                let under = if module == "copy" { "files/" } else { "templates/" };
                out.insert(String::from("src"), json!(src.strip_prefix(under).unwrap_or(&src)));
            }
            mode(&mut out);
            take(&["owner"], "owner", &mut out);
            take(&["group"], "group", &mut out);
            vec![(if module == "copy" { "copy" } else { "template" }, out)]
        }
        "lineinfile" => {
            allowed(&["path", "dest", "name", "line", "regexp", "state", "mode", "create", "owner", "group"])?;
            take(&["path", "dest", "name"], "path", &mut out);
            take(&["line"], "line", &mut out);
            take(&["regexp"], "regexp", &mut out);
            if text("state").as_deref() == Some("absent") {
                out.insert(String::from("state"), json!("absent"));
            }
            if !out.contains_key("line") {
                return Err(String::from("`lineinfile` without `line`: kstack's `line` names the line"));
            }
            mode(&mut out);
            vec![("line", out)]
        }
        "apt" | "package" | "dnf" | "yum" => {
            allowed(&["name", "pkg", "state", "update_cache", "cache_valid_time", "install_recommends"])?;
            let names: Vec<String> = match args.get("name").or_else(|| args.get("pkg")) {
                Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                Some(Value::String(names)) => names.split(',').map(|n| n.trim().to_owned()).collect(),
                _ => return Err(format!("`{module}` without a package name")),
            };
            let state = match text("state").as_deref() {
                None | Some("present" | "installed") => "present",
                Some("latest") => {
                    notes.push(format!("packages {}: `state: latest` became `present` (an image's bake brings new versions)", names.join(", ")));
                    "present"
                }
                Some("absent" | "removed") => "absent",
                Some(other) => return Err(format!("`{module}` with `state: {other}`")),
            };
            names
                .into_iter()
                .map(|name| {
                    let mut one = Map::from_iter([(String::from("name"), json!(name))]);
                    if state == "absent" {
                        one.insert(String::from("state"), json!("absent"));
                    }
                    if truthy("update_cache") {
                        one.insert(String::from("update_cache"), json!(true));
                    }
                    ("package", one)
                })
                .collect()
        }
        "systemd" | "systemd_service" | "service" => {
            allowed(&["name", "state", "enabled", "daemon_reload", "daemon_reexec"])?;
            let name = text("name").ok_or_else(|| format!("`{module}` without a unit name"))?;
            let unit = if name.contains('.') { name.clone() } else { format!("{name}.service") };
            match text("state").as_deref() {
                Some(verb @ ("restarted" | "reloaded")) => {
                    let verb = if verb == "restarted" { "restart" } else { "reload" };
                    return Ok(vec![("command", Map::from_iter([(String::from("run"), json!(format!("systemctl {verb} {unit}")))]))]);
                }
                Some(state @ ("started" | "stopped")) => {
                    out.insert(String::from("state"), json!(state));
                }
                None => {}
                Some(other) => return Err(format!("`{module}` with `state: {other}`")),
            }
            out.insert(String::from("name"), json!(unit));
            if let Some(enabled) = args.get("enabled") {
                out.insert(String::from("enabled"), json!(enabled.as_bool().unwrap_or(matches!(enabled.as_str(), Some("yes" | "true")))));
            }
            vec![("service", out)]
        }
        "user" => {
            allowed(&["name", "uid", "group", "shell", "home", "groups", "system", "append", "create_home", "state"])?;
            if text("state").as_deref() == Some("absent") {
                return Err(String::from("`user` with `state: absent`: kstack keeps users, never removes them"));
            }
            // kstack makes a group of the user's name its primary group when there is one;
            // Ansible then makes it `users` unless `group:` names it.
            match text("group") {
                Some(group) if Some(&group) != text("name").as_ref() => {
                    return Err(format!("`user` with primary `group: {group}`: kstack's primary group is the one of the user's name"))
                }
                Some(_) => {}
                None => notes.push(format!(
                    "user {}: where a group of its name exists kstack makes it the primary group; Ansible made `users` primary",
                    text("name").unwrap_or_default()
                )),
            }
            take(&["name"], "name", &mut out);
            if let Some(uid) = args.get("uid").and_then(|u| u.as_u64().or_else(|| u.as_str()?.parse().ok())) {
                out.insert(String::from("uid"), json!(uid));
            }
            take(&["shell"], "shell", &mut out);
            take(&["home"], "home", &mut out);
            let groups: Vec<String> = match args.get("groups") {
                Some(Value::Array(groups)) => groups.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                Some(Value::String(groups)) => groups.split(',').map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect(),
                _ => Vec::new(),
            };
            if !groups.is_empty() {
                if !truthy("append") {
                    notes.push(format!(
                        "user {}: kstack adds groups (Ansible's `append: true`) and leaves others alone",
                        text("name").unwrap_or_default()
                    ));
                }
                out.insert(String::from("groups"), json!(groups));
            }
            if truthy("system") {
                out.insert(String::from("system"), json!(true));
            }
            vec![("user", out)]
        }
        "group" => {
            allowed(&["name", "gid", "system", "state"])?;
            if text("state").as_deref() == Some("absent") {
                return Err(String::from("`group` with `state: absent`: kstack keeps groups, never removes them"));
            }
            take(&["name"], "name", &mut out);
            if let Some(gid) = args.get("gid").and_then(|g| g.as_u64().or_else(|| g.as_str()?.parse().ok())) {
                out.insert(String::from("gid"), json!(gid));
            }
            if truthy("system") {
                out.insert(String::from("system"), json!(true));
            }
            vec![("group", out)]
        }
        "command" | "shell" => {
            allowed(&["cmd", "_raw_params", "creates", "removes", "chdir", "executable"])?;
            take(&["cmd", "_raw_params"], "run", &mut out);
            take(&["creates"], "creates", &mut out);
            take(&["chdir"], "chdir", &mut out);
            if let Some(removes) = text("removes") {
                // Ansible runs it only while `removes` exists: kstack skips it while it does not.
                out.insert(String::from("unless"), json!(format!("test ! -e {}", crate::ssh::shell_quote(&removes))));
            }
            if !out.contains_key("run") {
                return Err(format!("`{module}` without a command"));
            }
            vec![("command", out)]
        }
        "sysctl" => {
            allowed(&["name", "value", "state", "sysctl_set", "reload", "sysctl_file"])?;
            if text("state").as_deref() == Some("absent") {
                return Err(String::from("`sysctl` with `state: absent`"));
            }
            take(&["name"], "name", &mut out);
            take(&["value"], "value", &mut out);
            vec![("sysctl", out)]
        }
        "meta" => return Err(String::from("kstack runs a role's handlers when its tasks end: split the role here if they must run sooner")),
        "debug" | "assert" | "fail" | "pause" => return Err(format!("`{module}` changes nothing on a node")),
        other => return Err(format!("module `{other}` has no kstack equivalent")),
    })
}

/// A unit file written by `template` or `copy` into systemd's directory, then enabled or
/// started by a later task: one `systemd_unit`, which reloads systemd when the file changes
/// and restarts the unit it changed, as `daemon_reload: true` asked.
fn fold_unit_files(tasks: Vec<(usize, Out)>, notes: &mut Vec<String>) -> Vec<(usize, Out)> {
    let unit_of = |out: &Out| -> Option<String> {
        let dest = out.args.get("dest")?.as_str()?;
        let unit = dest.strip_prefix("/etc/systemd/system/").or_else(|| dest.strip_prefix("/lib/systemd/system/"))?;
        (matches!(out.module, "template" | "copy") && !unit.contains('/') && out.args.get("mode").is_none_or(|m| m == "0644"))
            .then(|| unit.to_owned())
    };
    let mut folded: Vec<Option<(usize, Out)>> = tasks.into_iter().map(Some).collect();
    for at in 0..folded.len() {
        let Some(unit) = folded[at].as_ref().and_then(|(_, out)| unit_of(out)) else { continue };
        let later = (at + 1..folded.len()).find(|&i| {
            folded[i]
                .as_ref()
                .is_some_and(|(_, o)| o.module == "service" && o.args.get("name").and_then(Value::as_str) == Some(unit.as_str()) && o.when.is_none())
        });
        let Some((index, mut file)) = folded[at].take() else { continue };
        let mut args = Map::from_iter([(String::from("name"), json!(unit))]);
        for key in ["src", "content"] {
            if let Some(value) = file.args.remove(key) {
                args.insert(key.to_owned(), value);
            }
        }
        if let Some((_, service)) = later.and_then(|i| folded[i].take()) {
            args.extend(service.args.into_iter().filter(|(k, _)| k != "name"));
            file.notify.extend(service.notify);
            notes.push(format!("{unit}: its file and its service task became one `systemd_unit`"));
        }
        file.module = "systemd_unit";
        file.args = args;
        folded[at] = Some((index, file));
    }
    folded.into_iter().flatten().collect()
}

/// `tasks.yaml`: the tasks in order, with the unconverted ones as comments where they were.
fn tasks_text(depends: &[String], tasks: &[(usize, Out)], comments: &[(usize, String, String, Value)]) -> String {
    let mut text = String::from("# Converted from an Ansible role by `kstack roles import`.\n");
    if !depends.is_empty() {
        text.push_str(&format!("depends: {}\n", json!(depends)));
    }
    text.push_str("tasks:\n");
    let last = tasks.iter().map(|(i, _)| *i).chain(comments.iter().map(|c| c.0)).max().unwrap_or(0);
    for index in 0..=last {
        for (_, out) in tasks.iter().filter(|(i, _)| *i == index) {
            text.push_str(&format!("  - name: {}\n{}", json!(out.name), fields(out, "    ")));
        }
        for (_, name, why, original) in comments.iter().filter(|c| c.0 == index) {
            text.push_str(&commented(name, why, original, "  "));
        }
    }
    if tasks.is_empty() {
        text.push_str("  []\n");
    }
    text
}

/// A task's module, `when` and `notify`, one a line (JSON is YAML: strings stay exact).
fn fields(out: &Out, indent: &str) -> String {
    let mut text = format!("{indent}{}: {}\n", out.module, Value::Object(out.args.clone()));
    if let Some(when) = &out.when {
        text.push_str(&format!("{indent}when: {}\n", json!(when)));
    }
    if !out.notify.is_empty() {
        text.push_str(&format!("{indent}notify: {}\n", json!(out.notify)));
    }
    text
}

fn commented(name: &str, why: &str, original: &Value, indent: &str) -> String {
    format!("{indent}# not converted: {name}: {why}\n{indent}#   {original}\n")
}

/// Ansible's facts and filters in minijinja's terms: (the text, and the constructs minijinja
/// lacks with their lines).
pub fn jinja(text: &str) -> (String, Vec<(usize, String)>) {
    const FACTS: &[(&str, &str)] = &[
        ("hostname", "facts.hostname"),
        ("nodename", "facts.hostname"),
        ("distribution_version", "facts.os_version"),
        ("distribution_release", "facts.os_codename"),
        // Ansible says `Debian`, `Ubuntu`; os-release's id is lowercase.
        ("distribution", "(facts.os_id | capitalize)"),
        ("kernel", "facts.kernel"),
        ("architecture", "facts.arch"),
        ("processor_vcpus", "facts.cpus"),
        ("virtualization_type", "facts.virtualization"),
    ];
    let mut out = text.to_owned();
    for (fact, ours) in FACTS {
        for theirs in
            [format!("ansible_facts.{fact}"), format!("ansible_facts['{fact}']"), format!("ansible_facts[\"{fact}\"]"), format!("ansible_{fact}")]
        {
            out = replace_word(&out, &theirs, ours);
        }
    }
    out = replace_word(&out, "inventory_hostname", "host");
    out = out.replace("| to_nice_json", "| tojson(indent=2)").replace("|to_nice_json", "|tojson(indent=2)");
    out = out.replace("| to_json", "| tojson").replace("|to_json", "|tojson");
    const LACKING: &[&str] = &[
        "lookup(",
        "query(",
        "hostvars",
        "groups[",
        "ansible_",
        "regex_replace",
        "regex_search",
        "b64encode",
        "b64decode",
        "to_yaml",
        "to_nice_yaml",
        "password_hash",
        "ipaddr",
        "combine(",
        "ternary(",
        "mandatory",
        "omit",
    ];
    let mut lacking = Vec::new();
    for (number, line) in out.lines().enumerate() {
        for construct in LACKING.iter().filter(|c| line.contains(*c)) {
            lacking.push((number + 1, construct.trim_end_matches(['(', '[']).to_owned()));
        }
    }
    (out, lacking)
}

/// `from` replaced by `to` where it is a whole name (not part of a longer one).
fn replace_word(text: &str, from: &str, to: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        // The character before the match: in what is left, or else the last one written.
        let before_ok = rest[..at].chars().last().or_else(|| out.chars().last()).is_none_or(|c| !is_name(c) && c != '.');
        let after_ok = rest[at + from.len()..].chars().next().is_none_or(|c| !is_name(c));
        out.push_str(&rest[..at]);
        out.push_str(if before_ok && after_ok { to } else { from });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The files of a converted role, written under `dir` (which must not exist yet).
pub fn files_of(converted: &Converted) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::from([
        (PathBuf::from("tasks.yaml"), converted.tasks.clone().into_bytes()),
        (PathBuf::from("defaults.yaml"), converted.defaults.clone().into_bytes()),
    ]);
    if !converted.handlers.is_empty() {
        files.insert(PathBuf::from("handlers.yaml"), converted.handlers.clone().into_bytes());
    }
    files.extend(converted.files.iter().cloned());
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_and_filters_are_rewritten_and_what_minijinja_lacks_is_named() {
        let (text, lacking) =
            jinja("{{ ansible_facts.hostname }} {{ ansible_hostname }} {{ inventory_hostname }} {{ x | to_nice_json }}\n{{ lookup('env', 'HOME') }}");
        assert_eq!(text.lines().next().unwrap(), "{{ facts.hostname }} {{ facts.hostname }} {{ host }} {{ x | tojson(indent=2) }}");
        assert_eq!(lacking, [(2, String::from("lookup"))]);
        assert_eq!(replace_word("my_inventory_hostname", "inventory_hostname", "host"), "my_inventory_hostname");
    }

    #[test]
    fn modules_map_to_kstack_s_or_say_why_not() {
        let args = |value: Value| value.as_object().cloned().unwrap();
        let mut notes = Vec::new();
        let sysctl = module_args("sysctl", &args(json!({"name": "vm.swappiness", "value": 1, "sysctl_set": true})), &mut notes).unwrap();
        assert_eq!(sysctl[0], ("sysctl", args(json!({"name": "vm.swappiness", "value": "1"}))));
        let removes = module_args("shell", &args(json!({"cmd": "rm -f /tmp/x", "removes": "/tmp/x"})), &mut notes).unwrap();
        assert_eq!(removes[0].1["unless"], "test ! -e '/tmp/x'");
        let packages = module_args("apt", &args(json!({"name": ["a", "b"], "state": "latest"})), &mut notes).unwrap();
        assert_eq!(packages.len(), 2);
        assert!(notes.iter().any(|n| n.contains("`state: latest` became `present`")), "{notes:?}");
        let restart = module_args("service", &args(json!({"name": "nginx", "state": "restarted"})), &mut notes).unwrap();
        assert_eq!(restart[0].1["run"], "systemctl restart nginx.service");
        assert!(module_args("get_url", &Map::new(), &mut notes).unwrap_err().contains("no kstack equivalent"));
        assert!(module_args("file", &args(json!({"path": "/x", "recurse": true})), &mut notes).unwrap_err().contains("`recurse`"));
    }

    #[test]
    fn a_loop_item_is_substituted_or_the_task_is_left() {
        assert_eq!(substitute_item("/srv/{{ item }}", &json!("data")).unwrap(), "/srv/data");
        assert_eq!(substitute_item("{{ item.name }}:{{ item['mode'] }}", &json!({"name": "a", "mode": "0750"})).unwrap(), "a:0750");
        assert!(substitute_item("{{ item.missing }}", &json!({"name": "a"})).is_err());
        assert!(substitute_item("{{ item | upper }}", &json!("a")).is_err());
    }
}
