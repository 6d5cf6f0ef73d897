//! The node roles of the stack (`roles/`) on a booted test node, installing from a local
//! repository of stand-in packages (`kstack_testkit::stand_in_repo`): Ubuntu's, Docker's and
//! Kubernetes' archives cannot be reached here.

use kstack::roles::{TaskStatus, Variables};
use kstack_testkit::node::{self, ClientKey, Node};
use kstack_testkit::runner::{project_roles, Runner};
use kstack_testkit::stand_in_repo;

const ROLES: [&str; 6] = ["base", "thp", "docker", "monit", "unattended-upgrades", "kubelet"];

fn variables() -> Variables {
    let local = serde_json::json!(stand_in_repo::source());
    Variables::from([
        (String::from("docker_apt_source"), local.clone()),
        (String::from("kubernetes_apt_source"), local),
        (String::from("reboot_time_zone"), serde_json::json!("Europe/Berlin")),
    ])
}

#[test]
fn the_stack_roles_converge_idempotently_and_their_checks_pass() {
    let key = ClientKey::new();
    let node = Node::boot_with(&key, &node::next_address(), stand_in_repo::prepare);
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
    assert_eq!(second.commands, 1, "the facts and every role's queries in one command");

    let verified = runner.verify(&node);
    let failed: Vec<String> = verified.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    assert_eq!(failed, Vec::<String>::new());
    let mut skipped: Vec<&str> = verified.checks.iter().filter(|c| c.skipped.is_some()).map(|c| c.name.as_str()).collect();
    skipped.sort_unstable();
    assert_eq!(
        skipped,
        [
            "bridged traffic through iptables",
            "conntrack table size",
            "huge pages off",
            "inotify instances",
            "inotify watches",
            "ip forwarding on",
            "jumbo frames",
            "kernel command line in effect",
            "open files"
        ],
        "what only a real VM can show is skipped, never passed"
    );
    // Checks follow the variables: Ubuntu's package names by default, aufs tools with aufs.
    let names: Vec<&str> = verified.checks.iter().map(|c| c.name.as_str()).collect();
    assert!(names.contains(&"aufs tools") && names.contains(&"hwe kernel installed"), "{names:?}");
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
    insta::assert_snapshot!("stack_rendered_files", rendered.replace(stand_in_repo::REPOSITORY, "<repository>"));
}
