//! Bringing roles from other tools into the project: `kstack roles import` converts an
//! Ansible role (`import::ansible`), writes it under `roles/<name>/` whole or not at all, and
//! loads it as any role loads, so what was written is known to work.

use std::path::Path;

use super::OpsError;
use crate::diagnostics::{Loc, Sources, Spanned};
use crate::import::ansible::{self, Converted};
use crate::model::Project;

/// An imported role: where it went and what was converted.
pub struct Imported {
    /// The Ansible role's directory.
    pub from: std::path::PathBuf,
    pub name: String,
    pub converted: Converted,
    pub handlers: usize,
}

/// Converts the Ansible role in `from` into `roles/<name>/` (its directory's name unless
/// `name` says). An existing role is replaced only with `replace`.
pub fn import_ansible(project: &Project, from: &Path, name: Option<&str>, replace: bool) -> Result<Imported, OpsError> {
    let name = match name {
        Some(name) => name.to_owned(),
        None => from.canonicalize().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_default(),
    };
    let mut problems = crate::diagnostics::Problems::default();
    if !kstack_project::paths::check_name(&name, None, "role", "roles are directories under roles/", &mut problems) {
        return Err(OpsError::Problems { what: format!("role `{name}`"), problems, sources: Sources::default() });
    }
    let converted = ansible::convert(from).map_err(|e| OpsError::Invalid { message: e.to_string(), hint: crate::hint::Hint::hint(&e) })?;
    let roles = project.root.join("roles");
    let target = roles.join(&name);
    if target.exists() && !replace {
        return Err(OpsError::failed(format!("roles/{name} exists"), "name another role with --name, or replace it with --force"));
    }
    // Written beside, then moved into place: a role is never half written.
    let staging = roles.join(format!(".{name}.importing"));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&staging);
        for (path, bytes) in ansible::files_of(&converted) {
            let path = staging.join(path);
            std::fs::create_dir_all(path.parent().unwrap_or(&staging))?;
            std::fs::write(path, bytes)?;
        }
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&staging, &target)
    };
    write().map_err(|error| {
        let _ = std::fs::remove_dir_all(&staging);
        OpsError::failed(format!("cannot write roles/{name}: {error}"), "check the project directory's permissions")
    })?;
    // The role is named here, not in a file: its name is the source problems point into.
    let mut sources = Sources::default();
    let named = sources.add(Path::new("kstack roles import"), name.clone());
    let loc = Loc { source: named, line: 1, column: 1, len: name.chars().count().max(1) };
    let loaded = crate::roles::load_roles(&roles, &[Spanned::new(name.clone(), loc)], &mut sources);
    let role = loaded.map_err(|problems| OpsError::Problems { what: format!("the imported role `{name}`"), problems, sources })?;
    let handlers = role.iter().find(|r| r.name == name).map_or(0, |r| r.handlers.len());
    Ok(Imported { from: from.to_path_buf(), name, converted, handlers })
}

/// The kstack name of an Ansible role's name.
pub fn kstack_role_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// A playbook imported: each play's roles converted (from the `roles/` beside the
/// playbook), and the node group each play becomes.
pub struct ImportedPlaybook {
    pub roles: Vec<Imported>,
    pub plays: Vec<ansible::Play>,
}

/// Converts the roles every play of the playbook at `path` names, each once.
pub fn import_playbook(project: &Project, path: &Path, replace: bool) -> Result<ImportedPlaybook, OpsError> {
    let plays = ansible::plays(path).map_err(|e| OpsError::Invalid { message: e.to_string(), hint: crate::hint::Hint::hint(&e) })?;
    let beside = path.parent().unwrap_or(Path::new(".")).join("roles");
    let mut roles: Vec<Imported> = Vec::new();
    for name in plays.iter().flat_map(|p| &p.roles) {
        // A collection's role (`team.nginx`) becomes a role of its own name.
        let ours = kstack_role_name(name);
        if !roles.iter().any(|r| r.name == ours) {
            roles.push(import_ansible(project, &beside.join(name), Some(ours), replace)?);
        }
    }
    Ok(ImportedPlaybook { roles, plays })
}
