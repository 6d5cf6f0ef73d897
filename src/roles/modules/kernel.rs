//! `kernel_cmdline`: a parameter on the kernel command line, through GRUB's defaults and
//! `update-grub`; it takes effect at the next boot.

use super::{Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{KernelCmdline, Presence};

const GRUB: &str = "/etc/default/grub";
const KEY: &str = "GRUB_CMDLINE_LINUX_DEFAULT";

/// The file with the parameter set (replacing another value of the same name) or removed.
fn edit(grub: &str, parameter: &str, present: bool) -> String {
    let name = parameter.split('=').next().unwrap_or(parameter);
    let mut found = false;
    let mut lines: Vec<String> = grub
        .lines()
        .map(|line| {
            let Some(value) = line.strip_prefix(&format!("{KEY}=")) else {
                return line.to_owned();
            };
            found = true;
            let mut words: Vec<&str> = value.trim_matches('"').split_whitespace().filter(|w| w.split('=').next() != Some(name)).collect();
            if present {
                words.push(parameter);
            }
            format!("{KEY}=\"{}\"", words.join(" "))
        })
        .collect();
    if !found && present {
        lines.push(format!("{KEY}=\"{parameter}\""));
    }
    lines.join("\n") + "\n"
}

impl Query for KernelCmdline {
    fn query(&self) -> Option<String> {
        Some(format!("command -v update-grub || true; echo '--- kstack ---'; cat {GRUB} 2>/dev/null || true"))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::path(GRUB), Touch::path("/usr/sbin/update-grub")]
    }
}

impl Converge for KernelCmdline {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let present = self.state == Presence::Present;
        let text = host.query(&self.query().unwrap_or_default()).await?.stdout;
        let (update_grub, current) = text.split_once("--- kstack ---\n").unwrap_or(("", &text));
        let wanted = edit(current, &self.parameter, present);
        if wanted == current {
            return Ok(TaskOutcome::default());
        }
        let diffs = vec![FieldDiff::new(KEY, line_of(current), line_of(&wanted))];
        let mut notes = vec![String::from("takes effect at the next boot")];
        if !host.check {
            host.write_file(GRUB, wanted.as_bytes(), 0o644, "root", "root");
            // Debian's and Ubuntu's mark for "reboot to finish": the bake reboots its builder on
            // it, unattended-upgrades' reboot guard reboots a node in its slot. A container's
            // kernel is its host's: no reboot of its own changes the command line.
            let mut script = String::from(if host.facts.container { "" } else { "touch /var/run/reboot-required\n" });
            if update_grub.trim().is_empty() {
                notes.push(String::from("update-grub is not installed here: only /etc/default/grub was changed"));
            } else {
                script.push_str("update-grub 2>&1\n");
            }
            if !script.is_empty() {
                host.must(script, "update-grub", vec![Touch::tree("/boot"), Touch::path("/var/run/reboot-required")]);
            }
        }
        Ok(TaskOutcome { diffs, content_diff: None, notes })
    }
}

fn line_of(grub: &str) -> String {
    grub.lines().find(|l| l.starts_with(KEY)).unwrap_or("(unset)").to_owned()
}

#[cfg(test)]
mod tests {
    use super::edit;

    #[test]
    fn parameters_are_added_replaced_and_removed_once() {
        let grub = "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet transparent_hugepage=always\"\n";
        let set = edit(grub, "transparent_hugepage=never", true);
        assert_eq!(set, "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet transparent_hugepage=never\"\n");
        assert_eq!(edit(&set, "transparent_hugepage=never", true), set);
        assert_eq!(edit(&set, "transparent_hugepage", false), "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n");
        assert_eq!(edit("", "quiet", true), "GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n");
    }
}
