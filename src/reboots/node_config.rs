//! What a node is told about its reboot slot: an apt configuration file next to
//! unattended-upgrades' own, read by `kstack-reboot-guard` (from the unattended-upgrades
//! role), which reboots the node at its slot once an update needs it.

use crate::model::reboots::{format_minute, RebootWindow};
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

/// The minute of the window a node without a slot file reboots at: its guard derives it from
/// its instance id (cloud-init's `/var/lib/cloud/data/instance-id`) with `cksum`, so kstack
/// knows it too, keeps it when it fits, and lists it in the node's peers' files.
pub fn fallback_minute(window: &RebootWindow, instance: &str) -> u32 {
    window.minute_at(cksum(instance.as_bytes()) % window.minutes())
}

/// POSIX `cksum`: CRC-32 (polynomial 0x04C11DB7, most significant bit first) over the bytes
/// and then their length's bytes, least significant first, complemented.
fn cksum(bytes: &[u8]) -> u32 {
    fn update(crc: u32, byte: u8) -> u32 {
        (0..8).fold(crc ^ (u32::from(byte) << 24), |crc, _| if crc & 0x8000_0000 == 0 { crc << 1 } else { (crc << 1) ^ 0x04C1_1DB7 })
    }
    let mut crc = bytes.iter().fold(0, |crc, &byte| update(crc, byte));
    let mut length = bytes.len();
    while length > 0 {
        crc = update(crc, length as u8);
        length >>= 8;
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cksum_is_posix_cksum() {
        // Values of coreutils' `printf %s TEXT | cksum`.
        assert_eq!(cksum(b""), 4294967295);
        assert_eq!(cksum(b"i-0123456789abcdef0"), 3451133481);
    }
}
