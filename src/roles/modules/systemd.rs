//! `systemd_unit` and `service`: a unit file or drop-in (optional), whether the unit is
//! enabled, and whether it runs. A changed unit file is followed by `daemon-reload` (except the
//! first file of a unit systemd never had, which it loads when the unit is first asked for),
//! and a running unit whose file changed is restarted.

use super::{quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{RunState, Systemd};

/// The unit file, or the drop-in when one is named.
fn unit_file(unit: &Systemd) -> String {
    match &unit.dropin {
        Some(dropin) => format!("/etc/systemd/system/{}.d/{dropin}.conf", unit.name),
        None => format!("/etc/systemd/system/{}", unit.name),
    }
}

impl Query for Systemd {
    fn query(&self) -> Option<String> {
        let unit = quote(&self.name);
        Some(format!(
            "echo \"enabled=$(systemctl is-enabled {unit} 2>/dev/null)\"; echo \"active=$(systemctl is-active {unit} 2>/dev/null)\"; echo '--- kstack ---'; cat {} 2>/dev/null || true",
            quote(&unit_file(self))
        ))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::path(&unit_file(self)), Touch::Unit(self.name.clone())]
    }
}

impl Converge for Systemd {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let unit = quote(&self.name);
        let file = unit_file(self);
        let text = host.query(&self.query().unwrap_or_default()).await?.stdout;
        let (status, current) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
        let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim().to_owned();
        let (enabled, active) = (field("enabled="), field("active="));
        // systemd has no file for the unit and does not run it: it loads the new file when the
        // unit is first asked for, so writing it needs no daemon-reload (about 130 ms of the
        // manager's time on a small node). Any unit it knows, and any drop-in, does.
        let known = !enabled.is_empty() || !matches!(active.as_str(), "" | "inactive" | "unknown");
        let mut diffs = Vec::new();
        let file_changed = match &self.content {
            Some(content) if current != content => {
                let exists = !current.is_empty();
                diffs.push(FieldDiff::new(
                    if self.dropin.is_some() { "dropin" } else { "unit_file" },
                    if exists { "differs" } else { "(absent)" },
                    file.clone(),
                ));
                true
            }
            _ => false,
        };
        let is_enabled = matches!(enabled.as_str(), "enabled" | "enabled-runtime" | "static" | "alias");
        if let Some(wanted) = self.enabled {
            if wanted != is_enabled {
                diffs.push(FieldDiff::new("enabled", is_enabled.to_string(), wanted.to_string()));
            }
        }
        let running = active == "active" || active == "activating";
        match self.state {
            Some(RunState::Started) if !running => diffs.push(FieldDiff::new("state", active.clone(), "started")),
            Some(RunState::Stopped) if running => diffs.push(FieldDiff::new("state", active.clone(), "stopped")),
            Some(RunState::Started) if file_changed => diffs.push(FieldDiff::new("state", "started", "restarted")),
            _ => {}
        }
        if diffs.is_empty() || host.check {
            return Ok(TaskOutcome { diffs, ..TaskOutcome::default() });
        }
        if let Some(content) = &self.content {
            if file_changed {
                host.write_file(&file, content.as_bytes(), 0o644, "root", "root");
            }
        }
        let mut script = String::from("set -e\n");
        if file_changed && (known || self.dropin.is_some()) {
            script.push_str("systemctl daemon-reload\n");
        }
        // Enabling reloads systemd by itself, unless told the reload above (or loading on
        // demand) will do.
        let reload = if file_changed { " --no-reload" } else { "" };
        match self.enabled {
            Some(true) if !is_enabled => script.push_str(&format!("systemctl enable{reload} {unit}\n")),
            Some(false) if is_enabled => script.push_str(&format!("systemctl disable{reload} {unit}\n")),
            _ => {}
        }
        match self.state {
            Some(RunState::Started) if !running => script.push_str(&format!("systemctl start {unit}\n")),
            Some(RunState::Started) if file_changed => script.push_str(&format!("systemctl restart {unit}\n")),
            Some(RunState::Stopped) if running => script.push_str(&format!("systemctl stop {unit}\n")),
            _ => {}
        }
        // A service starting or stopping may change anything; enabling changes only the unit.
        let touches = if ["start ", "restart ", "stop "].iter().any(|verb| script.contains(&format!("systemctl {verb}"))) {
            vec![Touch::Everything]
        } else {
            vec![Touch::path(&file), Touch::Unit(self.name.clone())]
        };
        host.must(script, &format!("systemctl for {}", self.name), touches);
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}
