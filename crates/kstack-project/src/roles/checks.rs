//! Checks (`checks.yaml`): what a converged node must look like, goss-style. Like tasks,
//! their strings are templates over the role's variables (a check of `{{ docker_package }}`
//! follows the variable), and `when:` makes one conditional. Read here for their shape;
//! kstack's `roles::checks` renders and runs them on hosts.

use marked_yaml::Node;
use serde::Deserialize;

use crate::diagnostics::{Loc, Problems};
use crate::yaml;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CheckKind {
    Package {
        name: String,
        version: Option<String>,
    },
    File {
        path: String,
        #[serde(default = "yes")]
        exists: bool,
        mode: Option<String>,
        #[serde(default)]
        contains: Vec<String>,
        sha256: Option<String>,
    },
    Service {
        name: String,
        enabled: Option<bool>,
        running: Option<bool>,
    },
    Sysctl {
        name: String,
        value: String,
    },
    KernelParameter {
        parameter: String,
    },
    Port {
        port: Number,
    },
    /// Transparent huge pages: the `enabled` and `defrag` modes in effect.
    TransparentHugePages {
        enabled: String,
        defrag: String,
    },
    /// The MTU of an interface (the default route's when not named).
    Mtu {
        interface: Option<String>,
        value: Number,
    },
    Command {
        run: String,
        #[serde(default)]
        exit_status: u32,
        output_contains: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// A whole number written as a number or as a template that renders to one (`"{{ mtu }}"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Literal(u64),
    Text(String),
}

impl Number {
    pub fn value(&self) -> Option<u64> {
        match self {
            Number::Literal(n) => Some(*n),
            Number::Text(text) => text.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// The check as written: rendered with the role's variables, then read as a `CheckKind`.
    pub body: serde_json::Value,
    /// A minijinja expression; the check is not made when it is false.
    pub when: Option<String>,
    /// How long its probe may run before the check fails (`timeout_seconds`, default 30).
    pub timeout_seconds: u64,
    pub loc: Loc,
}

/// How long a check's probe runs at most unless it says otherwise.
const DEFAULT_TIMEOUT_SECONDS: u64 = 30;

impl Check {
    /// The check's kind once its strings are rendered.
    pub fn kind(rendered: serde_json::Value) -> Result<CheckKind, String> {
        serde_json::from_value(rendered).map_err(|e| e.to_string())
    }
}

const KINDS: &str = "package, file, service, sysctl, kernel_parameter, port, transparent_huge_pages, mtu, command";

pub fn read(node: &Node, problems: &mut Problems) -> Vec<Check> {
    yaml::named(node, "check", problems, |name, body, problems| {
        let (mut when, mut timeout_seconds) = (None, DEFAULT_TIMEOUT_SECONDS);
        if let Node::Mapping(map) = body {
            if let Some(condition) = map.get("when") {
                let expression = yaml::string(condition, problems)?;
                when = Some(crate::template::condition(expression, "docker_storage_driver == \"aufs\"", problems)?);
            }
            if let Some(timeout) = map.get("timeout_seconds") {
                timeout_seconds = yaml::number(timeout, 1..=3600u64, problems)?.value;
            }
        }
        let mut json = yaml::to_json(body);
        if let Some(map) = json.as_object_mut() {
            map.remove("when");
            map.remove("timeout_seconds");
        }
        match Check::kind(json.clone()) {
            Ok(_) => Some(Check { name: name.value, body: json, when, timeout_seconds, loc: name.loc }),
            Err(error) => {
                problems
                    .error(yaml::loc(body), format!("invalid check `{}`: {error}", name.value))
                    .hint(format!("a check is one of: {KINDS}, with an optional `when:` and `timeout_seconds:`"));
                None
            }
        }
    })
}
