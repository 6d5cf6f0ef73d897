//! Running checks (`checks.yaml`) on a host: `kstack verify` runs them; bake runs them
//! before an image is saved. Every check of a host is made in one command, the one that
//! gathers the host's facts: each kind reads the running system with a small script (its
//! probe), all of them run in turn in one batch, each under its own timeout and with its
//! output framed by a boundary no output can forge, and each is judged on what its probe
//! printed, as if it had run alone.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::modules::{quote, state_field, unit_state, SHOW_STATE};
use crate::ssh::{Connection, Facts, SshError, FACTS_SCRIPT};
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

/// A check to make: its name, its rendered kind, and how long its probe may take.
pub struct Pending {
    pub name: String,
    pub kind: CheckKind,
    pub timeout_seconds: u64,
}

impl Pending {
    /// The script that reads what the check judges, when it needs one.
    pub(crate) fn probe_script(&self) -> Option<String> {
        probe(self).ok()
    }
}

/// What a check found.
enum Found {
    /// Whether it passed, and what was expected and found.
    Judged(bool, String),
    /// It cannot be made here, and why.
    Skipped(String),
}

/// What a probe printed, and how it ended.
struct Answer {
    stdout: String,
    status: u32,
}

/// What the probes made on a host printed, by probe script: a probe answered in an earlier
/// command (the one gathering the facts) is not made again. A check rendered differently
/// once the facts are known has another script, so it never takes another's answer.
#[derive(Default)]
pub struct Answers {
    answered: HashMap<String, Answer>,
    /// Probes run with others under their shared limit that it cut off: next time, alone.
    cut_off: HashSet<String>,
}

/// A probe to make, and how long it may take.
struct Asked<'a> {
    script: &'a str,
    timeout_seconds: u64,
    /// A `command` check's, or one cut off with others before: it runs under its own limit.
    alone: bool,
}

/// Gathers the host's facts and makes the probes of `early` (checks that render alike
/// whatever the facts) in the same command.
pub async fn facts_and_probes(connection: &Connection, early: &[&Pending]) -> Result<(Facts, Answers), SshError> {
    let mut answers = Answers::default();
    let scripts: Vec<Result<String, Found>> = early.iter().map(|check| probe(check)).collect();
    let asked = answers.to_ask(early, &scripts);
    let facts = match answers.ask(connection, &asked, true).await? {
        Some(facts) => Facts::parse(&facts),
        None => connection.facts().await?,
    };
    Ok((facts, answers))
}

/// Makes `checks` on the host, in order, using what `answers` already holds: the others in
/// one command. kstack's own probes (packages, files, units, kernel tables: quick, and they
/// change nothing) run in subshells of one shell under one `timeout`, the shortest of theirs,
/// as a `timeout` and a shell per probe would cost the node more than most probes; a `command`
/// check keeps its own. Should the shared limit run out (a probe hung), the probes left
/// without an answer are made again, each under its own limit, in a second command: each
/// check is judged as if it were made alone.
pub async fn run_all(checks: &[&Pending], connection: &Connection, facts: &Facts, mut answers: Answers) -> Result<Vec<CheckResult>, SshError> {
    let scripts: Vec<Result<String, Found>> = checks.iter().map(|check| probe(check)).collect();
    // Together first, then alone for the probes the shared limit cut off.
    for _ in 0..2 {
        let asked = answers.to_ask(checks, &scripts);
        if asked.is_empty() {
            break;
        }
        answers.ask(connection, &asked, false).await?;
    }
    Ok(checks
        .iter()
        .zip(scripts)
        .map(|(check, script)| {
            let found = match script {
                Err(decided) => decided,
                Ok(script) => match skipped(&check.kind, facts) {
                    Some(why) => Found::Skipped(why),
                    None => match answers.answered.get(&script) {
                        // coreutils `timeout`: 124 when the limit ran out, 137 when it had to kill.
                        Some(Answer { status: 124 | 137, .. }) => {
                            Found::Judged(false, format!("did not finish within {} s (timeout_seconds)", check.timeout_seconds))
                        }
                        Some(answer) => judge(&check.kind, answer),
                        None => Found::Judged(false, String::from("its probe printed nothing where it should have: the batch was cut short")),
                    },
                },
            };
            let name = check.name.clone();
            match found {
                Found::Judged(passed, detail) => CheckResult { name, passed, skipped: None, detail },
                Found::Skipped(why) => CheckResult { name, passed: true, skipped: Some(why), detail: String::new() },
            }
        })
        .collect())
}

impl Answers {
    /// The probes of `checks` (whose scripts are `scripts`) not answered yet, once each.
    fn to_ask<'a>(&self, checks: &[&Pending], scripts: &'a [Result<String, Found>]) -> Vec<Asked<'a>> {
        let mut asked: Vec<Asked> = Vec::new();
        for (check, script) in checks.iter().zip(scripts) {
            let Ok(script) = script else { continue };
            if self.answered.contains_key(script) || asked.iter().any(|a| a.script == script) {
                continue;
            }
            let alone = matches!(check.kind, CheckKind::Command { .. }) || self.cut_off.contains(script);
            asked.push(Asked { script, timeout_seconds: check.timeout_seconds, alone });
        }
        asked
    }

    /// Makes `asked` in one command, after gathering the facts when `with_facts` (their output
    /// is returned), and keeps each probe's answer.
    async fn ask(&mut self, connection: &Connection, asked: &[Asked<'_>], with_facts: bool) -> Result<Option<String>, SshError> {
        let boundary = format!("kstack-check-{:016x}", rand::random::<u64>());
        // A command between lines that label it, with no input to take from the batch.
        let framed_command = |label: &str, command: &str| {
            format!("printf '%s begin {label}\\n' {boundary}\n{command} </dev/null 2>/dev/null\nprintf '\\n%s end {label} %d\\n' {boundary} $?\n")
        };
        let mut script = if with_facts { framed_command("facts", &format!("(\n{FACTS_SCRIPT}\n)")) } else { String::new() };
        let (alone, together): (Vec<_>, Vec<_>) = asked.iter().enumerate().partition(|(_, a)| a.alone);
        if let Some(limit) = together.iter().map(|(_, a)| a.timeout_seconds).min() {
            let batch: String = together.iter().map(|(index, a)| framed_command(&index.to_string(), &format!("( {}\n)", a.script))).collect();
            script.push_str(&format!("timeout -k 5 {limit} sh -c {} </dev/null 2>/dev/null\n", quote(&batch)));
        }
        for (index, a) in &alone {
            script.push_str(&framed_command(&index.to_string(), &format!("timeout -k 5 {} sh -c {}", a.timeout_seconds, quote(a.script))));
        }
        let output = connection.run(&script, None).await?.stdout;
        for (index, a) in asked.iter().enumerate() {
            match framed(&output, &boundary, &index.to_string()) {
                Some(answer) => {
                    self.answered.insert(a.script.to_owned(), answer);
                }
                None if !a.alone => {
                    self.cut_off.insert(a.script.to_owned());
                }
                None => {}
            }
        }
        Ok(with_facts.then(|| framed(&output, &boundary, "facts")).flatten().filter(|facts| facts.status == 0).map(|facts| facts.stdout))
    }
}

/// The output and status of the command labelled `label`, from between its begin and end lines.
fn framed(output: &str, boundary: &str, label: &str) -> Option<Answer> {
    let begin = format!("{boundary} begin {label}\n");
    let end = format!("\n{boundary} end {label} ");
    let start = output.find(&begin)? + begin.len();
    let length = output[start..].find(&end)?;
    let status = output[start + length + end.len()..].lines().next()?.trim().parse().ok()?;
    Some(Answer { stdout: output[start..start + length].to_owned(), status })
}

/// Why a check cannot be made on this host: kernel state in a container is the host's, and
/// only a VM (or a real machine) shows it. Its probe is made all the same, as it is sent
/// before the facts are known, and is cheap.
fn skipped(kind: &CheckKind, facts: &Facts) -> Option<String> {
    let kind_of = facts.virtualization.as_str();
    facts.container.then_some(())?;
    match kind {
        CheckKind::Sysctl { .. } => Some(format!("kernel settings cannot be checked in a {kind_of} container")),
        CheckKind::KernelParameter { .. } => Some(format!("the kernel command line is the host's in a {kind_of} container")),
        CheckKind::TransparentHugePages { .. } => Some(format!("needs a real VM: huge pages are the host kernel's in a {kind_of} container")),
        CheckKind::Mtu { .. } => Some(format!("needs a real VM: a {kind_of} container shares the host's interfaces")),
        _ => None,
    }
}

/// The script that reads what a check judges, or the finding when it needs none.
fn probe(check: &Pending) -> Result<String, Found> {
    let kind = &check.kind;
    Ok(match kind {
        CheckKind::Package { name, .. } => format!("dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}' {}", quote(name)),
        // Only what the check judges: its mode, its digest, its content (a process each).
        CheckKind::File { path, mode, contains, sha256, .. } => {
            let p = quote(path);
            let mode = if mode.is_some() { format!("stat -c '%a' {p}") } else { String::from("echo") };
            let digest = if sha256.is_some() { format!("h=$(sha256sum {p} 2>/dev/null); echo \"${{h%% *}}\"") } else { String::from("echo") };
            let content = if contains.is_empty() { String::new() } else { format!("; head -c 1048576 {p} 2>/dev/null") };
            format!("if [ -e {p} ]; then {mode}; {digest}; echo '--- kstack ---'{content}; else echo absent; fi")
        }
        // One `systemctl` (about 7 ms of the node's time each), as a role's service task asks
        // ([`unit_state`]). A unit on its way (activating, deactivating, reloading: just after
        // boot) is asked again each second until it settles, for as long as the check's time
        // allows.
        CheckKind::Service { name, .. } => {
            let polls = check.timeout_seconds.saturating_sub(2);
            format!(
                "n=0; while :; do o=$({SHOW_STATE} {} 2>/dev/null); a=${{o#*ActiveState=}}; a=\"${{a%%\n*}}\"\n\
                 case \"$a\" in activating|deactivating|reloading|refreshing) [ \"$n\" -lt {polls} ] || break; n=$((n + 1)); sleep 1 ;; *) break ;; esac; done\n{}",
                quote(name),
                unit_state(name)
            )
        }
        CheckKind::Sysctl { name, .. } => format!("sysctl -n {}", quote(name)),
        CheckKind::KernelParameter { .. } => String::from("cat /proc/cmdline"),
        // The kernel's own tables: no dependency on ss or netstat being installed.
        CheckKind::Port { port } => match port.value().and_then(|p| u16::try_from(p).ok()) {
            Some(_) => String::from("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"),
            None => return Err(Found::Judged(false, format!("port {port:?} is not a TCP port number"))),
        },
        CheckKind::TransparentHugePages { .. } => {
            String::from("cat /sys/kernel/mm/transparent_hugepage/enabled; cat /sys/kernel/mm/transparent_hugepage/defrag")
        }
        CheckKind::Mtu { interface, value } => match value.value() {
            None => return Err(Found::Judged(false, format!("MTU {value:?} is not a number"))),
            Some(_) => {
                let interface = match interface {
                    Some(name) => quote(name),
                    None => String::from("\"$(awk '$2 == \"00000000\" { print $1; exit }' /proc/net/route)\""),
                };
                format!("i={interface}; echo \"$i\"; cat \"/sys/class/net/$i/mtu\"")
            }
        },
        CheckKind::Command { run, .. } => run.clone(),
    })
}

/// A check's finding from what its probe printed.
fn judge(kind: &CheckKind, probed: &Answer) -> Found {
    let found = probed.stdout.as_str();
    match kind {
        CheckKind::Package { name, version } => {
            let (status, installed) = found.split_once('|').unwrap_or(("", ""));
            // The second letter of the abbreviated status is the package's state.
            let ok = status.chars().nth(1) == Some('i') && version.as_deref().is_none_or(|v| v == installed);
            let found = if status.is_empty() { "not installed" } else { installed };
            Found::Judged(ok, format!("expected {name} {}, found {found}", version.as_deref().unwrap_or("installed")))
        }
        CheckKind::File { path, exists, mode, contains, sha256 } => file(path, *exists, mode.as_deref(), contains, sha256.as_deref(), found),
        CheckKind::Service { name, enabled, running } => {
            let state = |key: &str| Some(state_field(found, key)).filter(|v| !v.is_empty()).unwrap_or("unknown").to_owned();
            let (is_enabled, is_active) = (state("UnitFileState="), state("ActiveState="));
            let enabled_ok = enabled.is_none_or(|e| e == (is_enabled == "enabled"));
            let running_ok = running.is_none_or(|r| r == (is_active == "active"));
            Found::Judged(enabled_ok && running_ok, format!("{name} is {is_enabled} and {is_active}"))
        }
        CheckKind::Sysctl { name, value } => {
            let normalize = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
            Found::Judged(normalize(found) == normalize(value), format!("{name} = {}, expected {value}", found.trim()))
        }
        CheckKind::KernelParameter { parameter } => {
            Found::Judged(found.split_whitespace().any(|w| w == parameter), format!("{parameter} is not in /proc/cmdline: {}", found.trim()))
        }
        CheckKind::Port { port } => {
            let port = port.value().and_then(|p| u16::try_from(p).ok());
            let listening = found.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
                fields.get(3) == Some(&"0A") && local_port.is_some() && local_port == port
            });
            Found::Judged(listening, format!("nothing listens on TCP port {}", port.unwrap_or_default()))
        }
        CheckKind::TransparentHugePages { enabled, defrag } => {
            // The mode in effect is the one in brackets: `always madvise [never]`.
            let selected = |line: &str| line.split('[').nth(1).and_then(|r| r.split(']').next()).unwrap_or_default().to_owned();
            let mut lines = found.lines();
            let (now_enabled, now_defrag) = (selected(lines.next().unwrap_or_default()), selected(lines.next().unwrap_or_default()));
            Found::Judged(
                now_enabled == *enabled && now_defrag == *defrag,
                format!("enabled={now_enabled} defrag={now_defrag}, expected enabled={enabled} defrag={defrag}"),
            )
        }
        CheckKind::Mtu { value, .. } => {
            let mut lines = found.lines();
            let (interface, mtu) = (lines.next().unwrap_or_default().trim(), lines.next().unwrap_or_default().trim());
            let value = value.value().unwrap_or_default();
            Found::Judged(mtu == value.to_string(), format!("{interface} has MTU {mtu}, expected {value}"))
        }
        CheckKind::Command { run, exit_status, output_contains } => {
            let passed = probed.status == *exit_status && output_contains.as_deref().is_none_or(|c| found.contains(c));
            Found::Judged(passed, format!("`{run}` exited {} (expected {exit_status}); output: {}", probed.status, found.trim()))
        }
    }
}

fn file(path: &str, exists: bool, mode: Option<&str>, contains: &[String], sha256: Option<&str>, text: &str) -> Found {
    if text.trim() == "absent" {
        return Found::Judged(!exists, format!("{path} does not exist"));
    }
    if !exists {
        return Found::Judged(false, format!("{path} exists but should not"));
    }
    let (head, body) = text.split_once("--- kstack ---\n").unwrap_or((text, ""));
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
    Found::Judged(problems.is_empty(), format!("{path}: {}", problems.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::framed;

    #[test]
    fn each_probe_is_read_between_its_own_lines_whatever_it_printed() {
        let b = "kstack-check-00ff";
        // As the batch prints them: a newline before each end line.
        let output = format!("{b} begin 0\nfirst\n\n{b} end 0 0\n{b} begin 2\nno newline\n{b} end 2 1\n");
        let first = framed(&output, b, "0").unwrap();
        assert_eq!((first.stdout.as_str(), first.status), ("first\n", 0));
        let third = framed(&output, b, "2").unwrap();
        assert_eq!((third.stdout.as_str(), third.status), ("no newline", 1));
        assert!(framed(&output, b, "1").is_none(), "a probe that never ran");
        // A probe printing a line like a boundary with another token forges nothing.
        let forged = format!("{b} begin 0\nkstack-check-1111 end 0 0\n{b} end 0 3\n");
        assert_eq!(framed(&forged, b, "0").unwrap().status, 3);
    }
}
