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
//! The network is `restrict=on`: the guest reaches nothing, not even the host, with two
//! exceptions qemu makes on the host's loopback: the SSH forward in, and the apt repository
//! `scripts/setup` builds beside the disk, out at [`APT_SOURCE`] (see [`apt_port`]). The
//! seed makes that repository the guest's only package source, as an AMI's archive. The image
//! has no resolver, so nothing it does looks names up through qemu's DNS, which forwards
//! outside loopback. A VM is powered off when dropped; its console log is kept under
//! `target/vm-consoles/`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::node::{cache, known_hosts_line, wait_for_ssh, write_sshd_files, ClientKey, Target};

/// A boot under TCG takes about 13 s on an idle machine and over 100 s on two cores busy
/// compiling (seen here): allow for that.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a guest finds the apt repository: an address of qemu's user network that exists
/// only as a forward to the host (`guestfwd`).
const APT_GUEST_ADDRESS: &str = "10.0.2.100";

/// The apt source line of the VMs' repository. It is not signed, hence `trusted=yes`.
pub const APT_SOURCE: &str = "deb [trusted=yes] http://10.0.2.100/ ./";

/// What qemu appends to the kernel command line of every boot: the disk is the root file
/// system (an unpartitioned ext4 image, mounted read-write as it has no fstab to remount it),
/// and the console goes to the serial log. A VM that is not launched as an instance adds
/// `cloud-init=disabled`: what is its own comes from the seed, see [`SEED_LABEL`].
const BASE_CMDLINE: &str = "root=/dev/vda rw console=ttyS0";

/// The seed disk's file system label, which the image's `kstack-seed.service` requires.
const SEED_LABEL: &str = "kstack-seed";

/// Two emulated VMs at once would starve the machine's two cores: one runs at a time. A VM
/// holds the turn while it lives (on any thread: the emulator's instances get theirs on a
/// watcher's).
static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

struct Turn;

impl Turn {
    fn take() -> Turn {
        // A test that failed with its VM up has still powered it off.
        let mut busy = BUSY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *BUSY.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
        FREED.notify_one();
    }
}

/// Serializes whole VM tests, not only their VMs: a test that boots several VMs one after
/// another (a builder, then a node of its image) must not find another test's VM holding the
/// turn in between, which would eat into its own waits. Hold it for the test's length.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static TESTS: Mutex<()> = Mutex::new(());
    // A test that failed has powered its VMs off.
    TESTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Vm {
    pub address: String,
    dir: tempfile::TempDir,
    /// What the VM boots from: its overlay's backing disk.
    disk: Disk,
    /// Whether it is launched as an instance: cloud-init runs (it has a NoCloud seed), and a
    /// reboot the guest asks for stops qemu, so the harness boots it again as GRUB would
    /// ([`Vm::rebooted`], [`Vm::boot_through_grub`]).
    cloud_init: bool,
    /// How much of the console log came before the last start.
    console_mark: usize,
    /// From starting qemu until sshd answered, at the last (re)start.
    pub boot_time: Duration,
    _turn: Turn,
}

/// A disk VMs boot from: the one `scripts/setup` builds, or what a builder VM left behind
/// (an image's content), with the kernel command line its GRUB settings give.
#[derive(Clone)]
pub struct Disk {
    pub path: PathBuf,
    format: &'static str,
    /// `$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT` as the disk's `/etc/default/grub` sets them.
    pub grub_cmdline: String,
    /// Keeps a builder's disk while images refer to it.
    _kept: Option<std::sync::Arc<tempfile::TempDir>>,
}

impl Disk {
    pub fn base() -> Disk {
        Disk { path: vm_cache().join("disk.raw"), format: "raw", grub_cmdline: String::new(), _kept: None }
    }
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

/// The version of `package` the VMs' repository offers.
pub fn apt_version(package: &str) -> String {
    let index = std::fs::read_to_string(vm_cache().join("apt/Packages")).unwrap();
    let versions = index
        .split("\n\n")
        .filter(|stanza| stanza.starts_with(&format!("Package: {package}\n")))
        .filter_map(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Version: ")).map(str::to_owned));
    let mut versions: Vec<String> = versions.collect();
    assert_eq!(versions.len(), 1, "{package}: one version in the VMs' repository, so no ordering of versions is needed: {versions:?}");
    versions.remove(0)
}

/// The port on 127.0.0.1 where this test process serves the VMs' apt repository
/// (`~/.cache/kstack/vm/apt`, flat: an index and the packages beside it) over HTTP. The
/// server is a thread of the test process, so it ends with it. A guest's connection to
/// [`APT_GUEST_ADDRESS`] port 80 makes qemu run `socat` for it, which connects here from the
/// host's loopback.
pub fn apt_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let repository = vm_cache().join("apt");
        assert!(repository.join("Packages").exists(), "{} is missing: run scripts/setup", repository.join("Packages").display());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let repository = repository.clone();
                std::thread::spawn(move || serve_files(stream, &repository));
            }
        });
        port
    })
}

/// Answers GET and HEAD requests on one connection, one after the other (apt pipelines them),
/// with the file of the repository the path names, or 404.
fn serve_files(stream: TcpStream, repository: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        // The headers say nothing that changes the answer.
        let mut header = String::new();
        while reader.read_line(&mut header).unwrap_or(0) > 0 && header.trim_end() != "" {
            header.clear();
        }
        let mut words = request.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let file = repository_file(repository, path).and_then(|file| std::fs::read(file).ok());
        let written = match file {
            Some(body) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n", body.len());
                writer.write_all(head.as_bytes()).and_then(|()| if method == "HEAD" { Ok(()) } else { writer.write_all(&body) })
            }
            None => writer.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        };
        if written.is_err() {
            return;
        }
    }
}

/// The file a request path names: a plain file name of the flat repository (`/./Packages`
/// and `/Packages` alike), percent-decoded; nothing outside it.
fn repository_file(repository: &Path, path: &str) -> Option<PathBuf> {
    let path = path.split('?').next()?;
    let mut segments = path.split('/').filter(|s| !s.is_empty() && *s != ".");
    let name = percent_decode(segments.next()?)?;
    let plain = segments.next().is_none() && !name.starts_with('.') && !name.contains('/');
    plain.then(|| repository.join(name))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            decoded.push(u8::from_str_radix(text.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// What a VM boots from, of the files `scripts/setup` builds.
const IMAGE_FILES: [&str; 3] = ["disk.raw", "vmlinuz", "initrd.img"];

/// One of [`IMAGE_FILES`] for the VM of `dir`: its own hard link, made at its first boot, so
/// that a rebuild by `scripts/setup` (which moves new files into place) leaves a running VM
/// and its power cycles on the files it booted from; across file systems, the cache's file.
fn image(dir: &Path, name: &str) -> PathBuf {
    let own = dir.join(name);
    if own.exists() {
        own
    } else {
        vm_cache().join(name)
    }
}

impl Vm {
    /// A VM of `disk` (the base disk, or an image's) whose host and authorized keys come from
    /// `kstack-seed.service`, booted with the disk's GRUB command line and without cloud-init.
    pub fn boot(disk: &Disk, key: &ClientKey, address: &str) -> Vm {
        Vm::create(disk, address, SEED_LABEL, false, |seed| {
            write_sshd_files(&seed.join("files"), key, None);
            std::fs::create_dir_all(seed.join("files/etc/apt")).unwrap();
            std::fs::write(seed.join("files/etc/apt/sources.list"), format!("{APT_SOURCE}\n")).unwrap();
        })
    }

    /// A VM launched as an EC2 instance is: from `disk`, with cloud-init reading its instance
    /// id, SSH keys (as EC2 gives those of the instance's key pair) and user data from a
    /// NoCloud seed (a disk labelled `cidata`), and booted with the disk's GRUB command line.
    /// cloud-init makes its host keys and prints them on the console ([`Vm::console_host_keys`]).
    pub fn launch(disk: &Disk, address: &str, instance_id: &str, user_data: &str, public_keys: &[String]) -> Vm {
        Vm::create(disk, address, "cidata", true, |seed| {
            let keys: String = public_keys.iter().map(|k| format!("  - {k}\n")).collect();
            let hostname = format!("ip-{}", address.replace('.', "-"));
            let meta = format!("instance-id: {instance_id}\nlocal-hostname: {hostname}\npublic-keys:\n{keys}");
            std::fs::write(seed.join("meta-data"), if public_keys.is_empty() { meta.replace("public-keys:\n", "") } else { meta }).unwrap();
            std::fs::write(seed.join("user-data"), user_data).unwrap();
        })
    }

    fn create(disk: &Disk, address: &str, seed_label: &str, cloud_init: bool, fill_seed: impl FnOnce(&Path)) -> Vm {
        crate::require(crate::Need::Vms);
        let turn = Turn::take();
        assert!(disk.path.exists(), "{} is missing: run scripts/setup", disk.path.display());
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        for file in IMAGE_FILES {
            let _ = std::fs::hard_link(vm_cache().join(file), path(file));
        }
        // The base disk through the VM's own link; an image's disk is kept as long as it is used.
        let backing = if disk.format == "raw" { image(dir.path(), "disk.raw") } else { disk.path.clone() };
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", disk.format, "-b"]).arg(&backing).arg(path("overlay.qcow2")));
        std::fs::create_dir_all(path("seed")).unwrap();
        fill_seed(&path("seed"));
        if cloud_init {
            // NoCloud reads only ISO 9660 or FAT file systems.
            run(Command::new("genisoimage")
                .args(["-quiet", "-output"])
                .arg(path("seed.img"))
                .args(["-volid", seed_label, "-joliet", "-rock"])
                .arg(path("seed")));
        } else {
            run(Command::new("truncate").args(["-s", "8M"]).arg(path("seed.img")));
            run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", seed_label, "-d"]).arg(path("seed")).arg(path("seed.img")));
        }
        let mut vm = Vm { address: address.to_owned(), dir, disk: disk.clone(), cloud_init, console_mark: 0, boot_time: Duration::ZERO, _turn: turn };
        vm.start(&with_grub(&disk.grub_cmdline));
        vm
    }

    /// Starts qemu on the VM's overlay and seed with `cmdline` as the kernel command line,
    /// and waits until sshd answers.
    fn start(&mut self, cmdline: &str) {
        let path = |name: &str| self.dir.path().join(name);
        let cmdline = if self.cloud_init { cmdline.to_owned() } else { format!("{cmdline} cloud-init=disabled") };
        self.console_mark = std::fs::metadata(path("console.log")).map_or(0, |m| m.len() as usize);
        let started = Instant::now();
        run(Command::new("qemu-system-x86_64")
            .args(["-accel", &accel(), "-m", "1024", "-smp", "2", "-kernel"])
            .arg(image(self.dir.path(), "vmlinuz"))
            .arg("-initrd")
            .arg(image(self.dir.path(), "initrd.img"))
            .args(["-append", &cmdline])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", path("overlay.qcow2").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,readonly=on", path("seed.img").display()))
            .args([
                "-netdev",
                &format!(
                    "user,id=n0,restrict=on,hostfwd=tcp:{}:22-:22,guestfwd=tcp:{APT_GUEST_ADDRESS}:80-cmd:socat - TCP:127.0.0.1:{}",
                    self.address,
                    apt_port()
                ),
            ])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .args(if self.cloud_init { &["-no-reboot"][..] } else { &[] })
            // Appended: the log keeps every boot of the VM.
            .arg("-chardev")
            .arg(format!("file,id=console,append=on,path={}", path("console.log").display()))
            .args(["-serial", "chardev:console", "-display", "none", "-monitor"])
            .arg(format!("unix:{},server=on,wait=off", path("monitor.sock").display()))
            .args(["-daemonize", "-pidfile"])
            .arg(path("qemu.pid")));
        self.wait_for_ssh();
        self.boot_time = started.elapsed();
        eprintln!("VM {} answered SSH {:.1} s after qemu started ({}): {cmdline}", self.address, self.boot_time.as_secs_f64(), accel());
    }

    /// Powers the VM off as a stopped instance is: an ACPI power button press, so the guest
    /// can shut down cleanly, then a power cut after 30 s (the image has no ACPI button
    /// handler, so it is the cut in practice: what a bake leaves is synced before it stops
    /// the builder). Returns how long that took.
    pub fn power_off(&self) -> Duration {
        let started = Instant::now();
        let Some(pid) = self.qemu_pid() else { return Duration::ZERO };
        if let Ok(mut monitor) = std::os::unix::net::UnixStream::connect(self.dir.path().join("monitor.sock")) {
            let _ = monitor.write_all(b"system_powerdown\n");
        }
        if !wait_for_exit(pid, Duration::from_secs(30)) {
            eprintln!("VM {} did not power off at the power button within 30 s: cut", self.address);
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            wait_for_exit(pid, Duration::from_secs(10));
        }
        started.elapsed()
    }

    /// Whether the guest rebooted since the last start: qemu has stopped after the kernel said
    /// it restarts the system (only a launched VM, which runs with `-no-reboot`).
    pub fn rebooted(&self) -> bool {
        let running = self.qemu_pid().is_some_and(|pid| !wait_for_exit(pid, Duration::ZERO));
        let console = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        let since = String::from_utf8_lossy(console.get(self.console_mark..).unwrap_or_default());
        !running && since.contains("reboot: Restarting system")
    }

    /// Boots the VM again after its guest rebooted, with the command line its GRUB settings
    /// give now (read off its disk): what the guest's reboot through GRUB would boot.
    pub fn boot_through_grub(&mut self) -> String {
        let grub = grub_cmdline_of(&self.dir.path().join("overlay.qcow2"));
        self.start(&with_grub(&grub));
        grub
    }

    /// Powers the VM off and keeps its disk as an image's content: what `CreateImage` takes
    /// from a stopped instance, with the command line its GRUB settings now give.
    pub fn into_image(self) -> Disk {
        let took = self.power_off();
        let kept = tempfile::tempdir().unwrap();
        let path = kept.path().join("image.qcow2");
        std::fs::rename(self.dir.path().join("overlay.qcow2"), &path).unwrap();
        // The disk it is backed by goes along, whatever the VM booted from.
        let (backing, format) = match self.disk.format {
            "raw" => (kept.path().join("disk.raw"), "raw"),
            _ => (self.disk.path.clone(), self.disk.format),
        };
        if format == "raw" {
            let own = self.dir.path().join("disk.raw");
            let moved = if own.exists() { std::fs::rename(&own, &backing) } else { std::fs::hard_link(vm_cache().join("disk.raw"), &backing) };
            moved.unwrap();
        }
        run(Command::new("qemu-img").args(["rebase", "-u", "-F", format, "-b"]).arg(&backing).arg(&path));
        let grub_cmdline = grub_cmdline_of(&path);
        eprintln!("VM {} powered off in {:.1} s; its disk is an image, GRUB command line `{grub_cmdline}`", self.address, took.as_secs_f64());
        Disk { path, format: "qcow2", grub_cmdline, _kept: Some(std::sync::Arc::new(kept)) }
    }

    /// The host keys cloud-init printed on the console at first boot (as on EC2, between
    /// `-----BEGIN SSH HOST KEY KEYS-----` and its END line), as known_hosts lines.
    pub fn console_host_keys(&self) -> Vec<String> {
        let console = self.console();
        let keys = console.split("-----BEGIN SSH HOST KEY KEYS-----").nth(1).and_then(|rest| rest.split("-----END SSH HOST KEY KEYS-----").next());
        keys.unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("ssh-") || line.starts_with("ecdsa-"))
            .map(|line| format!("{} {}", self.address, line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")))
            .collect()
    }

    /// What the VM has printed on its serial console since it was created.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("console.log")).unwrap_or_default()).into_owned()
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
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::repo().join("target"));
        let test = std::thread::current().name().unwrap_or("vm").replace("::", "-");
        target.join("vm-consoles").join(format!("{test}-{}.log", self.address))
    }
}

/// The kernel command line of a boot through GRUB with these GRUB settings
/// (`$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT`): qemu's root and console, then the
/// settings' parameters. For the default boot entry, GRUB's `10_linux` writes `linux <kernel>
/// root=<root device> ro` and the same parameters after the root. The kernel and root stay
/// qemu's (`-kernel`, [`BASE_CMDLINE`]) because the disk is an unpartitioned file system
/// without GRUB; `update-grub` is not installed in the image either, so what a role changes
/// is only `/etc/default/grub`, which is what [`grub_cmdline_of`] reads.
fn with_grub(grub: &str) -> String {
    let grub = grub.split_whitespace().collect::<Vec<_>>().join(" ");
    if grub.is_empty() {
        String::from(BASE_CMDLINE)
    } else {
        format!("{BASE_CMDLINE} {grub}")
    }
}

/// The GRUB command line a disk's `/etc/default/grub` gives, read off the disk (no guest
/// running): the image flattened to a raw file, the file read with `debugfs`, and sourced
/// as `grub-mkconfig` does.
fn grub_cmdline_of(image: &Path) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let raw = scratch.path().join("disk.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw));
    let grub = scratch.path().join("grub");
    let dumped = Command::new("debugfs").arg("-R").arg(format!("dump /etc/default/grub {}", grub.display())).arg(&raw).output().unwrap();
    if !grub.exists() {
        eprintln!("no /etc/default/grub on the image: {}", String::from_utf8_lossy(&dumped.stderr));
        return String::new();
    }
    let sourced =
        Command::new("sh").arg("-c").arg(r#". "$1"; echo "$GRUB_CMDLINE_LINUX $GRUB_CMDLINE_LINUX_DEFAULT""#).arg("sh").arg(&grub).output().unwrap();
    String::from_utf8_lossy(&sourced.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether process `pid` (qemu, daemonized: not our child) exited within `timeout`.
fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    // Exited once gone or a zombie: whoever it was reparented to may reap it late.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
    };
    while running() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
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
            if !wait_for_exit(pid, Duration::from_secs(10)) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        }
        let artefact = self.artefact();
        let _ = std::fs::create_dir_all(artefact.parent().unwrap());
        let _ = std::fs::copy(self.dir.path().join("console.log"), &artefact);
    }
}
