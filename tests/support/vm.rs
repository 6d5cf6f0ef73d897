//! VM test nodes: qemu virtual machines with a real kernel of their own, for what a container
//! node cannot show (sysctls, transparent huge pages, MTU, reboots). Each boots Debian's cloud
//! kernel from a copy-on-write overlay of the disk `scripts/setup` builds, under the
//! accelerator setup chose by a test boot (TCG, software emulation, unless a guest really
//! booted under KVM: on some machines one never does), and answers SSH on its own
//! loopback address through qemu's user networking, so it can stand at an emulator
//! instance's address like a container node.
//!
//! What is the VM's own (host key, authorized key, sshd drop-in) reaches it on a small
//! read-only seed disk that the image's `kstack-seed.service` copies into place before sshd
//! starts, at every boot. That keeps the base disk shared and untouched, needs no loop
//! devices or guest tools on the host, and is the shape cloud-init's NoCloud seed takes.
//!
//! The network is `restrict=on`: the guest reaches nothing, not even the host, and only the
//! SSH forward (which qemu serves from the host's loopback) connects in. The image has no
//! resolver, so nothing it does looks names up through qemu's DNS, which forwards outside
//! loopback. A VM is powered off when dropped; its console log is kept under
//! `target/vm-consoles/`.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::node::{cache, known_hosts_line, wait_for_ssh, write_sshd_files, ClientKey, Target};

/// A boot under TCG takes about 13 s on an idle machine and over 100 s on two cores busy
/// compiling (seen here): allow for that.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Two emulated VMs at once would starve the machine's two cores: one runs at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Vm {
    pub address: String,
    dir: tempfile::TempDir,
    /// From starting qemu until sshd answered.
    pub boot_time: Duration,
    _turn: MutexGuard<'static, ()>,
}

fn vm_cache() -> PathBuf {
    cache().join("vm")
}

/// `kvm` or `tcg`, as `scripts/setup` decided by a test boot.
fn accel() -> String {
    std::fs::read_to_string(vm_cache().join("accel")).map(|a| a.trim().to_owned()).unwrap_or_else(|_| String::from("tcg"))
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e} (scripts/setup installs it)"));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

impl Vm {
    pub fn boot(key: &ClientKey, address: &str) -> Vm {
        // A test that failed with its VM up has still powered it off.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let base = vm_cache();
        assert!(base.join("disk.raw").exists(), "{} is missing: run scripts/setup", base.join("disk.raw").display());
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(base.join("disk.raw")).arg(path("overlay.qcow2")));
        write_sshd_files(&path("seed/files"), key, None);
        run(Command::new("truncate").args(["-s", "8M"]).arg(path("seed.img")));
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(path("seed")).arg(path("seed.img")));

        let started = Instant::now();
        run(Command::new("qemu-system-x86_64")
            .args(["-accel", &accel(), "-m", "1024", "-smp", "2", "-kernel"])
            .arg(base.join("vmlinuz"))
            .arg("-initrd")
            .arg(base.join("initrd.img"))
            .args(["-append", "root=/dev/vda rw console=ttyS0"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", path("overlay.qcow2").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,readonly=on", path("seed.img").display()))
            .args(["-netdev", &format!("user,id=n0,restrict=on,hostfwd=tcp:{address}:22-:22")])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-serial")
            .arg(format!("file:{}", path("console.log").display()))
            .args(["-display", "none", "-daemonize", "-pidfile"])
            .arg(path("qemu.pid")));
        let mut vm = Vm { address: address.to_owned(), dir, boot_time: Duration::ZERO, _turn: turn };
        vm.wait_for_ssh();
        vm.boot_time = started.elapsed();
        eprintln!("VM {address} answered SSH {:.1} s after qemu started ({})", vm.boot_time.as_secs_f64(), accel());
        vm
    }

    /// Waits until the VM answers SSH, after boot or a reboot.
    pub fn wait_for_ssh(&self) {
        wait_for_ssh(&self.address, BOOT_TIMEOUT, &self.dir.path().join("console.log"));
    }

    /// The VM's host public key as a known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(&self.address, &self.dir.path().join("seed/files/etc/ssh/ssh_host_ed25519_key.pub"))
    }

    fn qemu_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("qemu.pid")).ok()?.trim().parse().ok()
    }

    /// Where the console log is kept: `target/vm-consoles/<test>-<address>.log`.
    fn artefact(&self) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
        let test = std::thread::current().name().unwrap_or("vm").replace("::", "-");
        target.join("vm-consoles").join(format!("{test}-{}.log", self.address))
    }
}

impl Target for Vm {
    fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(pid) = self.qemu_pid() {
            // qemu exits at SIGTERM as at a power cut: the overlay is thrown away anyway.
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
        let artefact = self.artefact();
        let _ = std::fs::create_dir_all(artefact.parent().unwrap());
        let _ = std::fs::copy(self.dir.path().join("console.log"), &artefact);
    }
}
