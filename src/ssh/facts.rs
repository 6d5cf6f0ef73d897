//! Facts about a host, gathered once per run by one small script.

use std::collections::BTreeMap;

use serde::Serialize;

/// Shell builtins where they do (files under /proc and /sys, `read`), a process only where
/// none does: the kernel names its architecture in /proc from Linux 6.1 (`uname` before);
/// `cpus` are the CPUs online, as Ansible counts them; systemd, as a container's init, names the
/// container in /run/systemd/container, where `systemd-detect-virt` would look first (a VM's
/// hypervisor needs `systemd-detect-virt`).
pub(crate) const SCRIPT: &str = r#". /etc/os-release 2>/dev/null
echo "os_id=$ID"
echo "os_version=$VERSION_ID"
echo "os_codename=$VERSION_CODENAME"
read -r kernel < /proc/sys/kernel/osrelease; echo "kernel=$kernel"
if [ -r /proc/sys/kernel/arch ]; then read -r arch < /proc/sys/kernel/arch; else arch=$(uname -m); fi; echo "arch=$arch"
cpus=0; online=; [ ! -r /sys/devices/system/cpu/online ] || read -r online < /sys/devices/system/cpu/online
o=$IFS; IFS=,; for r in $online; do case "$r" in *-*) cpus=$((cpus + ${r#*-} - ${r%-*} + 1)) ;; ?*) cpus=$((cpus + 1)) ;; esac; done; IFS=$o
[ "$cpus" -gt 0 ] || cpus=$(nproc); echo "cpus=$cpus"
while read -r key value _; do [ "$key" = MemTotal: ] && echo "memory_kib=$value" && break; done < /proc/meminfo
if [ -s /run/systemd/container ]; then read -r virtualization < /run/systemd/container; else virtualization=$(systemd-detect-virt 2>/dev/null || echo none); fi
echo "virtualization=$virtualization"
read -r hostname < /proc/sys/kernel/hostname; echo "hostname=$hostname""#;

/// What `systemd-detect-virt` calls the containers it knows.
const CONTAINERS: &[&str] =
    &["openvz", "lxc", "lxc-libvirt", "systemd-nspawn", "docker", "podman", "rkt", "wsl", "proot", "pouch", "container-other"];

#[derive(Debug, Clone, Default, Serialize)]
pub struct Facts {
    pub os_id: String,
    pub os_version: String,
    pub os_codename: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_kib: u64,
    /// What `systemd-detect-virt` says: `none` on bare metal, the hypervisor on a VM (`amazon`
    /// or `xen` on EC2, `qemu`, `kvm`), the container type (e.g. `systemd-nspawn`) inside one.
    pub virtualization: String,
    /// Inside a container, where the kernel is the host's: its settings cannot be changed.
    pub container: bool,
    pub hostname: String,
}

impl Facts {
    /// Two sets of facts unlike in every field, standing in for a host's before they are known:
    /// what renders the same with both does not depend on them.
    pub fn stand_ins() -> [Facts; 2] {
        let other = |text: &str| Facts {
            os_id: text.to_owned(),
            os_version: text.to_owned(),
            os_codename: text.to_owned(),
            kernel: text.to_owned(),
            arch: text.to_owned(),
            cpus: 1,
            memory_kib: 1,
            virtualization: text.to_owned(),
            container: true,
            hostname: text.to_owned(),
        };
        [Facts::default(), other("kstack-stand-in")]
    }

    pub fn parse(text: &str) -> Facts {
        let values: BTreeMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
        let get = |key: &str| values.get(key).copied().unwrap_or_default().trim().to_owned();
        Facts {
            os_id: get("os_id"),
            os_version: get("os_version"),
            os_codename: get("os_codename"),
            kernel: get("kernel"),
            arch: get("arch"),
            cpus: get("cpus").parse().unwrap_or(0),
            memory_kib: get("memory_kib").parse().unwrap_or(0),
            virtualization: get("virtualization"),
            // systemd-detect-virt names the container when there is one, a VM's hypervisor only
            // outside containers: one call tells both.
            container: CONTAINERS.contains(&get("virtualization").as_str()),
            hostname: get("hostname"),
        }
    }
}
