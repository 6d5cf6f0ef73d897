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

/// What a check found.
enum Found {
    /// Whether it passed, and what was expected and found.
    Judged(bool, String),
    /// It cannot be made here, and why.
    Skipped(String),
}

/// Runs the check `check_name` of `kind` (its strings already rendered): each kind reads the
/// running system with one command and judges what it prints.
pub async fn run(check_name: &str, kind: &CheckKind, connection: &Connection, facts: &Facts) -> Result<CheckResult, SshError> {
    // Kernel state in a container is the host's: only a VM (or a real machine) shows it.
    let container = facts.container.then_some(facts.virtualization.as_str());
    let found = match kind {
        CheckKind::Package { name, version } => package(connection, name, version.as_deref()).await?,
        CheckKind::File { path, exists, mode, contains, sha256 } => {
            file(connection, path, *exists, mode.as_deref(), contains, sha256.as_deref()).await?
        }
        CheckKind::Service { name, enabled, running } => service(connection, name, *enabled, *running).await?,
        CheckKind::Sysctl { name, value } => match container {
            Some(kind) => Found::Skipped(format!("kernel settings cannot be checked in a {kind} container")),
            None => sysctl(connection, name, value).await?,
        },
        CheckKind::KernelParameter { parameter } => match container {
            Some(kind) => Found::Skipped(format!("the kernel command line is the host's in a {kind} container")),
            None => kernel_parameter(connection, parameter).await?,
        },
        CheckKind::Port { port } => match port.value().and_then(|p| u16::try_from(p).ok()) {
            Some(port) => listening(connection, port).await?,
            None => Found::Judged(false, format!("port {port:?} is not a TCP port number")),
        },
        CheckKind::TransparentHugePages { enabled, defrag } => match container {
            Some(kind) => Found::Skipped(format!("needs a real VM: huge pages are the host kernel's in a {kind} container")),
            None => huge_pages(connection, enabled, defrag).await?,
        },
        CheckKind::Mtu { interface, value } => match (value.value(), container) {
            (None, _) => Found::Judged(false, format!("MTU {value:?} is not a number")),
            (Some(_), Some(kind)) => Found::Skipped(format!("needs a real VM: a {kind} container shares the host's interfaces")),
            (Some(value), None) => mtu(connection, interface.as_deref(), value).await?,
        },
        CheckKind::Command { run, exit_status, output_contains } => command(connection, run, *exit_status, output_contains.as_deref()).await?,
    };
    let name = check_name.to_owned();
    Ok(match found {
        Found::Judged(passed, detail) => CheckResult { name, passed, skipped: None, detail },
        Found::Skipped(why) => CheckResult { name, passed: true, skipped: Some(why), detail: String::new() },
    })
}

async fn stdout(connection: &Connection, script: &str) -> Result<String, SshError> {
    Ok(connection.run(script, None).await?.stdout)
}

async fn package(connection: &Connection, name: &str, version: Option<&str>) -> Result<Found, SshError> {
    let found = stdout(connection, &format!("dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}' {}", quote(name))).await?;
    let (status, installed) = found.split_once('|').unwrap_or(("", ""));
    // The second letter of the abbreviated status is the package's state.
    let ok = status.chars().nth(1) == Some('i') && version.is_none_or(|v| v == installed);
    let found = if status.is_empty() { "not installed" } else { installed };
    Ok(Found::Judged(ok, format!("expected {name} {}, found {found}", version.unwrap_or("installed"))))
}

async fn file(
    connection: &Connection,
    path: &str,
    exists: bool,
    mode: Option<&str>,
    contains: &[String],
    sha256: Option<&str>,
) -> Result<Found, SshError> {
    let p = quote(path);
    let script = format!(
        "if [ -e {p} ]; then stat -c '%a' {p}; sha256sum {p} 2>/dev/null | cut -d' ' -f1; echo '--- kstack ---'; head -c 1048576 {p} 2>/dev/null; else echo absent; fi"
    );
    let text = stdout(connection, &script).await?;
    if text.trim() == "absent" {
        return Ok(Found::Judged(!exists, format!("{path} does not exist")));
    }
    if !exists {
        return Ok(Found::Judged(false, format!("{path} exists but should not")));
    }
    let (head, body) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let found_mode = lines.next().unwrap_or_default();
    let found_sha = lines.next().unwrap_or_default();
    let mut problems = Vec::new();
    if let Some(mode) = mode.map(|m| m.trim_start_matches('0')) {
        if found_mode != mode {
            problems.push(format!("mode {found_mode}, expected {mode}"));
        }
    }
    if let Some(sha) = sha256.filter(|s| *s != found_sha) {
        problems.push(format!("sha256 {found_sha}, expected {sha}"));
    }
    for needle in contains.iter().filter(|c| !body.contains(c.as_str())) {
        problems.push(format!("does not contain `{needle}`"));
    }
    Ok(Found::Judged(problems.is_empty(), format!("{path}: {}", problems.join("; "))))
}

async fn service(connection: &Connection, name: &str, enabled: Option<bool>, running: Option<bool>) -> Result<Found, SshError> {
    let text =
        stdout(connection, &format!("systemctl is-enabled {0} 2>/dev/null; echo; systemctl is-active {0} 2>/dev/null; echo", quote(name))).await?;
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let is_enabled = lines.next().unwrap_or("unknown").trim().to_owned();
    let is_active = lines.next().unwrap_or("unknown").trim().to_owned();
    let enabled_ok = enabled.is_none_or(|e| e == (is_enabled == "enabled"));
    let running_ok = running.is_none_or(|r| r == (is_active == "active"));
    Ok(Found::Judged(enabled_ok && running_ok, format!("{name} is {is_enabled} and {is_active}")))
}

async fn sysctl(connection: &Connection, name: &str, value: &str) -> Result<Found, SshError> {
    let found = stdout(connection, &format!("sysctl -n {}", quote(name))).await?;
    let normalize = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(Found::Judged(normalize(&found) == normalize(value), format!("{name} = {}, expected {value}", found.trim())))
}

async fn kernel_parameter(connection: &Connection, parameter: &str) -> Result<Found, SshError> {
    let found = stdout(connection, "cat /proc/cmdline").await?;
    Ok(Found::Judged(found.split_whitespace().any(|w| w == parameter), format!("{parameter} is not in /proc/cmdline: {}", found.trim())))
}

async fn listening(connection: &Connection, port: u16) -> Result<Found, SshError> {
    // The kernel's own tables: no dependency on ss or netstat being installed.
    let found = stdout(connection, "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").await?;
    let listening = found.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
        fields.get(3) == Some(&"0A") && local_port == Some(port)
    });
    Ok(Found::Judged(listening, format!("nothing listens on TCP port {port}")))
}

async fn huge_pages(connection: &Connection, enabled: &str, defrag: &str) -> Result<Found, SshError> {
    let found = stdout(connection, "cat /sys/kernel/mm/transparent_hugepage/enabled; cat /sys/kernel/mm/transparent_hugepage/defrag").await?;
    // The mode in effect is the one in brackets: `always madvise [never]`.
    let selected = |line: &str| line.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap_or_default().to_owned();
    let mut lines = found.lines();
    let (now_enabled, now_defrag) = (selected(lines.next().unwrap_or_default()), selected(lines.next().unwrap_or_default()));
    Ok(Found::Judged(
        now_enabled == enabled && now_defrag == defrag,
        format!("enabled={now_enabled} defrag={now_defrag}, expected enabled={enabled} defrag={defrag}"),
    ))
}

async fn mtu(connection: &Connection, interface: Option<&str>, value: u64) -> Result<Found, SshError> {
    let interface = match interface {
        Some(name) => name.to_owned(),
        None => stdout(connection, "awk '$2 == \"00000000\" { print $1; exit }' /proc/net/route").await?.trim().to_owned(),
    };
    let found = stdout(connection, &format!("cat /sys/class/net/{}/mtu", quote(&interface))).await?;
    Ok(Found::Judged(found.trim() == value.to_string(), format!("{interface} has MTU {}, expected {value}", found.trim())))
}

async fn command(connection: &Connection, run: &str, exit_status: u32, output_contains: Option<&str>) -> Result<Found, SshError> {
    let output = connection.run(run, None).await?;
    let passed = output.status == exit_status && output_contains.is_none_or(|c| output.stdout.contains(c));
    Ok(Found::Judged(passed, format!("`{run}` exited {} (expected {exit_status}); output: {}", output.status, output.stdout.trim())))
}
