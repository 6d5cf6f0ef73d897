//! Running checks (`checks.yaml`) on a host: `kstack verify` runs them; bake runs them
//! before an image is saved.

use serde::Serialize;

use super::modules::quote;
use crate::ssh::{Connection, Facts, SshError};
use kstack_project::roles::checks::CheckKind;

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// Why the check could not be made here, e.g. kernel settings inside a container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// What was expected and what was found, for a failure.
    pub detail: String,
}

impl CheckResult {
    pub fn failed(name: &str, detail: String) -> CheckResult {
        CheckResult { name: name.to_owned(), passed: false, skipped: None, detail }
    }
}

/// Runs the check `check_name` of `kind` (its strings already rendered): the shell script that
/// prints the observed value, and how to judge it.
pub async fn run(check_name: &str, kind: &CheckKind, connection: &Connection, facts: &Facts) -> Result<CheckResult, SshError> {
    let result = |passed: bool, detail: String| CheckResult { name: check_name.to_owned(), passed, skipped: None, detail };
    let skip = |why: String| CheckResult { name: check_name.to_owned(), passed: true, skipped: Some(why), detail: String::new() };
    let out = |script: String| async move { connection.run(&script, None).await };
    Ok(match kind {
        CheckKind::Package { name, version } => {
            let found = out(format!("dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}' {}", quote(name))).await?.stdout;
            let (status, installed) = found.split_once('|').unwrap_or(("", ""));
            // The second letter of the abbreviated status is the package's state.
            let ok = status.chars().nth(1) == Some('i') && version.as_ref().is_none_or(|v| v == installed);
            result(
                ok,
                format!(
                    "expected {name} {}, found {}",
                    version.as_deref().unwrap_or("installed"),
                    if status.is_empty() { "not installed" } else { installed }
                ),
            )
        }
        CheckKind::File { path, exists, mode, contains, sha256 } => {
            let p = quote(path);
            let text = out(format!("if [ -e {p} ]; then stat -c '%a' {p}; sha256sum {p} 2>/dev/null | cut -d' ' -f1; echo '--- kstack ---'; head -c 1048576 {p} 2>/dev/null; else echo absent; fi")).await?.stdout;
            if text.trim() == "absent" {
                result(!exists, format!("{path} does not exist"))
            } else if !exists {
                result(false, format!("{path} exists but should not"))
            } else {
                let (head, body) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
                let mut lines = head.lines();
                let found_mode = lines.next().unwrap_or_default();
                let found_sha = lines.next().unwrap_or_default();
                let mut problems = Vec::new();
                if let Some(mode) = mode.as_deref().map(|m| m.trim_start_matches('0')) {
                    if found_mode != mode {
                        problems.push(format!("mode {found_mode}, expected {mode}"));
                    }
                }
                if let Some(sha) = sha256.as_deref().filter(|s| *s != found_sha) {
                    problems.push(format!("sha256 {found_sha}, expected {sha}"));
                }
                for needle in contains.iter().filter(|c| !body.contains(c.as_str())) {
                    problems.push(format!("does not contain `{needle}`"));
                }
                result(problems.is_empty(), format!("{path}: {}", problems.join("; ")))
            }
        }
        CheckKind::Service { name, enabled, running } => {
            let text =
                out(format!("systemctl is-enabled {0} 2>/dev/null; echo; systemctl is-active {0} 2>/dev/null; echo", quote(name))).await?.stdout;
            let mut lines = text.lines().filter(|l| !l.is_empty());
            let is_enabled = lines.next().unwrap_or("unknown").trim().to_owned();
            let is_active = lines.next().unwrap_or("unknown").trim().to_owned();
            let enabled_ok = enabled.is_none_or(|e| e == (is_enabled == "enabled"));
            let running_ok = running.is_none_or(|r| r == (is_active == "active"));
            result(enabled_ok && running_ok, format!("{name} is {is_enabled} and {is_active}"))
        }
        CheckKind::Sysctl { name, value } => {
            if facts.container {
                skip(format!("kernel settings cannot be checked in a {} container", facts.virtualization))
            } else {
                let found = out(format!("sysctl -n {}", quote(name))).await?.stdout;
                let normalize = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
                result(normalize(&found) == normalize(value), format!("{name} = {}, expected {value}", found.trim()))
            }
        }
        CheckKind::KernelParameter { parameter } => {
            if facts.container {
                skip(format!("the kernel command line is the host's in a {} container", facts.virtualization))
            } else {
                let found = out(String::from("cat /proc/cmdline")).await?.stdout;
                result(found.split_whitespace().any(|w| w == parameter), format!("{parameter} is not in /proc/cmdline: {}", found.trim()))
            }
        }
        CheckKind::Port { port } => {
            let Some(port) = port.value().and_then(|p| u16::try_from(p).ok()) else {
                return Ok(result(false, format!("port {port:?} is not a TCP port number")));
            };
            // The kernel's own tables: no dependency on ss or netstat being installed.
            let found = out(String::from("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")).await?.stdout;
            let listening = found.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
                fields.get(3) == Some(&"0A") && local_port == Some(port)
            });
            result(listening, format!("nothing listens on TCP port {port}"))
        }
        CheckKind::TransparentHugePages { enabled, defrag } => {
            if facts.container {
                skip(format!("needs a real VM: huge pages are the host kernel's in a {} container", facts.virtualization))
            } else {
                let found = out(String::from("cat /sys/kernel/mm/transparent_hugepage/enabled; cat /sys/kernel/mm/transparent_hugepage/defrag"))
                    .await?
                    .stdout;
                // The mode in effect is the one in brackets: `always madvise [never]`.
                let selected = |line: &str| line.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap_or_default().to_owned();
                let mut lines = found.lines();
                let (now_enabled, now_defrag) = (selected(lines.next().unwrap_or_default()), selected(lines.next().unwrap_or_default()));
                result(
                    now_enabled == *enabled && now_defrag == *defrag,
                    format!("enabled={now_enabled} defrag={now_defrag}, expected enabled={enabled} defrag={defrag}"),
                )
            }
        }
        CheckKind::Mtu { interface, value } => {
            let Some(value) = value.value() else {
                return Ok(result(false, format!("MTU {value:?} is not a number")));
            };
            if facts.container {
                skip(format!("needs a real VM: a {} container shares the host's interfaces", facts.virtualization))
            } else {
                let interface = match interface {
                    Some(name) => name.clone(),
                    None => out(String::from("awk '$2 == \"00000000\" { print $1; exit }' /proc/net/route")).await?.stdout.trim().to_owned(),
                };
                let found = out(format!("cat /sys/class/net/{}/mtu", quote(&interface))).await?.stdout;
                result(found.trim() == value.to_string(), format!("{interface} has MTU {}, expected {value}", found.trim()))
            }
        }
        CheckKind::Command { run, exit_status, output_contains } => {
            let output = connection.run(run, None).await?;
            let status_ok = output.status == *exit_status;
            let output_ok = output_contains.as_deref().is_none_or(|c| output.stdout.contains(c));
            result(status_ok && output_ok, format!("`{run}` exited {} (expected {exit_status}); output: {}", output.status, output.stdout.trim()))
        }
    })
}
