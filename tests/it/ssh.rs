//! The SSH transport against booted test nodes.

use std::time::Duration;

use kstack::ssh::{Bastion, Connection, HostKeys, Login, SshError};
use kstack_testkit::node::{self, ClientKey, Node};

fn login(key: &ClientKey, known_hosts: &std::path::Path, trust_on_first_use: bool) -> Login {
    Login {
        user: String::from("root"),
        key: kstack::ssh::LoginKey::File(key.private()),
        port: 22,
        host_keys: HostKeys { path: known_hosts.to_owned(), trust_on_first_use },
        connect_timeout: Duration::from_secs(10),
        bastion: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn one_connection_runs_commands_writes_verified_files_and_gathers_facts() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    std::fs::write(&known_hosts, node.known_hosts_line()).unwrap();
    runtime().block_on(async {
        let connection = Connection::open(&node.address, &login(&key, &known_hosts, false)).await.unwrap();
        let output = connection.run("echo out; echo err >&2; exit 3", None).await.unwrap();
        assert_eq!((output.status, output.stdout.as_str(), output.stderr.as_str()), (3, "out\n", "err\n"));
        let piped = connection.run("tr a-z A-Z", Some(b"shout")).await.unwrap();
        assert_eq!(piped.stdout, "SHOUT");

        connection.write_file("/etc/kstack/it's here.conf", b"key=value\n", 0o640, "root", "root").await.unwrap();
        let stat = connection.run("stat -c '%a %U' \"/etc/kstack/it's here.conf\"; cat \"/etc/kstack/it's here.conf\"", None).await.unwrap();
        assert_eq!(stat.stdout, "640 root\nkey=value\n");

        let facts = connection.facts().await.unwrap();
        assert_eq!(facts.os_id, "debian");
        assert_eq!(facts.os_codename, "bookworm");
        assert!(facts.cpus >= 1 && facts.memory_kib > 0, "{facts:?}");
        assert!(facts.container, "a test node is a container: {facts:?}");
        // Read from /proc, /sys and /run without the tools, the facts say what the tools say.
        let tools = String::from_utf8_lossy(&node.exec("uname -m; nproc; systemd-detect-virt").stdout).into_owned();
        assert_eq!(format!("{}\n{}\n{}\n", facts.arch, facts.cpus, facts.virtualization), tools);
        connection.close().await;
    });
    assert_eq!(std::fs::read_to_string(node.file("/etc/kstack/it's here.conf")).unwrap(), "key=value\n");
}

#[test]
fn a_changed_host_key_is_refused_and_an_unknown_one_only_trusted_when_asked() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    // A key recorded for this address earlier, before the host was "rebuilt".
    std::fs::write(&known_hosts, node::stale_known_hosts_line(&node.address)).unwrap();

    let rt = runtime();
    let error = rt.block_on(Connection::open(&node.address, &login(&key, &known_hosts, true))).err().unwrap();
    assert!(matches!(error, SshError::HostKeyChanged { line: 1, .. }), "{error}");
    assert!(error.to_string().contains("has changed"), "{error}");

    let fresh = key.dir.path().join("fresh_known_hosts");
    let error = rt.block_on(Connection::open(&node.address, &login(&key, &fresh, false))).err().unwrap();
    assert!(matches!(error, SshError::HostKeyUnknown { .. }), "{error}");
    let connection = rt.block_on(Connection::open(&node.address, &login(&key, &fresh, true))).unwrap();
    rt.block_on(connection.close());
    assert!(std::fs::read_to_string(&fresh).unwrap().contains("ssh-ed25519"), "trusted on first use and recorded");
    rt.block_on(Connection::open(&node.address, &login(&key, &fresh, false))).unwrap();
}

/// Hashes the host names of a known_hosts file, as `ssh-keygen -H` does for `HashKnownHosts`.
fn hash_known_hosts(path: &std::path::Path) {
    let status = std::process::Command::new("ssh-keygen").arg("-q").arg("-H").arg("-f").arg(path).output().unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(std::fs::read_to_string(path).unwrap().starts_with("|1|"));
}

#[test]
fn a_hashed_entry_of_another_key_type_refuses_the_host_and_a_bastion_is_checked_the_same_way() {
    let key = ClientKey::new();
    let bastion = Node::boot(&key);
    let target = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    let rt = runtime();

    // An RSA key recorded for the target under a hashed name; it offers ed25519.
    std::fs::write(&known_hosts, node::stale_known_hosts_line_of_type("rsa", &target.address)).unwrap();
    hash_known_hosts(&known_hosts);
    let error = rt.block_on(Connection::open(&target.address, &login(&key, &known_hosts, true))).err().unwrap();
    assert!(matches!(error, SshError::HostKeyChanged { ref recorded, .. } if recorded.starts_with("|1|") && recorded.contains("ssh-rsa")), "{error}");

    // Its own key under a hashed name is found.
    std::fs::write(&known_hosts, target.known_hosts_line()).unwrap();
    hash_known_hosts(&known_hosts);
    let connection = rt.block_on(Connection::open(&target.address, &login(&key, &known_hosts, false))).unwrap();
    rt.block_on(connection.close());

    // Through a bastion whose recorded key is of another type: refused at the bastion.
    let recorded = std::fs::read_to_string(&known_hosts).unwrap();
    std::fs::write(&known_hosts, format!("{recorded}{}", node::stale_known_hosts_line_of_type("ecdsa", &bastion.address))).unwrap();
    let mut through = login(&key, &known_hosts, true);
    through.bastion = Some(format!("root@{}:22", bastion.address).parse::<Bastion>().unwrap());
    let error = rt.block_on(Connection::open(&target.address, &through)).err().unwrap();
    assert!(matches!(error, SshError::HostKeyChanged { ref host, line: 2, .. } if host == &bastion.address), "{error}");
    assert!(error.to_string().contains("it offers ssh-ed25519 SHA256:"), "{error}");
}

#[test]
fn a_login_user_other_than_root_works_as_root_through_sudo() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    runtime().block_on(async {
        let root = Connection::open(&node.address, &login(&key, &known_hosts, true)).await.unwrap();
        // Until boot finishes, /run/nologin keeps users other than root out (pam_nologin).
        let setup = "useradd --create-home admin && mkdir -p ~admin/.ssh && cp /root/.ssh/authorized_keys ~admin/.ssh/ \
                     && chown -R admin: ~admin/.ssh && echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/admin \
                     && while [ -e /run/nologin ]; do sleep 0.1; done";
        assert!(root.run(setup, None).await.unwrap().success());
        root.close().await;
        let mut admin_login = login(&key, &known_hosts, false);
        admin_login.user = String::from("admin");
        let admin = Connection::open(&node.address, &admin_login).await.unwrap();
        let output = admin.run("id -un; echo $SUDO_USER", None).await.unwrap();
        assert_eq!(output.stdout, "root\nadmin\n", "commands run as root, through sudo");
        admin.write_file("/etc/kstack/owned-by-root", b"x", 0o600, "root", "root").await.unwrap();
    });
    assert_eq!(std::fs::read_to_string(node.file("/etc/kstack/owned-by-root")).unwrap(), "x");
}

#[test]
fn hosts_are_reached_through_a_bastion_when_one_is_named() {
    let key = ClientKey::new();
    let bastion = Node::boot(&key);
    let target = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    let mut through = login(&key, &known_hosts, true);
    through.bastion = Some(format!("root@{}:22", bastion.address).parse::<Bastion>().unwrap());
    let rt = runtime();
    rt.block_on(async {
        let connection = Connection::open(&target.address, &through).await.unwrap();
        let output = connection.run("cat /etc/ssh/sshd_config.d/kstack-test.conf", None).await.unwrap();
        assert!(output.stdout.contains(&format!("ListenAddress {}", target.address)), "{}", output.stdout);
        // The bastion saw the login that carried the tunnel.
        let direct = Connection::open(&bastion.address, &login(&key, &known_hosts, true)).await.unwrap();
        let log = direct.run("journalctl -q -u ssh --no-pager | grep -c 'Accepted publickey'", None).await.unwrap();
        assert_eq!(log.stdout.trim(), "2", "the tunnel's login and this one");
    });
    // A bastion that does not answer makes the host unreachable, naming it.
    through.bastion = Some(Bastion { user: None, host: String::from("127.0.0.1"), port: 1 });
    let error = rt.block_on(Connection::open(&target.address, &through)).err().unwrap();
    assert!(matches!(error, SshError::Unreachable { ref host, .. } if host == "127.0.0.1"), "{error}");
}

#[test]
fn a_write_cut_off_mid_way_leaves_the_previous_file_and_no_temporary_and_its_content_was_private() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    let path = "/etc/kstack/large.conf";
    runtime().block_on(async {
        let writer = Connection::open(&node.address, &login(&key, &known_hosts, true)).await.unwrap();
        let observer = Connection::open(&node.address, &login(&key, &known_hosts, true)).await.unwrap();
        writer.write_file(path, b"previous\n", 0o644, "root", "root").await.unwrap();
        // Once the new content is 1 MiB into its temporary file, the writer's SSH session
        // dies as it would when the network drops: its sshd process is killed.
        let cut = r#"
            for i in $(seq 1 600); do
              for p in $(pgrep -x head); do
                t=$(readlink /proc/$p/fd/1 2>/dev/null) || continue
                case "$t" in */.kstack.*) ;; *) continue ;; esac
                [ "$(stat -c %s "$t" 2>/dev/null || echo 0)" -gt 1048576 ] || continue
                mode=$(stat -c %a "$t"); shell=$(ps -o ppid= -p $p); session=$(ps -o ppid= -p $shell)
                kill -9 $session && echo "cut $mode" && exit 0
              done
              sleep 0.02
            done
            echo 'the write never reached 1 MiB' >&2; exit 1"#;
        let large = vec![b'x'; 64 << 20];
        let (written, observed) = tokio::join!(writer.write_file(path, &large, 0o644, "root", "root"), observer.run(cut, None));
        let observed = observed.unwrap();
        // Content that may be secret is only ever in a file no one but root can read.
        assert_eq!(observed.stdout.trim(), "cut 600", "{}", observed.stderr);
        assert!(written.is_err(), "a write whose session died cannot have succeeded");
        let mut leftovers = String::new();
        for _ in 0..50 {
            leftovers = observer.run("ls -A /etc/kstack | grep '^.kstack' || true", None).await.unwrap().stdout;
            if leftovers.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(leftovers, "", "the temporary file is removed");
    });
    assert_eq!(std::fs::read_to_string(node.file(path)).unwrap(), "previous\n", "the previous content is intact");
}

#[test]
fn a_command_that_ends_without_reading_its_input_does_not_hang_the_sender() {
    let key = ClientKey::new();
    let node = Node::boot(&key);
    let known_hosts = key.dir.path().join("known_hosts");
    runtime().block_on(async {
        let connection = Connection::open(&node.address, &login(&key, &known_hosts, true)).await.unwrap();
        // As a write does when `mkdir` or `sudo` fails before its content is read.
        let input = vec![b'x'; 64 << 20];
        let ended = tokio::time::timeout(Duration::from_secs(60), connection.run("exit 3", Some(&input))).await;
        let output = ended.expect("the send gives up once the command has ended");
        assert!(output.map_or(true, |o| o.status == 3), "a failure, not a success");
        let again = connection.run("echo still here", None).await.unwrap();
        assert_eq!(again.stdout, "still here\n", "the connection stays usable");
    });
}
