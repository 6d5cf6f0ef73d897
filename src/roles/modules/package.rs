//! `package` (apt: install, pin a version, hold, remove) and `apt_repository` (a source list
//! entry and its signing key).

use super::{quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{AptRepository, Package, Presence};

const APT: &str = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Options::=--force-confold";

impl Query for Package {
    /// dpkg's own database answers both questions in one quick process: the first letter of
    /// the status is the selection (`h` is what `apt-mark hold` sets), the second the state.
    /// apt-mark and apt-cache would load apt's whole cache, seconds on a small node.
    fn query(&self) -> Option<String> {
        Some(format!("dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}\\n' {} 2>/dev/null || true", quote(&self.name)))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::Package(self.name.clone())]
    }
}

impl Converge for Package {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let name = quote(&self.name);
        let text = host.query_must(&self.query().unwrap_or_default(), "querying dpkg").await?;
        let (abbrev, version) = text.trim().split_once('|').unwrap_or(("", ""));
        let installed = abbrev.starts_with("ii") || abbrev.starts_with("hi");
        let held = abbrev.starts_with('h');
        let mut diffs = Vec::new();
        let mut script = String::from("set -e\n");
        if self.update_cache {
            script.push_str(&format!("{APT} update\n"));
        }
        match self.state {
            Presence::Present => {
                let wrong_version = self.version.as_deref().is_some_and(|v| v != version);
                if !installed || wrong_version {
                    let before = if installed { version.to_owned() } else { String::from("(not installed)") };
                    diffs.push(FieldDiff::new("version", before, self.version.clone().unwrap_or_else(|| String::from("any"))));
                    let target = match &self.version {
                        Some(v) => quote(&format!("{}={v}", self.name)),
                        None => name.clone(),
                    };
                    if held {
                        script.push_str(&format!("apt-mark unhold {name} >/dev/null\n"));
                    }
                    // Package lists a fresh image lacks (bakes remove them) or that predate the
                    // wanted version are fetched first, once: when no source offers it.
                    let offered = match &self.version {
                        Some(v) => format!("grep -qF {}", quote(&format!(" | {v} | "))),
                        None => String::from("grep -q ."),
                    };
                    script.push_str(&format!("apt-cache madison {name} 2>/dev/null | {offered} || {APT} update\n"));
                    script.push_str(&format!("{APT} install --allow-downgrades --allow-change-held-packages {target}\n"));
                }
            }
            Presence::Absent => {
                if installed {
                    diffs.push(FieldDiff::new("state", "present", "absent"));
                    script.push_str(&format!("{APT} remove --allow-change-held-packages {name}\n"));
                }
            }
        }
        if let Some(hold) = self.hold.filter(|_| self.state == Presence::Present) {
            if hold != held || (hold && !diffs.is_empty()) {
                if hold != held {
                    diffs.push(FieldDiff::new("hold", held.to_string(), hold.to_string()));
                }
                script.push_str(&format!("apt-mark {} {name} >/dev/null\n", if hold { "hold" } else { "unhold" }));
            }
        }
        if !diffs.is_empty() && !host.check {
            // Install scripts may add users, units, files: anything.
            host.must(script, &format!("apt for {}", self.name), vec![Touch::Everything]);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}

/// The source list and keyring of a repository.
fn repository_files(repository: &AptRepository) -> (String, String) {
    (format!("/etc/apt/sources.list.d/{}.list", repository.name), format!("/etc/apt/keyrings/{}.asc", repository.name))
}

impl Query for AptRepository {
    fn query(&self) -> Option<String> {
        let (list, keyring) = repository_files(self);
        Some(format!("cat {} 2>/dev/null; echo '--- kstack ---'; cat {} 2>/dev/null || true", quote(&list), quote(&keyring)))
    }

    fn reads(&self) -> Vec<Touch> {
        let (list, keyring) = repository_files(self);
        vec![Touch::path(&list), Touch::path(&keyring)]
    }
}

impl Converge for AptRepository {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        // An empty key (a variable left unset) means none.
        let key = self.key.as_deref().filter(|k| !k.trim().is_empty());
        let (list, keyring) = repository_files(self);
        let source = match (key, self.source.strip_prefix("deb ")) {
            (Some(_), Some(rest)) if !self.source.contains("signed-by") => match rest.strip_prefix('[') {
                Some(options) => format!("deb [signed-by={keyring} {options}"),
                None => format!("deb [signed-by={keyring}] {rest}"),
            },
            _ => self.source.clone(),
        };
        let wanted_list = format!("{source}\n");
        let text = host.query_must(&self.query().unwrap_or_default(), "reading the repository").await?;
        let (current_list, current_key) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
        let mut diffs = Vec::new();
        if current_list != wanted_list {
            diffs.push(FieldDiff::new("source", current_list.trim(), source.clone()));
        }
        if let Some(key) = key {
            if current_key != key {
                diffs.push(FieldDiff::new("key", if current_key.is_empty() { "(absent)" } else { "differs" }, keyring.clone()));
            }
        }
        if !diffs.is_empty() && !host.check {
            if let Some(key) = key {
                host.write_file(&keyring, key.as_bytes(), 0o644, "root", "root");
            }
            host.write_file(&list, wanted_list.as_bytes(), 0o644, "root", "root");
            // Only the new source: its package lists are what the next task needs, and the
            // others do not have to be fetched again for it.
            let update = format!("{APT} update -o Dir::Etc::sourcelist={} -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0", quote(&list));
            host.must(update, "apt-get update", vec![Touch::tree("/var/lib/apt/lists")]);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}
