//! Checks (`checks.yaml`): what a converged node must look like, goss-style, as written.
//! kstack's `roles::checks` runs them on hosts.

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
        port: u16,
    },
    /// Transparent huge pages: the `enabled` and `defrag` modes in effect.
    TransparentHugePages {
        enabled: String,
        defrag: String,
    },
    /// The MTU of an interface (the default route's when not named).
    Mtu {
        interface: Option<String>,
        value: u32,
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

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub kind: CheckKind,
    pub loc: Loc,
}

pub fn read(node: &Node, problems: &mut Problems) -> Vec<Check> {
    yaml::named(node, "check", problems, |name, body, problems| match serde_json::from_value::<CheckKind>(yaml::to_json(body)) {
        Ok(kind) => Some(Check { name: name.value, kind, loc: name.loc }),
        Err(error) => {
            problems
                .error(yaml::loc(body), format!("invalid check `{}`: {error}", name.value))
                .hint("a check is one of: package, file, service, sysctl, kernel_parameter, port, transparent_huge_pages, mtu, command");
            None
        }
    })
}
