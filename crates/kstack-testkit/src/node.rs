//! Test nodes: `systemd-nspawn --boot` containers on an overlay of the cached Debian rootfs
//! (built by `scripts/setup`), each with sshd on its own loopback address, a generated host
//! key and an authorized test key. A node is shut down when dropped, even after a failure.
//!
//! By hand (as root): see "Test nodes" in the README.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What `scripts/setup` builds the test nodes from.
pub fn cache() -> PathBuf {
    std::env::var_os("KSTACK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/kstack"))
}

pub fn rootfs() -> PathBuf {
    cache().join("rootfs/bookworm")
}

/// A host the tests reach over SSH: a container node or a VM.
pub trait Target {
    fn address(&self) -> &str;
}

/// A loopback address no other test process uses: the second octet comes from the pid.
pub fn next_address() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let process = 100 + std::process::id() % 120;
    format!("127.{process}.{}.{}", n / 200, n % 200 + 2)
}

fn keygen(path: &Path) {
    keygen_of_type("ed25519", path);
}

fn keygen_of_type(kind: &str, path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "kstack-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed by scripts/setup");
    assert!(status.success());
}

pub fn known_hosts_line(address: &str, public_key: &Path) -> String {
    let public = std::fs::read_to_string(public_key).unwrap();
    let mut parts = public.split_whitespace();
    format!("{address} {} {}\n", parts.next().unwrap(), parts.next().unwrap())
}

/// A known_hosts line with a key `address` does not have, as recorded before a rebuild.
pub fn stale_known_hosts_line(address: &str) -> String {
    stale_known_hosts_line_of_type("ed25519", address)
}

/// The same with a key of another type (`ecdsa`, `rsa`) than the ed25519 key nodes offer.
pub fn stale_known_hosts_line_of_type(kind: &str, address: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("stale");
    keygen_of_type(kind, &key);
    known_hosts_line(address, &key.with_extension("pub"))
}

/// The client key every node of a test process authorizes.
pub struct ClientKey {
    pub dir: tempfile::TempDir,
}

impl ClientKey {
    #[expect(clippy::new_without_default, reason = "each call generates a key pair (ssh-keygen): not a default value")]
    pub fn new() -> ClientKey {
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("id_ed25519"));
        ClientKey { dir }
    }

    pub fn private(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    pub fn public(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("id_ed25519.pub")).unwrap()
    }
}

/// Writes what makes a host the test's own into `root`: a fresh host key, the client's key
/// as root's authorized key, and an sshd drop-in (listening on `listen` when given).
pub fn write_sshd_files(root: &Path, key: &ClientKey, listen: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["etc/ssh/sshd_config.d", "root/.ssh"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for private in ["root", "root/.ssh"] {
        std::fs::set_permissions(root.join(private), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    keygen(&root.join(HOST_KEY));
    std::fs::write(root.join("root/.ssh/authorized_keys"), key.public()).unwrap();
    let listen = listen.map(|address| format!("ListenAddress {address}\n")).unwrap_or_default();
    std::fs::write(
        root.join("etc/ssh/sshd_config.d/kstack-test.conf"),
        format!("{listen}HostKey /{HOST_KEY}\nPermitRootLogin prohibit-password\nUseDNS no\nMaxSessions 100\nMaxStartups 100\n"),
    )
    .unwrap();
}

const HOST_KEY: &str = "etc/ssh/ssh_host_ed25519_key";

/// Waits until `address` answers with an SSH banner; on timeout, panics with the console.
pub fn wait_for_ssh(address: &str, timeout: Duration, console: &Path) {
    let deadline = Instant::now() + timeout;
    let socket: std::net::SocketAddr = format!("{address}:22").parse().unwrap();
    while Instant::now() < deadline {
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&socket, Duration::from_millis(200)) {
            let mut banner = [0u8; 4];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            if std::io::Read::read_exact(&mut &stream, &mut banner).is_ok() && &banner == b"SSH-" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let console = std::fs::read_to_string(console).unwrap_or_default();
    panic!("{address} did not answer SSH within {} s; console:\n{console}", timeout.as_secs());
}

pub struct Node {
    pub address: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    pub fn boot(key: &ClientKey) -> Node {
        Node::boot_at(key, &next_address())
    }

    pub fn boot_at(key: &ClientKey, address: &str) -> Node {
        Node::boot_with(key, address, |_| {})
    }

    /// Boots after `prepare` has written into the node's writable layer (given as the path
    /// of its root), so the node sees the files from the start.
    pub fn boot_with(key: &ClientKey, address: &str, prepare: impl FnOnce(&Path)) -> Node {
        crate::require(crate::Need::TestNodes);
        let rootfs = rootfs();
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        write_sshd_files(&upper, key, Some(address));
        prepare(&upper);
        let name = format!("kstack-{}", address.replace('.', "-"));
        let console = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let child = Command::new("systemd-nspawn")
            .arg("-q")
            .arg("-D")
            .arg(&rootfs)
            .arg(format!("--overlay={}:{}:/", rootfs.display(), upper.display()))
            .args(["--boot", "--register=no", "--keep-unit", "-M", &name])
            // No resolv.conf: the host's DNS server is outside loopback, and a node that looked
            // names up there (sudo looks up its host name) would send traffic off the machine.
            .arg("--resolv-conf=delete")
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("systemd-nspawn (systemd-container) is installed by scripts/setup");
        let node = Node { address: address.to_owned(), dir, child: Some(child) };
        wait_for_ssh(&node.address, Duration::from_secs(30), &node.dir.path().join("console.log"));
        node
    }

    /// The node's host public key as a known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        known_hosts_line(&self.address, &self.dir.path().join("upper").join(HOST_KEY).with_extension("pub"))
    }

    /// The node's init, as the host sees it: `systemd-nspawn`'s child.
    pub fn leader_pid(&self) -> u32 {
        let nspawn = self.child.as_ref().expect("the node runs").id();
        let children = std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).unwrap();
        children.split_whitespace().next().expect("nspawn has started the node's init").parse().unwrap()
    }

    /// Runs `script` as root inside the node, entering its namespaces from the host (no SSH,
    /// so nothing kstack's transport does is involved).
    pub fn exec(&self, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.leader_pid().to_string(), "-a", "sh", "-c", script])
            .output()
            .expect("nsenter (util-linux) is installed")
    }

    /// A path inside the node's writable layer, to look at what kstack wrote.
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join("upper").join(path.trim_start_matches('/'))
    }
}

impl Target for Node {
    fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SIGTERM makes nspawn power the container off cleanly; SIGKILL if it hangs.
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
