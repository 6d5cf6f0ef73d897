//! Loading an environment: its files checked, compiled to a resource graph, with the images
//! its groups name and their roles; or, while it has problems, where its state lives.

use std::collections::{BTreeMap, BTreeSet};

use super::{Notice, OpsError};
use crate::compile::{compile, image_names};
use crate::diagnostics::{self, Problems, Sources};
use crate::graph::ResourceGraph;
use crate::model::image::{load_image, Image};
use crate::model::{load_environment, load_environment_with, Checked, ImageRef, Project, Secrets, StateLocation};
use crate::roles::{load_roles, Role};
use crate::state::StateStore;

/// An environment loaded, checked and compiled.
pub struct Compiled {
    pub checked: Checked,
    pub graph: ResourceGraph,
    /// The images its node groups name, with their roles.
    pub images: BTreeMap<String, LoadedImage>,
}

pub struct LoadedImage {
    pub image: Image,
    pub roles: Vec<Role>,
}

/// Loads, checks and compiles an environment, and loads the images its groups name with
/// their roles, so their problems show up with the environment's.
pub fn load_and_compile(project: &Project, env: &str, notice: &dyn Notice) -> (Sources, Result<Compiled, Problems>) {
    let loaded = load_environment(project, env);
    let mut sources = loaded.sources;
    let result = loaded.result.and_then(|checked| {
        hide_secrets(&checked, notice);
        let mut problems = Problems::default();
        let graph = compile(&checked, &mut problems);
        let names = graph.as_ref().map(image_names).unwrap_or_default();
        let images = load_images(project, &names, &mut sources, &mut problems);
        match graph {
            Some(graph) if problems.is_empty() => Ok(Compiled { checked, graph, images }),
            _ => Err(problems),
        }
    });
    (sources, result)
}

/// [`load_and_compile`], its problems an error.
pub fn compiled(project: &Project, env: &str, notice: &dyn Notice) -> Result<Compiled, OpsError> {
    let (sources, result) = load_and_compile(project, env, notice);
    result.map_err(|problems| OpsError::in_environment(env, problems, sources))
}

/// Tells `notice` the environment's secret values (those set), so nothing shows them.
fn hide_secrets(checked: &Checked, notice: &dyn Notice) {
    notice.secrets(&mut checked.environment.secrets.values().filter_map(|s| s.value()));
}

/// The images `names`, with their roles.
fn load_images(project: &Project, names: &[String], sources: &mut Sources, problems: &mut Problems) -> BTreeMap<String, LoadedImage> {
    let mut images = BTreeMap::new();
    for name in names {
        match load_image(project, name, sources) {
            Ok(image) => match load_roles(&project.root.join("roles"), &image.roles, sources) {
                Ok(roles) => {
                    images.insert(name.clone(), LoadedImage { image, roles });
                }
                Err(more) => problems.extend(more),
            },
            Err(more) => problems.extend(more),
        }
    }
    images
}

/// An environment as a roll loads it (see [`for_roll`]).
pub struct ForRoll {
    pub checked: Checked,
    pub images: BTreeMap<String, LoadedImage>,
}

/// The state store at `location` (S3 connects and checks its bucket).
pub fn open_store(project: &Project, location: &StateLocation) -> Result<StateStore, OpsError> {
    Ok(StateStore::open(&project.root, &location.name, location.project.as_deref(), &location.state, &location.aws)?)
}

/// What a roll works from: the environment and the images its groups name, not compiled (a
/// roll changes no launch settings, and compiling renders user data). A secret whose variable
/// is unset is left so, with a warning: a hook using it then fails where it runs.
pub fn for_roll(project: &Project, env: &str, notice: &dyn Notice) -> Result<ForRoll, OpsError> {
    let loaded = load_environment_with(project, env, Secrets::IfSet);
    let mut sources = loaded.sources;
    let result = loaded.result.and_then(|checked| {
        hide_secrets(&checked, notice);
        for (name, secret) in checked.environment.secrets.iter().filter(|(_, s)| !s.source.in_store() && s.value().is_none()) {
            notice.warning(&format!("secret `{name}` is not set ({}): a roll hook that uses it fails", secret.source));
        }
        let names: BTreeSet<String> = checked
            .environment
            .node_groups
            .iter()
            .filter_map(|g| match &g.image.value {
                ImageRef::Named(name) => Some(name.clone()),
                ImageRef::Ami(_) => None,
            })
            .collect();
        let mut problems = Problems::default();
        let images = load_images(project, &names.into_iter().collect::<Vec<_>>(), &mut sources, &mut problems);
        if problems.is_empty() {
            Ok(ForRoll { checked, images })
        } else {
            Err(problems)
        }
    });
    result.map_err(|problems| OpsError::in_environment(env, problems, sources))
}

/// An image as a bake loads it (see [`for_bake`]).
pub struct ForBake {
    pub image: Image,
    pub roles: Vec<Role>,
    /// The environment the image's `build:` names, where its builder runs.
    pub environment: Checked,
}

/// What a bake works from: the image, its roles, and the environment its `build:` names
/// (its secrets hidden, as every environment's are).
pub fn for_bake(project: &Project, name: &str, notice: &dyn Notice) -> Result<ForBake, OpsError> {
    let mut sources = Sources::default();
    let in_image = |what: &str, problems, sources| OpsError::Problems { what: format!("image `{what}`"), problems, sources };
    let image = match load_image(project, name, &mut sources) {
        Ok(image) => image,
        Err(problems) => return Err(in_image(name, problems, sources)),
    };
    let roles = match load_roles(&project.root.join("roles"), &image.roles, &mut sources) {
        Ok(roles) => roles,
        Err(problems) => return Err(in_image(&image.name, problems, sources)),
    };
    let Some(place) = &image.build else {
        return Err(OpsError::Invalid {
            message: format!("image `{}` says nowhere to build", image.name),
            hint: Some("add `build: { environment: <env>, subnet_tier: <tier> }` to its file".to_owned()),
        });
    };
    let loaded = load_environment(project, &place.environment);
    let environment = loaded.result.map_err(|problems| OpsError::in_environment(&place.environment, problems, loaded.sources))?;
    hide_secrets(&environment, notice);
    Ok(ForBake { image, roles, environment })
}

/// Where the environment's state lives, found even while the environment has problems, which
/// are warnings: recovering from a dead run must not wait for a fix elsewhere.
pub fn state_location(project: &Project, env: &str, notice: &dyn Notice) -> Result<StateLocation, OpsError> {
    let located = crate::model::locate_state(project, env);
    if !located.warnings.is_empty() {
        notice.warning(&format!(
            "environment `{env}` has {} problem(s) (`kstack validate {env}` shows them); going on from its state:",
            located.warnings.len()
        ));
        for problem in located.warnings.into_sorted() {
            let place =
                problem.loc.map(|loc| format!("{}:{}:{}: ", diagnostics::display_path(&located.sources.get(loc.source).path), loc.line, loc.column));
            notice.warning(&format!("{}{}", place.unwrap_or_default(), problem.message));
        }
    }
    located.result.map_err(|problems| OpsError::in_environment(env, problems, located.sources))
}
