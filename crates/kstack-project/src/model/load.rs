//! Finds and reads environment files, following `extends` chains.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use marked_yaml::Node;

use super::network::SubnetLayout;
use super::{check, decode, merge, Environment};
use crate::diagnostics::{display_path, expected_one_of, Problems, Sources, Spanned};
use crate::paths;
use crate::yaml::{self, MapReader};

/// The project a command works in: the directory holding `environments/`, `images/`, `roles/`.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
}

/// A project found above the working directory that belongs to another user, who could have
/// planted it there (as git refuses such a repository, CVE-2022-24765).
#[derive(Debug, thiserror::Error)]
#[error("{} looks like a kstack project, but {} is owned by uid {owner}, not by you (uid {user}); kstack does not use it", root.display(), path.display())]
pub struct ForeignProject {
    pub root: PathBuf,
    /// The directory owned by someone else: the root or one of its input directories.
    pub path: PathBuf,
    pub owner: u32,
    pub user: u32,
}

impl Project {
    /// The nearest directory at or above `start` that has an `environments/` directory, like
    /// cargo finds `Cargo.toml`; `start` itself when there is none. A project that someone
    /// else owns is refused: its roles and hooks would run with this user's credentials.
    pub fn discover(start: &Path) -> Result<Project, ForeignProject> {
        let Some(root) = start.ancestors().find(|dir| dir.join("environments").is_dir()) else {
            return Ok(Project { root: start.to_path_buf() });
        };
        let user = rustix::process::geteuid().as_raw();
        for path in [root.to_path_buf(), root.join("environments"), root.join("images"), root.join("roles")] {
            // `symlink_metadata`: a link's own owner, since whoever owns it chose its target.
            let Ok(owner) = std::fs::symlink_metadata(&path).map(|m| m.uid()) else { continue };
            if owner != user {
                return Err(ForeignProject { root: root.to_path_buf(), path, owner, user });
            }
        }
        Ok(Project { root: root.to_path_buf() })
    }

    pub fn environments_dir(&self) -> PathBuf {
        self.root.join("environments")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `dev` means `environments/dev.yaml`; anything with a `/` or a `.yaml` suffix is a path.
    pub fn environment_path(&self, name_or_path: &str) -> PathBuf {
        if name_or_path.contains('/') || name_or_path.ends_with(".yaml") || name_or_path.ends_with(".yml") {
            PathBuf::from(name_or_path)
        } else {
            self.environments_dir().join(format!("{name_or_path}.yaml"))
        }
    }
}

/// An environment and the files it was read from; the files are needed to render problems.
#[derive(Debug)]
pub struct LoadedEnvironment {
    pub sources: Sources,
    pub result: Result<Checked, Problems>,
}

/// An environment that passed every check, with its subnet layout worked out.
#[derive(Debug, Clone)]
pub struct Checked {
    pub environment: Environment,
    pub subnets: Vec<SubnetLayout>,
}

pub fn load_environment(project: &Project, name_or_path: &str) -> LoadedEnvironment {
    load_environment_with(project, name_or_path, Secrets::Required)
}

/// Whether a secret whose variable is unset stops the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Required,
    /// Left unset: for work that may need none (continuing a roll), where a template that uses
    /// one then fails at its use.
    IfSet,
}

pub fn load_environment_with(project: &Project, name_or_path: &str, secrets: Secrets) -> LoadedEnvironment {
    let mut sources = Sources::default();
    let mut problems = Problems::default();
    let path = project.environment_path(name_or_path);
    let project_name = project_name(project, &mut sources, &mut problems);
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("environment");
    let checked = read_chain(project, &path, &mut sources, &mut problems, &mut Vec::new())
        .and_then(|root| decode_and_check(project, name, project_name.as_ref(), &root, secrets, &mut problems));
    LoadedEnvironment { sources, result: checked.filter(|_| problems.is_empty()).ok_or(problems) }
}

/// An environment written as `text` alone (no `extends`), before any file holds it: what
/// `kstack generate` checks of what it wrote.
pub fn environment_from_text(project: &Project, name: &str, text: &str) -> Result<Checked, Problems> {
    let mut sources = Sources::default();
    let mut problems = Problems::default();
    let source = sources.add(&project.environment_path(name), text.to_owned());
    let checked =
        yaml::parse(source, text, &mut problems).and_then(|root| decode_and_check(project, name, None, &root, Secrets::Required, &mut problems));
    checked.filter(|_| problems.is_empty()).ok_or(problems)
}

/// The environment `root` describes (its extends merged), decoded and checked.
fn decode_and_check(
    project: &Project,
    name: &str,
    project_name: Option<&Spanned<String>>,
    root: &Node,
    secrets: Secrets,
    problems: &mut Problems,
) -> Option<Checked> {
    let environment = decode::environment_with(name, project_name, root, secrets, problems)?;
    let subnets = check::check(&environment, &project.images_dir(), problems);
    Some(Checked { environment, subnets })
}

/// The project's name from `kstack.yaml` at its root (`project: <name>`), if it has one: what
/// S3 state keys default under and what its states record, so that two projects sharing a
/// bucket never share, or take each other's, state.
pub fn project_name(project: &Project, sources: &mut Sources, problems: &mut Problems) -> Option<Spanned<String>> {
    let path = project.root.join("kstack.yaml");
    let text = std::fs::read_to_string(&path).ok()?;
    let source = sources.add(&path, text);
    let text = sources.get(source).text.clone();
    let node = yaml::parse(source, &text, problems)?;
    let mut map = MapReader::new(&node, "project settings", problems)?;
    let name = map.required("project", problems).and_then(|n| yaml::string(n, problems));
    map.finish(problems);
    let name = name?;
    let valid = !name.value.is_empty()
        && name.value.len() <= 63
        && name.value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.value.starts_with('-');
    if !valid {
        problems
            .error(name.loc, format!("`{}` is not a project name", name.value))
            .label("not a project name")
            .hint("use lowercase letters, digits and `-` (at most 63), e.g. `platform-eu`");
        return None;
    }
    Some(name)
}

/// Where an environment's state lives, and its region if it can be read.
#[derive(Debug, Clone)]
pub struct StateLocation {
    pub name: String,
    pub project: Option<String>,
    pub region: Option<String>,
    /// How the environment's account is reached.
    pub aws: super::AwsAccess,
    pub state: super::StateBackend,
    /// What a destroy, working from state, may not delete either.
    pub protect: super::Protection,
}

/// An environment's state location, with the environment's problems (if any) to show as
/// warnings.
#[derive(Debug)]
pub struct LocatedState {
    pub sources: Sources,
    pub result: Result<StateLocation, Problems>,
    pub warnings: Problems,
}

/// Finds an environment's state from its `state:` and `region` alone, so that recovery (state
/// unlock, list and show; destroy) works while the environment has problems elsewhere: an
/// unset secret, an unrelated mistake, even a YAML syntax error outside those keys.
pub fn locate_state(project: &Project, name_or_path: &str) -> LocatedState {
    let loaded = load_environment(project, name_or_path);
    let mut sources = loaded.sources;
    let warnings = match loaded.result {
        Ok(checked) => {
            return LocatedState { sources, result: Ok(checked.environment.state_location()), warnings: Problems::default() };
        }
        Err(problems) => problems,
    };
    let mut problems = Problems::default();
    let path = project.environment_path(name_or_path);
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("environment").to_owned();
    let project_name = project_name(project, &mut sources, &mut problems);
    let location = read_chain_salvaging(project, &path, &mut sources, &mut problems, &mut Vec::new(), true)
        .and_then(|root| decode::state_location(&name, project_name.as_ref(), &root, &mut problems));
    let result = match location {
        Some(location) if problems.is_empty() => Ok(location),
        _ => Err(problems),
    };
    LocatedState { sources, result, warnings }
}

/// Reads `path` and, recursively, the files it extends; returns the merged document.
/// `chain` holds the files being read, innermost last, to detect cycles.
fn read_chain(project: &Project, path: &Path, sources: &mut Sources, problems: &mut Problems, chain: &mut Vec<PathBuf>) -> Option<Node> {
    read_chain_salvaging(project, path, sources, problems, chain, false)
}

/// [`read_chain`]; with `salvage`, a file that is not valid YAML is read as its top-level
/// `extends`, `region` and `state` blocks alone (at their own lines), its syntax error left
/// to the full load.
fn read_chain_salvaging(
    project: &Project,
    path: &Path,
    sources: &mut Sources,
    problems: &mut Problems,
    chain: &mut Vec<PathBuf>,
    salvage: bool,
) -> Option<Node> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            report_unreadable(path, &error, problems);
            return None;
        }
    };
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let source = sources.add(path, text);
    let text = sources.get(source).text.clone();
    let node = match salvage {
        false => yaml::parse(source, &text, problems)?,
        true => {
            yaml::parse(source, &text, &mut Problems::default()).or_else(|| yaml::parse(source, &top_level_blocks(&text, STATE_KEYS), problems))?
        }
    };
    chain.push(canonical);
    let merged = match extends_of(&node, problems) {
        None => Some(node),
        Some(base_name) => read_base(project, path, &base_name, sources, problems, chain, salvage).map(|base| merge::merge(base, node)),
    };
    chain.pop();
    merged
}

/// The merged base that `extends` names in the file at `path`.
fn read_base(
    project: &Project,
    path: &Path,
    base_name: &Spanned<String>,
    sources: &mut Sources,
    problems: &mut Problems,
    chain: &mut Vec<PathBuf>,
    salvage: bool,
) -> Option<Node> {
    let reference = paths::Reference {
        key: "extends",
        path: base_name,
        base: path.parent().unwrap_or(Path::new(".")),
        root: &project.root,
        scope: "the project",
        hint: EXTENDS_HINT,
    };
    let base_path = reference.resolve(problems)?;
    let base_canonical = base_path.canonicalize().unwrap_or_else(|_| base_path.clone());
    if let Some(start) = chain.iter().position(|p| *p == base_canonical) {
        let cycle: Vec<String> = chain[start..].iter().chain(std::iter::once(&base_canonical)).map(|p| display_path(p)).collect();
        problems
            .error(base_name.loc, format!("`extends` forms a cycle: {}", cycle.join(" -> ")))
            .label("cycle closes here")
            .hint("an environment may extend a base, never itself or one of its own extenders");
        return None;
    }
    if !base_path.is_file() {
        problems
            .error(base_name.loc, format!("the base file {} does not exist", display_path(&base_path)))
            .label("file not found")
            .hint(EXTENDS_HINT);
        return None;
    }
    read_chain_salvaging(project, &base_path, sources, problems, chain, salvage)
}

/// The top-level keys that locate an environment's state.
const STATE_KEYS: &[&str] = &["extends", "region", "state"];

/// `text` with every line blanked but those of the top-level blocks of `keys`, so what is
/// left keeps its line numbers.
fn top_level_blocks(text: &str, keys: &[&str]) -> String {
    let mut keep = false;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '\t', '#']);
        if top_level {
            keep = keys.iter().any(|key| line.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')));
        }
        if keep {
            kept.push_str(line);
        }
        kept.push('\n');
    }
    kept
}

const EXTENDS_HINT: &str = "`extends` takes a path relative to this file, inside the project, e.g. `extends: base.yaml`";

fn extends_of(node: &Node, problems: &mut Problems) -> Option<Spanned<String>> {
    // Only `extends` is read here; the full key check happens when the merged tree is decoded.
    let mut map = MapReader::new(node, "environment", problems)?;
    map.get("extends").and_then(|n| yaml::string(n, problems))
}

fn report_unreadable(path: &Path, error: &std::io::Error, problems: &mut Problems) {
    let shown = display_path(path);
    if error.kind() != std::io::ErrorKind::NotFound {
        problems.general(format!("cannot read {shown}: {error}"));
        return;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let known = check::list_yaml_stems(dir);
    let wanted = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    let refs: Vec<&str> = known.iter().map(String::as_str).collect();
    problems.general(format!("environment file {shown} does not exist")).hint(format!(
        "environments in {}: {}",
        display_path(dir),
        expected_one_of(wanted, &refs)
    ));
}
