//! `systemd_unit` and `service`: a unit file or drop-in (optional), whether the unit is
//! enabled, and whether it runs. A changed unit file is followed by `daemon-reload` (except the
//! first file of a unit systemd never had, which it loads when the unit is first asked for;
//! unit files changed one after another share one, see [`super::Host::reload_units`]), and a
//! running unit whose file changed is restarted.
//!
//! Starting a unit that pulls in no other unit (its file names none, and it has no drop-ins
//! or `.wants`/`.requires` links) leaves the next unit's task judged as fetched: its processes
//! are taken to change anything but unit files and other units' state ([`Touch::Service`]).

use super::file::content_query;
use super::{quote, unit_template, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{RunState, Systemd};

/// The unit file, or the drop-in when one is named.
fn unit_file(unit: &Systemd) -> String {
    match &unit.dropin {
        Some(dropin) => format!("/etc/systemd/system/{}.d/{dropin}.conf", unit.name),
        None => format!("/etc/systemd/system/{}", unit.name),
    }
}

/// Where systemd looks for units, their drop-ins and the links that pull units in with them.
const UNIT_PATHS: &str = "/etc/systemd/system /run/systemd/transient /run/systemd/generator.early /run/systemd/system \
                          /run/systemd/generator /lib/systemd/system /usr/lib/systemd/system /run/systemd/generator.late";

/// Settings by which a unit starts, stops or restarts other units along with itself.
const PULLING: &[&str] = &[
    "Wants",
    "Requires",
    "Requisite",
    "BindsTo",
    "Upholds",
    "PartOf",
    "Conflicts",
    "OnFailure",
    "OnSuccess",
    "PropagatesReloadTo",
    "ReloadPropagatedFrom",
    "PropagatesStopTo",
    "StopPropagatedFrom",
    "JoinsNamespaceOf",
    "Unit",
    "Service",
];

/// Targets that are reached at boot: pulling them in starts nothing new.
const BOOT_TARGETS: &[&str] = &[
    "basic.target",
    "sysinit.target",
    "local-fs.target",
    "remote-fs.target",
    "network.target",
    "network-online.target",
    "multi-user.target",
    "default.target",
    "nss-lookup.target",
    "time-sync.target",
    "paths.target",
    "sockets.target",
    "timers.target",
];

/// Whether a unit file names another unit in a setting that starts, stops or restarts it.
fn pulls_other_units(content: &str) -> bool {
    content.lines().filter_map(|line| line.trim().split_once('=')).any(|(key, value)| {
        PULLING.contains(&key.trim()) && value.split_whitespace().any(|unit| !BOOT_TARGETS.contains(&unit.trim_start_matches(['-', '+', '!'])))
    })
}

/// What a unit's state is asked with: its file state and whether it runs.
pub(crate) const SHOW_STATE: &str = "systemctl show -p UnitFileState -p ActiveState --";

/// After `$o` holds what [`SHOW_STATE`] printed of `unit`: prints it, then `is-enabled`'s
/// answer as the file state where `show`'s is not plainly enabled, disabled, static or masked
/// (a SysV script's generated unit: `is-enabled` asks its init links). Read it with
/// [`state_field`].
pub(crate) fn unit_state(unit: &str) -> String {
    format!(
        "echo \"$o\"\ncase \"$o\" in *UnitFileState=enabled*|*UnitFileState=disabled*|*UnitFileState=static*|*UnitFileState=masked*) ;;\n\
         *) echo \"UnitFileState=$(systemctl is-enabled -- {} 2>/dev/null)\" ;; esac",
        quote(unit)
    )
}

/// The value of `key` (`UnitFileState=`, `ActiveState=`) in what [`unit_state`] printed: the
/// last answer counts, as `is-enabled` follows `show` where only it knows.
pub(crate) fn state_field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().rev().find_map(|l| l.strip_prefix(key)).unwrap_or_default().trim()
}

/// A shell test that sets `$f` when systemd has a file for `unit` (an instance's may be its
/// template's).
fn has_file(unit: &str) -> String {
    let template = unit_template(unit).unwrap_or_else(|| unit.to_owned());
    format!("f=; for d in {UNIT_PATHS}; do [ -e \"$d\"/{} ] || [ -e \"$d\"/{} ] && f=1; done", quote(unit), quote(&template))
}

/// The shell variable in which [`units_ahead`] leaves `unit`'s state: what `systemctl show`
/// printed of it (`show`), or what `systemctl is-active` did (`active`).
fn ahead_variable(kind: &str, unit: &str) -> String {
    format!("ku_{kind}_{}", unit.bytes().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Lines for a batch's script, before its queries, that ask systemd about `units` with one
/// `systemctl show` for those it has a file for and one `is-active` for the others, instead of
/// one `systemctl` per unit (about 7 ms of the node's time each), leaving each unit's answer in
/// its [`ahead_variable`] for its query. Both print their answers in the order asked: `show`
/// a block per unit, blank lines between, `is-active` a line. A failed call leaves the
/// variables unset, and each query asks for itself; so do units whose names are not plain
/// words of systemd's unit name characters.
pub(crate) fn units_ahead<'a>(units: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut named: Vec<&str> =
        units.into_iter().filter(|u| !u.starts_with('-') && u.chars().all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c))).collect();
    named.sort_unstable();
    named.dedup();
    (named.len() >= 2).then(|| {
        let mut script = String::from("kn=; kx=\n");
        for unit in &named {
            script.push_str(&format!("{}; if [ -n \"$f\" ]; then kn=\"$kn {unit}\"; else kx=\"$kx {unit}\"; fi\n", has_file(unit)));
        }
        script.push_str(&format!(
            "set -f\nku=; [ -z \"$kn\" ] || ku=$({SHOW_STATE} $kn 2>/dev/null) || ku=\n\
             kv=; [ -z \"$kx\" ] || kv=$(systemctl is-active -- $kx 2>/dev/null; true)\nset +f\n"
        ));
        for unit in &named {
            script.push_str(&format!(
                "case \" $kn \" in *\" {unit} \"*) [ -z \"$ku\" ] || {}=${{ku%%\"\n\n\"*}}; case \"$ku\" in *\"\n\n\"*) ku=${{ku#*\"\n\n\"}} ;; *) ku= ;; esac ;;\n\
                 *) [ -z \"$kv\" ] || {}=${{kv%%\"\n\"*}}; case \"$kv\" in *\"\n\"*) kv=${{kv#*\"\n\"}} ;; *) kv= ;; esac ;; esac\n",
                ahead_variable("show", unit),
                ahead_variable("active", unit)
            ));
        }
        script
    })
}

impl Query for Systemd {
    /// The unit's state, its drop-in and link directories, and the file the task manages. A
    /// unit with a file is asked with `show`, which loads it, and `is-enabled` only where
    /// `show`'s file state is not plainly enabled, disabled, static or masked (a SysV script's
    /// generated unit: `is-enabled` asks its init links); one without a file is only asked
    /// whether it runs, which loads nothing, so a new unit's first file needs no reload. A
    /// batch asks for all its units at once ([`units_ahead`]). Directories are looked at with
    /// shell tests.
    fn query(&self) -> Option<String> {
        let unit = quote(&self.name);
        let (show, active) = (ahead_variable("show", &self.name), ahead_variable("active", &self.name));
        Some(format!(
            "{}\nfor d in {UNIT_PATHS}; do for s in .d .wants .requires .upholds; do [ -e \"$d\"/{unit}\"$s\" ] && echo \"linked=$d\"; done; done\n\
             if [ -n \"$f\" ]; then if [ -n \"${{{show}+x}}\" ]; then o=${show}; else o=$({SHOW_STATE} {unit} 2>/dev/null); fi\n{}\n\
             elif [ -n \"${{{active}+x}}\" ]; then echo \"ActiveState=${active}\"\n\
             else echo \"ActiveState=$(systemctl is-active -- {unit} 2>/dev/null)\"; fi\n\
             echo '--- kstack ---'\n{}",
            has_file(&self.name),
            unit_state(&self.name),
            content_query(&unit_file(self))
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
        let (enabled, active) = (state_field(status, "UnitFileState=").to_owned(), state_field(status, "ActiveState=").to_owned());
        let linked = status.lines().any(|l| l.starts_with("linked="));
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
        let own = vec![Touch::path(&file), Touch::Unit(self.name.clone())];
        if file_changed && (known || self.dropin.is_some()) {
            host.reload_units(&self.name, own.clone());
        }
        let mut script = String::from("set -e\n");
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
        // A service starting or stopping may change anything, and other units with it unless it
        // starts alone; enabling changes only the unit.
        let acts = |verbs: &[&str]| verbs.iter().any(|verb| script.contains(&format!("systemctl {verb} ")));
        let known_file = if self.dropin.is_some() { None } else { self.content.as_deref().or(Some(current).filter(|c| !c.is_empty())) };
        let touches = if acts(&["restart", "stop"]) || (acts(&["start"]) && (linked || known_file.is_none_or(pulls_other_units))) {
            vec![Touch::Everything]
        } else if acts(&["start"]) {
            [own, vec![Touch::Service(self.name.clone())]].concat()
        } else {
            own
        };
        if script.lines().count() > 1 {
            host.must(script, &format!("systemctl for {}", self.name), touches);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::pulls_other_units;

    #[test]
    fn a_unit_pulls_others_in_only_by_naming_them_in_settings_that_do() {
        assert!(!pulls_other_units("[Unit]\nAfter=network.target app.service\nWants=network-online.target\n[Install]\nWantedBy=multi-user.target\n"));
        assert!(pulls_other_units("[Unit]\nWants=redis.service\n"));
        assert!(pulls_other_units("[Unit]\nBindsTo = -db.service\n"));
        assert!(pulls_other_units("[Unit]\nConflicts=old.service\n"));
        assert!(pulls_other_units("[Socket]\nService=app.service\n"));
    }
}
