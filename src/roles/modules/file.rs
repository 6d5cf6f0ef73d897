//! `file`: a file, directory or symlink with its mode and owner, or its absence.

use super::{parse_mode, quote, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{File, FileState};

/// Sets `$a` to `$p`'s attributes and size, `mode owner group|size`, when a batch stated it
/// ahead ([`stat_ahead`]) into `$ks`; else empties it. It walks `$ks` line by line with an
/// anchored match: a pattern with a leading `*` costs the shell time in the square of the
/// text's length.
const STATED: &str = r#"a=; o=$IFS; IFS='
'; set -f; for l in $ks; do case "$l" in "$p|"*) a=${l#"$p|"}; break ;; esac; done; set +f; IFS=$o"#;

/// The type, link target, mode, owner and group of `$p`, in one line each: the attributes as
/// [`STATED`] found them, else stated alone, and not asked for a path that is not there.
const STAT: &str = r#"if [ -L "$p" ]; then echo link; readlink "$p"; elif [ -d "$p" ]; then echo directory; echo; elif [ -e "$p" ]; then echo file; echo; else echo absent; echo; fi
if [ -n "$a" ]; then echo "${a%|*}"; else { [ -e "$p" ] || [ -L "$p" ]; } && stat -c '%a %U %G' "$p" 2>/dev/null || echo; fi"#;

/// After [`STATED`], the content of `$p` when it is a file: a small one stated ahead is read with
/// the shell's own `read` (no process) and kept when its length is the size stated, else (a
/// NUL byte, a file changed meanwhile) read with `cat`.
pub(super) const CONTENT: &str = r#"if [ -f "$p" ]; then z=${a##*|}
if [ -n "$a" ] && [ "$z" -le 1024 ] 2>/dev/null; then c=; l=; while IFS= read -r l; do c="$c$l
"; l=; done < "$p"; c="$c$l"; if [ "${#c}" = "$z" ]; then printf %s "$c"; else cat "$p"; fi
else cat "$p"; fi; fi; true"#;

/// The query of a path's type and attributes ([`STAT`]).
pub(crate) fn stat_query(path: &str) -> String {
    format!("p={}\n{STATED}\n{STAT}", quote(path))
}

/// The query of a file's content alone ([`CONTENT`]): nothing when there is no file.
pub(super) fn content_query(path: &str) -> String {
    format!("p={}\n{STATED}\n{CONTENT}", quote(path))
}

/// A line for a batch's script, before its queries, that states `paths` in one process into
/// `$ks`, which [`STAT`] reads: one `stat` for a batch instead of one per file (about 1 ms of
/// the node's time each). Paths a line of `stat`'s output could not name unambiguously are
/// left to be stated alone.
pub(crate) fn stat_ahead<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut named: Vec<&str> = paths.into_iter().filter(|p| !p.contains(['|', '\n'])).collect();
    named.sort_unstable();
    named.dedup();
    (named.len() >= 2).then(|| {
        let quoted: Vec<String> = named.iter().map(|p| quote(p)).collect();
        format!("ks=\"$(stat -c '%n|%a %U %G|%s' -- {} 2>/dev/null)\"\n", quoted.join(" "))
    })
}

/// What a task on `path` reads: the path, and the account names its owner shows as when the
/// task sets an owner or group.
pub(super) fn owned_path(path: &str, owned: bool) -> Vec<Touch> {
    let mut reads = vec![Touch::path(path)];
    if owned {
        reads.push(Touch::AccountNames);
    }
    reads
}

/// What a query read, given what it found: a path [`STAT`] found absent has no owner to show
/// by name, so account changes leave that answer as it was. (Only queries starting with
/// [`STAT`] read account names, see [`owned_path`].)
pub(crate) fn reads_found(mut reads: Vec<Touch>, found: &str) -> Vec<Touch> {
    if found.starts_with("absent\n") {
        reads.retain(|read| *read != Touch::AccountNames);
    }
    reads
}

pub(super) struct Stat {
    pub kind: String,
    pub target: String,
    pub mode: String,
    pub owner: String,
    pub group: String,
}

impl Stat {
    pub(super) fn parse(text: &str) -> Stat {
        let mut lines = text.lines();
        let kind = lines.next().unwrap_or("absent").to_owned();
        let target = lines.next().unwrap_or_default().to_owned();
        let mut attributes = lines.next().unwrap_or_default().split_whitespace();
        Stat {
            kind,
            target,
            mode: attributes.next().unwrap_or_default().to_owned(),
            owner: attributes.next().unwrap_or_default().to_owned(),
            group: attributes.next().unwrap_or_default().to_owned(),
        }
    }
}

/// Diffs of mode, owner and group, for modules that manage them.
pub(super) fn attribute_diffs(stat: &Stat, mode: Option<u32>, owner: Option<&str>, group: Option<&str>, diffs: &mut Vec<FieldDiff>) {
    if let Some(mode) = mode {
        let wanted = format!("{mode:o}");
        if stat.mode != wanted {
            diffs.push(FieldDiff::new("mode", stat.mode.clone(), wanted));
        }
    }
    if let Some(owner) = owner.filter(|o| stat.owner != *o) {
        diffs.push(FieldDiff::new("owner", stat.owner.clone(), owner));
    }
    if let Some(group) = group.filter(|g| stat.group != *g) {
        diffs.push(FieldDiff::new("group", stat.group.clone(), group));
    }
}

impl Query for File {
    fn query(&self) -> Option<String> {
        Some(stat_query(&self.path))
    }

    fn reads(&self) -> Vec<Touch> {
        owned_path(&self.path, self.owner.is_some() || self.group.is_some())
    }
}

impl Converge for File {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let path = quote(&self.path);
        let mode = self.mode.as_deref().map(parse_mode).transpose()?;
        if self.state == FileState::Link && self.src.is_none() {
            return Err(TaskError::Failed(String::from("a link needs `src`, the path it points to")));
        }
        let stat = Stat::parse(&host.query_must(&self.query().unwrap_or_default(), "reading the file").await?);
        let mut diffs = Vec::new();
        if stat.kind != self.state.name() {
            diffs.push(FieldDiff::new("state", stat.kind.clone(), self.state.name()));
        }
        if self.state == FileState::Link {
            let src = self.src.as_deref().unwrap_or_default();
            if stat.target != src {
                diffs.push(FieldDiff::new("src", stat.target.clone(), src));
            }
        } else if self.state != FileState::Absent {
            attribute_diffs(&stat, mode, self.owner.as_deref(), self.group.as_deref(), &mut diffs);
        }
        if diffs.is_empty() || host.check {
            return Ok(TaskOutcome { diffs, ..TaskOutcome::default() });
        }
        // Only what differs is changed; the owner before the mode, as a `chown` clears
        // set-user-ID bits.
        let mut script = String::from("set -e\n");
        let created = stat.kind != self.state.name();
        match self.state {
            FileState::Absent => script.push_str(&format!("rm -rf {path}\n")),
            FileState::Directory if created => match mode {
                Some(mode) => script.push_str(&format!("mkdir -p -m {mode:o} {path}\n")),
                None => script.push_str(&format!("mkdir -p {path}\n")),
            },
            FileState::File if created => script.push_str(&format!("[ -e {path} ] || {{ mkdir -p \"$(dirname {path})\"; : > {path}; }}\n")),
            FileState::Link => script.push_str(&format!("ln -sfn {} {path}\n", quote(self.src.as_deref().unwrap_or_default()))),
            FileState::Directory | FileState::File => {}
        }
        if self.state != FileState::Absent {
            // A link's owner is not read back: it is set whenever the link is made.
            let changed = |field: &str| self.state == FileState::Link || diffs.iter().any(|d| d.field == field);
            match (self.owner.as_deref().filter(|_| changed("owner")), self.group.as_deref().filter(|_| changed("group"))) {
                (Some(owner), Some(group)) => script.push_str(&format!("chown -h {}:{} {path}\n", quote(owner), quote(group))),
                (Some(owner), None) => script.push_str(&format!("chown -h {} {path}\n", quote(owner))),
                (None, Some(group)) => script.push_str(&format!("chgrp -h {} {path}\n", quote(group))),
                (None, None) => {}
            }
            let made_with_mode = self.state == FileState::Directory && created;
            if let Some(mode) = mode.filter(|_| self.state != FileState::Link && changed("mode") && !made_with_mode) {
                script.push_str(&format!("chmod {mode:o} {path}\n"));
            }
        }
        // Removing or relinking a path changes what is under it; making one does not.
        let touched = match self.state {
            FileState::Absent | FileState::Link => Touch::tree(&self.path),
            FileState::File | FileState::Directory => Touch::path(&self.path),
        };
        host.must(script, "changing the file", vec![touched]);
        Ok(TaskOutcome { diffs, ..TaskOutcome::default() })
    }
}
