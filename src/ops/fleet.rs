//! Which running nodes `provision` and `verify` work on, with each node group's roles and
//! variables: the groups and hosts asked for, reached as the command says, their host keys
//! taken from their consoles first.

use super::load::{Compiled, LoadedImage};
use super::nodes::Reach;
use super::{Notice, OpsError};
use crate::aws::{running_instances, Cloud};
use crate::model::ImageRef;
use crate::roles::{Role, Variables};

/// A node group's hosts, roles and variables.
pub struct GroupWork {
    pub hosts: Vec<String>,
    pub roles: Vec<Role>,
    pub variables: Variables,
    pub ssh_user: String,
}

/// Which nodes: of these node groups (all when empty), these hosts by address or instance id
/// (all when empty).
pub struct Selection<'a> {
    pub groups: &'a [String],
    pub limit: &'a [String],
}

/// The work per node group of `compiled`'s running nodes that `selection` picks; an error
/// when no node is picked. Secrets become variables: the caller hides their values.
pub async fn select(
    cloud: &Cloud,
    compiled: &Compiled,
    selection: &Selection<'_>,
    reach: &Reach,
    notice: &dyn Notice,
) -> Result<Vec<GroupWork>, OpsError> {
    let environment = &compiled.checked.environment;
    let instances = running_instances(cloud).await.map_err(OpsError::aws(&environment.region.value, "listing instances"))?;
    let mut work = Vec::new();
    let mut all_nodes = Vec::new();
    for group in &environment.node_groups {
        let name = &group.name.value;
        if !selection.groups.is_empty() && !selection.groups.contains(name) {
            continue;
        }
        let ImageRef::Named(image_name) = &group.image.value else {
            tracing::warn!("node group `{name}` runs a plain AMI id: it has no roles to apply");
            continue;
        };
        // Loaded with the environment, which stops on problems.
        let Some(LoadedImage { image, roles }) = compiled.images.get(image_name) else { continue };
        let nodes: Vec<(String, String)> = instances
            .iter()
            .filter(|i| &i.group == name)
            .filter_map(|i| {
                let address = reach.access.address(i.private_ip.as_deref(), i.public_ip.as_deref())?;
                let wanted = selection.limit.is_empty() || selection.limit.iter().any(|l| *l == address || *l == i.id);
                wanted.then(|| (i.id.clone(), address))
            })
            .collect();
        let hosts = nodes.iter().map(|(_, address)| address.clone()).collect();
        all_nodes.extend(nodes);
        let variables = crate::variables::for_roles(image, environment, group);
        work.push(GroupWork { hosts, roles: roles.clone(), variables, ssh_user: image.ssh_user.clone() });
    }
    reach.record_console_host_keys(cloud, &all_nodes, notice).await?;
    if work.iter().all(|w| w.hosts.is_empty()) {
        return Err(OpsError::failed(
            format!("no running instance of `{}` matches", environment.name),
            "check `kstack apply` has run, and the --group and --limit filters",
        ));
    }
    Ok(work)
}
