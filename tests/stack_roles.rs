//! The node roles of the stack (`roles/`) on a booted test node.
//!
//! Ubuntu's and Docker's archives cannot be reached here, so the test serves a local apt
//! repository of small packages it builds with `dpkg-deb`, with the real names and versions
//! (plus a newer docker-engine, so the version pin has something to resist). The package
//! module, pins and holds run for real against it. Services the packages ship are stand-ins
//! (`sleep infinity`), enough for systemd to start, enable and restart them.

#[path = "support/node.rs"]
mod node;
#[path = "support/runner.rs"]
mod runner;

use std::path::Path;
use std::process::Command;

use kstack::roles::{TaskStatus, Variables};
use node::{ClientKey, Node};
use runner::{project_roles, Runner};

const REPOSITORY: &str = "/srv/kstack-test-repo";
const ROLES: [&str; 6] = ["base", "thp", "docker", "monit", "unattended-upgrades", "kubelet"];

fn service(description: &str) -> String {
    format!(
        "[Unit]\nDescription={description} (test stand-in)\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

/// A package's name, version and the files it installs.
type StandIn = (&'static str, &'static str, Vec<(&'static str, String)>);

fn packages() -> Vec<StandIn> {
    let tool = |name: &str| format!("#!/bin/sh\n# {name} stand-in\nexit 0\n");
    vec![
        ("linux-generic-hwe-16.04", "4.15.0.142.137", vec![]),
        // Xenial ships chrony 2.1.1, but the test node's libc (Debian 12) `Breaks: chrony (<< 4.2-3~)`;
        // the role does not pin chrony, so the stand-in takes a version the node accepts.
        ("chrony", "4.2-3", vec![("lib/systemd/system/chrony.service", service("chrony"))]),
        ("aufs-tools", "1:3.2+20130722-1.1ubuntu1", vec![]),
        (
            "docker-engine",
            "1.12.6-0~ubuntu-xenial",
            vec![("lib/systemd/system/docker.service", service("Docker")), ("usr/bin/docker", tool("docker"))],
        ),
        (
            "docker-engine",
            "17.05.0~ce-0~ubuntu-xenial",
            vec![("lib/systemd/system/docker.service", service("Docker")), ("usr/bin/docker", tool("docker"))],
        ),
        ("monit", "1:5.16-2", vec![("lib/systemd/system/monit.service", service("monit")), ("usr/bin/monit", tool("monit"))]),
        ("unattended-upgrades", "0.90ubuntu0.10", vec![]),
        ("kubelet", "1.9.11-00", vec![("lib/systemd/system/kubelet.service", service("kubelet"))]),
        ("kubectl", "1.9.11-00", vec![("usr/bin/kubectl", tool("kubectl"))]),
    ]
}

/// Builds the packages and a flat repository index into `repository` (a directory of the
/// node's writable layer).
fn build_repository(repository: &Path) {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(repository).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut index = String::new();
    for (name, version, files) in packages() {
        let root = work.path().join(format!("{name}-{version}"));
        std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
        let control = format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: kstack tests <tests@kstack.invalid>\nDescription: {name} stand-in for kstack's tests\n"
        );
        std::fs::write(root.join("DEBIAN/control"), &control).unwrap();
        for (path, content) in files {
            let target = root.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, content).unwrap();
            if path.starts_with("usr/bin") {
                Command::new("chmod").arg("755").arg(&target).status().unwrap();
            }
        }
        let file_name = format!("{name}_{}_all.deb", version.replace(':', "%3a"));
        let deb = repository.join(&file_name);
        let built = Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "-b"]).arg(&root).arg(&deb).output().unwrap();
        assert!(built.status.success(), "dpkg-deb: {}", String::from_utf8_lossy(&built.stderr));
        let bytes = std::fs::read(&deb).unwrap();
        index.push_str(&control);
        index.push_str(&format!("Filename: ./{file_name}\nSize: {}\nSHA256: {:x}\n\n", bytes.len(), Sha256::digest(&bytes)));
    }
    std::fs::write(repository.join("Packages"), index).unwrap();
}

/// Writes the repository into the node's root before it boots.
fn prepare(root: &Path) {
    build_repository(&root.join(REPOSITORY.trim_start_matches('/')));
    // The local repository stands in for the Ubuntu archive of a real AMI.
    std::fs::create_dir_all(root.join("etc/apt")).unwrap();
    std::fs::write(root.join("etc/apt/sources.list"), format!("deb [trusted=yes] file:{REPOSITORY} ./\n")).unwrap();
}

fn variables() -> Variables {
    let local = serde_json::json!(format!("deb [trusted=yes] file:{REPOSITORY} ./"));
    Variables::from([
        (String::from("env"), serde_json::json!("test")),
        (String::from("group"), serde_json::json!({ "name": "workers" })),
        (String::from("docker_apt_source"), local.clone()),
        (String::from("kubernetes_apt_source"), local),
        (String::from("reboot_time_zone"), serde_json::json!("Europe/Berlin")),
    ])
}

#[test]
fn the_stack_roles_converge_idempotently_and_their_checks_pass() {
    let key = ClientKey::new();
    let node = Node::boot_with(&key, &node::next_address(), prepare);
    let runner = Runner::new(&key, &project_roles(), &ROLES, variables());

    let first = &runner.converge(&[&node], false)[0];
    let failed: Vec<String> = first
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .map(|t| format!("{}/{}: {}", t.role, t.task, t.error.clone().unwrap_or_default()))
        .collect();
    assert_eq!(failed, Vec::<String>::new(), "{:?}", first.unreachable);
    let skipped: Vec<&str> = first.tasks.iter().filter(|t| t.status == TaskStatus::Skipped).map(|t| t.task.as_str()).collect();
    assert_eq!(skipped, ["kernel modules loaded now", "jumbo frames now", "huge pages off now"], "kernel changes wait for a real VM");

    let second = &runner.converge(&[&node], false)[0];
    let changed: Vec<&str> = second.tasks.iter().filter(|t| t.status == TaskStatus::Changed).map(|t| t.task.as_str()).collect();
    assert_eq!(changed, Vec::<&str>::new(), "a converged node reports no change");

    let verified = runner.verify(&node);
    let failed: Vec<String> = verified.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert_eq!(failed, Vec::<String>::new());
    let mut skipped: Vec<&str> = verified.checks.iter().filter(|c| c.skipped.is_some()).map(|c| c.name.as_str()).collect();
    skipped.sort_unstable();
    assert_eq!(
        skipped,
        ["huge pages off", "inotify watches", "ip forwarding on", "jumbo frames", "kernel command line in effect"],
        "what only a real VM can show is skipped, never passed"
    );
    let jumbo = verified.checks.iter().find(|c| c.name == "jumbo frames").unwrap();
    assert!(jumbo.skipped.as_deref().unwrap().starts_with("needs a real VM"), "{jumbo:?}");

    // The pin held against the newer docker-engine in the repository.
    let held = std::fs::read_to_string(node.file("/var/lib/dpkg/status")).unwrap();
    let docker = held.split("\n\n").find(|p| p.starts_with("Package: docker-engine\n")).unwrap();
    assert!(docker.contains("Status: hold ok installed") && docker.contains("Version: 1.12.6-0~ubuntu-xenial"), "{docker}");

    let mut rendered = String::new();
    for path in [
        "/etc/docker/daemon.json",
        "/etc/systemd/system/docker.service.d/kstack-restart.conf",
        "/etc/systemd/system/kubelet.service.d/kstack.conf",
        "/etc/systemd/system/disable-thp.service",
        "/etc/systemd/system/kstack-mtu.service",
        "/etc/monit/conf.d/docker",
        "/etc/monit/conf.d/dns",
        "/etc/apt/apt.conf.d/50unattended-upgrades",
        "/etc/apt/apt.conf.d/20auto-upgrades",
        "/etc/systemd/system/kstack-reboot.timer",
        "/etc/apt/sources.list.d/docker.list",
        "/etc/default/grub",
        "/etc/modules-load.d/kstack.conf",
        "/etc/sysctl.d/60-kstack-net-netfilter-nf_conntrack_max.conf",
        "/etc/sysctl.d/60-kstack-net-bridge-bridge-nf-call-iptables.conf",
        "/etc/systemd/journald.conf.d/kstack.conf",
    ] {
        rendered.push_str(&format!("== {path}\n{}\n", std::fs::read_to_string(node.file(path)).unwrap()));
    }
    insta::assert_snapshot!("stack_rendered_files", rendered.replace(REPOSITORY, "<repository>"));
}
