//! `copy`, `template` and `line`: a file's whole content, or one line of it. The content is
//! computed here and written (checked complete before it replaces the file) only when it differs.

use super::file::{attribute_diffs, owned_path, stat_query, Stat, CONTENT};
use super::{parse_mode, Converge, FieldDiff, Host, Query, TaskError, TaskOutcome, Touch};
use kstack_project::roles::modules::{Copy, Line, Presence};

/// The script that prints a file's attributes and content.
pub(crate) fn read_script(path: &str) -> String {
    format!("{}\necho '--- kstack content ---'\n{CONTENT}", stat_query(path))
}

/// The current content and attributes of a file, in one round trip, or as a queued write of
/// it will leave it.
async fn read(host: &Host<'_>, path: &str) -> Result<(Stat, Option<String>), TaskError> {
    if let Some(write) = host.session.queued_file(path) {
        let stat =
            Stat { kind: String::from("file"), target: String::new(), mode: format!("{:o}", write.mode), owner: write.owner, group: write.group };
        return Ok((stat, Some(String::from_utf8_lossy(&write.content).into_owned())));
    }
    let text = host.query_must(&read_script(path), "reading the file").await?;
    let (head, body) = text.split_once("--- kstack content ---\n").unwrap_or((&text, ""));
    let stat = Stat::parse(head);
    let content = (stat.kind == "file").then(|| body.to_owned());
    Ok((stat, content))
}

/// The attributes a file should have; `None` keeps what it has.
struct Attributes<'a> {
    mode: Option<u32>,
    owner: Option<&'a str>,
    group: Option<&'a str>,
}

/// Writes `wanted` when it or the attributes differ from what `read` found.
async fn converge_content(
    host: &Host<'_>,
    path: &str,
    (stat, current): (&Stat, Option<&str>),
    wanted: &str,
    Attributes { mode, owner, group }: Attributes<'_>,
) -> Result<TaskOutcome, TaskError> {
    let mut diffs = Vec::new();
    let mut content_diff = None;
    if current != Some(wanted) {
        use sha2::{Digest, Sha256};
        let hash = |text: &str| format!("sha256:{}", &format!("{:x}", Sha256::digest(text.as_bytes()))[..12]);
        diffs.push(FieldDiff::new("content", current.map_or_else(|| String::from("(absent)"), hash), hash(wanted)));
        let diff = similar::TextDiff::from_lines(current.unwrap_or_default(), wanted);
        content_diff = Some(diff.unified_diff().header(path, path).to_string());
    }
    attribute_diffs(stat, mode, owner, group, &mut diffs);
    if !diffs.is_empty() && !host.check {
        let keep = |field: &str, value: &str| {
            if value.is_empty() {
                field.to_owned()
            } else {
                value.to_owned()
            }
        };
        let mode = mode.unwrap_or_else(|| u32::from_str_radix(&stat.mode, 8).unwrap_or(0o644));
        host.write_file(
            path,
            wanted.as_bytes(),
            mode,
            owner.map_or_else(|| keep("root", &stat.owner), str::to_owned).as_str(),
            group.map_or_else(|| keep("root", &stat.group), str::to_owned).as_str(),
        );
    }
    Ok(TaskOutcome { diffs, content_diff, notes: Vec::new() })
}

impl Query for Copy {
    fn query(&self) -> Option<String> {
        Some(read_script(&self.dest))
    }

    fn reads(&self) -> Vec<Touch> {
        owned_path(&self.dest, self.owner.is_some() || self.group.is_some())
    }

    fn reads_file(&self) -> Option<&str> {
        Some(&self.dest)
    }
}

impl Converge for Copy {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let Some(wanted) = &self.content else {
            return Err(TaskError::Failed(String::from("give `content`, or `src` naming a file of the role")));
        };
        let mode = self.mode.as_deref().map(parse_mode).transpose()?;
        let (stat, current) = read(host, &self.dest).await?;
        let attributes = Attributes { mode, owner: self.owner.as_deref(), group: self.group.as_deref() };
        converge_content(host, &self.dest, (&stat, current.as_deref()), wanted, attributes).await
    }
}

impl Query for Line {
    fn query(&self) -> Option<String> {
        Some(read_script(&self.path))
    }

    fn reads(&self) -> Vec<Touch> {
        vec![Touch::path(&self.path)]
    }

    fn reads_file(&self) -> Option<&str> {
        Some(&self.path)
    }
}

impl Converge for Line {
    async fn converge(&self, host: &Host<'_>) -> Result<TaskOutcome, TaskError> {
        let mode = self.mode.as_deref().map(parse_mode).transpose()?;
        let pattern = match &self.regexp {
            Some(pattern) => Some(regex_lite::Regex::new(pattern).map_err(|e| TaskError::Failed(format!("`regexp` is invalid: {e}")))?),
            None => None,
        };
        let (stat, current) = read(host, &self.path).await?;
        let text = current.clone().unwrap_or_default();
        let matches = |line: &str| line == self.line || pattern.as_ref().is_some_and(|p| p.is_match(line));
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        match self.state {
            Presence::Present => match lines.iter().position(|l| matches(l)) {
                Some(index) => lines[index] = self.line.clone(),
                None => lines.push(self.line.clone()),
            },
            Presence::Absent => lines.retain(|l| !matches(l)),
        }
        let mut wanted = lines.join("\n");
        if !wanted.is_empty() {
            wanted.push('\n');
        }
        if current.is_none() && self.state == Presence::Absent {
            return Ok(TaskOutcome::default());
        }
        let attributes = Attributes { mode, owner: None, group: None };
        converge_content(host, &self.path, (&stat, current.as_deref()), &wanted, attributes).await
    }
}
