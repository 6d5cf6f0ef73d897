//! What a node is told about its reboot slot: an apt configuration file next to
//! unattended-upgrades' own, read by `kstack-reboot-guard` (from the unattended-upgrades
//! role), which reboots the node at its slot once an update needs it.

use crate::model::reboots::format_minute;
use crate::model::RebootPolicy;

/// Where the slot is written on the node; it overrides the role's defaults in
/// `50unattended-upgrades`, which apt reads first.
pub const PATH: &str = "/etc/apt/apt.conf.d/51kstack-reboot";

/// The file for one node: its time, its window, and its group peers' times, which the
/// guard keeps clear of by the group's gap.
pub fn apt_config(environment: &str, instance: &str, minute: u32, policy: &RebootPolicy, peers: &[(String, u32)]) -> String {
    let peers: Vec<String> = peers.iter().map(|(id, m)| format!("{id}@{}", format_minute(*m))).collect();
    let window = &policy.window;
    format!(
        "// Written by `kstack reboots {environment} --assign`: this node's reboot slot.\n\
         // kstack-reboot-guard reboots at it when an update needs a reboot.\n\
         Unattended-Upgrade::Automatic-Reboot \"false\";\n\
         Kstack::Reboot::Instance \"{instance}\";\n\
         Kstack::Reboot::Time \"{}\";\n\
         Kstack::Reboot::TimeZone \"{}\";\n\
         Kstack::Reboot::WindowStart \"{}\";\n\
         Kstack::Reboot::WindowEnd \"{}\";\n\
         Kstack::Reboot::Days \"{}\";\n\
         Kstack::Reboot::GapMinutes \"{}\";\n\
         Kstack::Reboot::Peers \"{}\";\n",
        format_minute(minute),
        window.time_zone,
        format_minute(window.start),
        format_minute(window.end),
        window.days.join(" "),
        policy.group_gap_minutes,
        peers.join(" "),
    )
}
