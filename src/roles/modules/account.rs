//! `user` and `group`: local accounts.

use super::{quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{Group, User};

impl Query for Group {
    fn query(&self) -> Option<String> {
        Some(format!("getent group {}", quote(&self.name)))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::Group(self.name.clone())]
    }
}

impl Converge for Group {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let current = host.query(&self.query().unwrap_or_default()).await?.stdout;
        let gid = current.split(':').nth(2).map(str::trim).unwrap_or_default().to_owned();
        let mut diffs = Vec::new();
        let mut script = String::new();
        if current.is_empty() {
            diffs.push(FieldDiff::new("state", "absent", "present"));
            let gid = self.gid.map(|g| format!(" --gid {g}")).unwrap_or_default();
            let system = if self.system { " --system" } else { "" };
            script = format!("groupadd{system}{gid} {}", quote(&self.name));
        } else if let Some(wanted) = self.gid.filter(|g| g.to_string() != gid) {
            diffs.push(FieldDiff::new("gid", gid, wanted.to_string()));
            script = format!("groupmod --gid {wanted} {}", quote(&self.name));
        }
        if !diffs.is_empty() && !host.check {
            host.must(script, "changing the group", vec![Touch::Group(self.name.clone()), Touch::AccountNames]);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}

impl Query for User {
    fn query(&self) -> Option<String> {
        let name = quote(&self.name);
        Some(format!("getent passwd {name}; echo '--- kstack ---'; id -nG {name} 2>/dev/null || true"))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::User(self.name.clone())]
    }
}

impl Converge for User {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let name = quote(&self.name);
        let text = host.query(&self.query().unwrap_or_default()).await?.stdout;
        let (passwd, groups) = text.split_once("--- kstack ---\n").unwrap_or((&text, ""));
        let fields: Vec<&str> = passwd.trim().split(':').collect();
        let member_of: Vec<&str> = groups.split_whitespace().collect();
        let missing: Vec<&str> = self.groups.iter().map(String::as_str).filter(|g| !member_of.contains(g)).collect();
        let mut diffs = Vec::new();
        let mut options = String::new();
        if let Some(uid) = self.uid.filter(|u| fields.get(2) != Some(&u.to_string().as_str())) {
            diffs.push(FieldDiff::new("uid", fields.get(2).copied().unwrap_or_default(), uid.to_string()));
            options.push_str(&format!(" --uid {uid}"));
        }
        if let Some(shell) = self.shell.as_deref().filter(|s| fields.get(6) != Some(s)) {
            diffs.push(FieldDiff::new("shell", fields.get(6).copied().unwrap_or_default(), shell));
            options.push_str(&format!(" --shell {}", quote(shell)));
        }
        if let Some(home) = self.home.as_deref().filter(|h| fields.get(5) != Some(h)) {
            diffs.push(FieldDiff::new("home", fields.get(5).copied().unwrap_or_default(), home));
            options.push_str(&format!(" --home {}", quote(home)));
        }
        if !missing.is_empty() {
            diffs.push(FieldDiff::new("groups", member_of.join(","), self.groups.join(",")));
            options.push_str(&format!(" --groups {}", quote(&missing.join(","))));
        }
        let exists = fields.len() >= 7;
        if !exists {
            diffs.insert(0, FieldDiff::new("state", "absent", "present"));
        }
        if !diffs.is_empty() && !host.check {
            let script = if exists {
                format!("usermod{} {name}", options.replace(" --groups", " --append --groups").replace(" --home", " --move-home --home"))
            } else {
                let system = if self.system { " --system" } else { " --create-home" };
                // A group named like the user becomes its primary group rather than a clash.
                format!("set --; if getent group {name} >/dev/null; then set -- --gid {name}; fi; useradd{system}{options} \"$@\" {name}")
            };
            // Its own group (useradd may make one), the groups it joins, the names files show,
            // and the home directories it makes (a system user's it does not) or moves.
            let mut touches = vec![Touch::User(self.name.clone()), Touch::Group(self.name.clone()), Touch::AccountNames];
            if !exists && !self.system {
                touches.push(Touch::tree(self.home.as_deref().unwrap_or(&format!("/home/{}", self.name))));
            }
            if exists && options.contains(" --home") {
                touches.extend([fields[5], self.home.as_deref().unwrap_or_default()].map(Touch::tree));
            }
            touches.extend(self.groups.iter().map(|g| Touch::Group(g.clone())));
            host.must(script, "changing the user", touches);
        }
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}
