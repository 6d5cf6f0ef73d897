//! The reboot schedule as commands other than `reboots` keep it: after an apply or a roll,
//! running nodes without a slot (new since the last assignment) get one.

use std::collections::BTreeMap;

use super::load::LoadedImage;
use super::nodes::Reach;
use super::Notice;
use crate::aws::Cloud;
use crate::hint::Hint;
use crate::model::{Environment, ImageRef};
use crate::reboots::running::{plan, put_in_force, tag_changed, Planned, Written};

/// The scheduled nodes SSH can reach: instance and address.
pub fn slot_nodes(planned: &Planned) -> Vec<(String, String)> {
    planned.schedule.slots.iter().filter_map(|s| Some((s.instance.clone(), s.address.clone()?))).collect()
}

/// Each node group's SSH user: its image's.
pub fn ssh_users(environment: &Environment, images: &BTreeMap<String, LoadedImage>) -> BTreeMap<String, String> {
    environment
        .node_groups
        .iter()
        .filter_map(|g| match &g.image.value {
            ImageRef::Named(name) => images.get(name).map(|i| (g.name.value.clone(), i.image.ssh_user.clone())),
            ImageRef::Ami(_) => None,
        })
        .collect()
}

/// Each node a slot could not be written to, as text.
pub fn unreached(written: &Written) -> impl Iterator<Item = String> + '_ {
    written.unreached.iter().map(|(node, error)| format!("{node}: could not write the reboot slot: {error}"))
}

/// What a change to the fleet (an apply, a roll) needs to fold its new nodes into the reboot
/// schedule: the images' SSH users, how to reach the nodes, and whether to write their slots.
pub struct NewNodes<'a> {
    pub images: &'a BTreeMap<String, LoadedImage>,
    pub reach: &'a Reach,
    /// Write the slots on the nodes over SSH; otherwise only tag them.
    pub write_slots: bool,
}

/// After `apply` or `roll`: gives running nodes without a slot (new since the last
/// assignment) one, keeping everyone else's, and writes the groups' nodes when `write_slots`.
/// Problems are warnings: the change to the fleet itself succeeded.
pub async fn fold_in_new_nodes(cloud: &Cloud, environment: &Environment, new_nodes: &NewNodes<'_>, notice: &dyn Notice) {
    let NewNodes { images, reach, write_slots } = *new_nodes;
    if environment.reboot_groups().is_empty() {
        return;
    }
    let name = &environment.name;
    let planned: Planned = match plan(cloud, environment, rand::random(), false, &reach.access).await {
        Ok(planned) => planned,
        Err(error) => return notice.warning(&format!("reboot schedule not updated: {error} ({})", error.hint().unwrap_or_default())),
    };
    let new = planned.schedule.slots.iter().filter(|s| s.changed).count();
    if new == 0 {
        return;
    }
    if !write_slots {
        // apply and roll reach nodes over SSH only when asked: the tags are the schedule, and a
        // node without its slot file picks a minute of the window at boot until `--assign`.
        return match tag_changed(cloud, &planned.schedule.slots).await {
            Ok(()) => notice.note(&format!(
                "Reboot schedule: {new} new node(s) folded in (tagged); `kstack reboots {name} --assign` writes their slots on the nodes."
            )),
            Err(error) => notice.warning(&format!("reboot schedule not updated: {error}")),
        };
    }
    if reach.record_console_host_keys(cloud, &slot_nodes(&planned), notice).await.is_err() {
        return notice.warning(&format!("reboot schedule: {new} new node(s) not folded in: the known_hosts file cannot be used"));
    }
    let written = put_in_force(cloud, environment, &ssh_users(environment, images), &planned, &reach.access, 10).await;
    if let Ok(written) = &written {
        unreached(written).for_each(|line| notice.warning(&line));
    }
    match written.map(|written| written.shortfall()) {
        Ok(None) => notice.note(&format!("Reboot schedule: {new} new node(s) folded in; `kstack reboots {name}` shows it.")),
        Ok(Some(message)) => notice.warning(&format!(
            "reboot schedule: {new} new node(s) folded in, but {message}; run `kstack reboots {name} --assign` once SSH reaches them"
        )),
        Err(error) => notice.warning(&format!("reboot schedule: {new} new node(s) not folded in: {error}")),
    }
}
