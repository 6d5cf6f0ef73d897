//! `sysctl`: a kernel setting, persisted in `/etc/sysctl.d` and applied at once. Inside a
//! container the kernel's settings are the host's: kstack persists the setting and says it
//! could not apply it, rather than pretend.

use super::{quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::Sysctl;

/// The setting under /proc, as `sysctl -n` reads it.
fn proc_path(sysctl: &Sysctl) -> String {
    format!("/proc/sys/{}", sysctl.name.replace('.', "/"))
}

/// Where the setting is persisted.
fn file(sysctl: &Sysctl) -> String {
    format!("/etc/sysctl.d/60-kstack-{}.conf", sysctl.name.replace(['/', '.'], "-"))
}

impl Query for Sysctl {
    fn query(&self) -> Option<String> {
        Some(format!("cat {} 2>/dev/null; echo '--- kstack ---'; sysctl -n {} 2>/dev/null || true", quote(&file(self)), quote(&self.name)))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::path(&file(self)), Touch::path(&proc_path(self))]
    }
}

impl Converge for Sysctl {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        if self.name.contains(|c: char| c.is_whitespace() || c == '=') {
            return Err(TaskError::Failed(format!("`{}` is not a sysctl name", self.name)));
        }
        let file = file(self);
        let wanted_file = format!("{} = {}\n", self.name, self.value);
        let text = host.query_must(&self.query().unwrap_or_default(), "reading the setting").await?;
        let (persisted, running) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
        let normalize = |v: &str| v.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut diffs = Vec::new();
        let mut notes = Vec::new();
        if persisted != wanted_file {
            diffs.push(FieldDiff::new("persisted", persisted.trim(), wanted_file.trim()));
        }
        let container = host.facts.container;
        if container {
            notes.push(format!(
                "{} is a {} container: {} is persisted for the next boot of a real machine, not applied",
                host.connection.host, host.facts.virtualization, self.name
            ));
        } else if normalize(running) != normalize(&self.value) {
            diffs.push(FieldDiff::new("value", normalize(running), normalize(&self.value)));
        }
        if !diffs.is_empty() && !host.check {
            host.write_file(&file, wanted_file.as_bytes(), 0o644, "root", "root");
            if !container {
                host.must(
                    format!("sysctl -q -w {}={}", quote(&self.name), quote(&self.value)),
                    "applying the setting",
                    vec![Touch::path(&proc_path(self))],
                );
            }
        }
        Ok(TaskOutcome { diffs, content_diff: None, notes })
    }
}
